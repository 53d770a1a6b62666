//! EgizCore WebSocket source: connects to `{url}/api/v1/ws`, subscribes to the configured equipment
//! types and hands every `StateChanged` frame to the dataflow (`pipeline::Input::Messages`), where it
//! is decoded like an MQTT message or a file line (a malformed one becomes a dead letter and is
//! counted). The wire contract is docs/EGIZCORE.md.
//!
//! The client (tungstenite, blocking) runs on its own thread. A lost connection (error, close frame,
//! or three ping intervals without any frame) is retried after an exponential backoff with jitter
//! ([`crate::backoff`]), re-subscribing every time. `egizml_websocket_connection_status` is 1 while a
//! subscription is open, 0 otherwise; each change is also logged (`egizcore websocket connected` /
//! `egizcore websocket disconnected`, with the gauge's value as `connection_status`).
//!
//! Delivery: EgizCore keeps no backlog for a disconnected subscriber in this contract, so state changes
//! pushed while the connection is down are not seen; a frame already received is never dropped (the
//! thread blocks while the dataflow is behind).

pub mod config;
#[cfg(test)]
mod tests;

pub use config::{EgizCoreSourceConfig, WsEndpoint};

use crate::backoff::{sleep_unless, Backoff};
use anyhow::Context;
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{client::IntoClientRequest, Message, WebSocket};

/// Messages buffered between the client thread and the dataflow.
const QUEUE_MESSAGES: usize = 65_536;

/// How long one blocking read waits before the loop checks stop, idle and ping timers.
const READ_TICK: Duration = Duration::from_millis(200);

/// A connection that lasted this long resets the reconnection backoff even without data.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// A running EgizCore source.
pub struct EgizCoreSource {
    /// Raw frames for `pipeline::Input::Messages`; closes when the source stops.
    pub messages: Receiver<Vec<u8>>,
    pub thread: JoinHandle<()>,
}

/// Starts the client thread (the first connection is made there, so an unreachable EgizCore does not
/// fail the start: it is retried like a lost connection). Ends on `stop`, after `stop_after_idle_s`,
/// or when the receiver is dropped. Config errors (URL, token) fail here.
pub fn start(cfg: &EgizCoreSourceConfig, stop: Arc<AtomicBool>) -> anyhow::Result<EgizCoreSource> {
    let endpoint = cfg.endpoint().map_err(anyhow::Error::msg)?;
    let auth = match cfg.bearer_token().map_err(anyhow::Error::msg)? {
        Some(t) => Some(
            HeaderValue::from_str(&format!("Bearer {t}"))
                .context("egizcore token: not a valid HTTP header value")?,
        ),
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_MESSAGES);
    let client = Client {
        cfg: cfg.clone(),
        endpoint,
        auth,
        subscribe: serde_json::json!({"type": "subscribe", "equipment_types": cfg.equipment_types})
            .to_string(),
    };
    crate::metrics::global().websocket_connection_status.set(0);
    let thread = std::thread::Builder::new()
        .name("egizcore-source".into())
        .spawn(move || {
            let _span =
                tracing::info_span!("egizcore_source", url = %client.endpoint.url).entered();
            client.run(&tx, &stop);
        })
        .context("cannot start the EgizCore source thread")?;
    Ok(EgizCoreSource {
        messages: rx,
        thread,
    })
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// `stop` was set, the idle time passed, or the dataflow hung up: the source is done.
    Done,
    /// Lost: reconnect.
    Lost(String),
}

/// What an incoming text or binary frame is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A reading (or something malformed that the decoder will dead-letter).
    Data,
    /// `{"type":"subscribed",...}`: the server accepted the subscription.
    Subscribed,
    /// `{"type":"error","message":...}`.
    Error(String),
    /// Another `{"type":...}` control message (ignored).
    OtherControl(String),
}

