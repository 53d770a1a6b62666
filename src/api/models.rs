//! Model registry and training routes:
//!
//! - `GET /api/v1/models?scope=`: every version (of one scope), oldest first, with its `active` flag;
//!   anomaly models (`isolation_forest`, `autoencoder`) and RUL models (`rul`) alike
//! - `GET /api/v1/models/{scope}`: the active version of a scope (a URL-encoded `<scope>%2Fv<N>` names a
//!   version)
//! - `GET /api/v1/models/{scope}/{version}`: one version (`v3` or `3`), i.e. the model id `<scope>/v<N>`
//! - `GET /api/v1/models/{scope}/{version}/metrics`: its validation metrics
//! - `POST /api/v1/models/{scope}/{version}/activate`, `POST /api/v1/models/{scope}/rollback`
//! - `POST /api/v1/train/{thing_id}`: queues a training job (202 with its id; 409 when the scope holds RUL
//!   models); body (optional):
//!   `{"model","params","train_fraction","activate","compare_metric","scope_kind"}`
//! - `GET /api/v1/train/jobs/{job_id}`: the job's state and, once done, its report or error

use super::{ApiError, ApiState};
use crate::registry::{
    check_family, ModelFamily, ModelRef, Registry, RegistryError, ScopeKind, VersionInfo,
};
use crate::training::jobs::SubmitError;
use crate::training::{ActivatePolicy, ModelKind, ModelParams, TrainSpec};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;

fn registry_error(e: RegistryError) -> ApiError {
    let status = match &e {
        RegistryError::UnknownVersion { .. }
        | RegistryError::UnknownScope(_)
        | RegistryError::NoActiveVersion(_) => StatusCode::NOT_FOUND,
        RegistryError::InvalidScope(_) | RegistryError::InvalidId(_) => StatusCode::BAD_REQUEST,
        RegistryError::NothingToRollBack { .. }
        | RegistryError::MixedScope { .. }
        | RegistryError::WrongModelType { .. } => StatusCode::CONFLICT,
        RegistryError::Unreachable { .. } | RegistryError::Mlflow { .. } => {
            tracing::warn!(error = %e, "model registry (MLflow) request failed");
            if matches!(e, RegistryError::Unreachable { .. }) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            }
        }
        _ => {
            tracing::error!(error = %e, "registry request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    ApiError::new(status, e.to_string())
}

/// Runs `f` on the registry on the blocking pool (registry calls are file or HTTP I/O).
async fn with_registry<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&dyn Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let reg: Arc<dyn Registry> = state.registry.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model registry is configured",
        )
    })?;
    match tokio::task::spawn_blocking(move || f(reg.as_ref())).await {
        Ok(r) => r.map_err(registry_error),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("registry request aborted: {e}"),
        )),
    }
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))
}

fn model_ref(scope: &str, version: &str) -> Result<ModelRef, ApiError> {
    ModelRef::parse(&format!("{scope}/{version}")).map_err(registry_error)
}

pub(super) async fn list(
    State(state): State<ApiState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let mut scope = None;
    for (k, v) in params {
        match k.as_str() {
            "scope" if scope.is_none() && !v.is_empty() => scope = Some(v),
            "scope" => {
                return Err(ApiError::bad_request(
                    "parameter `scope` must be given once and not be empty",
                ))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; expected scope"
                )))
            }
        }
    }
    let models = with_registry(&state, move |r| r.list(scope.as_deref())).await?;
    Ok(Json(serde_json::json!({ "models": models })))
}

pub(super) async fn active(
    State(state): State<ApiState>,
    scope: Result<Path<String>, PathRejection>,
) -> Result<Json<VersionInfo>, ApiError> {
    let r = ModelRef::parse(&path(scope)?).map_err(registry_error)?;
    with_registry(&state, move |reg| r.find(reg))
        .await
        .map(Json)
}

