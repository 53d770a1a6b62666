//! Dataflow configuration (`dataflows/*.yaml`) and the YAML loading that every config file shares.
//!
//! Every config struct denies unknown fields, and every error names the file, the line and the field, so a
//! bad config fails at start-up instead of misbehaving later.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A configuration error that names the file, the line and the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Semantic { file: String, message: String },
}

/// Parses YAML text into `T`, turning any error into one that names `file`, line, column and field path.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    // serde_path_to_error tracks the full field path (`ensemble.threshold`); serde_norway alone names
    // only the enclosing map for errors raised by a field's own validation.
    serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text)).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // serde_norway appends " at line L column C" to messages; we print it as a prefix instead.
        let mut message = e.to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        // serde_norway prefixes some messages with its own (shorter) path; keep the precise one.
        if path != "." && !message.starts_with(&format!("{path}:")) {
            if let Some(rest) = message
                .split_once(": ")
                .filter(|(p, _)| path.starts_with(*p))
            {
                message = rest.1.to_string();
            }
            message = format!("{path}: {message}");
        }
        ConfigError::Invalid {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })
}

/// Reads and parses a YAML file.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = read_text(path)?;
    parse_yaml(&text, &file)
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.display().to_string(),
        source,
    })
}

/// Line and column (1-based) of the key at `path` (`["rul", "model"]`) in block-style YAML, found by
/// indentation: for errors found after parsing (a model that does not load), which serde cannot place.
/// `None` when the key is not written that way (flow style).
pub fn key_position(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    // Indentation of each matched ancestor key, and of the keys directly under the last one (set by
    // the first line of its block; at the top, by the first line of the text).
    let mut matched: Vec<usize> = Vec::new();
    let mut level: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') || body.starts_with("---") {
            continue;
        }
        let indent = line.len() - body.len();
        while matched.last().is_some_and(|&m| indent <= m) {
            matched.pop();
            level = Some(indent);
        }
        if indent != *level.get_or_insert(indent) {
            continue; // inside the block of a key that is not on the path
        }
        let Some(key) = path.get(matched.len()) else {
            continue;
        };
        let is_key = body
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'));
        if is_key {
            if matched.len() + 1 == path.len() {
                return Some((i + 1, indent + 1));
            }
            matched.push(indent);
            level = None;
        }
    }
    None
}

/// An error found after parsing, placed at the line of the key at `path` when it can be found (else
/// naming the file only); `message` names the field.
pub fn field_error(file: &str, text: &str, path: &[&str], message: String) -> ConfigError {
    match key_position(text, path) {
        Some((line, column)) => ConfigError::Invalid {
            file: file.to_string(),
            line,
            column,
            message,
        },
        None => ConfigError::Semantic {
            file: file.to_string(),
            message,
        },
    }
}

/// Deserialises an `f64` that must be finite and > 0 (the error carries the field's location).
pub fn positive_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(D::Error::custom(format!("must be a number > 0, got {v}")))
    }
}

/// Deserialises an `f64` in [0, 1].
pub fn unit_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(D::Error::custom(format!("must be within [0, 1], got {v}")))
    }
}

/// Deserialises an `f64` in (0, 1].
pub fn positive_unit_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(D::Error::custom(format!("must be within (0, 1], got {v}")))
    }
}

/// Deserialises a `usize` that must be >= 1.
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if v >= 1 {
        Ok(v)
    } else {
        Err(D::Error::custom("must be >= 1"))
    }
}

