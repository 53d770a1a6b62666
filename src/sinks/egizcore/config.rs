//! Configuration of the EgizCore REST sink (`sinks.egizcore` in the service config).

use serde::{Deserialize, Serialize};

/// Publish alerts to EgizCore: `PUT {url}/api/v1/things/{thing_id}/features/status` with the body of
/// docs/EGIZCORE.md.
///
/// The dataflow only appends alerts to a bounded queue (when it is full the *oldest* queued alert is
/// dropped and counted); one thread drains it, at most one publish per thing per `min_interval_s`
/// (alerts in between are coalesced: the most severe, then the latest, is published when the
/// interval is up), retrying transport errors, 408, 429 and 5xx with exponential backoff and jitter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgizCoreSinkConfig {
    /// EgizCore's REST base URL, `http://host[:port][/prefix]`. Plain HTTP only: put a
    /// TLS-terminating proxy in front for HTTPS.
    pub url: String,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
    /// Name of an environment variable holding the bearer token (instead of `token`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Timeout of one PUT (connect, send, response), milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Retries after a failed PUT (so at most `max_retries + 1` attempts per alert).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First retry wait, milliseconds (doubles per attempt, with jitter).
    #[serde(default = "default_retry_base")]
    pub retry_base_ms: u64,
    /// Longest retry wait, milliseconds.
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Alerts waiting to be published; when full the oldest is dropped
    /// (`egizml_egizcore_publish_dropped_total{reason="queue_full"}`).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// At most one publish per thing per this many seconds (0: no limit).
    #[serde(default = "default_min_interval")]
    pub min_interval_s: f64,
    /// On shutdown, keep publishing queued alerts for at most this many seconds; alerts still held
    /// back by `min_interval_s` then are dropped (`reason="shutdown"`).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_s: f64,
}

fn default_timeout() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    5
}
fn default_retry_base() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    10_000
}
fn default_queue() -> usize {
    10_000
}
fn default_min_interval() -> f64 {
    60.0
}
fn default_shutdown_timeout() -> f64 {
    5.0
}

/// The REST path of a thing's status feature under the base URL (docs/EGIZCORE.md).
pub fn status_path(thing_id: &str) -> String {
    format!(
        "/api/v1/things/{}/features/status",
        encode_path_segment(thing_id)
    )
}

/// Percent-encodes everything but RFC 3986 `pchar`s (unreserved, sub-delims, `:` and `@`), so
/// `factory:oven-001` stays as it is and `/`, `?`, `#`, `%` or spaces cannot change the path.
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl EgizCoreSinkConfig {
    /// A config with defaults for `url`.
    pub fn new(url: &str) -> Self {
        EgizCoreSinkConfig {
            url: url.to_string(),
            token: None,
            token_env: None,
            timeout_ms: default_timeout(),
            max_retries: default_retries(),
            retry_base_ms: default_retry_base(),
            retry_max_ms: default_retry_max(),
            queue_capacity: default_queue(),
            min_interval_s: default_min_interval(),
            shutdown_timeout_s: default_shutdown_timeout(),
        }
    }

    /// The base URL without a trailing `/`.
    pub fn base(&self) -> &str {
        self.url.trim().trim_end_matches('/')
    }

    /// The full PUT URL for `thing_id`.
    pub fn status_url(&self, thing_id: &str) -> String {
        format!("{}{}", self.base(), status_path(thing_id))
    }

    /// The bearer token from `token` or `token_env`.
    pub fn bearer_token(&self) -> Result<Option<String>, String> {
        crate::sources::egizcore::config::resolve_token(
            self.token.as_deref(),
            self.token_env.as_deref(),
        )
    }

    /// Checks values serde cannot (the caller adds the section path and file name).
    pub fn validate(&self) -> Result<(), String> {
        let base = self.url.trim();
        let Some(rest) = base.strip_prefix("http://") else {
            return Err(if base.starts_with("https://") {
                format!("egizcore.url: `{base}`: https:// is not supported; use http:// behind a TLS-terminating proxy")
            } else {
                format!("egizcore.url: `{base}` must start with http://")
            });
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "egizcore.url: `{base}` needs a host (and no user info)"
            ));
        }
        if self.timeout_ms == 0 {
            return Err("egizcore.timeout_ms: must be >= 1".into());
        }
        if self.retry_base_ms == 0 {
            return Err("egizcore.retry_base_ms: must be >= 1".into());
        }
        if self.retry_max_ms < self.retry_base_ms {
            return Err(format!(
                "egizcore.retry_max_ms: must be >= retry_base_ms ({})",
                self.retry_base_ms
            ));
        }
        if self.queue_capacity == 0 {
            return Err("egizcore.queue_capacity: must be >= 1".into());
        }
        if !(self.min_interval_s.is_finite() && self.min_interval_s >= 0.0) {
            return Err(format!(
                "egizcore.min_interval_s: must be >= 0, got {}",
                self.min_interval_s
            ));
        }
        if !(self.shutdown_timeout_s.is_finite() && self.shutdown_timeout_s >= 0.0) {
            return Err(format!(
                "egizcore.shutdown_timeout_s: must be >= 0, got {}",
                self.shutdown_timeout_s
            ));
        }
        self.bearer_token()?;
        Ok(())
    }
}
