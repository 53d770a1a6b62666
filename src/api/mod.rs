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
//! - `POST /api/v1/feedback` `{"thing_id","alert_id","verdict":"true_positive"|"false_positive","note"?}`,
//!   `GET /api/v1/feedback?thing_id=&verdict=&limit=&offset=` (page plus per-verdict counts)
//! - `GET /api/v1/rules` (JSON, or the YAML text with `Accept: application/yaml`), `PUT /api/v1/rules`
//!   (YAML text, or JSON `{"yaml": "..."}`), validated like the rules file
//! - `GET /api/v1/predictions?thing_id=&since=&until=&latest=&maintenance_due=&limit=&offset=`: each
//!   thing's newest RUL prediction (`latest=false`: every stored one), newest first
//! - `GET /api/v1/predictions/{thing_id}`: one thing's predictions, newest first (same filters)
//! - `GET /api/v1/models[?scope=]`, `GET /api/v1/models/{scope}[/{version}[/metrics]]`,
//!   `POST /api/v1/models/{scope}/{version}/activate`, `POST /api/v1/models/{scope}/rollback`,
//!   `POST /api/v1/train/{thing_id}`, `GET /api/v1/train/jobs/{job_id}`: see [`models`]
//! - `GET /api/v1/devices?limit=&offset=`: device summaries (alert counts by type/severity, score mean
//!   and p95, dominant families), `GET /api/v1/devices/{thing_id}`, `GET /api/v1/fleet?limit=&offset=`:
//!   fleet totals and the health ranking, worst first (kept by [`crate::fleet`])
//! - `GET /api/v1/openapi.json`: the OpenAPI 3.0 document of all of the above
//!
//! Every error is JSON `{"error": "..."}`; a 400 names the offending parameter or field. When a token is
//! configured every mutating request (anything but GET/HEAD/OPTIONS) needs `Authorization: Bearer
//! <token>` (401 otherwise). Request bodies are limited to [`MAX_BODY_BYTES`] (413).

use crate::event::Severity;
use crate::rules::RulesHandle;
use crate::sinks::sqlite::{AlertPage, AlertQuery, AlertStore, StoreError, MAX_LIMIT};
use anyhow::Context;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
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
    /// The live rules served and replaced by `/api/v1/rules`; `None` makes those routes answer 503.
    pub rules: Option<RulesHandle>,
    /// Bearer token required on mutating requests; `None` leaves them open (loopback demo).
    pub token: Option<Arc<str>>,
    /// The model registry behind `/api/v1/models`; `None` makes those routes answer 503.
    pub registry: Option<Arc<dyn crate::registry::Registry>>,
    /// The training queue behind `/api/v1/train`; `None` makes those routes answer 503.
    pub training: Option<crate::training::jobs::TrainJobs>,
    /// Fleet and device summaries; `None` makes `/api/v1/devices` and `/api/v1/fleet` answer 503.
    pub fleet: Option<crate::fleet::Fleet>,
}

impl ApiState {
    /// State serving `store`, with uptime counted from now.
    pub fn new(store: SharedStore) -> ApiState {
        ApiState {
            store: Some(store),
            ..ApiState::without_store()
        }
    }