/// A declarative pipeline: what to compute per thing, how to score, when to alert.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataflowConfig {
    /// Name shown in logs and metrics.
    pub name: String,
    /// Samples kept per thing and feature for rolling statistics.
    #[serde(deserialize_with = "at_least_one")]
    pub window: usize,
    /// Learn-only samples per thing before it is scored (rules apply from the first sample).
    pub warmup: usize,
    /// A reading older than its thing's newest event time by more than this is dead-lettered as `late`;
    /// within the bound it is accepted and placed in event-time order.
    pub allowed_lateness_ms: i64,
    /// Rules file; a relative path is resolved against this dataflow file's folder.
    pub rules: Option<PathBuf>,
    /// Seconds between checks of the rules file for changes (hot reload).
    #[serde(deserialize_with = "positive_f64")]
    pub rules_reload_s: f64,
    pub decode: DecodeConfig,
    pub features: FeatureConfig,
    pub detectors: DetectorConfig,
    pub ensemble: EnsembleConfig,
    pub policy: PolicyConfig,
    /// Instrument faults (stuck, flatlined, saturated, dropped-out sensors) as their own alert class.
    pub sensor_faults: crate::detectors::sensor_faults::SensorFaultConfig,
    /// Remaining-useful-life predictions per thing (off when absent); see docs/RUL.md.
    pub rul: Option<crate::rul::predict::RulConfig>,
    /// The model named by `rul.model`, loaded by [`DataflowConfig::load`] (or set by the caller).
    #[serde(skip)]
    pub rul_model: Option<LoadedRulModel>,
    /// Registry models (Isolation Forest, autoencoder) scored in the stream, hot-swapped on activation
    /// (off when absent); see docs/MODELS.md.
    pub models: Option<StreamModelsConfig>,
    /// The registry's active models, watched, opened by [`DataflowConfig::load`] from `models` (or set
    /// by the caller).
    #[serde(skip)]
    pub active_models: Option<crate::registry::ActiveModels>,
}

/// The `models` section: score each thing with its scope's active registry model.
///
/// ```yaml
/// models:
///   registry: {path: ../egizml-data/models}   # relative to the dataflow file
///   poll_s: 0.25                              # how often activations are picked up
///   explain: true                             # the model's own attribution on every alert
/// ```
///
/// A thing is scored by the active version of its own scope (its thing id) if there is one, else by
/// that of its equipment class. That model takes the ensemble's model slot (`ensemble.model_weight`)
/// in place of the online Mahalanobis model, which keeps learning so it takes over again when the
/// scope has no active version. Alerts it scored carry its id (`oven/v3`) as `model_version`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamModelsConfig {
    /// The registry to read active versions from.
    pub registry: crate::registry::RegistryConfig,
    /// Seconds between checks for a newly activated (or rolled back) version.
    #[serde(deserialize_with = "positive_f64")]
    pub poll_s: f64,
    /// Compute the model's per-feature attribution for every alert it scores (exact TreeSHAP for an
    /// Isolation Forest, per-feature reconstruction error for an autoencoder). Off: the alert is
    /// explained by the statistics alone.
    pub explain: bool,
}

impl Default for StreamModelsConfig {
    fn default() -> Self {
        StreamModelsConfig {
            registry: Default::default(),
            poll_s: 0.25,
            explain: true,
        }
    }
}

pub use crate::rul::predict::LoadedRulModel;

impl Default for DataflowConfig {
    fn default() -> Self {
        DataflowConfig {
            name: "default".into(),
            window: 60,
            warmup: 60,
            allowed_lateness_ms: 10_000,
            rules: None,
            rules_reload_s: 1.0,
            decode: DecodeConfig::default(),
            features: FeatureConfig::default(),
            detectors: DetectorConfig::default(),
            ensemble: EnsembleConfig::default(),
            policy: PolicyConfig::default(),
            sensor_faults: Default::default(),
            rul: None,
            rul_model: None,
            models: None,
            active_models: None,
        }
    }
}

/// Input decoding.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Messages longer than this are dead-lettered as `oversize`.
    pub max_message_bytes: usize,
    /// Earliest plausible event time (epoch ms); earlier is `absurd_timestamp`. Default 2000-01-01.
    pub min_ts_ms: i64,
    /// Latest plausible event time (epoch ms); later is `absurd_timestamp`. Default 2100-01-01.
    pub max_ts_ms: i64,
    /// Equipment type for messages that carry none.
    pub default_equipment_type: String,
    pub egizcore: EgizCoreMapping,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_message_bytes: 64 * 1024,
            min_ts_ms: 946_684_800_000,
            max_ts_ms: 4_102_444_800_000,
            default_equipment_type: "unknown".into(),
            egizcore: EgizCoreMapping::default(),
        }
    }
}

