//! REST API (axum): health, Prometheus metrics and the anomaly history.
//!
//! The server runs on its own small tokio runtime in a background thread so the timely dataflow threads
//! are never shared with HTTP work. Store queries are blocking SQLite calls and run on tokio's blocking
//! pool.
//!
//! Routes (the `/api/v1` prefix is the contract; `/health` and `/metrics` are also served at the root):
//! - `GET /health`, `GET /api/v1/health`: `{"status":"ok","uptime_s":..,"version":..,"details"?:..}`
//! - `GET /metrics`, `GET /api/v1/metrics`: Prometheus text format
//! - `GET /api/v1/anomalies?thing_id=&since=&until=&severity=&type=&limit=&offset=`: [`AlertPage`]
//! - `GET /api/v1/anomalies/{thing_id}` with the same filters except `thing_id`
//!
//! Every error is JSON `{"error": "..."}`; a 400 names the offending parameter.

use crate::event::Severity;
use crate::sinks::sqlite::{AlertPage, AlertQuery, AlertStore, MAX_LIMIT};
use anyhow::Context;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An alert store shared between the API and whoever else holds it. For SQLite, give the API its own
/// connection on the writer's file (WAL lets it read while the pipeline writes).
pub type SharedStore = Arc<Mutex<dyn AlertStore>>;

/// Extra fields for `/health` (`details`), computed on each request: worker counts, source lag, ...
pub type HealthHook = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// How long [`ApiServer::shutdown`] lets in-flight requests finish before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The alert history; `None` makes the anomaly routes answer 503.
    pub store: Option<SharedStore>,
    /// Process start, for `uptime_s`.
    pub started: Instant,
    /// Optional extra health details.
    pub health_details: Option<HealthHook>,
}

impl ApiState {
    /// State serving `store`, with uptime counted from now.
    pub fn new(store: SharedStore) -> ApiState {
        ApiState {
            store: Some(store),
            started: Instant::now(),
            health_details: None,
        }
    }

    /// State without an alert store (health and metrics only).
    pub fn without_store() -> ApiState {
        ApiState {
            store: None,
            started: Instant::now(),
            health_details: None,
        }
    }

    /// Shares `store` (typically a [`crate::sinks::sqlite::SqliteStore`]) for the API.
    pub fn share<S: AlertStore + 'static>(store: S) -> SharedStore {
        Arc::new(Mutex::new(store))
    }

    /// Adds a hook whose value is reported as `details` by `/health`.
    pub fn with_health_details(
        mut self,
        hook: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> ApiState {
        self.health_details = Some(Arc::new(hook));
        self
    }
}

/// A running API server. Dropping it shuts it down too; [`ApiServer::shutdown`] also reports errors.
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl ApiServer {
    /// The bound address (the real port when spawned on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets in-flight requests finish (up to a few seconds) and waits for
    /// the server thread.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            // The receiver is gone only if the server already stopped; joining reports why.
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(r) => r.context("REST API server failed"),
                Err(_) => anyhow::bail!("REST API server thread panicked"),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "REST API shutdown");
        }
    }
}

