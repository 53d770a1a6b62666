//! Model registry: versioned models per scope (a thing id or an equipment class) with their metadata,
//! one active version per scope, activation and rollback.
//!
//! [`Registry`] is the seam for other backends (MLflow); [`LocalRegistry`] keeps everything in a
//! directory:
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
pub mod watch;

#[cfg(test)]
mod tests;

pub use config::RegistryConfig;
pub use local::LocalRegistry;
pub use watch::{ActiveModel, ActiveModels, ModelSnapshot};

use crate::models::{Autoencoder, IsolationForest, Model, ModelError};
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
    #[error(transparent)]
    Model(#[from] ModelError),
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
    /// `isolation_forest` or `autoencoder`.
    pub model_type: String,
    /// RFC 3339, UTC.
    pub trained_at: String,
    /// Training rows.
    pub samples: usize,
    /// Feature names, in the order the model takes them.
    pub features: Vec<String>,
    /// Validation metrics (precision, recall, f1 when labels existed; train_s, model_bytes, ...).
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

/// A model in a form that can be saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model_type", content = "model", rename_all = "snake_case")]
pub enum StoredModel {
    IsolationForest(IsolationForest),
    Autoencoder(Autoencoder),
}

impl StoredModel {
    pub fn model_type(&self) -> &'static str {
        match self {
            StoredModel::IsolationForest(_) => "isolation_forest",
            StoredModel::Autoencoder(_) => "autoencoder",
        }
    }

    pub fn hyper_parameters(&self) -> serde_json::Value {
        match self {
            StoredModel::IsolationForest(m) => serde_json::to_value(&m.params),
            StoredModel::Autoencoder(m) => serde_json::to_value(&m.params),
        }
        .unwrap_or(serde_json::Value::Null)
    }

    /// Checks the loaded model's internal consistency.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            StoredModel::IsolationForest(m) => m.validate(),
            StoredModel::Autoencoder(m) => m.validate(),
        }
    }

    /// The model as the stream scores with it.
    pub fn into_model(self) -> Arc<dyn Model> {
        match self {
            StoredModel::IsolationForest(m) => Arc::new(m),
            StoredModel::Autoencoder(m) => Arc::new(m),
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

/// A loaded version: its metadata and the model ready to score.
pub type LoadedModel = (ModelMeta, Arc<dyn Model>);

/// A model store. Implementations are shared between the API, the trainer and the dataflow.
pub trait Registry: Send + Sync {
    /// Stores a new version (numbered after the highest so far) without activating it.
    fn register(&self, new: NewModel) -> Result<ModelMeta, RegistryError>;
    /// Every version of `scope`, or of all scopes, oldest first.
    fn list(&self, scope: Option<&str>) -> Result<Vec<VersionInfo>, RegistryError>;
    /// One version's metadata and model.
    fn load(&self, scope: &str, version: u32) -> Result<LoadedModel, RegistryError>;
    /// Makes `version` the active one of its scope.
    fn activate(&self, scope: &str, version: u32) -> Result<(), RegistryError>;
    /// Re-activates the version that was active before the current one; returns it.
    fn rollback(&self, scope: &str) -> Result<u32, RegistryError>;
    /// The active version of `scope`, if any.
    fn active(&self, scope: &str) -> Result<Option<u32>, RegistryError>;

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