/// How EgizCore `StateChanged` leaves become feature names.
///
/// A numeric leaf at `features.<feature>.properties.<path...>` is named by joining `<path...>` with `_`
/// (array elements get `_1.._n`). `rename` then maps a flattened name to another; an entry `x: y` also
/// maps `x_N` to `y_N`, so `temperature_zones: temp_zone` turns `temperature_zones_2` into `temp_zone_2`.
/// An entry whose key contains dots is matched against the full dotted path instead
/// (`features.electrical.properties.voltage.a: voltage_a`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgizCoreMapping {
    pub rename: BTreeMap<String, String>,
    /// Prefix the feature name (`electrical_voltage_a`) instead of dropping it (`voltage_a`).
    pub keep_feature_prefix: bool,
}

impl Default for EgizCoreMapping {
    fn default() -> Self {
        let mut rename = BTreeMap::new();
        rename.insert("temperature_zones".to_string(), "temp_zone".to_string());
        EgizCoreMapping {
            rename,
            keep_feature_prefix: false,
        }
    }
}

/// Derived features computed per reading before detection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// `voltage_imbalance` = max - min of `voltage_a/b/c` (V) when all three are present.
    pub voltage_imbalance: bool,
    /// `current_imbalance_pct` = (max - min) / mean * 100 of `current_a/b/c` when present.
    pub current_imbalance: bool,
    /// `temp_zone_spread` = max - min over `temp_zone_*` when at least two zones are present.
    pub zone_spread: bool,
    /// A feature set in SQL (`sql/*.sql`; a relative path is resolved against this dataflow file's
    /// folder). Its output columns replace the three built-in derived features above; its window
    /// functions keep per-thing state. Unset: the built-in features only.
    pub sql: Option<PathBuf>,
    /// The compiled `sql` file (set by [`DataflowConfig::load`] or [`FeatureConfig::compile_sql`]).
    #[serde(skip)]
    pub sql_set: Option<Arc<crate::sql_features::FeatureSet>>,
}

impl FeatureConfig {
    /// Resolves `sql` against `base` (the dataflow file's folder) and compiles it; an unreadable file
    /// or unsupported SQL fails here, at start-up, naming the file and the construct.
    pub fn compile_sql(&mut self, base: &Path) -> Result<(), crate::sql_features::SqlFeatureError> {
        if let Some(sql) = &self.sql {
            let path = if sql.is_relative() {
                base.join(sql)
            } else {
                sql.clone()
            };
            self.sql_set = Some(Arc::new(crate::sql_features::FeatureSet::from_file(&path)?));
            self.sql = Some(path);
        }
        Ok(())
    }
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            voltage_imbalance: true,
            current_imbalance: true,
            zone_spread: true,
            sql: None,
            sql_set: None,
        }
    }
}

