//! What to train: scope, model type and hyper-parameters, history, split and activation policy. The
//! same structs serve `egizml train`, the `POST /api/v1/train/{thing_id}` body and the `retrain` section
//! of the service config.

use crate::models::{AutoencoderParams, IsolationForestParams};
use crate::registry::ScopeKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The model family to train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ModelKind {
    /// Isolation Forest (n_estimators 100, max_samples 256, contamination 0.01 by default).
    #[default]
    IsolationForest,
    /// Dense autoencoder (10-5-2-5-10, Adam, MSE; threshold at the 95th percentile of validation error).
    Autoencoder,
}

impl ModelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelKind::IsolationForest => "isolation_forest",
            ModelKind::Autoencoder => "autoencoder",
        }
    }
}

/// Checked hyper-parameters of one model family.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelParams {
    IsolationForest(IsolationForestParams),
    Autoencoder(AutoencoderParams),
}

impl ModelParams {
    /// Hyper-parameters from a JSON object merged over the family's defaults; an unknown name or a bad
    /// value is an error naming the field.
    pub fn from_json(kind: ModelKind, overrides: &serde_json::Value) -> Result<Self, String> {
        let obj = match overrides {
            serde_json::Value::Null => serde_json::Map::new(),
            serde_json::Value::Object(m) => m.clone(),
            other => return Err(format!("hyper-parameters must be an object, got {other}")),
        };
        let value = serde_json::Value::Object(obj);
        let params = match kind {
            ModelKind::IsolationForest => {
                let p: IsolationForestParams =
                    serde_path_to_error::deserialize(value).map_err(|e| {
                        format!(
                            "isolation_forest hyper-parameter `{}`: {}",
                            e.path(),
                            e.inner()
                        )
                    })?;
                p.check().map_err(|e| e.to_string())?;
                ModelParams::IsolationForest(p)
            }
            ModelKind::Autoencoder => {
                let p: AutoencoderParams =
                    serde_path_to_error::deserialize(value).map_err(|e| {
                        format!("autoencoder hyper-parameter `{}`: {}", e.path(), e.inner())
                    })?;
                p.check().map_err(|e| e.to_string())?;
                ModelParams::Autoencoder(p)
            }
        };
        Ok(params)
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            ModelParams::IsolationForest(_) => ModelKind::IsolationForest,
            ModelParams::Autoencoder(_) => ModelKind::Autoencoder,
        }
    }
}

/// When a freshly registered version becomes the active one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ActivatePolicy {
    /// Register only; activate by hand (`egizml models activate`).
    #[default]
    Never,
    /// Always activate the new version.
    Always,
    /// Activate unless the comparison metric is worse than the active version's (see
    /// [`crate::training::not_worse`]).
    IfNotWorse,
}

/// History to train on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HistorySpec {
    /// A telemetry file: JSON lines in the flat or EgizCore format (`label` is used when present).
    File(PathBuf),
    /// Labelled simulator telemetry (for the demo and tests).
    Simulator(SimulatorHistory),
}

/// Simulator history: `points` readings round-robin over `things` things.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorHistory {
    /// Simulated things (thing ids `oven-00000`, `mixer-00001`, ...).
    pub things: usize,
    /// Readings over all things.
    pub points: usize,
    pub seed: u64,
    /// Expected fault episodes per thing per 1,000 readings (labelled).
    pub faults_per_1000: f64,
}

impl Default for SimulatorHistory {
    fn default() -> Self {
        SimulatorHistory {
            things: 20,
            points: 100_000,
            seed: 7,
            faults_per_1000: 3.0,
        }
    }
}

/// One training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    /// A thing id or an equipment class (the registry scope).
    pub scope: String,
    pub scope_kind: ScopeKind,
    pub params: ModelParams,
    /// Share of the rows (the earliest) used for training; the rest validates. Default 0.8.
    pub train_fraction: f64,
    pub activate: ActivatePolicy,
    /// Metric compared by [`ActivatePolicy::IfNotWorse`] (default `f1`).
    pub compare_metric: String,
}

impl TrainSpec {
    /// A spec with the defaults: Isolation Forest, 80/20, register only, compare on `f1`.
    pub fn new(scope: impl Into<String>, scope_kind: ScopeKind) -> TrainSpec {
        TrainSpec {
            scope: scope.into(),
            scope_kind,
            params: ModelParams::IsolationForest(IsolationForestParams::default()),
            train_fraction: 0.8,
            activate: ActivatePolicy::Never,
            compare_metric: "f1".into(),
        }
    }
}
