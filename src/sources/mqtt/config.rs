//! Configuration of the MQTT source.

use serde::{Deserialize, Serialize};

/// Subscribe to MQTT topic filters and feed every message (flat or EgizCore JSON, one reading per
/// message) into the dataflow.
///
/// Subscriptions are QoS 1 (at least once from the broker to us) and are renewed on every
/// (re)connection, so a restarted broker that lost its sessions gets them back.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Broker address, `host:port` (plain TCP; the port defaults to 1883 when left out).
    pub broker: String,
    /// Topic filters; MQTT wildcards allowed (`factory/+/telemetry`, `plant/#`).
    pub topics: Vec<String>,
    /// Client id. With `clean_session: false` the broker keeps this client's subscriptions and queues
    /// QoS 1 messages while the service is down, keyed by this id: give each service its own.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Start a fresh session on every connection (messages published while disconnected are lost).
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Longest wait between reconnection attempts, milliseconds (the wait doubles from 100 ms).
    #[serde(default = "default_max_reconnect")]
    pub max_reconnect_delay_ms: u64,
    /// Largest MQTT packet accepted, bytes. Keep it above the dataflow's `decode.max_message_bytes`,
    /// so an oversize reading is dead-lettered rather than dropping the connection.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Username and password, when the broker requires them.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// End the run once no message has arrived for this many seconds, counted from the first message
    /// (tests, back-fills); unset: run until stopped.
    #[serde(default)]
    pub stop_after_idle_s: Option<f64>,
}

fn default_client_id() -> String {
    "egizml".to_string()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_max_reconnect() -> u64 {
    5_000
}
fn default_max_packet() -> usize {
    1 << 20
}

impl MqttSourceConfig {
    /// A config with defaults for `broker` and one topic filter.
    pub fn new(broker: &str, topic: &str) -> Self {
        MqttSourceConfig {
            broker: broker.to_string(),
            topics: vec![topic.to_string()],
            client_id: default_client_id(),
            clean_session: false,
            keep_alive_s: default_keep_alive(),
            max_reconnect_delay_ms: default_max_reconnect(),
            max_packet_bytes: default_max_packet(),
            username: None,
            password: None,
            stop_after_idle_s: None,
        }
    }

    /// `(host, port)` of [`Self::broker`].
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let b = self.broker.trim();
        let b = b
            .strip_prefix("mqtt://")
            .or_else(|| b.strip_prefix("tcp://"))
            .unwrap_or(b);
        match b.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("mqtt.broker: bad port in `{}`", self.broker))?;
                Ok((host.to_string(), port))
            }
            None => Ok((b.to_string(), 1883)),
        }
    }

    /// Checks values serde cannot (the caller adds the file name).
    pub fn validate(&self) -> Result<(), String> {
        let (host, _) = self.host_port()?;
        if host.is_empty() {
            return Err("mqtt.broker: must not be empty".into());
        }
        if self.topics.is_empty() {
            return Err("mqtt.topics: needs at least one topic filter".into());
        }
        for t in &self.topics {
            if !valid_filter(t) {
                return Err(format!(
                    "mqtt.topics: `{t}` is not a valid MQTT topic filter"
                ));
            }
        }
        if self.client_id.is_empty() {
            return Err("mqtt.client_id: must not be empty".into());
        }
        if self.keep_alive_s == 0 {
            return Err("mqtt.keep_alive_s: must be >= 1".into());
        }
        if self.max_packet_bytes < 1024 {
            return Err("mqtt.max_packet_bytes: must be >= 1024".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("mqtt.password: set username too".into());
        }
        if let Some(s) = self.stop_after_idle_s {
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("mqtt.stop_after_idle_s: must be > 0, got {s}"));
            }
        }
        Ok(())
    }
}

/// MQTT 3.1.1 filter rules: non-empty; `+` fills a whole level; `#` only as the whole last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('+') && !l.contains('#'),
    })
}
