//! Configuration of the Kafka source.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Consume telemetry (flat or EgizCore JSON, one message per reading) from Kafka topics.
///
/// Every process runs one consumer of the group (its records are exchanged by thing to all workers
/// of all processes), so the group's partitions are spread over the processes running the same
/// config. Offsets are committed only once
/// every output caused by them (alerts, scores, dead letters) has been acknowledged by the sinks:
/// at-least-once, nothing lost on a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id. Each process joins as the static member `{group_id}-{process index}`
    /// (`group.instance.id`), so a restarted process takes its killed predecessor's partitions at
    /// once; two services sharing a group need distinct process indexes or their own
    /// `group.instance.id` in `properties`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Where a group without committed offsets starts: `earliest` or `latest`.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: String,
    /// How often acknowledged offsets are committed, milliseconds.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// On a partition's first message after (re)start, re-read up to this many earlier messages to
    /// rebuild per-thing state (windows, models) without re-emitting their alerts: the restarted
    /// service then detects as if it had never stopped.
    #[serde(default)]
    pub warm_start_messages: i64,
    /// End the run once no message has arrived for this many seconds, counted from the first message
    /// (batch back-fills and tests); unset: run until stopped.
    #[serde(default)]
    pub stop_after_idle_s: Option<f64>,
    /// Extra librdkafka consumer properties (`session.timeout.ms`, `security.protocol`, ...). They
    /// override the source's own settings, such as `fetch.wait.max.ms` (1 by default here, for
    /// latency; see `DEFAULT_FETCH_WAIT_MS`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group() -> String {
    "egizml".to_string()
}

fn default_offset_reset() -> String {
    "earliest".to_string()
}

fn default_commit_interval() -> u64 {
    1000
}

impl KafkaSourceConfig {
    /// A config with defaults for the given brokers and topic.
    pub fn new(brokers: &str, topic: &str) -> Self {
        KafkaSourceConfig {
            brokers: brokers.to_string(),
            topics: vec![topic.to_string()],
            group_id: default_group(),
            auto_offset_reset: default_offset_reset(),
            commit_interval_ms: default_commit_interval(),
            warm_start_messages: 0,
            stop_after_idle_s: None,
            properties: BTreeMap::new(),
        }
    }

    /// Checks values serde cannot (the caller adds the file name).
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: must not be empty".into());
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err("kafka.topics: needs at least one non-empty topic".into());
        }
        if !matches!(self.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(format!(
                "kafka.auto_offset_reset: expected earliest or latest, got `{}`",
                self.auto_offset_reset
            ));
        }
        if self.warm_start_messages < 0 {
            return Err("kafka.warm_start_messages: must be >= 0".into());
        }
        if let Some(s) = self.stop_after_idle_s {
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("kafka.stop_after_idle_s: must be > 0, got {s}"));
            }
        }
        Ok(())
    }
}
