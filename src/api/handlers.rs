//! Mutating and configuration routes: feedback, rules, and the bearer-token check in front of them.

use super::{
    page_links, parse_limit, parse_offset, with_store, ApiError, ApiState, PageLinks, RawParams,
};
use crate::config::ConfigError;
use crate::rules::RuleSet;
use crate::sinks::sqlite::{
    Feedback, FeedbackCounts, FeedbackOutcome, FeedbackPage, FeedbackQuery, Verdict,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Longest accepted feedback note, in characters.
pub const MAX_NOTE_CHARS: usize = 4096;

/// Compares in time independent of where the inputs differ, so the token cannot be guessed byte by byte
/// from response times. (The length is not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Middleware: when a token is configured, mutating requests need `Authorization: Bearer <token>`.
pub(super) async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let message = match given {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => {
            return next.run(request).await
        }
        Some(_) => "invalid bearer token",
        None => "this request needs an `Authorization: Bearer <token>` header",
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The body, or a JSON error (413 when over the limit).
pub(super) fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::new(status, format!("cannot read the request body: {e}"))
        }
    })
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn is_json(ct: &str) -> bool {
    ct == "application/json" || ct.ends_with("+json")
}

/// Parses a JSON body; errors name the field (`verdict: unknown variant ...`).
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })
}

/// Body of `POST /api/v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    thing_id: String,
    alert_id: String,
    verdict: Verdict,
    #[serde(default)]
    note: Option<String>,
}

/// Answer of `POST /api/v1/feedback`.
#[derive(Debug, Serialize)]
struct FeedbackResponse {
    outcome: FeedbackOutcome,
    feedback: Feedback,
    /// Per-verdict counts over all things after this feedback.
    counts: FeedbackCounts,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(super) async fn feedback_post(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(raw)?;
    if let Some(ct) = content_type(&headers).filter(|ct| !is_json(ct)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("feedback must be JSON (Content-Type: application/json), got `{ct}`"),
        ));
    }
    let req: FeedbackRequest = parse_json(&bytes)?;
    for (name, value) in [("thing_id", &req.thing_id), ("alert_id", &req.alert_id)] {
        if value.trim().is_empty() {
            return Err(ApiError::bad_request(format!(
                "field `{name}` must not be empty"
            )));
        }
    }
    if let Some(n) = &req.note {
        if n.chars().count() > MAX_NOTE_CHARS {
            return Err(ApiError::bad_request(format!(
                "field `note` is longer than {MAX_NOTE_CHARS} characters"
            )));
        }
    }
    let fb = Feedback {
        alert_id: req.alert_id,
        thing_id: req.thing_id,
        verdict: req.verdict,
        note: req.note,
        ts: now_ms(),
    };
    let stored = fb.clone();
    let (outcome, counts) = with_store(&state, move |s| {
        let outcome = s.record_feedback(&stored)?;
        Ok((outcome, s.feedback_counts(None)?))
    })
    .await?;
    crate::metrics::global()
        .feedback
        .with_label_values(&[fb.verdict.as_str()])
        .inc();
    tracing::info!(alert_id = %fb.alert_id, thing_id = %fb.thing_id, verdict = fb.verdict.as_str(), "feedback");
    let status = match outcome {
        FeedbackOutcome::Created => StatusCode::CREATED,
        FeedbackOutcome::Replaced => StatusCode::OK,
    };
    Ok((
        status,
        Json(FeedbackResponse {
            outcome,
            feedback: fb,
            counts,
        }),
    )
        .into_response())
}

/// Answer of `GET /api/v1/feedback`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedbackList {
    #[serde(flatten)]
    pub page: FeedbackPage,
    /// Per-verdict counts under the `thing_id` filter (not the verdict filter), and their precision.
    pub counts: FeedbackCounts,
    pub precision: Option<f64>,
    #[serde(flatten)]
    pub links: PageLinks,
}

pub(super) async fn feedback_list(
    State(state): State<ApiState>,
    uri: Uri,
    params: RawParams,
) -> Result<Json<FeedbackList>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_feedback_query(&params)?;
    let mut list = with_store(&state, move |s| {
        let page = s.feedback(&q)?;
        let counts = s.feedback_counts(q.thing_id.as_deref())?;
        Ok(FeedbackList {
            page,
            precision: counts.precision(),
            counts,
            links: PageLinks::default(),
        })
    })
    .await?;
    let p = &list.page;
    list.links = page_links(uri.path(), &params, p.total, p.limit, p.offset);
    Ok(Json(list))
}

