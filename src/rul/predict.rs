//! From a point RUL to what a maintenance planner reads ([`Prediction`]), and the live per-thing
//! [`RulTracker`] that keeps a health index per thing and emits predictions at a configured period.
//!
//! Failure probabilities assume a fixed duration per cycle ([`RulConfig::hours_per_cycle`], 1 h by
//! default: a C-MAPSS cycle is one flight). P(failure within H hours) = P(true RUL <= H /
//! hours_per_cycle cycles) under the calibrated residual distribution of the prediction's band.

use super::features::FeatureBuilder;
use super::model::{RulModel, Smoother};
use super::RulError;
use crate::event::{alert_id, Alert, FeatureContribution, Name, Origin, Point, Severity};
use crate::registry::{LocalRegistry, ModelRef, RegistryConfig, RegistryError};
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Live RUL settings: the `rul` section of a dataflow file (docs/RUL.md).
///
/// ```yaml
/// rul:
///   model:                                    # a registry version (or a model file path)
///     registry: {path: ../egizml-data/models} # relative to the dataflow file
///     id: turbofan                            # the active version; turbofan/v2 pins one
///   equipment_type: turbofan                  # optional: only things of this type
///   emit_every_s: 3600                        # one prediction per thing per hour of event time
///   hours_per_cycle: 1.0                      # one reading = one cycle = one hour
///   alert_horizon_hours: 72                   # maintenance_due alert when RUL <= 72 h
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulConfig {
    /// The model: a version in the model registry (`{registry: {path: DIR}, id: <scope>[/v<N>]}`, as
    /// `egizml eval cmapss --register` stores it) or a model file path; required. Relative paths are
    /// resolved against the dataflow file's folder.
    pub model: Option<RulModelSource>,
    /// Only things of this equipment type are tracked (all things when absent). A tracked thing's
    /// readings must carry every sensor the model reads; a reading lacking one is skipped (counted in
    /// `rul_skipped`) and leaves the thing's RUL state untouched.
    pub equipment_type: Option<String>,
    /// Event-time period between two predictions of one thing, seconds (0 = every reading). Every
    /// in-order reading still updates the thing's state; only emission is periodic.
    pub emit_every_s: u64,
    /// Hours one cycle (one reading) represents, for hour-based horizons and probabilities.
    pub hours_per_cycle: f64,
    /// A `maintenance_due` alert is raised when the predicted RUL first falls to this many hours or
    /// less (re-armed once it climbs back above 1.25 times the horizon).
    pub alert_horizon_hours: f64,
    /// Predictions kept per thing for the degradation trend.
    pub trend_window: usize,
}

impl Default for RulConfig {
    fn default() -> Self {
        RulConfig {
            model: None,
            equipment_type: None,
            emit_every_s: 3600,
            hours_per_cycle: 1.0,
            alert_horizon_hours: 72.0,
            trend_window: 10,
        }
    }
}

impl RulConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.hours_per_cycle.is_finite() && self.hours_per_cycle > 0.0) {
            return Err(format!(
                "field `rul.hours_per_cycle` must be > 0, got {}",
                self.hours_per_cycle
            ));
        }
        if !(self.alert_horizon_hours.is_finite() && self.alert_horizon_hours >= 0.0) {
            return Err(format!(
                "field `rul.alert_horizon_hours` must be >= 0, got {}",
                self.alert_horizon_hours
            ));
        }
        if self.trend_window < 2 {
            return Err("field `rul.trend_window` must be >= 2".into());
        }
        Ok(())
    }
}

/// Where the live RUL model comes from: `rul.model` in a dataflow file.
///
/// ```yaml
/// model: {registry: {path: ../egizml-data/models}, id: turbofan}     # active version of `turbofan`
/// model: {registry: {path: ../egizml-data/models}, id: turbofan/v2}  # exactly that version
/// model: ../models/FD001/rul/1/model.json                             # a model file
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RulModelSource {
    /// A model file: as `egizml eval cmapss --save-model` writes it, or a registry version's
    /// `model.json`.
    File(PathBuf),
    /// A version in the model registry.
    Registry(RegistryModel),
}

/// A RUL model version in the model registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryModel {
    /// The registry, written as the service config's `registry` section (`{path: DIR}`); a relative
    /// path is resolved against the dataflow file's folder.
    pub registry: RegistryConfig,
    /// `<scope>` for the version active when the dataflow starts, or `<scope>/v<N>` for that version.
    #[serde(deserialize_with = "model_id")]
    pub id: String,
}

/// Deserialises a registry model id, checking its form (`<scope>` or `<scope>/v<N>`).
fn model_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    let r = ModelRef::parse(&id).map_err(de::Error::custom)?;
    crate::registry::local::check_scope(&r.scope).map_err(de::Error::custom)?;
    Ok(id)
}

