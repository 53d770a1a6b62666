//! Training on history: a feature matrix for a scope (one thing or an equipment class), a chronological
//! 80/20 split, an Isolation Forest or an autoencoder fitted on the earlier part, validation metrics on
//! the later part (precision/recall/F1 when the history is labelled), and a new registry version,
//! optionally activated.
//!
//! The feature matrix comes from [`feature_matrix`], the one place that turns history into features;
//! its columns are what the stream computes per reading (the raw sensors, then the derived features of
//! [`crate::features`]), so a model scores in production on the features it was trained on.

pub mod config;
pub mod jobs;
pub mod schedule;

#[cfg(test)]
mod tests;

pub use config::{
    ActivatePolicy, HistorySpec, ModelKind, ModelParams, SimulatorHistory, TrainSpec,
};

use crate::config::{DecodeConfig, FeatureConfig};
use crate::decode::Decoder;
use crate::event::{Name, Point};
use crate::features::DerivedPlan;
use crate::models::{Classification, Dataset, Fit, Model, ModelError};
use crate::registry::{
    check_family, ModelFamily, ModelMeta, NewModel, Registry, RegistryError, ScopeKind,
    StoredModel, MODEL_FORMAT, MODEL_FORMAT_VERSION,
};
use crate::sources::simulator::{Simulator, SimulatorConfig};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("history {source_name}: {message}")]
    History {
        source_name: String,
        message: String,
    },
    #[error("no readings for {kind} `{scope}` in {source_name}")]
    NoData {
        kind: &'static str,
        scope: String,
        source_name: String,
    },
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn kind_name(k: ScopeKind) -> &'static str {
    match k {
        ScopeKind::Thing => "thing",
        ScopeKind::EquipmentClass => "equipment class",
    }
}

/// A feature matrix and where it came from.
#[derive(Clone, Debug)]
pub struct TrainingData {
    pub dataset: Dataset,
    /// The equipment type of the rows (the first one seen).
    pub equipment_type: Option<String>,
    /// Hash of the SQL feature set, when the features came from one.
    pub sql_hash: Option<String>,
    /// Readings of the scope left out (a sensor of the feature columns missing).
    pub dropped_rows: usize,
}

/// Readings of a history source, in input order.
pub fn read_history(history: &HistorySpec) -> Result<Vec<Point>, TrainError> {
    match history {
        HistorySpec::File(path) => {
            let name = path.display().to_string();
            let err = |message: String| TrainError::History {
                source_name: name.clone(),
                message,
            };
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let mut decoder = Decoder::new(&DecodeConfig::default());
            let mut points = Vec::new();
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let p = decoder.decode(line).map_err(|m| {
                    err(format!(
                        "line {}: {}: {}",
                        i + 1,
                        m.reason.as_str(),
                        m.detail
                    ))
                })?;
                points.push(p);
            }
            Ok(points)
        }
        HistorySpec::Simulator(s) => {
            if s.things == 0 || s.points == 0 {
                return Err(TrainError::Spec(
                    "simulator history needs things >= 1 and points >= 1".into(),
                ));
            }
            let sim = Simulator::new(SimulatorConfig {
                things: s.things,
                seed: s.seed,
                faults_per_1000: s.faults_per_1000,
                ..SimulatorConfig::default()
            });
            Ok(sim.take(s.points).collect())
        }
    }
}

fn history_name(history: &HistorySpec) -> String {
    match history {
        HistorySpec::File(p) => p.display().to_string(),
        HistorySpec::Simulator(_) => "simulator".into(),
    }
}

/// The readings of `scope` (a thing, or every thing of an equipment class), in history order; at
/// least one, else [`TrainError::NoData`].
fn scope_rows<'a>(
    points: &'a [Point],
    history: &HistorySpec,
    scope: &str,
    scope_kind: ScopeKind,
) -> Result<Vec<&'a Point>, TrainError> {
    let rows: Vec<&Point> = points
        .iter()
        .filter(|p| match scope_kind {
            ScopeKind::Thing => p.thing_id.as_str() == scope,
            ScopeKind::EquipmentClass => p.equipment_type.as_str() == scope,
        })
        .collect();
    if rows.is_empty() {
        return Err(TrainError::NoData {
            kind: kind_name(scope_kind),
            scope: scope.to_string(),
            source_name: history_name(history),
        });
    }
    Ok(rows)
}

