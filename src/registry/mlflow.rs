//! The [`Registry`] in an MLflow tracking server, over MLflow's REST API 2.0 (plain HTTP, `ureq`).
//!
//! | EgizML | MLflow |
//! |---|---|
//! | scope `pump-1` | registered model `<model_prefix>pump-1` (default prefix `egizml.`) |
//! | version N | model version N (MLflow numbers it), created from a run |
//! | its model file | the run's artifact `model.json` (the envelope the local registry writes), uploaded through the server's artifact proxy (`PUT /api/2.0/mlflow-artifacts/artifacts/...`) |
//! | its metadata | model-version tag `egizml.meta` (the [`ModelMeta`] JSON without id and version), read back exactly; mirrored on the run for people browsing MLflow: params = hyper-parameters, metrics = validation metrics, tags `egizml.*` |
//! | active version | registered-model alias `active` |
//! | activation history (rollback) | registered-model tag `egizml.previous_active`, a JSON array, oldest first, the last 100 |
//!
//! Why the metadata is read from a model-version tag rather than from the run: MLflow silently cuts
//! param values past 6,000 and run tag values past 8,000 characters (a long feature list would come back
//! shortened), a model-version tag holds 100,000, and `model-versions/search` returns every version's
//! tags in one call, so `list` costs two requests whatever the number of versions.
//!
//! A version becomes visible only when its model version exists, after its artifact is uploaded: a
//! registration that fails half-way leaves at most a run marked FAILED (or RUNNING when the process
//! died), never a version without its model. Activation writes the history tag, then the alias; MLflow
//! has no transactions, so two processes activating the same scope at once can interleave (the last
//! alias written wins).

use super::config::MlflowConfig;
use super::local::check_scope;
use super::*;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

/// Model-version tag holding the version's metadata.
pub const META_TAG: &str = "egizml.meta";
/// Registered-model tag holding the versions active before the current one (JSON array, oldest first).
pub const HISTORY_TAG: &str = "egizml.previous_active";
/// Registered-model alias of the active version.
pub const ACTIVE_ALIAS: &str = "active";
/// The model file's name among the run's artifacts.
pub const ARTIFACT: &str = "model.json";
/// Activations kept for rollback.
const HISTORY_KEEP: usize = 100;
/// MLflow's limit on a model-registry tag value (mlflow/utils/validation.py).
const MAX_REGISTRY_TAG_VALUE: usize = 100_000;
/// MLflow's limits on one `runs/log-batch` call.
const MAX_PARAMS_PER_BATCH: usize = 100;
const MAX_METRICS_PER_BATCH: usize = 1000;
/// Page size of the search calls (MLflow's maximum for registered models).
const PAGE: &str = "1000";

/// Models in an MLflow tracking server. Cheap to create: nothing is requested until the first call.
pub struct MlflowRegistry {
    config: MlflowConfig,
    agent: ureq::Agent,
    /// The experiment's id, looked up (or created) on the first registration.
    experiment_id: Mutex<Option<String>>,
}

impl std::fmt::Debug for MlflowRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowRegistry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum Method {
    Get,
    Post,
}

/// A registered model as `registered-models/get|search` return it.
struct RegisteredModel {
    name: String,
    active: Option<u32>,
    history: Result<Vec<u32>, String>,
}

impl MlflowRegistry {
    pub fn new(config: MlflowConfig) -> MlflowRegistry {
        let timeout = Duration::from_secs_f64(config.timeout_s);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .build()
            .into();
        MlflowRegistry {
            config,
            agent,
            experiment_id: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &MlflowConfig {
        &self.config
    }

    /// The registered model of `scope`.
    pub fn model_name(&self, scope: &str) -> String {
        format!("{}{scope}", self.config.model_prefix)
    }

    /// The scope of a registered model, if the name is one of ours.
    fn scope_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(&self.config.model_prefix)
            .filter(|s| check_scope(s).is_ok())
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            url: self.config.tracking_uri.clone(),
            reason: e.to_string(),
        }
    }

