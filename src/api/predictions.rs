//! `GET /api/v1/predictions` (the fleet: each thing's newest remaining-useful-life prediction by
//! default) and `GET /api/v1/predictions/{thing_id}` (one thing's prediction history, newest first).

use super::{
    epoch_ms, page_links, parse_limit, parse_offset, with_store, ApiError, ApiState, Linked,
    RawParams,
};
use crate::sinks::sqlite::{PredictionPage, PredictionQuery};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::Json;

pub(super) async fn predictions(
    State(state): State<ApiState>,
    uri: Uri,
    params: RawParams,
) -> Result<Json<Linked<PredictionPage>>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_prediction_query(&params, None)?;
    run(state, q, &uri, &params).await
}

pub(super) async fn thing_predictions(
    State(state): State<ApiState>,
    uri: Uri,
    thing_id: Result<Path<String>, PathRejection>,
    params: RawParams,
) -> Result<Json<Linked<PredictionPage>>, ApiError> {
    let Path(thing_id) =
        thing_id.map_err(|e| ApiError::bad_request(format!("invalid thing_id in path: {e}")))?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = parse_prediction_query(&params, Some(thing_id))?;
    run(state, q, &uri, &params).await
}

async fn run(
    state: ApiState,
    q: PredictionQuery,
    uri: &Uri,
    params: &[(String, String)],
) -> Result<Json<Linked<PredictionPage>>, ApiError> {
    let page = with_store(&state, move |s| s.predictions(&q)).await?;
    let links = page_links(uri.path(), params, page.total, page.limit, page.offset);
    Ok(Json(Linked { page, links }))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "parameter `{name}` must be true or false, got `{value}`"
        ))),
    }
}

/// Parses the prediction filters. On the fleet route `latest` defaults to true (each thing's current
/// prediction); on the per-thing route (`path_thing`) to false (its history). Unknown and repeated
/// parameters are rejected, as on the anomaly routes.
pub fn parse_prediction_query(
    params: &[(String, String)],
    path_thing: Option<String>,
) -> Result<PredictionQuery, ApiError> {
    let path_route = path_thing.is_some();
    let mut q = PredictionQuery {
        latest: !path_route,
        thing_id: path_thing,
        ..PredictionQuery::default()
    };
    let mut seen: Vec<&str> = Vec::new();
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
                    return Err(ApiError::bad_request(
                        "parameter `thing_id` must not be empty",
                    ));
                }
                q.thing_id = Some(value.clone());
            }
            "since" => q.since_ms = Some(epoch_ms("since", value)?),
            "until" => q.until_ms = Some(epoch_ms("until", value)?),
            "latest" => q.latest = parse_bool("latest", value)?,
            "maintenance_due" => q.maintenance_due = Some(parse_bool("maintenance_due", value)?),
            "limit" => q.limit = parse_limit(value)?,
            "offset" => q.offset = parse_offset(value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; expected thing_id, since, until, latest, maintenance_due, limit or offset"
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
