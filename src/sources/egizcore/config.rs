//! Configuration of the EgizCore WebSocket source (`source.egizcore` in the service config).

use serde::{Deserialize, Serialize};

/// Subscribe to EgizCore's state stream over WebSocket and feed every `StateChanged` message into the
/// dataflow (the contract is docs/EGIZCORE.md).
///
/// On start and after every lost connection the source connects to `{url}/api/v1/ws`, sends
/// `{"type":"subscribe","equipment_types":[...]}` and reads StateChanged text frames. Reconnection
/// waits grow exponentially (with jitter) from `min_reconnect_delay_ms` to `max_reconnect_delay_ms`.
/// `egizml_websocket_connection_status` is 1 while connected, 0 otherwise.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgizCoreSourceConfig {
    /// EgizCore's WebSocket base URL, `ws://host[:port][/prefix]` (port 80 when left out); the source
    /// connects to `{url}/api/v1/ws`. Plain WebSocket only: put a TLS-terminating proxy in front for
    /// `wss://`.
    pub url: String,
    /// Equipment types to subscribe to (`["*"]`: every type).
    pub equipment_types: Vec<String>,
    /// Bearer token sent as `Authorization: Bearer <token>` with the upgrade request.
    #[serde(default)]
    pub token: Option<String>,
    /// Name of an environment variable holding the bearer token (instead of `token`, which keeps the
    /// secret out of the file).
    #[serde(default)]
    pub token_env: Option<String>,
    /// TCP connect and WebSocket handshake timeout, milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// First reconnection wait, milliseconds (doubles per failed attempt, with jitter).
    #[serde(default = "default_min_reconnect")]
    pub min_reconnect_delay_ms: u64,
    /// Longest reconnection wait, milliseconds.
    #[serde(default = "default_max_reconnect")]
    pub max_reconnect_delay_ms: u64,
    /// The source pings EgizCore this often, seconds; a connection that delivers no frame at all
    /// (data, ping or pong) for three intervals is treated as lost and reconnected.
    #[serde(default = "default_ping_interval")]
    pub ping_interval_s: f64,
    /// Largest WebSocket message accepted, bytes (a larger one drops the connection). Keep it above
    /// the dataflow's `decode.max_message_bytes`, so an oversize reading is dead-lettered instead.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// End the run once no message has arrived for this many seconds, counted from the first message
    /// (tests, back-fills); unset: run until stopped.
    #[serde(default)]
    pub stop_after_idle_s: Option<f64>,
}

fn default_connect_timeout() -> u64 {
    5_000
}
fn default_min_reconnect() -> u64 {
    100
}
fn default_max_reconnect() -> u64 {
    30_000
}
fn default_ping_interval() -> f64 {
    20.0
}
fn default_max_message() -> usize {
    16 << 20
}

/// The parts of a `ws://` URL the client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsEndpoint {
    /// `host:port` to connect to.
    pub addr: String,
    /// Full request URL, `ws://host:port/prefix/api/v1/ws`.
    pub url: String,
}

/// The WebSocket path under the base URL (docs/EGIZCORE.md).
pub const WS_PATH: &str = "/api/v1/ws";

impl EgizCoreSourceConfig {
    /// A config with defaults for `url` and the given equipment types.
    pub fn new(url: &str, equipment_types: &[&str]) -> Self {
        EgizCoreSourceConfig {
            url: url.to_string(),
            equipment_types: equipment_types.iter().map(|s| s.to_string()).collect(),
            token: None,
            token_env: None,
            connect_timeout_ms: default_connect_timeout(),
            min_reconnect_delay_ms: default_min_reconnect(),
            max_reconnect_delay_ms: default_max_reconnect(),
            ping_interval_s: default_ping_interval(),
            max_message_bytes: default_max_message(),
            stop_after_idle_s: None,
        }
    }

    /// Where to connect: `ws://host[:port][/prefix]` plus [`WS_PATH`].
    pub fn endpoint(&self) -> Result<WsEndpoint, String> {
        let url = self.url.trim();
        let rest = match url.split_once("://") {
            Some(("ws", rest)) => rest,
            Some(("wss", _)) => {
                return Err(format!(
                    "egizcore.url: `{url}`: wss:// is not supported; use ws:// behind a TLS-terminating proxy"
                ))
            }
            _ => return Err(format!("egizcore.url: `{url}` must start with ws://")),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "egizcore.url: `{url}` needs a host (and no user info)"
            ));
        }
        let has_port = match authority.rfind(':') {
            // `[::1]` alone has colons but no port.
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let addr = if has_port {
            let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("egizcore.url: bad host or port in `{url}`"));
            }
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(WsEndpoint {
            url: format!("ws://{addr}{prefix}{WS_PATH}"),
            addr,
        })
    }

    /// The bearer token from `token` or `token_env`.
    pub fn bearer_token(&self) -> Result<Option<String>, String> {
        resolve_token(self.token.as_deref(), self.token_env.as_deref())
    }

    /// Checks values serde cannot (the caller adds the section path and file name).
    pub fn validate(&self) -> Result<(), String> {
        self.endpoint()?;
        if self.equipment_types.is_empty() {
            return Err("egizcore.equipment_types: needs at least one type (or \"*\")".into());
        }
        if self.equipment_types.iter().any(|t| t.trim().is_empty()) {
            return Err("egizcore.equipment_types: empty type name".into());
        }
        if self.connect_timeout_ms == 0 {
            return Err("egizcore.connect_timeout_ms: must be >= 1".into());
        }
        if self.min_reconnect_delay_ms == 0 {
            return Err("egizcore.min_reconnect_delay_ms: must be >= 1".into());
        }
        if self.max_reconnect_delay_ms < self.min_reconnect_delay_ms {
            return Err(format!(
                "egizcore.max_reconnect_delay_ms: must be >= min_reconnect_delay_ms ({})",
                self.min_reconnect_delay_ms
            ));
        }
        if !(self.ping_interval_s.is_finite() && self.ping_interval_s >= 0.1) {
            return Err(format!(
                "egizcore.ping_interval_s: must be >= 0.1, got {}",
                self.ping_interval_s
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err("egizcore.max_message_bytes: must be >= 1024".into());
        }
        if let Some(s) = self.stop_after_idle_s {
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("egizcore.stop_after_idle_s: must be > 0, got {s}"));
            }
        }
        self.bearer_token()?;
        Ok(())
    }
}

/// `token` or the value of the environment variable `token_env` (not both); errors name the field.
pub fn resolve_token(
    token: Option<&str>,
    token_env: Option<&str>,
) -> Result<Option<String>, String> {
    match (token, token_env) {
        (Some(_), Some(_)) => Err("egizcore.token_env: set token or token_env, not both".into()),
        (Some(t), None) if t.trim().is_empty() => Err("egizcore.token: must not be empty".into()),
        (Some(t), None) => Ok(Some(t.to_string())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t)),
            _ => Err(format!(
                "egizcore.token_env: environment variable {var} is unset or empty"
            )),
        },
        (None, None) => Ok(None),
    }
}
