//! Model registry: versioned models per scope (a thing id or an equipment class) with their metadata,
//! one active version per scope, activation and rollback. It holds anomaly models (Isolation Forest,
//! autoencoder: [`Model`]) and remaining-useful-life models ([`RulModel`], model_type `rul`); a scope holds
//! models of one family only, so its active version is unambiguous.
//!
//! [`Registry`] has two backends, chosen by [`RegistryConfig`]: [`MlflowRegistry`] keeps models in an
//! MLflow tracking server (see `mlflow.rs`), [`LocalRegistry`] keeps everything in a directory:
//!
//! ```text
//! ROOT/<scope>/v<N>/model.json   the model, in a versioned envelope (see [`ModelFile`])
//! ROOT/<scope>/v<N>/meta.json    its [`ModelMeta`]
//! ROOT/<scope>/active.json       {"version": N, "previous": [..]}: the active version and the ones before
//! ```
//!
//! Every file is written to a temporary name, synced and renamed, so a reader never sees half a file.

pub mod config;
pub mod local;
pub mod mlflow;
pub mod watch;

#[cfg(test)]
mod tests;

pub use config::{MlflowConfig, RegistryConfig};
pub use local::LocalRegistry;
pub use mlflow::MlflowRegistry;
pub use watch::{ActiveModel, ActiveModels, ModelSnapshot};

use crate::models::{Autoencoder, IsolationForest, Model, ModelError};
use crate::rul::model::RulModel;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no version {version} of `{scope}`")]
    UnknownVersion { scope: String, version: u32 },
    #[error("no models for `{0}`")]
    UnknownScope(String),
    #[error("`{scope}` has no earlier active version to roll back to")]
    NothingToRollBack { scope: String },
    #[error("invalid scope name `{0}`: use letters, digits, '.', '_' and '-'")]
    InvalidScope(String),
    #[error("`{0}` has no active version")]
    NoActiveVersion(String),
    #[error("invalid model id `{0}`: expected `<scope>/v<N>` or `<scope>`")]
    InvalidId(String),
    #[error("`{id}` is not {expected} (model_type {model_type})")]
    WrongModelType {
        id: String,
        model_type: String,
        expected: &'static str,
    },
    #[error("scope `{scope}` holds {existing} models; register {new} models under another scope")]
    MixedScope {
        scope: String,
        existing: &'static str,
        new: &'static str,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("MLflow server {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// MLflow answered with an error: the call, the HTTP status and MLflow's `error_code`.
    #[error("MLflow {call}: HTTP {status} {error_code}: {message}")]
    Mlflow {
        call: String,
        status: u16,
        error_code: String,
        message: String,
    },
}

/// A reference to a version: `<scope>/v<N>` (also `<scope>/<N>`), or `<scope>` for its active version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    pub scope: String,
    /// `None`: the active version.
    pub version: Option<u32>,
}

impl ModelRef {
    pub fn parse(id: &str) -> Result<ModelRef, RegistryError> {
        let bad = || RegistryError::InvalidId(id.to_string());
        match id.rsplit_once('/') {
            None if !id.is_empty() => Ok(ModelRef {
                scope: id.to_string(),
                version: None,
            }),
            None => Err(bad()),
            Some((scope, v)) => {
                let v = v.strip_prefix('v').unwrap_or(v);
                let version = v.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(bad)?;
                if scope.is_empty() || scope.contains('/') {
                    return Err(bad());
                }
                Ok(ModelRef {
                    scope: scope.to_string(),
                    version: Some(version),
                })
            }
        }
    }

    /// The id as written: `<scope>/v<N>`, or `<scope>` for the active version.
    pub fn to_id(&self) -> String {
        match self.version {
            Some(v) => format!("{}/v{v}", self.scope),
            None => self.scope.clone(),
        }
    }

    /// The version this names, with its active flag.
    pub fn find(&self, reg: &dyn Registry) -> Result<VersionInfo, RegistryError> {
        let versions = reg.list(Some(&self.scope))?;
        if versions.is_empty() {
            return Err(RegistryError::UnknownScope(self.scope.clone()));
        }
        let found = match self.version {
            Some(v) => versions.into_iter().find(|i| i.meta.version == v),
            None => versions.into_iter().find(|i| i.active),
        };
        found.ok_or_else(|| match self.version {
            Some(version) => RegistryError::UnknownVersion {
                scope: self.scope.clone(),
                version,
            },
            None => RegistryError::NoActiveVersion(self.scope.clone()),
        })
    }
}

/// What a model was trained for: one thing, or every thing of an equipment class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    Thing,
    EquipmentClass,
}