/// Statistical detectors and the online model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// |z| against the rolling mean/std at which the z-score detector scores 0.8.
    #[serde(deserialize_with = "positive_f64")]
    pub zscore_threshold: f64,
    /// |robust z| (median/MAD*1.4826) at which the robust detector scores 0.8.
    #[serde(deserialize_with = "positive_f64")]
    pub robust_z_threshold: f64,
    /// EWMA smoothing factor (0, 1].
    #[serde(deserialize_with = "unit_f64")]
    pub ewma_alpha: f64,
    /// EWMA control-chart z at which the EWMA detector scores 0.8.
    #[serde(deserialize_with = "positive_f64")]
    pub ewma_threshold: f64,
    /// Distance outside the quartiles, in IQRs, at which the IQR detector scores 0.8.
    #[serde(deserialize_with = "positive_f64")]
    pub iqr_k: f64,
    /// How the per-feature statistics are kept (`window` or constant-size `streaming` estimators).
    pub stats: StatsConfig,
    pub model: ModelConfig,
    /// Operating-regime aware scoring of the online model (off when absent): each thing's production
    /// phases are clustered from its warm-up readings and every reading is scored within its phase;
    /// see `detectors::regimes` and docs/ACCURACY.md.
    pub regimes: Option<crate::detectors::regimes::RegimeConfig>,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            zscore_threshold: 4.0,
            robust_z_threshold: 5.0,
            ewma_alpha: 0.3,
            ewma_threshold: 4.0,
            iqr_k: 3.0,
            stats: StatsConfig::default(),
            model: ModelConfig::default(),
            regimes: None,
        }
    }
}

/// How the per-feature statistics (z, robust z, EWMA chart, IQR) are kept per thing.
///
/// ```yaml
/// detectors:
///   stats:
///     estimator: streaming   # or window (the default)
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// `window` (default): a rolling window of the last `window` readings per feature, exact
    /// mean/std/median/MAD/quartiles (`window` f64 per feature: 480 bytes at 60, plus a sorted copy
    /// of as much while a feature's statistics are scored on consecutive readings). `streaming`:
    /// constant-size estimators, 32 bytes per feature (exponentially weighted mean and variance with
    /// the same mean data age as the window, `alpha = 2/(window+1)`; stochastic-approximation median,
    /// quartiles and MAD), for fleets where per-thing memory matters; see `detectors::streaming`.
    pub estimator: crate::detectors::stats::StatsEstimator,
}

/// The online multivariate model (see `detectors::mahalanobis` for why this one).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Keep the online model per thing (default). `false`: no per-thing model is kept (no memory for
    /// it): the ensemble's model slot is then filled only by a registry model (`models` section) where
    /// the thing's scope has an active one; a reading no registry model scores is scored by the
    /// statistics alone (weight 1). Without a `models` section, `ensemble.model_weight` must be 0.
    pub enabled: bool,
    /// Samples after which an old sample's weight in the mean/covariance has halved.
    #[serde(deserialize_with = "positive_f64")]
    pub half_life: f64,
    /// Shrinkage of the covariance towards its diagonal, [0, 1].
    #[serde(deserialize_with = "unit_f64")]
    pub shrinkage: f64,
    /// Normal-equivalent z of the Hotelling T^2 at which the model scores 0.8.
    #[serde(deserialize_with = "positive_f64")]
    pub threshold: f64,
    /// Keep learning after the warm-up (default). `false` fits the model on the warm-up readings and then
    /// freezes it: for processes whose normal state is known from a commissioning run, so a long anomaly
    /// is never absorbed into "normal".
    pub learn_after_warmup: bool,
    /// Features left out of the model (exact names; they still feed the univariate detectors and rules).
    /// For slow process variables that drift with ambient conditions (a fluid temperature), which would
    /// otherwise dominate a multivariate distance.
    pub exclude: Vec<String>,
    /// EWMA factor (0, 1] applied per thing to the model's T^2 before it is scored; 1 = no smoothing.
    /// Smoothing trades a few readings of delay for far fewer false alarms on collective anomalies
    /// (a sustained shift) in noisy signals.
    #[serde(deserialize_with = "positive_unit_f64")]
    pub smoothing: f64,
    /// Per-thing threshold calibration: when set to a quantile q in [0, 1], the warm-up readings are kept
    /// and, once the warm-up ends, scored by the model fitted on them (smoothed as above); the q-quantile
    /// of those T^2 values becomes this thing's T^2 threshold (it scores 0.8, replacing `threshold`), so
    /// machines with different noise levels need no shared global threshold. Needs `warmup` >= the
    /// model's minimum samples (max(2 x features, 16)); otherwise the global threshold applies.
    pub calibration_quantile: Option<f64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            enabled: true,
            half_life: 500.0,
            shrinkage: 0.05,
            threshold: 5.0,
            learn_after_warmup: true,
            exclude: Vec::new(),
            smoothing: 1.0,
            calibration_quantile: None,
        }
    }
}