impl<'de> Deserialize<'de> for RulModelSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RulModelSource;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a model file path or {registry: {path: DIR}, id: <scope>[/v<N>]}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RulModelSource, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("the model file path is empty"));
                }
                Ok(RulModelSource::File(PathBuf::from(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RulModelSource, A::Error> {
                RegistryModel::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RulModelSource::Registry)
            }
        }
        d.deserialize_any(V)
    }
}

impl RulModelSource {
    /// Resolves relative paths against `base` (the dataflow file's folder).
    pub fn resolve(&mut self, base: &Path) {
        match self {
            RulModelSource::File(p) if p.is_relative() => *p = base.join(&*p),
            RulModelSource::File(_) => {}
            RulModelSource::Registry(r) => r.registry.resolve(base),
        }
    }

    /// Loads the model once, for every worker. The error says what is wrong with the file or version.
    pub fn load(&self) -> Result<LoadedRulModel, String> {
        match self {
            RulModelSource::File(path) => load_file(path),
            RulModelSource::Registry(r) => {
                let reg = r.registry.open().map_err(|e| e.to_string())?;
                let at = |e: RegistryError| format!("registry {}: {e}", r.registry.path.display());
                let info = ModelRef::parse(&r.id)
                    .and_then(|m| m.find(reg.as_ref()))
                    .map_err(at)?;
                let (meta, model) = reg
                    .load_rul(&info.meta.scope, info.meta.version)
                    .map_err(at)?;
                Ok(LoadedRulModel::new(model, meta.id))
            }
        }
    }
}

/// A model file: a registry version's `model.json` (its id from the `meta.json` beside it), or the
/// standalone file `--save-model` writes.
fn load_file(path: &Path) -> Result<LoadedRulModel, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[derive(Deserialize)]
    struct Probe {
        format: Option<String>,
    }
    let registry_file = serde_json::from_slice::<Probe>(&bytes).is_ok_and(|p| p.format.is_some());
    if !registry_file {
        let model = RulModel::load(path).map_err(|e| e.to_string())?;
        return Ok(LoadedRulModel::standalone(Arc::new(model)));
    }
    let stored = LocalRegistry::read_model(path).map_err(|e| e.to_string())?;
    let model_type = stored.model_type();
    let model = stored.into_rul().ok_or_else(|| {
        format!(
            "{}: not a RUL model (model_type {model_type})",
            path.display()
        )
    })?;
    #[derive(Deserialize)]
    struct Meta {
        id: String,
    }
    let id = std::fs::read(path.with_file_name("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
        .map_or_else(|| path.display().to_string(), |m| m.id);
    Ok(LoadedRulModel::new(model, id))
}

/// A RUL model loaded once and shared by every worker, with the id predictions and maintenance alerts
/// carry as `model_version`: the registry id (`turbofan/v2`), or `<dataset>/rul/<version>` for a
/// standalone file.
#[derive(Clone)]
pub struct LoadedRulModel {
    pub model: Arc<RulModel>,
    pub id: String,
}

impl LoadedRulModel {
    pub fn new(model: Arc<RulModel>, id: impl Into<String>) -> Self {
        LoadedRulModel {
            model,
            id: id.into(),
        }
    }

    /// A model from a standalone file, named by its own dataset and version.
    pub fn standalone(model: Arc<RulModel>) -> Self {
        let id = format!("{}/rul/{}", model.meta.dataset, model.meta.version);
        LoadedRulModel { model, id }
    }
}

impl std::fmt::Debug for LoadedRulModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RulModel({})", self.id)
    }
}

/// The interval around the RUL, cycles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    /// Nominal coverage (0.9 = 90 %).
    pub level: f64,
}

/// A sensor far from its healthy baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    pub feature: String,
    /// Deviation of the long-window mean from the healthy-fleet mean, in healthy standard deviations.
    pub z: f64,
}

/// One prediction for one thing (the `/api/v1/predictions` and Kafka object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub thing_id: Name,
    pub equipment_type: Name,
    /// Event time of the reading predicted from, epoch ms.
    pub ts: i64,
    /// Readings (cycles) seen for this thing.
    pub cycles: usize,
    /// Remaining useful life, cycles (capped at the model's cap: "cap" means "at least the cap").
    pub rul: f64,
    pub rul_hours: f64,
    pub interval: Interval,
    /// rul / cap: 1 healthy, 0 at end of life.
    pub health_index: f64,
    pub failure_probability_24h: f64,
    pub failure_probability_72h: f64,
    /// Least-squares change of RUL per cycle over recent predictions: about 0 while healthy, -1 when
    /// wearing at the nominal rate, below -1 when degrading faster.
    pub degradation_trend: f64,
    pub contributing_factors: Vec<Factor>,
    pub recommended_action: String,
    /// True when the RUL is within the configured alert horizon.
    pub maintenance_due: bool,
    /// The model that predicted: its registry id (`turbofan/v2`), or `<dataset>/rul/<version>` for a
    /// standalone model file.
    pub model_version: String,
}