/// Control frames are objects with a string `type` and no `event` key (docs/EGIZCORE.md); anything
/// else is data. A frame naming `"event"` anywhere is data without parsing it here.
pub(crate) fn classify(frame: &[u8]) -> Frame {
    if memchr::memmem::find(frame, b"\"event\"").is_some() {
        return Frame::Data;
    }
    #[derive(serde::Deserialize)]
    struct Control {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<Control>(frame) {
        Ok(c) => match c.kind.as_str() {
            "subscribed" => Frame::Subscribed,
            "error" => Frame::Error(c.message.unwrap_or_default()),
            _ => Frame::OtherControl(c.kind),
        },
        Err(_) => Frame::Data,
    }
}

struct Client {
    cfg: EgizCoreSourceConfig,
    endpoint: WsEndpoint,
    auth: Option<HeaderValue>,
    subscribe: String,
}

/// Counters and timers kept across connections.
#[derive(Default)]
struct State {
    received: u64,
    connections: u64,
    last_message: Option<Instant>,
}

impl Client {
    fn run(&self, tx: &SyncSender<Vec<u8>>, stop: &AtomicBool) {
        let gauge = &crate::metrics::global().websocket_connection_status;
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.min_reconnect_delay_ms),
            Duration::from_millis(self.cfg.max_reconnect_delay_ms),
        );
        let mut st = State::default();
        let done = |st: &State| stop.load(Ordering::SeqCst) || self.idle(st);
        while !done(&st) {
            match self.connect() {
                Ok(ws) => {
                    st.connections += 1;
                    gauge.set(1);
                    tracing::info!(
                        connections = st.connections,
                        connection_status = gauge.get(),
                        "egizcore websocket connected"
                    );
                    let since = Instant::now();
                    let received_before = st.received;
                    let end = self.session(ws, tx, stop, &mut st);
                    gauge.set(0);
                    if since.elapsed() >= STABLE_AFTER || st.received > received_before {
                        backoff.reset();
                    }
                    match end {
                        End::Done => {
                            tracing::info!(
                                connection_status = gauge.get(),
                                "egizcore websocket disconnected (source stopping)"
                            );
                            break;
                        }
                        End::Lost(why) => {
                            crate::metrics::global().sink_error("egizcore_source");
                            tracing::warn!(
                                reason = %why,
                                connection_status = gauge.get(),
                                "egizcore websocket disconnected"
                            );
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "egizcore websocket connect failed");
                }
            }
            let delay = backoff.next_delay();
            tracing::info!(
                retry_in_ms = delay.as_millis() as u64,
                attempt = backoff.attempts(),
                "egizcore websocket reconnecting"
            );
            sleep_unless(delay, || done(&st));
        }
        gauge.set(0);
        tracing::info!(
            received = st.received,
            connections = st.connections,
            "egizcore source stopped"
        );
    }

    fn idle(&self, st: &State) -> bool {
        match (self.cfg.stop_after_idle_s, st.last_message) {
            (Some(idle), Some(last)) => last.elapsed().as_secs_f64() > idle,
            _ => false,
        }
    }

    /// TCP connection plus WebSocket handshake (with the bearer token).
    fn connect(&self) -> anyhow::Result<WebSocket<TcpStream>> {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let addrs: Vec<_> = self
            .endpoint
            .addr
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.endpoint.addr))?
            .collect();
        let mut last_err = None;
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let stream = match (stream, last_err) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                return Err(anyhow::Error::new(e).context(format!("connect {}", self.endpoint.addr)))
            }
            (None, None) => anyhow::bail!("{} resolves to no address", self.endpoint.addr),
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut req = self.endpoint.url.as_str().into_client_request()?;
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let ws_cfg = WebSocketConfig::default()
            .max_message_size(Some(self.cfg.max_message_bytes))
            .max_frame_size(Some(self.cfg.max_message_bytes));
        let ws = match tungstenite::client::client_with_config(req, stream, Some(ws_cfg)) {
            Ok((ws, _response)) => ws,
            Err(HandshakeError::Failure(e)) => {
                return Err(anyhow::Error::new(e).context("websocket handshake"))
            }
            Err(HandshakeError::Interrupted(_)) => {
                anyhow::bail!("websocket handshake: no answer within {timeout:?}")
            }
        };
        ws.get_ref().set_read_timeout(Some(READ_TICK))?;
        Ok(ws)
    }

    /// Subscribes, then reads frames until the connection is lost or the source is done.
    fn session(
        &self,
        mut ws: WebSocket<TcpStream>,
        tx: &SyncSender<Vec<u8>>,
        stop: &AtomicBool,
        st: &mut State,
    ) -> End {
        if let Err(e) = ws.send(Message::text(self.subscribe.clone())) {
            return End::Lost(format!("sending the subscription: {e}"));
        }
        let ping_every = Duration::from_secs_f64(self.cfg.ping_interval_s);
        let dead_after = ping_every * 3;
        let mut last_frame = Instant::now();
        let mut last_ping = Instant::now();
        let end = loop {
            if stop.load(Ordering::SeqCst) || self.idle(st) {
                break End::Done;
            }
            if last_frame.elapsed() > dead_after {
                break End::Lost(format!("no frame for {dead_after:?}"));
            }
            if last_ping.elapsed() >= ping_every {
                last_ping = Instant::now();
                match ws.send(Message::Ping(Default::default())) {
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e)) if is_timeout(e.kind()) => {}
                    Err(e) => break End::Lost(format!("ping: {e}")),
                }
            }
            let payload: Vec<u8> = match ws.read() {
                Ok(Message::Text(t)) => t.as_str().as_bytes().to_vec(),
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {
                    last_frame = Instant::now();
                    continue;
                }
                Ok(Message::Close(frame)) => {
                    let why = frame
                        .map(|f| format!("closed by EgizCore ({}: {})", f.code, f.reason))
                        .unwrap_or_else(|| "closed by EgizCore".to_string());
                    break End::Lost(why);
                }
                Ok(Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e)) if is_timeout(e.kind()) => continue,
                Err(e) => break End::Lost(e.to_string()),
            };
            last_frame = Instant::now();
            match classify(&payload) {
                Frame::Data => {
                    st.received += 1;
                    st.last_message = Some(last_frame);
                    // Blocks while the dataflow is behind (backpressure reaches EgizCore over TCP).
                    if tx.send(payload).is_err() {
                        break End::Done;
                    }
                }
                Frame::Subscribed => {
                    tracing::info!(types = ?self.cfg.equipment_types, "egizcore subscribed");
                }
                Frame::Error(message) => {
                    tracing::warn!(%message, "egizcore reported an error");
                }
                Frame::OtherControl(kind) => {
                    tracing::debug!(%kind, "egizcore control message ignored");
                }
            }
        };
        if matches!(end, End::Done) {
            // Polite close; the result does not matter any more.
            let _ = ws.close(None);
            let _ = ws.flush();
        }
        end
    }
}

fn is_timeout(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
