//! A fake EgizCore speaking exactly the contract of docs/EGIZCORE.md, on one 127.0.0.1 port:
//!
//! - `GET /api/v1/ws` (WebSocket upgrade, bearer token checked when configured): the first client
//!   frame must be `{"type":"subscribe","equipment_types":[...]}`, answered with
//!   `{"type":"subscribed","equipment_types":[...]}`; then the test's StateChanged frames are pushed
//!   as text frames to every subscription whose types include the frame's `equipment_type` (`"*"`:
//!   all). A bad first frame gets `{"type":"error","message":...}` and a close.
//! - `PUT /api/v1/things/{thing_id}/features/status`: the body is checked against the contract
//!   (`400` when it does not match), every request is recorded; answers `204`, or `500` while told to
//!   fail, or `401` on a wrong token.
//!
//! The test can push frames, drop every live WebSocket abruptly (no close frame), and fail the next N
//! PUTs.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// One recorded PUT.
#[derive(Clone, Debug)]
pub struct Put {
    /// Percent-decoded `{thing_id}` path segment.
    pub thing_id: String,
    pub body: serde_json::Value,
    pub authorization: Option<String>,
    /// What the fake answered.
    pub status: u16,
    pub at: Instant,
}

/// One accepted subscription.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub equipment_types: Vec<String>,
    pub authorization: Option<String>,
}

enum Cmd {
    Frame(String),
    /// Drop the socket without a close frame.
    Drop,
}

struct Conn {
    id: u64,
    types: Vec<String>,
    tx: UnboundedSender<Cmd>,
}

#[derive(Default)]
struct Shared {
    token: Option<String>,
    puts: Mutex<Vec<Put>>,
    fail_next: AtomicUsize,
    subscriptions: Mutex<Vec<Subscription>>,
    conns: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
}