/// History -> the feature matrix of `scope`: the readings of the thing (or of every thing of the
/// equipment class), in event-time order, with the columns the stream computes for them (the raw
/// sensors of the scope's first reading, then the derived features). A reading without one of those
/// sensors is left out and counted. Labels are kept when every reading has one.
///
/// This is the switch point for SQL feature sets: with one, DataFusion computes the columns instead.
pub fn feature_matrix(
    history: &HistorySpec,
    scope: &str,
    scope_kind: ScopeKind,
) -> Result<TrainingData, TrainError> {
    let _span = tracing::info_span!("training_features", scope).entered();
    let points = read_history(history)?;
    let mut rows = scope_rows(&points, history, scope, scope_kind)?;
    let first = rows[0];
    let raw: Vec<Name> = first.values.iter().map(|(n, _)| n.clone()).collect();
    let equipment_type = Some(first.equipment_type.to_string());
    let (plan, derived) = DerivedPlan::new(&raw, &FeatureConfig::default());
    // Stable sort: readings of one ts keep their input order.
    rows.sort_by_key(|p| p.ts);
    let width = raw.len() + derived.len();
    let mut x = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len());
    let mut all_labelled = true;
    let mut dropped = 0;
    let mut slot = vec![0.0; raw.len()];
    let mut out = vec![0.0; derived.len()];
    'rows: for p in rows {
        for (i, name) in raw.iter().enumerate() {
            match p.value(name) {
                Some(v) => slot[i] = v,
                None => {
                    dropped += 1;
                    continue 'rows;
                }
            }
        }
        plan.compute(&slot, &mut out);
        x.extend_from_slice(&slot);
        x.extend_from_slice(&out);
        all_labelled &= p.label.is_some();
        labels.push(p.label == Some(1));
    }
    let n = labels.len();
    let columns: Vec<String> = raw
        .iter()
        .chain(derived.iter())
        .map(|n| n.to_string())
        .collect();
    let x = Array2::from_shape_vec((n, width), x)
        .map_err(|e| TrainError::Spec(format!("feature matrix: {e}")))?;
    let dataset = Dataset::new(columns, x, all_labelled.then_some(labels))?;
    Ok(TrainingData {
        dataset,
        equipment_type,
        sql_hash: None,
        dropped_rows: dropped,
    })
}

/// History -> the feature matrix of `scope` through a SQL feature set, computed by DataFusion: the
/// definitions the stream evaluates for a dataflow whose `features.sql` is the same file, so the model
/// is trained on exactly the features it scores. The set's hash goes into the model's metadata, and the
/// stream refuses to score a thing with a model whose hash differs from its dataflow's set.
///
/// Rows with a NULL feature (window warm-up, a missing sensor) are dropped and counted; the rest are
/// ordered by event time (then thing), so the chronological split holds for a class of things too.
pub fn sql_feature_matrix(
    history: &HistorySpec,
    set: &crate::sql_features::FeatureSet,
    scope: &str,
    scope_kind: ScopeKind,
) -> Result<TrainingData, TrainError> {
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    let _span = tracing::info_span!("training_features", scope, features = %set.name).entered();
    let points = read_history(history)?;
    let rows = scope_rows(&points, history, scope, scope_kind)?;
    let first = rows[0];
    let equipment_type = Some(first.equipment_type.to_string());
    let history_err = |message: String| TrainError::History {
        source_name: history_name(history),
        message,
    };
    let mut schema = crate::sql_features::history_schema(&set.inputs);
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        crate::sql_features::batch::LABEL,
        DataType::Float64,
        true,
    ));
    schema = Schema::new(fields);
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|p| p.thing_id.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|p| p.ts))),
    ];
    for input in &set.inputs {
        cols.push(Arc::new(Float64Array::from_iter(
            rows.iter().map(|p| p.value(input)),
        )));
    }
    cols.push(Arc::new(Float64Array::from_iter(
        rows.iter().map(|p| p.label.map(f64::from)),
    )));
    let batch = RecordBatch::try_new(Arc::new(schema), cols)
        .map_err(|e| history_err(format!("history table: {e}")))?;
    let m = crate::sql_features::batch::feature_matrix(set, &[batch])
        .map_err(|e| history_err(e.to_string()))?;
    let all_labelled = rows.iter().all(|p| p.label.is_some());
    let mut order: Vec<usize> = (0..m.ts.len()).collect();
    order.sort_by(|&a, &b| {
        m.ts[a]
            .cmp(&m.ts[b])
            .then_with(|| m.thing_ids[a].cmp(&m.thing_ids[b]))
    });
    let x = m.x.select(ndarray::Axis(0), &order);
    let labels = m
        .labels
        .filter(|_| all_labelled)
        .map(|l| order.iter().map(|&i| l[i] == 1).collect());
    let dataset = Dataset::new(m.columns, x, labels)?;
    Ok(TrainingData {
        dataset,
        equipment_type,
        sql_hash: Some(set.sql_hash()),
        dropped_rows: m.dropped_rows,
    })
}