/// Point prediction plus what follows from the model alone (no per-thing history).
pub fn assess(
    model: &RulModel,
    features: &[f64],
    rul: f64,
    cfg: &RulConfig,
) -> (Interval, f64, f64, Vec<Factor>) {
    let (lower, upper) = model.conformal.interval(rul);
    let h = |hours: f64| hours / cfg.hours_per_cycle;
    let p24 = model.conformal.prob_within(rul, h(24.0));
    let p72 = model.conformal.prob_within(rul, h(72.0)).max(p24);
    (
        Interval {
            lower,
            upper,
            level: 1.0 - model.conformal.alpha,
        },
        p24,
        p72,
        factors(model, features),
    )
}

/// Top three sensors by |z| of their long-window mean against the healthy baseline (|z| >= 1 only).
fn factors(model: &RulModel, features: &[f64]) -> Vec<Factor> {
    let names = model.spec.names();
    let mut f: Vec<Factor> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.ends_with("_mean_long"))
        .filter_map(|(j, n)| {
            let (m, s) = model.healthy[j];
            (s > 0.0).then(|| Factor {
                feature: n.trim_end_matches("_mean_long").to_string(),
                z: (features[j] - m) / s,
            })
        })
        .filter(|f| f.z.abs() >= 1.0)
        .collect();
    f.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
    f.truncate(3);
    for x in &mut f {
        x.z = (x.z * 100.0).round() / 100.0;
    }
    f
}

/// Recommended action by RUL band, in hours.
pub fn recommended_action(rul_hours: f64, horizon_hours: f64) -> String {
    if rul_hours <= 24.0 {
        "Stop at the next opportunity and replace or overhaul: end of life within a day".into()
    } else if rul_hours <= horizon_hours {
        format!("Schedule maintenance within {:.0} h", rul_hours.floor())
    } else if rul_hours <= 3.0 * horizon_hours.max(24.0) {
        "Plan maintenance at the next scheduled stop; order parts".into()
    } else {
        "No action: keep monitoring".into()
    }
}

/// A due thing's maintenance alert re-arms when its RUL exceeds the horizon times this.
const REARM_FACTOR: f64 = 1.25;

/// Per-thing live state.
#[derive(Debug)]
struct ThingState {
    builder: FeatureBuilder,
    smoother: Smoother,
    last_emit: Option<i64>,
    /// (cycles, rul) of recent predictions, for the trend.
    recent: VecDeque<(f64, f64)>,
    due: bool,
}

/// Live RUL predictor: feed every reading of every thing; returns a prediction when one is due.
pub struct RulTracker {
    model: Arc<RulModel>,
    cfg: RulConfig,
    things: FxHashMap<Name, ThingState>,
    vals: Vec<f64>,
    row: Vec<f64>,
    version: String,
}

impl RulTracker {
    pub fn new(loaded: LoadedRulModel, cfg: RulConfig) -> Result<Self, RulError> {
        cfg.validate().map_err(RulError::Data)?;
        let LoadedRulModel { model, id: version } = loaded;
        Ok(RulTracker {
            vals: vec![0.0; model.spec.sensors.len()],
            row: Vec::with_capacity(model.spec.len()),
            model,
            cfg,
            things: FxHashMap::default(),
            version,
        })
    }

    /// Things tracked.
    pub fn things(&self) -> usize {
        self.things.len()
    }