    /// One REST call: `endpoint` under `/api/2.0/mlflow/`; the answer's JSON, or MLflow's error.
    fn call(
        &self,
        method: Method,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, RegistryError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.config.tracking_uri);
        let (verb, result) = match method {
            Method::Get => {
                let mut req = self.agent.get(&url);
                for (k, v) in query {
                    req = req.query(*k, *v);
                }
                ("GET", req.call())
            }
            Method::Post => (
                "POST",
                self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
            ),
        };
        let call = format!("{verb} {endpoint}");
        let mut resp = result.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.unreachable(e))?;
        answer(&call, status, &text)
    }

    fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value, RegistryError> {
        self.call(Method::Get, endpoint, query, None)
    }

    fn post(&self, endpoint: &str, body: Value) -> Result<Value, RegistryError> {
        self.call(Method::Post, endpoint, &[], Some(body))
    }

    /// `/api/2.0/mlflow-artifacts/artifacts/<path>` for an artifact under `artifact_uri` (a run's).
    fn artifact_url(&self, artifact_uri: &str, file: &str) -> Result<String, RegistryError> {
        let path = proxied_path(artifact_uri).ok_or_else(|| RegistryError::Mlflow {
            call: "artifacts".into(),
            status: 200,
            error_code: "NOT_PROXIED".into(),
            message: format!(
                "the server stores artifacts at `{artifact_uri}`, which this client cannot reach: \
                 start it with --serve-artifacts (the default since MLflow 2.0) and a \
                 mlflow-artifacts:/ default artifact root"
            ),
        })?;
        let sep = if path.is_empty() { "" } else { "/" };
        Ok(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{path}{sep}{file}",
            self.config.tracking_uri
        ))
    }

    fn put_artifact(
        &self,
        artifact_uri: &str,
        file: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let url = self.artifact_url(artifact_uri, file)?;
        let mut resp = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        answer("PUT mlflow-artifacts/artifacts", status, &text).map(|_| ())
    }

    /// The artifact's bytes; `None` when the server has no such file.
    fn get_artifact(
        &self,
        artifact_uri: &str,
        file: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let url = self.artifact_url(artifact_uri, file)?;
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        if !(200..300).contains(&status) {
            answer(
                "GET mlflow-artifacts/artifacts",
                status,
                &String::from_utf8_lossy(&bytes),
            )?;
        }
        Ok(Some(bytes))
    }

    /// The experiment's id, created when missing.
    fn experiment_id(&self) -> Result<String, RegistryError> {
        let mut slot = self.experiment_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = slot.as_ref() {
            return Ok(id.clone());
        }
        let name = self.config.experiment.as_str();
        let by_name = || {
            self.get("experiments/get-by-name", &[("experiment_name", name)])
                .and_then(|v| string_at(&v, "/experiment/experiment_id", "experiments/get-by-name"))
        };
        let id = match by_name() {
            Err(e) if is_code(&e, "RESOURCE_DOES_NOT_EXIST") => {
                match self.post("experiments/create", json!({ "name": name })) {
                    Ok(v) => string_at(&v, "/experiment_id", "experiments/create")?,
                    // Created by another process in between.
                    Err(e) if is_code(&e, "RESOURCE_ALREADY_EXISTS") => by_name()?,
                    Err(e) => return Err(e),
                }
            }
            other => other?,
        };
        *slot = Some(id.clone());
        Ok(id)
    }

    /// The registered model `name`, `None` when MLflow has none.
    fn registered_model(&self, name: &str) -> Result<Option<RegisteredModel>, RegistryError> {
        match self.get("registered-models/get", &[("name", name)]) {
            Ok(v) => Ok(Some(registered_model(&v["registered_model"]))),
            Err(e) if is_code(&e, "RESOURCE_DOES_NOT_EXIST") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every registered model whose name starts with the prefix, by name.
    fn registered_models(&self) -> Result<Vec<RegisteredModel>, RegistryError> {
        // LIKE's `_` matches any character: the prefix is checked again below.
        let filter = format!("name LIKE '{}%'", self.config.model_prefix);
        let mut out = Vec::new();
        for page in self.pages("registered-models/search", &filter, "registered_models")? {
            out.push(registered_model(&page));
        }
        out.retain(|m| self.scope_of(&m.name).is_some());
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every item of a paginated search.
    fn pages(
        &self,
        endpoint: &str,
        filter: &str,
        field: &str,
    ) -> Result<Vec<Value>, RegistryError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("filter", filter), ("max_results", PAGE)];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let mut v = self.get(endpoint, &query)?;
            if let Some(Value::Array(items)) = v.get_mut(field).map(Value::take) {
                out.extend(items);
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && t != token => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// The metadata of a model version as `model-versions/get|search` return it; `None` for a version
    /// EgizML did not register (no `egizml.meta` tag) or one not ready.
    fn version_meta(&self, scope: &str, mv: &Value) -> Result<Option<ModelMeta>, RegistryError> {
        let name = mv["name"].as_str().unwrap_or_default();
        let version = version_number(&mv["version"]).ok_or_else(|| RegistryError::Mlflow {
            call: "model-versions".into(),
            status: 200,
            error_code: "UNEXPECTED_RESPONSE".into(),
            message: format!("model version of {name} without a version number: {mv}"),
        })?;
        let status = mv["status"].as_str().unwrap_or("READY");
        let Some(tag) = tag(&mv["tags"], META_TAG).filter(|_| status == "READY") else {
            return Ok(None);
        };
        let corrupt = |reason: String| RegistryError::Corrupt {
            path: PathBuf::from(format!("mlflow:{name}/{version} tag {META_TAG}")),
            reason,
        };
        let mut value: Value = serde_json::from_str(tag).map_err(|e| corrupt(e.to_string()))?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| corrupt("not a JSON object".into()))?;
        obj.insert("id".into(), json!(format!("{scope}/v{version}")));
        obj.insert("scope".into(), json!(scope));
        obj.insert("version".into(), json!(version));
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Model version `version` of `scope`.
    fn model_version(&self, scope: &str, version: u32) -> Result<Value, RegistryError> {
        let name = self.model_name(scope);
        let v = version.to_string();
        match self.get("model-versions/get", &[("name", &name), ("version", &v)]) {
            Ok(mut v) => Ok(v["model_version"].take()),
            Err(e) if is_code(&e, "RESOURCE_DOES_NOT_EXIST") => {
                Err(RegistryError::UnknownVersion {
                    scope: scope.to_string(),
                    version,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn set_alias(&self, name: &str, version: u32) -> Result<(), RegistryError> {
        self.post(
            "registered-models/alias",
            json!({"name": name, "alias": ACTIVE_ALIAS, "version": version.to_string()}),
        )
        .map(|_| ())
    }

    fn set_history(&self, name: &str, history: &[u32]) -> Result<(), RegistryError> {
        let keep = &history[history.len().saturating_sub(HISTORY_KEEP)..];
        self.post(
            "registered-models/set-tag",
            json!({"name": name, "key": HISTORY_TAG, "value": serde_json::to_string(keep).expect("numbers serialise")}),
        )
        .map(|_| ())
    }

    /// The run's params, metrics and tags: the metadata for people browsing MLflow.
    fn log_run_data(&self, run_id: &str, meta: &ModelMeta, now: i64) -> Result<(), RegistryError> {
        let params: Vec<Value> = meta
            .hyper_parameters
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                json!({"key": k, "value": value})
            })
            .collect();
        // JSON has no NaN or infinity; such a metric stays in the metadata tag only.
        let metrics: Vec<Value> = meta
            .metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| json!({"key": k, "value": v, "timestamp": now, "step": 0}))
            .collect();
        for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
            self.post("runs/log-batch", json!({"run_id": run_id, "params": chunk}))?;
        }
        for chunk in metrics.chunks(MAX_METRICS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                json!({"run_id": run_id, "metrics": chunk}),
            )?;
        }
        Ok(())
    }
}

/// The JSON of a successful answer, or MLflow's error (`{"error_code": .., "message": ..}`).
fn answer(call: &str, status: u16, text: &str) -> Result<Value, RegistryError> {
    let parsed: Result<Value, _> =
        serde_json::from_str(if text.trim().is_empty() { "{}" } else { text });
    match parsed {
        Ok(v) if (200..300).contains(&status) => Ok(v),
        Ok(v) if v.get("error_code").is_some() => Err(RegistryError::Mlflow {
            call: call.to_string(),
            status,
            error_code: v["error_code"].as_str().unwrap_or_default().to_string(),
            message: short(v["message"].as_str().unwrap_or_default()),
        }),
        _ => Err(RegistryError::Mlflow {
            call: call.to_string(),
            status,
            error_code: "NOT_MLFLOW".into(),
            message: format!("not an MLflow REST answer: {}", short(text)),
        }),
    }
}

/// The first line of a message, at most 300 characters (MLflow's carry SQL and stack details).
fn short(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

fn is_code(e: &RegistryError, code: &str) -> bool {
    matches!(e, RegistryError::Mlflow { error_code, .. } if error_code == code)
}

fn string_at(v: &Value, pointer: &str, call: &str) -> Result<String, RegistryError> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| RegistryError::Mlflow {
            call: call.to_string(),
            status: 200,
            error_code: "UNEXPECTED_RESPONSE".into(),
            message: format!("no `{pointer}` in the answer"),
        })
}

/// MLflow sends version numbers as strings.
fn version_number(v: &Value) -> Option<u32> {
    match v {
        Value::String(s) => s.parse().ok(),
        other => other.as_u64().and_then(|n| u32::try_from(n).ok()),
    }
}

/// The value of tag `key` in MLflow's `[{"key": .., "value": ..}]`.
fn tag<'a>(tags: &'a Value, key: &str) -> Option<&'a str> {
    tags.as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
}