/// How detector scores combine into one score and when it alerts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnsembleConfig {
    #[serde(deserialize_with = "unit_f64")]
    pub stats_weight: f64,
    #[serde(deserialize_with = "unit_f64")]
    pub model_weight: f64,
    /// Combined score at or above which a reading is anomalous.
    #[serde(deserialize_with = "unit_f64")]
    pub threshold: f64,
    /// Combined score from which an ensemble alert is `warning` (below: `info`).
    #[serde(deserialize_with = "unit_f64")]
    pub warning_score: f64,
    /// Combined score from which an ensemble alert is `critical`.
    #[serde(deserialize_with = "unit_f64")]
    pub critical_score: f64,
}

impl Default for EnsembleConfig {
    fn default() -> Self {
        EnsembleConfig {
            stats_weight: 0.3,
            model_weight: 0.7,
            threshold: 0.8,
            warning_score: 0.85,
            critical_score: 0.97,
        }
    }
}

/// Alert policy: dedup, rate limit, burst escalation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// An alert of the same thing and type within this many seconds (event time) is suppressed.
    pub dedup_s: f64,
    /// At most one alert per thing within this many seconds (event time).
    pub rate_limit_s: f64,
    /// Anomalous readings of one thing within `burst_within_s` that raise a `burst` alert.
    #[serde(deserialize_with = "at_least_one")]
    pub burst_count: usize,
    pub burst_within_s: f64,
    /// Severity of burst alerts.
    pub burst_severity: crate::event::Severity,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dedup_s: 300.0,
            rate_limit_s: 60.0,
            burst_count: 10,
            burst_within_s: 300.0,
            burst_severity: crate::event::Severity::Critical,
        }
    }
}

impl DataflowConfig {
    /// Loads a dataflow file and checks cross-field constraints.
    pub fn load(path: &Path) -> Result<DataflowConfig, ConfigError> {
        let text = read_text(path)?;
        let mut cfg: DataflowConfig = parse_yaml(&text, &path.display().to_string())?;
        if let Some(rules) = &cfg.rules {
            if rules.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                cfg.rules = Some(base.join(rules));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.features
            .compile_sql(base)
            .map_err(|e| ConfigError::Semantic {
                file: path.display().to_string(),
                message: format!("field `features.sql`: {e}"),
            })?;
        if let Err((at, message)) = cfg.model_checks() {
            return Err(field_error(&path.display().to_string(), &text, at, message));
        }
        cfg.validate(&path.display().to_string())?;
        if let Some(rul) = &mut cfg.rul {
            let file = path.display().to_string();
            let model = rul.model.as_mut().ok_or_else(|| {
                field_error(
                    &file,
                    &text,
                    &["rul"],
                    "field `rul.model` is required when `rul` is present".into(),
                )
            })?;
            model.resolve(base);
            let loaded = model.load().map_err(|e| {
                field_error(
                    &file,
                    &text,
                    &["rul", "model"],
                    format!("field `rul.model`: {e}"),
                )
            })?;
            cfg.rul_model = Some(loaded);
        }
        if let Some(models) = &mut cfg.models {
            let file = path.display().to_string();
            models.registry.resolve(base);
            let registry = models.registry.open().map_err(|e| ConfigError::Semantic {
                file: file.clone(),
                message: format!("field `models.registry`: {e}"),
            })?;
            let poll = std::time::Duration::from_secs_f64(models.poll_s);
            let active = crate::registry::ActiveModels::watch(registry, poll).map_err(|e| {
                ConfigError::Semantic {
                    file: file.clone(),
                    message: format!("field `models.registry`: {e}"),
                }
            })?;
            tracing::info!(models = ?active, "registry models for the stream");
            cfg.active_models = Some(active);
        }
        Ok(cfg)
    }

    /// Checks of `detectors.model.enabled` against the sections that need the online model: the
    /// offending field's path (for [`field_error`]) and the message.
    fn model_checks(&self) -> Result<(), (&'static [&'static str], String)> {
        if self.detectors.model.enabled {
            return Ok(());
        }
        if self.detectors.regimes.is_some() {
            return Err((
                &["detectors", "regimes"],
                "field `detectors.regimes` needs the online model (`detectors.model.enabled` is false)"
                    .into(),
            ));
        }
        if self.models.is_none() && self.ensemble.model_weight > 0.0 {
            return Err((
                &["detectors", "model", "enabled"],
                format!(
                    "field `detectors.model.enabled` is false and there is no `models` section, so \
                     nothing fills the model's share of the ensemble: set `ensemble.model_weight: 0` \
                     and `ensemble.stats_weight: 1` (now {} and {})",
                    self.ensemble.model_weight, self.ensemble.stats_weight
                ),
            ));
        }
        Ok(())
    }