fn parse_feedback_query(params: &[(String, String)]) -> Result<FeedbackQuery, ApiError> {
    let mut q = FeedbackQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in params {
        if seen.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "parameter `{key}` is given more than once"
            )));
        }
        seen.push(key);
        match key.as_str() {
            "thing_id" if value.is_empty() => {
                return Err(ApiError::bad_request(
                    "parameter `thing_id` must not be empty",
                ))
            }
            "thing_id" => q.thing_id = Some(value.clone()),
            "verdict" => {
                q.verdict = Some(
                    value
                        .parse()
                        .map_err(|e| ApiError::bad_request(format!("parameter `verdict`: {e}")))?,
                )
            }
            "limit" => q.limit = parse_limit(value)?,
            "offset" => q.offset = parse_offset(value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; expected thing_id, verdict, limit or offset"
                )))
            }
        }
    }
    Ok(q)
}

/// JSON answer of `GET /api/v1/rules` and `PUT /api/v1/rules`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RulesInfo {
    /// Where the current rules came from (file path, `<api>`, or the embedded default).
    pub source: String,
    /// Increases with every installed rule set.
    pub generation: u64,
    /// Rule names in file order.
    pub rules: Vec<String>,
    /// The YAML text of the current rules.
    pub yaml: String,
    /// The last failed reload of the rules file, until one succeeds.
    pub last_error: Option<String>,
}

fn rules_handle(state: &ApiState) -> Result<&crate::rules::RulesHandle, ApiError> {
    state.rules.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no rules are configured in this process",
        )
    })
}

fn rules_info(handle: &crate::rules::RulesHandle) -> RulesInfo {
    let current = handle.current().0;
    RulesInfo {
        source: current.source.clone(),
        generation: current.generation,
        rules: current.rules.iter().map(|r| r.name.clone()).collect(),
        yaml: current.text.clone(),
        last_error: handle.last_error(),
    }
}

fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"))
}

pub(super) async fn rules_get(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let handle = rules_handle(&state)?;
    if wants_yaml(&headers) {
        let text = handle.current().0.text.clone();
        return Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response());
    }
    Ok(Json(rules_info(handle)).into_response())
}

/// Body of `PUT /api/v1/rules` sent as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesRequest {
    yaml: String,
}

/// Source name of rules installed through the API, as it appears in error messages.
pub const API_SOURCE: &str = "<api>";

pub(super) async fn rules_put(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let handle = rules_handle(&state)?.clone();
    let bytes = body(raw)?;
    let text = if content_type(&headers).is_some_and(|ct| is_json(&ct)) {
        parse_json::<RulesRequest>(&bytes)?.yaml
    } else {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| ApiError::bad_request(format!("rules text is not UTF-8: {e}")))?
    };
    let rules = match RuleSet::parse(&text, API_SOURCE) {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::global().rules_reload(false);
            return Ok(rules_error(&e).into_response());
        }
    };
    let n = rules.len();
    let generation = handle.replace(rules);
    crate::metrics::global().rules_reload(true);
    tracing::info!(rules = n, generation, "rules replaced through the API");
    Ok(Json(rules_info(&handle)).into_response())
}

/// 400 naming line, column and field of an invalid rules text; nothing was changed.
fn rules_error(e: &ConfigError) -> (StatusCode, Json<serde_json::Value>) {
    let mut body = serde_json::json!({ "error": e.to_string() });
    if let ConfigError::Invalid {
        line,
        column,
        message,
        ..
    } = e
    {
        body["line"] = (*line).into();
        body["column"] = (*column).into();
        // Messages are `field.path: what is wrong`; a message without a path (YAML syntax) has no field.
        if let Some((field, _)) = message.split_once(": ") {
            if !field.contains(' ') {
                body["field"] = field.into();
            }
        }
    }
    (StatusCode::BAD_REQUEST, Json(body))
}

#[cfg(test)]
mod unit {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