/// A step of a training run, reported to the progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Loading,
    Training,
    Validating,
    Registering,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Loading => "loading history",
            Stage::Training => "training",
            Stage::Validating => "validating",
            Stage::Registering => "registering",
        }
    }

    /// 1-based position among the four stages.
    pub fn step(&self) -> usize {
        *self as usize + 1
    }
}

/// What a training run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    /// The registered version.
    pub model: ModelMeta,
    /// Whether it is now the active version of its scope.
    pub activated: bool,
    /// Why it was (or was not) activated.
    pub activation: String,
}

/// Whether `new` is not worse than `old` on `metric` (lower is better for error metrics such as rmse,
/// mae, loss and phm08; higher for the rest). A metric missing from both is no evidence either way (not
/// worse); missing only from the new version is (worse).
pub fn not_worse(metric: &str, new: &BTreeMap<String, f64>, old: &BTreeMap<String, f64>) -> bool {
    let lower_better = matches!(metric, "rmse" | "mae" | "loss" | "phm08" | "mse");
    match (new.get(metric), old.get(metric)) {
        (None, None) | (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some(n), Some(o)) if lower_better => n <= o,
        (Some(n), Some(o)) => n >= o,
    }
}

/// Trains, validates and registers per `spec` on `data`, reporting stages to `progress`.
pub fn train(
    spec: &TrainSpec,
    data: TrainingData,
    registry: &dyn Registry,
    progress: &mut dyn FnMut(Stage),
) -> Result<TrainReport, TrainError> {
    let _span =
        tracing::info_span!("train", scope = %spec.scope, model = spec.params.kind().as_str())
            .entered();
    if !(spec.train_fraction > 0.0 && spec.train_fraction < 1.0) {
        return Err(TrainError::Spec(format!(
            "train_fraction must be in (0, 1), got {}",
            spec.train_fraction
        )));
    }
    // A scope holding RUL models cannot take an anomaly model: refused before any work.
    check_family(registry, &spec.scope, ModelFamily::Anomaly)?;
    let ds = &data.dataset;
    let (train, valid) = ds.split(spec.train_fraction);
    if train.x.nrows() < 2 || valid.x.nrows() < 1 {
        return Err(TrainError::Spec(format!(
            "{} rows are too few to train and validate (need at least 2 training rows and 1 validation row)",
            ds.len()
        )));
    }
    progress(Stage::Training);
    let started = Instant::now();
    let stored = match &spec.params {
        ModelParams::IsolationForest(p) => StoredModel::IsolationForest(p.fit(train.x)?),
        ModelParams::Autoencoder(p) => StoredModel::Autoencoder(p.fit(train.x)?),
    };
    let train_s = started.elapsed().as_secs_f64();
    progress(Stage::Validating);
    let model: &dyn Model = stored
        .as_model()
        .ok_or_else(|| TrainError::Spec("training fitted no anomaly model".into()))?;
    let predicted: Vec<bool> = valid
        .x
        .rows()
        .into_iter()
        .map(|r| model.is_anomaly(&r.to_vec()))
        .collect();
    let mut metrics = BTreeMap::new();
    metrics.insert("train_rows".into(), train.x.nrows() as f64);
    metrics.insert("validation_rows".into(), valid.x.nrows() as f64);
    metrics.insert("dropped_rows".into(), data.dropped_rows as f64);
    metrics.insert("train_s".into(), train_s);
    metrics.insert("model_bytes".into(), model_bytes(&stored) as f64);
    metrics.insert("threshold".into(), model.threshold());
    let flagged = predicted.iter().filter(|p| **p).count();
    metrics.insert(
        "validation_anomaly_rate".into(),
        flagged as f64 / predicted.len() as f64,
    );
    if let Some(labels) = valid.labels {
        let c = Classification::of(&predicted, labels);
        metrics.insert("precision".into(), c.precision);
        metrics.insert("recall".into(), c.recall);
        metrics.insert("f1".into(), c.f1);
        metrics.insert("tp".into(), c.tp as f64);
        metrics.insert("fp".into(), c.fp as f64);
        metrics.insert("fn".into(), c.fn_ as f64);
        metrics.insert("tn".into(), c.tn as f64);
    }
    progress(Stage::Registering);
    // The active version before this one, for the not-worse comparison.
    let previous = registry.list(Some(&spec.scope)).or_else(|e| match e {
        RegistryError::UnknownScope(_) => Ok(Vec::new()),
        e => Err(e),
    })?;
    let previous_active = previous.into_iter().find(|v| v.active).map(|v| v.meta);
    let meta = registry.register(NewModel {
        scope: spec.scope.clone(),
        scope_kind: spec.scope_kind,
        equipment_type: data.equipment_type.clone(),
        trained_at: crate::decode::timestamp::format_rfc3339(now_ms()),
        samples: train.x.nrows(),
        features: ds.columns.clone(),
        metrics,
        sql_hash: data.sql_hash.clone(),
        model: stored,
    })?;
    let (activate, activation) = match spec.activate {
        ActivatePolicy::Never => (
            false,
            "not activated (activation policy: never)".to_string(),
        ),
        ActivatePolicy::Always => (true, "activated (activation policy: always)".to_string()),
        ActivatePolicy::IfNotWorse => match &previous_active {
            None => (true, "activated: no version was active".to_string()),
            Some(old) => {
                let ok = not_worse(&spec.compare_metric, &meta.metrics, &old.metrics);
                let show = |m: &BTreeMap<String, f64>| {
                    m.get(&spec.compare_metric)
                        .map_or("none".to_string(), |v| format!("{v:.4}"))
                };
                let verdict = format!(
                    "{} {} vs {} of the active {}",
                    spec.compare_metric,
                    show(&meta.metrics),
                    show(&old.metrics),
                    old.id
                );
                if ok {
                    (true, format!("activated: {verdict}"))
                } else {
                    (false, format!("not activated (worse): {verdict}"))
                }
            }
        },
    };
    if activate {
        registry.activate(&meta.scope, meta.version)?;
    }
    tracing::info!(id = %meta.id, activated = activate, "model registered");
    Ok(TrainReport {
        model: meta,
        activated: activate,
        activation,
    })
}

/// Size of the model's file in the registry, bytes.
pub fn model_bytes(model: &StoredModel) -> usize {
    #[derive(Serialize)]
    struct Envelope<'a> {
        format: &'static str,
        format_version: u32,
        #[serde(flatten)]
        model: &'a StoredModel,
    }
    serde_json::to_vec(&Envelope {
        format: MODEL_FORMAT,
        format_version: MODEL_FORMAT_VERSION,
        model,
    })
    .map_or(0, |v| v.len())
}

/// Wall-clock time, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