fn registered_model(v: &Value) -> RegisteredModel {
    let active = v["aliases"].as_array().and_then(|a| {
        a.iter()
            .find(|x| x["alias"] == ACTIVE_ALIAS)
            .and_then(|x| version_number(&x["version"]))
    });
    let history = match tag(&v["tags"], HISTORY_TAG) {
        None => Ok(Vec::new()),
        Some(t) => serde_json::from_str::<Vec<u32>>(t).map_err(|e| format!("`{t}`: {e}")),
    };
    RegisteredModel {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        active,
        history,
    }
}

/// The path under the artifact proxy of an `mlflow-artifacts:` URI (`mlflow-artifacts:/1/<run>/artifacts`
/// or `mlflow-artifacts://host:port/1/<run>/artifacts`).
fn proxied_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => authority_and_path.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    Some(path.trim_matches('/').to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The metadata tag: the [`ModelMeta`] JSON less what MLflow knows (id, scope, version).
fn meta_tag(meta: &ModelMeta) -> String {
    let mut v = serde_json::to_value(meta).expect("metadata serialises");
    if let Some(obj) = v.as_object_mut() {
        for k in ["id", "scope", "version"] {
            obj.remove(k);
        }
    }
    v.to_string()
}

/// The run's tags (`egizml.*`): what a person filters runs by in MLflow.
fn run_tags(meta: &ModelMeta) -> Vec<Value> {
    let mut tags = vec![
        ("egizml.scope", meta.scope.clone()),
        (
            "egizml.scope_kind",
            serde_json::to_value(meta.scope_kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
        ("egizml.model_type", meta.model_type.clone()),
        ("egizml.trained_at", meta.trained_at.clone()),
        ("egizml.samples", meta.samples.to_string()),
        (
            "egizml.features",
            serde_json::to_string(&meta.features).expect("strings serialise"),
        ),
    ];
    if let Some(e) = &meta.equipment_type {
        tags.push(("egizml.equipment_type", e.clone()));
    }
    if let Some(h) = &meta.sql_hash {
        tags.push(("egizml.sql_hash", h.clone()));
    }
    tags.into_iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

impl Registry for MlflowRegistry {
    fn register(&self, new: NewModel) -> Result<ModelMeta, RegistryError> {
        check_scope(&new.scope)?;
        check_family(self, &new.scope, new.model.family())?;
        let name = self.model_name(&new.scope);
        let mut meta = new_meta(&new, 0);
        let tag = meta_tag(&meta);
        if tag.len() > MAX_REGISTRY_TAG_VALUE {
            return Err(RegistryError::Mlflow {
                call: "model-versions/create".into(),
                status: 0,
                error_code: "TOO_LARGE".into(),
                message: format!(
                    "the metadata of {name} is {} characters, over MLflow's {MAX_REGISTRY_TAG_VALUE}-character tag limit",
                    tag.len()
                ),
            });
        }
        let experiment_id = self.experiment_id()?;
        let started = now_ms();
        let run = self.post(
            "runs/create",
            json!({
                "experiment_id": experiment_id,
                "run_name": format!("{}-{}", new.scope, meta.trained_at),
                "start_time": started,
                "tags": run_tags(&meta),
            }),
        )?;
        let run_id = string_at(&run, "/run/info/run_id", "runs/create")?;
        let artifact_uri = string_at(&run, "/run/info/artifact_uri", "runs/create")?;
        let finish = |status: &str| {
            self.post(
                "runs/update",
                json!({"run_id": run_id, "status": status, "end_time": now_ms()}),
            )
        };
        let logged = self
            .log_run_data(&run_id, &meta, started)
            .and_then(|_| self.put_artifact(&artifact_uri, ARTIFACT, &ModelFile::bytes(new.model)))
            .and_then(|_| finish("FINISHED"));
        if let Err(e) = logged {
            let _ = finish("FAILED");
            return Err(e);
        }
        match self.post(
            "registered-models/create",
            json!({
                "name": name,
                "description": format!("EgizML anomaly model of `{}`", new.scope),
                "tags": [{"key": "egizml.scope", "value": new.scope}],
            }),
        ) {
            Err(e) if !is_code(&e, "RESOURCE_ALREADY_EXISTS") => return Err(e),
            _ => {}
        }
        let created = self.post(
            "model-versions/create",
            json!({
                "name": name,
                "source": artifact_uri,
                "run_id": run_id,
                "tags": [{"key": META_TAG, "value": tag}],
            }),
        )?;
        let version = version_number(&created["model_version"]["version"]).ok_or_else(|| {
            RegistryError::Mlflow {
                call: "POST model-versions/create".into(),
                status: 200,
                error_code: "UNEXPECTED_RESPONSE".into(),
                message: format!("no version number in {created}"),
            }
        })?;
        meta.version = version;
        meta.id = format!("{}/v{version}", meta.scope);
        Ok(meta)
    }

    fn list(&self, scope: Option<&str>) -> Result<Vec<VersionInfo>, RegistryError> {
        let (models, filter) = match scope {
            Some(s) => {
                check_scope(s)?;
                let name = self.model_name(s);
                match self.registered_model(&name)? {
                    Some(m) => (vec![m], format!("name = '{name}'")),
                    None => return Ok(Vec::new()),
                }
            }
            None => {
                let models = self.registered_models()?;
                if models.is_empty() {
                    return Ok(Vec::new());
                }
                (models, format!("name LIKE '{}%'", self.config.model_prefix))
            }
        };
        let versions = self.pages("model-versions/search", &filter, "model_versions")?;
        let mut out = Vec::new();
        for m in &models {
            let Some(scope) = self.scope_of(&m.name) else {
                continue;
            };
            let mut of_model = Vec::new();
            for mv in versions.iter().filter(|v| v["name"] == m.name.as_str()) {
                match self.version_meta(scope, mv)? {
                    Some(meta) => of_model.push(VersionInfo {
                        active: m.active == Some(meta.version),
                        meta,
                    }),
                    None => {
                        tracing::debug!(model = %m.name, version = %mv["version"], "not an EgizML model version; skipped")
                    }
                }
            }
            of_model.sort_by_key(|v| v.meta.version);
            out.extend(of_model);
        }
        Ok(out)
    }

    fn load_stored(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<(ModelMeta, StoredModel), RegistryError> {
        let started = std::time::Instant::now();
        check_scope(scope)?;
        let mv = self.model_version(scope, version)?;
        let name = self.model_name(scope);
        let meta = self
            .version_meta(scope, &mv)?
            .ok_or_else(|| RegistryError::Corrupt {
                path: PathBuf::from(format!("mlflow:{name}/{version}")),
                reason: format!("not registered by EgizML (no `{META_TAG}` tag) or not ready"),
            })?;
        let source = mv["source"].as_str().unwrap_or_default();
        let origin = PathBuf::from(format!("mlflow:{name}/{version} {source}/{ARTIFACT}"));
        let bytes = self
            .get_artifact(source, ARTIFACT)?
            .ok_or_else(|| RegistryError::Corrupt {
                path: origin.clone(),
                reason: "no such artifact on the server".into(),
            })?;
        let model = ModelFile::parse(&bytes, &origin)?;
        crate::metrics::global()
            .model_load_time
            .observe(started.elapsed().as_secs_f64());
        Ok((meta, model))
    }

    fn activate(&self, scope: &str, version: u32) -> Result<(), RegistryError> {
        check_scope(scope)?;
        let mv = self.model_version(scope, version)?;
        let name = self.model_name(scope);
        if self.version_meta(scope, &mv)?.is_none() {
            return Err(RegistryError::Corrupt {
                path: PathBuf::from(format!("mlflow:{name}/{version}")),
                reason: format!("not registered by EgizML (no `{META_TAG}` tag): not activated"),
            });
        }
        let model = self
            .registered_model(&name)?
            .ok_or_else(|| RegistryError::UnknownVersion {
                scope: scope.to_string(),
                version,
            })?;
        if model.active == Some(version) {
            return Ok(());
        }
        let mut history = self.history(&name, model.history)?;
        if let Some(current) = model.active {
            history.push(current);
            self.set_history(&name, &history)?;
        }
        self.set_alias(&name, version)
    }

    fn rollback(&self, scope: &str) -> Result<u32, RegistryError> {
        check_scope(scope)?;
        let name = self.model_name(scope);
        let model = self
            .registered_model(&name)?
            .ok_or_else(|| RegistryError::UnknownScope(scope.to_string()))?;
        let mut history = self.history(&name, model.history)?;
        let version = history
            .pop()
            .ok_or_else(|| RegistryError::NothingToRollBack {
                scope: scope.to_string(),
            })?;
        self.set_history(&name, &history)?;
        self.set_alias(&name, version)?;
        Ok(version)
    }

    /// One `registered-models/search` (the `active` alias is on each registered model), not the
    /// versions search of [`Registry::list`]: the stream's watcher calls this several times a second.
    fn active_versions(&self) -> Result<std::collections::BTreeMap<String, u32>, RegistryError> {
        Ok(self
            .registered_models()?
            .into_iter()
            .filter_map(|m| Some((self.scope_of(&m.name)?.to_string(), m.active?)))
            .collect())
    }

    fn active(&self, scope: &str) -> Result<Option<u32>, RegistryError> {
        check_scope(scope)?;
        Ok(self
            .registered_model(&self.model_name(scope))?
            .and_then(|m| m.active))
    }
}

impl MlflowRegistry {
    fn history(&self, name: &str, h: Result<Vec<u32>, String>) -> Result<Vec<u32>, RegistryError> {
        h.map_err(|reason| RegistryError::Corrupt {
            path: PathBuf::from(format!("mlflow:{name} tag {HISTORY_TAG}")),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_map_to_the_proxy() {
        assert_eq!(
            proxied_path("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            proxied_path("mlflow-artifacts://mlflow:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(proxied_path("file:///tmp/mlruns/1/abc/artifacts"), None);
    }

    #[test]
    fn mlflow_errors_carry_status_and_code() {
        let e = answer(
            "GET registered-models/get",
            404,
            r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model with name=x not found\n[SQL: ...]"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "MLflow GET registered-models/get: HTTP 404 RESOURCE_DOES_NOT_EXIST: Registered Model with name=x not found"
        );
        assert!(is_code(&e, "RESOURCE_DOES_NOT_EXIST"));
        let e = answer("POST runs/create", 502, "<html>Bad Gateway</html>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "MLflow POST runs/create: HTTP 502 NOT_MLFLOW: not an MLflow REST answer: <html>Bad Gateway</html>"
        );
        assert_eq!(answer("POST x", 200, "").unwrap(), json!({}));
    }
}
