//! Configuration of the Kafka alert sink.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Write alerts (and optionally per-reading scores and dead letters) to Kafka topics.
///
/// Alerts are keyed by `thing_id` (one thing's alerts stay in order on one partition) and written by
/// an idempotent producer; an epoch's outputs count as acknowledged only once the broker has
/// acknowledged every message of it (the sink reads the delivery reports instead of waiting), which
/// is what lets the Kafka source commit its offsets.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Alert topic (value: the alert JSON of docs/alert.schema.json, key: thing_id).
    pub alerts_topic: String,
    /// Per-reading score lines, keyed by thing_id (needs scores enabled in the service config).
    #[serde(default)]
    pub scores_topic: Option<String>,
    /// Malformed input: the raw message as value, headers `reason` and `detail`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// RUL predictions (docs/RUL.md), keyed by thing_id (needs a dataflow with a `rul` section).
    #[serde(default)]
    pub predictions_topic: Option<String>,
    /// How long the producer keeps retrying a message before it counts as failed, milliseconds.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout_ms: u64,
    /// Messages buffered in the producer before writes wait (backpressure on the dataflow).
    #[serde(default = "default_queue")]
    pub queue_messages: usize,
    /// Extra librdkafka producer properties (they override the sink's own: `acks: all`,
    /// idempotence, no compression, `linger.ms: 1`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_delivery_timeout() -> u64 {
    30_000
}

fn default_queue() -> usize {
    100_000
}

impl KafkaSinkConfig {
    pub fn new(brokers: &str, alerts_topic: &str) -> Self {
        KafkaSinkConfig {
            brokers: brokers.to_string(),
            alerts_topic: alerts_topic.to_string(),
            scores_topic: None,
            dead_letter_topic: None,
            predictions_topic: None,
            delivery_timeout_ms: default_delivery_timeout(),
            queue_messages: default_queue(),
            properties: BTreeMap::new(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers: must not be empty".into());
        }
        if self.alerts_topic.trim().is_empty() {
            return Err("kafka.alerts_topic: must not be empty".into());
        }
        if self.delivery_timeout_ms < 1000 {
            return Err("kafka.delivery_timeout_ms: must be >= 1000".into());
        }
        if self.queue_messages == 0 {
            return Err("kafka.queue_messages: must be >= 1".into());
        }
        Ok(())
    }
}