/// The running fake; stops when dropped.
pub struct FakeEgizCore {
    port: u16,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeEgizCore {
    /// Starts on a free port; with `token`, requests must carry `Authorization: Bearer <token>`.
    pub fn start(token: Option<&str>) -> FakeEgizCore {
        let shared = Arc::new(Shared {
            token: token.map(str::to_string),
            ..Shared::default()
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let app = Router::new()
            .route("/api/v1/ws", get(ws_handler))
            .route("/api/v1/things/{thing_id}/features/status", put(put_status))
            .with_state(Arc::clone(&shared));
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeEgizCore {
            port,
            shared,
            rt: Some(rt),
        }
    }

    /// Base URL for the WebSocket source config.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Base URL for the REST sink config.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every subscription accepted so far.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.shared.subscriptions.lock().unwrap().clone()
    }

    /// Waits until `n` subscriptions have been accepted in total.
    pub fn wait_subscriptions(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.subscriptions().len() < n {
            assert!(
                Instant::now() < deadline,
                "fake EgizCore: {} of {n} subscriptions within {timeout:?}",
                self.subscriptions().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Queues `frames` (in order) to every live subscription whose types match each frame's
    /// `equipment_type`; frames without one (malformed) go to every subscription. Returns the live
    /// subscriptions.
    pub fn push(&self, frames: &[String]) -> usize {
        let conns = self.shared.conns.lock().unwrap();
        for frame in frames {
            let ty = serde_json::from_str::<serde_json::Value>(frame)
                .ok()
                .and_then(|v| v["equipment_type"].as_str().map(str::to_string));
            for c in conns.iter() {
                let wanted = match &ty {
                    Some(t) => c.types.iter().any(|x| x == "*" || x == t),
                    None => true,
                };
                if wanted {
                    let _ = c.tx.send(Cmd::Frame(frame.clone()));
                }
            }
        }
        conns.len()
    }

    /// Drops every live WebSocket (after the frames already queued to it are written), without a
    /// close frame, as a crashed or restarted server would.
    pub fn drop_connections(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.tx.send(Cmd::Drop);
        }
    }

    /// Answers the next `n` PUTs with 500.
    pub fn fail_next_puts(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every PUT received, in arrival order.
    pub fn puts(&self) -> Vec<Put> {
        self.shared.puts.lock().unwrap().clone()
    }
}

impl Drop for FakeEgizCore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn authorized(shared: &Shared, auth: &Option<String>) -> bool {
    match &shared.token {
        Some(t) => auth.as_deref() == Some(format!("Bearer {t}").as_str()),
        None => true,
    }
}

async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let auth = authorization(&headers);
    if !authorized(&shared, &auth) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ws.on_upgrade(move |socket| connection(socket, shared, auth))
}

/// `{"type":"subscribe","equipment_types":[non-empty strings, at least one]}`.
fn parse_subscribe(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    if v["type"] != "subscribe" {
        return Err(format!("expected type \"subscribe\", got {}", v["type"]));
    }
    let types: Vec<String> = v["equipment_types"]
        .as_array()
        .ok_or("equipment_types must be an array")?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or("equipment_types: strings")
        })
        .collect::<Result<_, _>>()?;
    if types.is_empty() || types.iter().any(|t| t.is_empty()) {
        return Err("equipment_types: at least one non-empty type".into());
    }
    Ok(types)
}

async fn connection(mut socket: WebSocket, shared: Arc<Shared>, auth: Option<String>) {
    let first = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await;
    let types = match first {
        Ok(Some(Ok(Message::Text(t)))) => parse_subscribe(t.as_str()),
        _ => Err("the first frame must be a subscribe text frame".to_string()),
    };
    let types = match types {
        Ok(t) => t,
        Err(message) => {
            let err = serde_json::json!({"type": "error", "message": message}).to_string();
            let _ = socket.send(Message::Text(err.into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let (tx, mut rx) = unbounded_channel();
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let ack = serde_json::json!({"type": "subscribed", "equipment_types": types}).to_string();
    if socket.send(Message::Text(ack.into())).await.is_err() {
        return;
    }
    shared.conns.lock().unwrap().push(Conn {
        id,
        types: types.clone(),
        tx,
    });
    shared.subscriptions.lock().unwrap().push(Subscription {
        equipment_types: types,
        authorization: auth,
    });
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Frame(f)) => {
                    if socket.send(Message::Text(f.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Drop) | None => break,
            },
            msg = socket.recv() => match msg {
                // Pings are answered by the WebSocket layer; anything else from the client after the
                // subscription is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    shared.conns.lock().unwrap().retain(|c| c.id != id);
    // Dropping `socket` closes the TCP connection without a close frame.
}

/// Checks the body against docs/EGIZCORE.md.
fn check_body(v: &serde_json::Value) -> Result<(), String> {
    let p = v
        .get("properties")
        .and_then(|p| p.as_object())
        .ok_or("missing properties object")?;
    if p.get("anomaly") != Some(&serde_json::Value::Bool(true)) {
        return Err("properties.anomaly must be true".into());
    }
    let score = p
        .get("anomaly_score")
        .and_then(|s| s.as_f64())
        .ok_or("properties.anomaly_score must be a number")?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("properties.anomaly_score {score} outside [0, 1]"));
    }
    match p.get("severity").and_then(|s| s.as_str()) {
        Some("info" | "warning" | "critical") => {}
        other => return Err(format!("properties.severity: {other:?}")),
    }
    let features = p
        .get("top_features")
        .and_then(|f| f.as_array())
        .ok_or("properties.top_features must be an array")?;
    for f in features {
        if !(f["feature"].is_string() && f["contribution"].is_number()) {
            return Err(format!("top_features entry {f}"));
        }
    }
    match p.get("alert_id").and_then(|s| s.as_str()) {
        Some(id) if !id.is_empty() => Ok(()),
        _ => Err("properties.alert_id must be a non-empty string".into()),
    }
}

async fn put_status(
    State(shared): State<Arc<Shared>>,
    Path(thing_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let auth = authorization(&headers);
    let parsed: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (status, message) = if !authorized(&shared, &auth) {
        (StatusCode::UNAUTHORIZED, "bad token".to_string())
    } else if shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "told to fail".to_string(),
        )
    } else if !json {
        (
            StatusCode::BAD_REQUEST,
            "content-type must be application/json".to_string(),
        )
    } else if let Err(e) = check_body(&parsed) {
        (StatusCode::BAD_REQUEST, e)
    } else {
        (StatusCode::NO_CONTENT, String::new())
    };
    shared.puts.lock().unwrap().push(Put {
        thing_id,
        body: parsed,
        authorization: auth,
        status: status.as_u16(),
        at: Instant::now(),
    });
    (status, message).into_response()
}