/// Metadata of one registered model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// `<scope>/v<version>`: what alerts carry as model_version.
    pub id: String,
    pub scope: String,
    pub scope_kind: ScopeKind,
    /// Equipment type of the training data (the class itself for a class scope), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equipment_type: Option<String>,
    pub version: u32,
    /// `isolation_forest`, `autoencoder` (anomaly models) or `rul` (remaining useful life).
    pub model_type: String,
    /// RFC 3339, UTC.
    pub trained_at: String,
    /// Training rows.
    pub samples: usize,
    /// Feature names, in the order the model takes them.
    pub features: Vec<String>,
    /// Validation metrics (anomaly models: precision, recall, f1 when labels existed; train_s,
    /// model_bytes, ...; RUL models: rmse, phm08, mae, coverage, units, validation_rmse, ...).
    pub metrics: BTreeMap<String, f64>,
    pub hyper_parameters: serde_json::Value,
    /// Hash of the SQL feature set the features came from, when they came from one.
    pub sql_hash: Option<String>,
}

/// A version as the registry lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(flatten)]
    pub meta: ModelMeta,
    pub active: bool,
}

/// What a caller registers: everything of [`ModelMeta`] but the id and version the registry assigns.
#[derive(Clone, Debug)]
pub struct NewModel {
    pub scope: String,
    pub scope_kind: ScopeKind,
    pub equipment_type: Option<String>,
    pub trained_at: String,
    pub samples: usize,
    pub features: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    pub sql_hash: Option<String>,
    pub model: StoredModel,
}

/// What a model predicts: anomaly models score readings, RUL models predict remaining useful life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    Anomaly,
    Rul,
}

impl ModelFamily {
    /// The family of a `model_type` as metadata names it.
    pub fn of(model_type: &str) -> ModelFamily {
        if model_type == "rul" {
            ModelFamily::Rul
        } else {
            ModelFamily::Anomaly
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Anomaly => "anomaly",
            ModelFamily::Rul => "rul",
        }
    }
}

/// A model in a form that can be saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "model_type", content = "model", rename_all = "snake_case")]
pub enum StoredModel {
    IsolationForest(IsolationForest),
    Autoencoder(Autoencoder),
    /// A remaining-useful-life model (`crate::rul`): not an anomaly [`Model`]; the dataflow's `rul`
    /// section serves it.
    Rul(Arc<RulModel>),
}

impl StoredModel {
    pub fn model_type(&self) -> &'static str {
        match self {
            StoredModel::IsolationForest(_) => "isolation_forest",
            StoredModel::Autoencoder(_) => "autoencoder",
            StoredModel::Rul(_) => "rul",
        }
    }

    pub fn family(&self) -> ModelFamily {
        ModelFamily::of(self.model_type())
    }

    pub fn hyper_parameters(&self) -> serde_json::Value {
        match self {
            StoredModel::IsolationForest(m) => serde_json::to_value(&m.params),
            StoredModel::Autoencoder(m) => serde_json::to_value(&m.params),
            StoredModel::Rul(m) => Ok(m.hyper_parameters()),
        }
        .unwrap_or(serde_json::Value::Null)
    }

    /// Checks the loaded model's internal consistency.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            StoredModel::IsolationForest(m) => m.validate(),
            StoredModel::Autoencoder(m) => m.validate(),
            StoredModel::Rul(m) => m.check().map_err(ModelError::Format),
        }
    }

    /// The anomaly model, borrowed; `None` for a RUL model.
    pub fn as_model(&self) -> Option<&dyn Model> {
        match self {
            StoredModel::IsolationForest(m) => Some(m),
            StoredModel::Autoencoder(m) => Some(m),
            StoredModel::Rul(_) => None,
        }
    }

    /// The anomaly model as the stream scores with it; `None` for a RUL model.
    pub fn into_model(self) -> Option<Arc<dyn Model>> {
        match self {
            StoredModel::IsolationForest(m) => Some(Arc::new(m)),
            StoredModel::Autoencoder(m) => Some(Arc::new(m)),
            StoredModel::Rul(_) => None,
        }
    }

    /// The RUL model; `None` for an anomaly model.
    pub fn into_rul(self) -> Option<Arc<RulModel>> {
        match self {
            StoredModel::Rul(m) => Some(m),
            _ => None,
        }
    }
}

/// The envelope of a model file: a format name and version, so a file from elsewhere or from a future
/// release is refused with a clear reason instead of being misread.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelFile {
    pub format: String,
    pub format_version: u32,
    #[serde(flatten)]
    pub model: StoredModel,
}

pub const MODEL_FORMAT: &str = "egizml-model";
pub const MODEL_FORMAT_VERSION: u32 = 1;

impl ModelFile {
    /// Parses and checks the bytes of a model file; `origin` names it in errors (a path, or where in
    /// MLflow it came from).
    pub fn parse(bytes: &[u8], origin: &std::path::Path) -> Result<StoredModel, RegistryError> {
        let corrupt = |reason: String| RegistryError::Corrupt {
            path: origin.to_path_buf(),
            reason,
        };
        // The envelope first, so an unknown format is named as such rather than as a parse error deep
        // inside the model.
        #[derive(Deserialize)]
        struct Envelope {
            format: String,
            format_version: u32,
        }
        let env: Envelope = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not an EgizML model file: {e}")))?;
        if env.format != MODEL_FORMAT || env.format_version != MODEL_FORMAT_VERSION {
            return Err(corrupt(format!(
                "unknown model format {} version {} (this build reads {MODEL_FORMAT} version {MODEL_FORMAT_VERSION})",
                env.format, env.format_version
            )));
        }
        let file: ModelFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        file.model.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(file.model)
    }