    /// Feeds one reading. A reading lacking one of the model's sensors is rejected (error) and leaves
    /// the thing's state untouched. Returns a prediction when `emit_every_s` of event time has passed
    /// since the thing's last one (the first reading always predicts).
    pub fn observe(&mut self, p: &Point) -> Result<Option<Prediction>, RulError> {
        for (v, name) in self.vals.iter_mut().zip(&self.model.spec.sensors) {
            *v = p.value(name).ok_or_else(|| {
                RulError::Data(format!("thing {}: reading lacks sensor {name}", p.thing_id))
            })?;
        }
        let model = &self.model;
        let st = self
            .things
            .entry(p.thing_id.clone())
            .or_insert_with(|| ThingState {
                builder: FeatureBuilder::new(&model.spec),
                smoother: model.smoother(),
                last_emit: None,
                recent: VecDeque::new(),
                due: false,
            });
        st.builder.push(&self.vals, &mut self.row);
        // Every reading is predicted (a few microseconds) so the smoothing sees every cycle; only
        // emission is periodic.
        let raw = model.predict_rows(std::slice::from_ref(&self.row))?[0];
        let rul = st.smoother.push(raw);
        let period = i64::try_from(self.cfg.emit_every_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        if st
            .last_emit
            .is_some_and(|last| p.ts.saturating_sub(last) < period)
        {
            return Ok(None);
        }
        st.last_emit = Some(p.ts);
        let (interval, p24, p72, factors) = assess(model, &self.row, rul, &self.cfg);
        let cycles = st.builder.cycles();
        if st.recent.len() == self.cfg.trend_window {
            st.recent.pop_front();
        }
        st.recent.push_back((cycles as f64, rul));
        let rul_hours = rul * self.cfg.hours_per_cycle;
        let due = rul_hours <= self.cfg.alert_horizon_hours;
        // Hysteresis: once due, the alert re-arms only when the RUL climbs clearly back above the
        // horizon, so a prediction wobbling around it does not alert at every wobble.
        if due {
            st.due = true;
        } else if rul_hours > self.cfg.alert_horizon_hours * REARM_FACTOR {
            st.due = false;
        }
        Ok(Some(Prediction {
            thing_id: p.thing_id.clone(),
            equipment_type: p.equipment_type.clone(),
            ts: p.ts,
            cycles,
            rul,
            rul_hours,
            interval,
            health_index: rul / model.meta.cap,
            failure_probability_24h: p24,
            failure_probability_72h: p72,
            degradation_trend: trend(&st.recent),
            contributing_factors: factors,
            recommended_action: recommended_action(rul_hours, self.cfg.alert_horizon_hours),
            maintenance_due: due,
            model_version: self.version.clone(),
        }))
    }

    /// Lets the thing's next prediction inside the horizon raise its maintenance alert again (the
    /// alert policy suppressed this one by its rate limit: another alert of the thing came just before).
    pub fn rearm(&mut self, thing_id: &str) {
        if let Some(st) = self.things.get_mut(thing_id) {
            st.due = false;
        }
    }

    /// Feeds one reading and also returns a maintenance alert when the thing has just crossed into
    /// the alert horizon (once per crossing; it re-arms when the RUL climbs back above it).
    pub fn observe_with_alert(
        &mut self,
        p: &Point,
    ) -> Result<(Option<Prediction>, Option<Alert>), RulError> {
        let was_due = self.things.get(&p.thing_id).is_some_and(|s| s.due);
        let pred = self.observe(p)?;
        let alert = match &pred {
            Some(pr) if pr.maintenance_due && !was_due => {
                Some(maintenance_alert(pr, p.origin.clone()))
            }
            _ => None,
        };
        Ok((pred, alert))
    }
}

/// Least-squares slope of RUL against cycles; 0 with fewer than two points.
fn trend(recent: &VecDeque<(f64, f64)>) -> f64 {
    let n = recent.len() as f64;
    if recent.len() < 2 {
        return 0.0;
    }
    let mx = recent.iter().map(|r| r.0).sum::<f64>() / n;
    let my = recent.iter().map(|r| r.1).sum::<f64>() / n;
    let sxx: f64 = recent.iter().map(|r| (r.0 - mx).powi(2)).sum();
    let sxy: f64 = recent.iter().map(|r| (r.0 - mx) * (r.1 - my)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// The maintenance alert for a prediction that crossed the horizon, in the common alert shape, so it
/// goes through the same alert policy and sinks as anomaly alerts.
pub fn maintenance_alert(p: &Prediction, origin: Origin) -> Alert {
    let alert_type = "maintenance_due";
    let severity = if p.rul_hours <= 24.0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let total: f64 = p.contributing_factors.iter().map(|f| f.z.abs()).sum();
    let top_features = p
        .contributing_factors
        .iter()
        .map(|f| FeatureContribution {
            feature: Name::from(f.feature.as_str()),
            contribution: if total > 0.0 { f.z / total } else { 0.0 },
        })
        .collect();
    let mut families = BTreeMap::new();
    families.insert("other".to_string(), 1.0);
    Alert {
        alert_id: alert_id(&p.thing_id, alert_type, p.ts),
        thing_id: p.thing_id.clone(),
        equipment_type: p.equipment_type.clone(),
        ts: p.ts,
        severity,
        source: "rul".into(),
        alert_type: alert_type.into(),
        score: (1.0 - p.health_index).clamp(0.0, 1.0),
        model_version: p.model_version.clone(),
        top_features,
        families,
        explanation: format!(
            "predicted RUL {:.0} cycles ({:.0} h, {:.0}% interval {:.0}-{:.0}); failure probability 72 h {:.0}%; {}",
            p.rul,
            p.rul_hours,
            p.interval.level * 100.0,
            p.interval.lower,
            p.interval.upper,
            p.failure_probability_72h * 100.0,
            p.recommended_action
        ),
        input_offsets: origin,
        label: None,
        detectors: Vec::new(),
    }
}