    /// Cross-field checks that a single field's deserialiser cannot make.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Semantic {
            file: file.to_string(),
            message,
        };
        let e = &self.ensemble;
        if (e.stats_weight + e.model_weight - 1.0).abs() > 1e-9 {
            return Err(bad(format!(
                "field `ensemble.stats_weight` + `ensemble.model_weight` must be 1, got {} + {}",
                e.stats_weight, e.model_weight
            )));
        }
        if e.warning_score > e.critical_score {
            return Err(bad(
                "field `ensemble.warning_score` must not exceed `ensemble.critical_score`".into(),
            ));
        }
        if self.decode.min_ts_ms >= self.decode.max_ts_ms {
            return Err(bad(
                "field `decode.min_ts_ms` must be below `decode.max_ts_ms`".into(),
            ));
        }
        if let Some(q) = self.detectors.model.calibration_quantile {
            if !(0.0..=1.0).contains(&q) {
                return Err(bad(format!(
                    "field `detectors.model.calibration_quantile` must be within [0, 1], got {q}"
                )));
            }
        }
        if let Some(r) = &self.detectors.regimes {
            r.validate().map_err(bad)?;
        }
        let sf = &self.sensor_faults;
        if sf.enabled && sf.baseline_readings < sf.flatline_window {
            return Err(bad(format!(
                "field `sensor_faults.baseline_readings` ({}) must be at least \
                 `sensor_faults.flatline_window` ({}): the learned spread is that of a full window",
                sf.baseline_readings, sf.flatline_window
            )));
        }
        if let Err((_, message)) = self.model_checks() {
            return Err(bad(message));
        }
        if self.allowed_lateness_ms < 0 {
            return Err(bad("field `allowed_lateness_ms` must be >= 0".into()));
        }
        if let Some(rul) = &self.rul {
            rul.validate().map_err(bad)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip() {
        let cfg: DataflowConfig = parse_yaml("{}", "x.yaml").unwrap();
        assert_eq!(cfg.window, 60);
        cfg.validate("x.yaml").unwrap();
    }

    #[test]
    fn a_flatline_window_longer_than_the_baseline_is_refused() {
        let cfg: DataflowConfig = parse_yaml(
            "sensor_faults:\n  flatline_window: 300\n  baseline_readings: 200\n",
            "x.yaml",
        )
        .unwrap();
        let e = cfg.validate("x.yaml").unwrap_err().to_string();
        assert!(
            e.contains("x.yaml") && e.contains("`sensor_faults.baseline_readings`"),
            "{e}"
        );
    }

    #[test]
    fn a_rul_section_needs_a_valid_loadable_model() {
        let dir = tempfile::tempdir().unwrap();
        let flow = dir.path().join("flow.yaml");
        let load = |text: &str| {
            std::fs::write(&flow, text).unwrap();
            DataflowConfig::load(&flow).unwrap_err().to_string()
        };
        let e = load("rul:\n  emit_every_s: 60\n");
        assert!(e.contains("flow.yaml") && e.contains("`rul.model`"), "{e}");
        let e = load("rul:\n  model: missing/model.json\n");
        assert!(
            e.contains("`rul.model`") && e.contains("missing/model.json"),
            "{e}"
        );
        let e = load("rul:\n  model: m.json\n  hours_per_cycle: 0\n");
        assert!(e.contains("`rul.hours_per_cycle`"), "{e}");
        let e = load("rul:\n  model: m.json\n  every: 1h\n");
        assert!(e.starts_with(&format!("{}:3:", flow.display())), "{e}");
    }

    #[test]
    fn rul_model_from_the_registry_by_active_or_fixed_version() {
        use crate::registry::{LocalRegistry, NewModel, Registry, ScopeKind, StoredModel};
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::new(dir.path().join("models"));
        let model = Arc::new(crate::rul::tests::small_model());
        for _ in 0..2 {
            reg.register(NewModel {
                scope: "turbofan".into(),
                scope_kind: ScopeKind::EquipmentClass,
                equipment_type: Some("turbofan".into()),
                trained_at: "2026-12-05T00:00:00Z".into(),
                samples: 1,
                features: model.input_names(),
                metrics: Default::default(),
                sql_hash: None,
                model: StoredModel::Rul(Arc::clone(&model)),
            })
            .unwrap();
        }
        let flows = dir.path().join("flows");
        std::fs::create_dir(&flows).unwrap();
        let flow = flows.join("flow.yaml");
        let load = |text: &str| {
            std::fs::write(&flow, text).unwrap();
            DataflowConfig::load(&flow)
        };
        let registry = |id: &str| {
            format!("name: x\nrul:\n  model:\n    registry: {{path: ../models}}\n    id: {id}\n")
        };
        // Active version, read at start-up; then a fixed one.
        let e = load(&registry("turbofan")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:3:3: field `rul.model`: registry {}: `turbofan` has no active version",
                flow.display(),
                flows.join("../models").display()
            )
        );
        reg.activate("turbofan", 2).unwrap();
        let cfg = load(&registry("turbofan")).unwrap();
        assert_eq!(cfg.rul_model.as_ref().unwrap().id, "turbofan/v2");
        let cfg = load(&registry("turbofan/v1")).unwrap();
        let loaded = cfg.rul_model.unwrap();
        assert_eq!(loaded.id, "turbofan/v1");
        let unit = &crate::rul::tests::synthetic_units(1, 3)[0];
        assert_eq!(
            loaded.model.unit_predictions(unit).unwrap(),
            model.unit_predictions(unit).unwrap()
        );
        // The registry's model.json named as a file: its registry id from meta.json.
        let cfg = load("rul:\n  model: ../models/turbofan/v1/model.json\n").unwrap();
        assert_eq!(cfg.rul_model.unwrap().id, "turbofan/v1");

        // Errors name file, line and field.
        let e = load(&registry("turbofan/v9")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:3:3: field `rul.model`", flow.display())),
            "{e}"
        );
        assert!(e.ends_with("no version 9 of `turbofan`"), "{e}");
        let e = load(&registry("pump")).unwrap_err().to_string();
        assert!(e.ends_with("no models for `pump`"), "{e}");
        // A malformed id fails while parsing, placed in the `rul.model` mapping (its first line: what
        // serde_norway reports for a value inside it) and naming the exact field.
        let e = load(&registry("turbofan/x2")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:4:5: rul.model.id: invalid model id `turbofan/x2`: expected `<scope>/v<N>` or `<scope>`",
                flow.display()
            )
        );
        let e = load(&registry("../etc")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:4:5: rul.model.id: ", flow.display())),
            "{e}"
        );
        let e = load("rul:\n  model: {registry: {path: m}, version: 2}\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("{}:2:", flow.display())), "{e}");
        assert!(e.contains("version"), "{e}");
        let e = load("rul:\n  model: 3\n").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:", flow.display())), "{e}");
        assert!(e.contains("a model file path or {registry"), "{e}");
        // An anomaly model is not a RUL model.
        let forest = crate::models::IsolationForestParams {
            n_estimators: 5,
            ..Default::default()
        };
        let x = ndarray::Array2::from_shape_fn((50, 2), |(i, j)| (i * 3 + j) as f64);
        reg.register(NewModel {
            scope: "oven".into(),
            scope_kind: ScopeKind::EquipmentClass,
            equipment_type: None,
            trained_at: "2026-12-05T00:00:00Z".into(),
            samples: 50,
            features: vec!["a".into(), "b".into()],
            metrics: Default::default(),
            sql_hash: None,
            model: StoredModel::IsolationForest(
                crate::models::Fit::fit(&forest, x.view()).unwrap(),
            ),
        })
        .unwrap();
        let e = load(&registry("oven/v1")).unwrap_err().to_string();
        assert!(
            e.ends_with("`oven/v1` is not a RUL model (model_type isolation_forest)"),
            "{e}"
        );
        let e = load("rul:\n  model: ../models/oven/v1/model.json\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a RUL model (model_type isolation_forest)"),
            "{e}"
        );
    }

    #[test]
    fn stats_estimator_and_model_switch_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let flow = dir.path().join("flow.yaml");
        let load = |text: &str| {
            std::fs::write(&flow, text).unwrap();
            DataflowConfig::load(&flow)
        };
        let e = load("name: x\ndetectors:\n  stats:\n    estimator: tdigest\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("{}:4:", flow.display())), "{e}");
        assert!(e.contains("detectors.stats.estimator"), "{e}");
        assert!(e.contains("window") && e.contains("streaming"), "{e}");
        // The online model off with nothing else to fill its share of the ensemble.
        let e = load("name: x\ndetectors:\n  model:\n    enabled: false\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}:4:5: field `detectors.model.enabled`",
                flow.display()
            )),
            "{e}"
        );
        let e = load(
            "ensemble: {stats_weight: 1, model_weight: 0}\ndetectors:\n  model: {enabled: false}\n  regimes: {by: [a]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "{}:4:3: field `detectors.regimes`",
                flow.display()
            )),
            "{e}"
        );
        let cfg = load(
            "ensemble: {stats_weight: 1, model_weight: 0}\ndetectors:\n  stats: {estimator: streaming}\n  model: {enabled: false}\n",
        )
        .unwrap();
        assert_eq!(
            cfg.detectors.stats.estimator,
            crate::detectors::stats::StatsEstimator::Streaming
        );
        assert!(!cfg.detectors.model.enabled);
    }

    #[test]
    fn key_positions_follow_block_indentation() {
        let text = "name: x\n# rul: no\nrules: r.yaml\nrul:\n  emit_every_s: 1\n\n  model:\n    id: a\nmodel: top\n";
        assert_eq!(key_position(text, &["rul"]), Some((4, 1)));
        assert_eq!(key_position(text, &["rul", "model"]), Some((7, 3)));
        assert_eq!(key_position(text, &["rul", "model", "id"]), Some((8, 5)));
        assert_eq!(key_position(text, &["model"]), Some((9, 1)));
        assert_eq!(key_position(text, &["rul", "id"]), None);
        assert_eq!(key_position("rul: {model: m}\n", &["rul", "model"]), None);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "name: x\nwindow: 60\ndetectors:\n  zscore_threshold: -1\n";
        let err = parse_yaml::<DataflowConfig>(text, "flow.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("flow.yaml:4:"), "{err}");
        assert!(err.contains("detectors.zscore_threshold"), "{err}");
        assert!(err.contains("> 0"), "{err}");

        let err = parse_yaml::<DataflowConfig>("windw: 3\n", "flow.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("flow.yaml:1:"), "{err}");
        assert!(err.contains("windw"), "{err}");
    }
}