pub(super) async fn show(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<VersionInfo>, ApiError> {
    let (scope, version) = path(p)?;
    let r = model_ref(&scope, &version)?;
    with_registry(&state, move |reg| r.find(reg))
        .await
        .map(Json)
}

pub(super) async fn metrics(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (scope, version) = path(p)?;
    let r = model_ref(&scope, &version)?;
    let info = with_registry(&state, move |reg| r.find(reg)).await?;
    Ok(Json(serde_json::json!({
        "id": info.meta.id,
        "model_type": info.meta.model_type,
        "trained_at": info.meta.trained_at,
        "samples": info.meta.samples,
        "metrics": info.meta.metrics,
    })))
}

pub(super) async fn activate(
    State(state): State<ApiState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<VersionInfo>, ApiError> {
    let (scope, version) = path(p)?;
    let r = model_ref(&scope, &version)?;
    let info = with_registry(&state, move |reg| {
        let version = r.version.expect("a version was parsed");
        reg.activate(&r.scope, version)?;
        r.find(reg)
    })
    .await?;
    tracing::info!(id = %info.meta.id, "model activated through the API");
    Ok(Json(info))
}

pub(super) async fn rollback(
    State(state): State<ApiState>,
    scope: Result<Path<String>, PathRejection>,
) -> Result<Json<VersionInfo>, ApiError> {
    let scope = path(scope)?;
    let info = with_registry(&state, move |reg| {
        let version = reg.rollback(&scope)?;
        ModelRef {
            scope,
            version: Some(version),
        }
        .find(reg)
    })
    .await?;
    tracing::info!(id = %info.meta.id, "model rolled back through the API");
    Ok(Json(info))
}

/// Body of `POST /api/v1/train/{thing_id}`; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TrainRequest {
    model: ModelKind,
    params: serde_json::Value,
    train_fraction: f64,
    activate: ActivatePolicy,
    compare_metric: String,
    /// `thing` (default) or `equipment_class` (then the path names the class).
    scope_kind: ScopeKind,
}

impl Default for TrainRequest {
    fn default() -> Self {
        TrainRequest {
            model: ModelKind::IsolationForest,
            params: serde_json::Value::Null,
            train_fraction: 0.8,
            activate: ActivatePolicy::Never,
            compare_metric: "f1".into(),
            scope_kind: ScopeKind::Thing,
        }
    }
}

pub(super) async fn train(
    State(state): State<ApiState>,
    thing: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let thing = path(thing)?;
    let body = super::handlers::body(body)?;
    let req: TrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TrainRequest::default()
    } else {
        super::handlers::parse_json(&body)?
    };
    let jobs = state.training.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "training is not configured (no registry or history)",
        )
    })?;
    if !(req.train_fraction > 0.0 && req.train_fraction < 1.0) {
        return Err(ApiError::bad_request(format!(
            "field `train_fraction` must be in (0, 1), got {}",
            req.train_fraction
        )));
    }
    let params = ModelParams::from_json(req.model, &req.params)
        .map_err(|e| ApiError::bad_request(format!("field `params`: {e}")))?;
    if state.registry.is_some() {
        // A scope of RUL models takes no anomaly model: 409 now rather than a failed job later.
        let scope = thing.clone();
        with_registry(&state, move |r| {
            check_family(r, &scope, ModelFamily::Anomaly)
        })
        .await?;
    }
    let mut spec = TrainSpec::new(thing, req.scope_kind);
    spec.params = params;
    spec.train_fraction = req.train_fraction;
    spec.activate = req.activate;
    spec.compare_metric = req.compare_metric;
    let status = jobs.submit(spec).map_err(|e| match e {
        SubmitError::QueueFull(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        SubmitError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })?;
    let mut body = serde_json::to_value(&status).unwrap_or_default();
    body["status_url"] = format!("/api/v1/train/jobs/{}", status.job_id).into();
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub(super) async fn job(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::training::jobs::JobStatus>, ApiError> {
    let id = path(id)?;
    let jobs = state.training.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "training is not configured",
        )
    })?;
    jobs.status(&id)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no training job `{id}`")))
}