    /// State without an alert store (health and metrics only).
    pub fn without_store() -> ApiState {
        ApiState {
            store: None,
            started: Instant::now(),
            health_details: None,
            rules: None,
            token: None,
            registry: None,
            training: None,
            fleet: None,
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

    /// Serves (and lets `PUT /api/v1/rules` replace) these rules.
    pub fn with_rules(mut self, rules: RulesHandle) -> ApiState {
        self.rules = Some(rules);
        self
    }

    /// Serves `/api/v1/models` from this registry.
    pub fn with_registry(mut self, registry: Arc<dyn crate::registry::Registry>) -> ApiState {
        self.registry = Some(registry);
        self
    }

    /// Accepts `POST /api/v1/train/{thing_id}` jobs on this queue.
    pub fn with_training(mut self, jobs: crate::training::jobs::TrainJobs) -> ApiState {
        self.training = Some(jobs);
        self
    }

    /// Serves these fleet and device summaries.
    pub fn with_fleet(mut self, fleet: crate::fleet::Fleet) -> ApiState {
        self.fleet = Some(fleet);
        self
    }

    /// Requires `Authorization: Bearer <token>` on mutating requests. An empty token is treated as none.
    pub fn with_token(mut self, token: Option<&str>) -> ApiState {
        self.token = token.filter(|t| !t.is_empty()).map(Arc::from);
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

/// Largest accepted request body (a rules file is the largest legitimate one).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The served routes: path, methods (upper case) and handler. The OpenAPI document must list exactly
/// these (checked by a test).
fn routes() -> Vec<(
    &'static str,
    &'static [&'static str],
    MethodRouter<ApiState>,
)> {
    vec![
        ("/health", &["GET"], get(health)),
        ("/api/v1/health", &["GET"], get(health)),
        ("/metrics", &["GET"], get(metrics)),
        ("/api/v1/metrics", &["GET"], get(metrics)),
        ("/api/v1/openapi.json", &["GET"], get(openapi)),
        ("/api/v1/anomalies", &["GET"], get(anomalies)),
        (
            "/api/v1/anomalies/{thing_id}",
            &["GET"],
            get(thing_anomalies),
        ),
        (
            "/api/v1/feedback",
            &["GET", "POST"],
            get(handlers::feedback_list).post(handlers::feedback_post),
        ),
        (
            "/api/v1/rules",
            &["GET", "PUT"],
            get(handlers::rules_get).put(handlers::rules_put),
        ),
        (
            "/api/v1/predictions",
            &["GET"],
            get(predictions::predictions),
        ),
        (
            "/api/v1/predictions/{thing_id}",
            &["GET"],
            get(predictions::thing_predictions),
        ),
        ("/api/v1/models", &["GET"], get(models::list)),
        ("/api/v1/models/{scope}", &["GET"], get(models::active)),
        (
            "/api/v1/models/{scope}/rollback",
            &["POST"],
            post(models::rollback),
        ),
        (
            "/api/v1/models/{scope}/{version}",
            &["GET"],
            get(models::show),
        ),
        (
            "/api/v1/models/{scope}/{version}/metrics",
            &["GET"],
            get(models::metrics),
        ),
        (
            "/api/v1/models/{scope}/{version}/activate",
            &["POST"],
            post(models::activate),
        ),
        ("/api/v1/train/{thing_id}", &["POST"], post(models::train)),
        ("/api/v1/train/jobs/{job_id}", &["GET"], get(models::job)),
        ("/api/v1/devices", &["GET"], get(fleet::devices)),
        ("/api/v1/devices/{thing_id}", &["GET"], get(fleet::device)),
        ("/api/v1/fleet", &["GET"], get(fleet::fleet_summary)),
    ]
}

/// Paths and methods the router serves (for the OpenAPI consistency test and documentation).
pub fn served_routes() -> Vec<(&'static str, &'static [&'static str])> {
    routes().into_iter().map(|(p, m, _)| (p, m)).collect()
}

/// The OpenAPI 3.0 document served at `/api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The API routes over `state` (exposed for embedding into another server).
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new();
    for (path, _, handler) in routes() {
        r = r.route(path, handler);
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Layers run outside-in in reverse order: auth rejects before any body is read.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::require_token,
        ))
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// An error response: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500 for a store failure, logged (the client only sees the message).
    fn store(e: StoreError) -> ApiError {
        match e {
            StoreError::Unsupported { .. } => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string())
            }
            StoreError::UnknownAlert { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::ThingMismatch { .. } => {
                ApiError::bad_request(format!("field `thing_id`: {e}"))
            }
            e => {
                tracing::error!(error = %e, "store request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
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

/// Runs `f` on the store on tokio's blocking pool (store calls are blocking I/O).
async fn with_store<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&mut dyn AlertStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no alert store is configured",
        )
    })?;
    let result = tokio::task::spawn_blocking(move || {
        // A panic while holding the lock cannot leave the store half-written (transactions), so a
        // poisoned lock is still safe to use.
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut *store)
    })
    .await;
    match result {
        Ok(r) => r.map_err(ApiError::store),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("store request aborted: {e}"),
        )),
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
    uri: Uri,
    params: RawParams,
) -> Result<Json<Linked<AlertPage>>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_query(&params, None)?;
    run_query(state, q, &uri, &params).await
}