/// Binds `addr` now (a busy port is an immediate error) and serves the API on a background thread.
pub fn spawn(addr: SocketAddr, state: ApiState) -> anyhow::Result<ApiServer> {
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("REST API: cannot listen on {addr} (port in use or not permitted?)")
    })?;
    std_listener
        .set_nonblocking(true)
        .context("REST API: configuring the listener")?;
    let local_addr = std_listener
        .local_addr()
        .context("REST API: reading the bound address")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("egizml-api")
        .enable_io()
        .enable_time()
        .build()
        .context("REST API: starting the tokio runtime")?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(std_listener)
            .context("REST API: registering the listener")?
    };
    let app = router(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("egizml-api".into())
        .spawn(move || {
            let stopping = Arc::new(tokio::sync::Notify::new());
            let signal = stopping.clone();
            let result = rt.block_on(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    // A dropped sender (ApiServer leaked by a panic) also stops the server.
                    let _ = rx.await;
                    signal.notify_one();
                });
                tokio::select! {
                    r = serve => r,
                    _ = async {
                        stopping.notified().await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    } => {
                        tracing::warn!("REST API: requests still running after the shutdown grace period");
                        Ok(())
                    }
                }
            });
            // Store queries on the blocking pool may still be running; don't wait for them forever.
            rt.shutdown_timeout(Duration::from_secs(1));
            result
        })
        .context("REST API: spawning the server thread")?;
    tracing::info!(%local_addr, "REST API listening");
    Ok(ApiServer {
        local_addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// The API routes over `state` (exposed for embedding into another server).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/metrics", get(metrics))
        .route("/api/v1/anomalies", get(anomalies))
        .route("/api/v1/anomalies/{thing_id}", get(thing_anomalies))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error response: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

async fn health(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let mut body = serde_json::json!({
        "status": "ok",
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(hook) = &state.health_details {
        body["details"] = hook();
    }
    Json(body)
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        crate::metrics::global().render(),
    )
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route for {method} {}", uri.path()),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("method {method} is not allowed on {}", uri.path()),
    }
}

type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

async fn anomalies(
    State(state): State<ApiState>,
    params: RawParams,
) -> Result<Json<AlertPage>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_query(&params, None)?;
    run_query(state, q).await
}

async fn thing_anomalies(
    State(state): State<ApiState>,
    thing_id: Result<Path<String>, PathRejection>,
    params: RawParams,
) -> Result<Json<AlertPage>, ApiError> {
    let Path(thing_id) =
        thing_id.map_err(|e| ApiError::bad_request(format!("invalid thing_id in path: {e}")))?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_query(&params, Some(thing_id))?;
    run_query(state, q).await
}

async fn run_query(state: ApiState, q: AlertQuery) -> Result<Json<AlertPage>, ApiError> {
    let store = state.store.ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "no alert store is configured".to_string(),
    })?;
    let result = tokio::task::spawn_blocking(move || {
        // A panic while holding the lock cannot leave SQLite half-written (transactions), so a
        // poisoned lock is still safe to read through.
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        store.query(&q)
    })
    .await;
    let internal = |message: String| {
        tracing::error!(error = %message, "anomaly query failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    };
    match result {
        Ok(Ok(page)) => Ok(Json(page)),
        Ok(Err(e)) => Err(internal(e.to_string())),
        Err(e) => Err(internal(format!("anomaly query aborted: {e}"))),
    }
}

/// Parses the anomaly filters. `path_thing` is the `{thing_id}` of the per-thing route, which then may
/// not also be given as a parameter. Unknown and repeated parameters are rejected: silently ignoring a
/// mistyped filter would return unfiltered data that looks right.
pub fn parse_query(
    params: &[(String, String)],
    path_thing: Option<String>,
) -> Result<AlertQuery, ApiError> {
    let mut q = AlertQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    let path_route = path_thing.is_some();
    q.thing_id = path_thing;
    for (key, value) in params {
        if seen.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "parameter `{key}` is given more than once"
            )));
        }
        seen.push(key);
        match key.as_str() {
            "thing_id" if path_route => {
                return Err(ApiError::bad_request(
                    "parameter `thing_id` is not allowed here: the thing is given in the path",
                ))
            }
            "thing_id" => {
                if value.is_empty() {
                    return Err(ApiError::bad_request("parameter `thing_id` must not be empty"));
                }
                q.thing_id = Some(value.clone());
            }
            "since" => q.since_ms = Some(epoch_ms("since", value)?),
            "until" => q.until_ms = Some(epoch_ms("until", value)?),
            "severity" => {
                q.severity = Some(value.parse::<Severity>().map_err(|e| {
                    ApiError::bad_request(format!("parameter `severity`: {e}"))
                })?)
            }
            "type" => {
                if value.is_empty() {
                    return Err(ApiError::bad_request("parameter `type` must not be empty"));
                }
                q.alert_type = Some(value.clone());
            }
            "limit" => {
                q.limit = match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "parameter `limit` must be an integer from 1 to {MAX_LIMIT}, got `{value}`"
                        )))
                    }
                }
            }
            "offset" => {
                q.offset = value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "parameter `offset` must be a non-negative integer, got `{value}`"
                    ))
                })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; expected thing_id, since, until, severity, type, limit or offset"
                )))
            }
        }
    }
    if let (Some(s), Some(u)) = (q.since_ms, q.until_ms) {
        if s > u {
            return Err(ApiError::bad_request(format!(
                "parameter `since` ({s}) is after `until` ({u})"
            )));
        }
    }
    Ok(q)
}

fn epoch_ms(name: &str, value: &str) -> Result<i64, ApiError> {
    value.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "parameter `{name}` must be an integer epoch in milliseconds, got `{value}`"
        ))
    })
}

#[cfg(test)]
mod tests;
