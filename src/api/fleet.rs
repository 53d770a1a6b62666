//! `GET /api/v1/devices` (device summaries, paged), `GET /api/v1/devices/{thing_id}` and
//! `GET /api/v1/fleet` (totals and the health ranking), read from the differential-dataflow summaries
//! ([`crate::fleet`]).

use super::{page_links, parse_limit, parse_offset, ApiError, ApiState, PageLinks, RawParams};
use crate::fleet::{DeviceSummary, Fleet, FleetSummary};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use serde::Serialize;

/// Default page size of the device list and of the fleet ranking.
const DEFAULT_LIMIT: u32 = 100;

/// One page of device summaries (`GET /api/v1/devices`).
#[derive(Serialize)]
pub struct DevicePage {
    pub epoch: u64,
    pub total: usize,
    pub limit: u32,
    pub offset: u64,
    pub items: Vec<DeviceSummary>,
    #[serde(flatten)]
    pub links: PageLinks,
}

/// `GET /api/v1/fleet`: the totals with one page of the ranking; `total` counts ranked devices.
#[derive(Serialize)]
pub struct FleetPage {
    #[serde(flatten)]
    pub summary: FleetSummary,
    pub total: usize,
    pub limit: u32,
    pub offset: u64,
    #[serde(flatten)]
    pub links: PageLinks,
}

fn fleet(state: &ApiState) -> Result<&Fleet, ApiError> {
    state.fleet.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet summaries are not enabled",
        )
    })
}

/// Page size, offset and the query's parameters (for the page links).
type PageParams = (u32, u64, Vec<(String, String)>);

/// `limit` and `offset` only (each at most once); also returns the parameters for the page links.
fn parse_page(params: RawParams, what: &str) -> Result<PageParams, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let (mut limit, mut offset) = (DEFAULT_LIMIT, 0);
    for (i, (k, v)) in params.iter().enumerate() {
        if params[..i].iter().any(|(seen, _)| seen == k) {
            return Err(ApiError::bad_request(format!(
                "parameter `{k}` is given more than once"
            )));
        }
        match k.as_str() {
            "limit" => limit = parse_limit(v)?,
            "offset" => offset = parse_offset(v)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; expected limit or offset ({what})"
                )))
            }
        }
    }
    Ok((limit, offset, params))
}

fn page<T>(items: Vec<T>, limit: u32, offset: u64) -> Vec<T> {
    items
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .collect()
}

pub(super) async fn devices(
    State(state): State<ApiState>,
    uri: Uri,
    params: RawParams,
) -> Result<Json<DevicePage>, ApiError> {
    let (limit, offset, params) = parse_page(params, "devices")?;
    let snap = fleet(&state)?.snapshot();
    let all = snap.devices();
    let total = all.len();
    Ok(Json(DevicePage {
        epoch: snap.epoch(),
        total,
        limit,
        offset,
        items: page(all, limit, offset),
        links: page_links(uri.path(), &params, total as u64, limit, offset),
    }))
}

pub(super) async fn device(
    State(state): State<ApiState>,
    thing_id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceSummary>, ApiError> {
    let Path(thing_id) =
        thing_id.map_err(|e| ApiError::bad_request(format!("invalid thing_id in path: {e}")))?;
    fleet(&state)?
        .snapshot()
        .device(&thing_id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no summary for thing `{thing_id}`"),
            )
        })
}

/// `GET /api/v1/fleet?limit=&offset=`: totals, and one page of the ranking (worst first).
pub(super) async fn fleet_summary(
    State(state): State<ApiState>,
    uri: Uri,
    params: RawParams,
) -> Result<Json<FleetPage>, ApiError> {
    let (limit, offset, params) = parse_page(params, "fleet ranking")?;
    let mut summary = fleet(&state)?.snapshot().fleet();
    let total = summary.ranking.len();
    summary.ranking = page(summary.ranking, limit, offset);
    Ok(Json(FleetPage {
        summary,
        total,
        limit,
        offset,
        links: page_links(uri.path(), &params, total as u64, limit, offset),
    }))
}