async fn thing_anomalies(
    State(state): State<ApiState>,
    uri: Uri,
    thing_id: Result<Path<String>, PathRejection>,
    params: RawParams,
) -> Result<Json<Linked<AlertPage>>, ApiError> {
    let Path(thing_id) =
        thing_id.map_err(|e| ApiError::bad_request(format!("invalid thing_id in path: {e}")))?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_query(&params, Some(thing_id))?;
    run_query(state, q, &uri, &params).await
}

async fn run_query(
    state: ApiState,
    q: AlertQuery,
    uri: &Uri,
    params: &[(String, String)],
) -> Result<Json<Linked<AlertPage>>, ApiError> {
    let page = with_store(&state, move |s| s.query(&q)).await?;
    let links = page_links(uri.path(), params, page.total, page.limit, page.offset);
    Ok(Json(Linked { page, links }))
}

/// Links to the neighbouring pages of a list response: the same path and filters with the offset of
/// the next (previous) page, `null` at the ends. They are relative references (path and query).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageLinks {
    /// The page after this one; `null` when this page reaches `total`.
    pub next: Option<String>,
    /// The page before this one (offset `max(0, offset - limit)`, or the last page when `offset` is
    /// past the end); `null` at offset 0.
    pub prev: Option<String>,
}

/// A page (`items`, `total`, `limit`, `offset`, ...) with its [`PageLinks`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Linked<T> {
    #[serde(flatten)]
    pub page: T,
    #[serde(flatten)]
    pub links: PageLinks,
}

/// The [`PageLinks`] of the page at `offset` (`limit` items) of `total`, requested as `path` with
/// `params` (decoded; `limit` and `offset` are replaced, the other parameters kept in order).
pub fn page_links(
    path: &str,
    params: &[(String, String)],
    total: u64,
    limit: u32,
    offset: u64,
) -> PageLinks {
    let limit = u64::from(limit.max(1));
    let link = |to: u64| {
        let mut url = String::from(path);
        let mut sep = '?';
        for (k, v) in params.iter().filter(|(k, _)| k != "limit" && k != "offset") {
            url.push(sep);
            url.push_str(&percent_encode(k));
            url.push('=');
            url.push_str(&percent_encode(v));
            sep = '&';
        }
        url.push_str(&format!("{sep}limit={limit}&offset={to}"));
        url
    };
    let next = offset.checked_add(limit).filter(|n| *n < total).map(&link);
    let last_start = total.saturating_sub(1) / limit * limit;
    let prev = (offset > 0).then(|| link(offset.saturating_sub(limit).min(last_start)));
    PageLinks { next, prev }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
                q.limit = parse_limit(value)?
            }
            "offset" => {
                q.offset = parse_offset(value)?
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

mod fleet;
mod handlers;
mod models;
mod predictions;
pub use predictions::parse_prediction_query;
#[cfg(test)]
mod tests;

/// The `limit` query parameter: 1 to [`MAX_LIMIT`].
pub(crate) fn parse_limit(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "parameter `limit` must be an integer from 1 to {MAX_LIMIT}, got `{value}`"
        ))),
    }
}

/// The `offset` query parameter: a non-negative integer.
pub(crate) fn parse_offset(value: &str) -> Result<u64, ApiError> {
    value.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "parameter `offset` must be a non-negative integer, got `{value}`"
        ))
    })
}