    /// The file's bytes for `model`.
    pub fn bytes(model: StoredModel) -> Vec<u8> {
        let file = ModelFile {
            format: MODEL_FORMAT.to_string(),
            format_version: MODEL_FORMAT_VERSION,
            model,
        };
        serde_json::to_vec(&file).expect("models serialise")
    }
}

/// The metadata of a version as registered, before the backend numbers it.
pub(crate) fn new_meta(new: &NewModel, version: u32) -> ModelMeta {
    ModelMeta {
        id: format!("{}/v{version}", new.scope),
        scope: new.scope.clone(),
        scope_kind: new.scope_kind,
        equipment_type: new.equipment_type.clone(),
        version,
        model_type: new.model.model_type().to_string(),
        trained_at: new.trained_at.clone(),
        samples: new.samples,
        features: new.features.clone(),
        metrics: new.metrics.clone(),
        hyper_parameters: new.model.hyper_parameters(),
        sql_hash: new.sql_hash.clone(),
    }
}

/// A loaded version: its metadata and the model ready to score.
pub type LoadedModel = (ModelMeta, Arc<dyn Model>);

/// A loaded RUL version: its metadata and the model.
pub type LoadedRul = (ModelMeta, Arc<RulModel>);

fn wrong_type(meta: &ModelMeta, expected: &'static str) -> RegistryError {
    RegistryError::WrongModelType {
        id: meta.id.clone(),
        model_type: meta.model_type.clone(),
        expected,
    }
}

/// Refuses a model of `family` in a scope whose versions are of the other family.
pub fn check_family(
    reg: &dyn Registry,
    scope: &str,
    family: ModelFamily,
) -> Result<(), RegistryError> {
    let versions = match reg.list(Some(scope)) {
        Ok(v) => v,
        Err(RegistryError::UnknownScope(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    match versions
        .iter()
        .map(|v| ModelFamily::of(&v.meta.model_type))
        .find(|f| *f != family)
    {
        Some(existing) => Err(RegistryError::MixedScope {
            scope: scope.to_string(),
            existing: existing.as_str(),
            new: family.as_str(),
        }),
        None => Ok(()),
    }
}

/// A model store. Implementations are shared between the API, the trainer and the dataflow.
pub trait Registry: Send + Sync {
    /// Stores a new version (numbered after the highest so far) without activating it. A model of
    /// another family than the scope's existing versions is refused ([`RegistryError::MixedScope`]).
    fn register(&self, new: NewModel) -> Result<ModelMeta, RegistryError>;
    /// Every version of `scope`, or of all scopes, oldest first.
    fn list(&self, scope: Option<&str>) -> Result<Vec<VersionInfo>, RegistryError>;
    /// One version's metadata and stored model, whatever its family.
    fn load_stored(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<(ModelMeta, StoredModel), RegistryError>;
    /// Makes `version` the active one of its scope.
    fn activate(&self, scope: &str, version: u32) -> Result<(), RegistryError>;
    /// Re-activates the version that was active before the current one; returns it.
    fn rollback(&self, scope: &str) -> Result<u32, RegistryError>;
    /// The active version of `scope`, if any.
    fn active(&self, scope: &str) -> Result<Option<u32>, RegistryError>;

    /// One version's metadata and anomaly model; a RUL version is [`RegistryError::WrongModelType`].
    fn load(&self, scope: &str, version: u32) -> Result<LoadedModel, RegistryError> {
        let (meta, stored) = self.load_stored(scope, version)?;
        match stored.into_model() {
            Some(model) => Ok((meta, model)),
            None => Err(wrong_type(&meta, "an anomaly model")),
        }
    }

    /// One version's metadata and RUL model; an anomaly version is [`RegistryError::WrongModelType`].
    fn load_rul(&self, scope: &str, version: u32) -> Result<LoadedRul, RegistryError> {
        let (meta, stored) = self.load_stored(scope, version)?;
        match stored.into_rul() {
            Some(model) => Ok((meta, model)),
            None => Err(wrong_type(&meta, "a RUL model")),
        }
    }

    /// Every scope's active version (scopes without one are left out). The stream's model watcher
    /// calls this a few times a second, so backends should make it cheap.
    fn active_versions(&self) -> Result<BTreeMap<String, u32>, RegistryError> {
        Ok(self
            .list(None)?
            .into_iter()
            .filter(|v| v.active)
            .map(|v| (v.meta.scope, v.meta.version))
            .collect())
    }

    /// The active model of `scope`, loaded.
    fn load_active(&self, scope: &str) -> Result<Option<LoadedModel>, RegistryError> {
        match self.active(scope)? {
            Some(v) => self.load(scope, v).map(Some),
            None => Ok(None),
        }
    }
}
