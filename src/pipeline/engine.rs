//! Per-thing processing: the state each thing keeps and what happens to one reading.
//!
//! This is everything the dataflow does per record, free of timely so it can be unit tested and
//! benchmarked on its own. The dataflow (`pipeline::run`) shards things over workers and feeds each
//! worker's [`Engine`] its things' readings in a deterministic order.

use crate::config::DataflowConfig;
use crate::decode::{DeadLetter, MalformedReason};
use crate::detectors::mahalanobis::OnlineMahalanobis;
use crate::detectors::normalise;
use crate::detectors::regimes::{self, Assignment, Regimes};
use crate::detectors::sensor_faults::{FaultEvent, SensorFaultDetector};
use crate::detectors::stats::{FeatureScores, StatsParams, StatsSet};
use crate::event::{
    alert_id, same_bytes, Alert, DetectorAttribution, Name, Point, RegimeAttribution, ScoreLine,
    Severity,
};
use crate::explain::{alert_type_for, explain, round4, top_contributions, Explanation};
use crate::features::DerivedPlan;
use crate::policy::{PolicyState, PolicyWindows, Suppressed};
use crate::registry::{ActiveModel, ModelSnapshot};
use crate::rul::predict::{Prediction, RulTracker};
use crate::rules::{
    evaluate_shared, Readings, RuleCache, RuleHit, RuleSet, RuleState, RulesHandle,
};
use crate::sql_features::{StreamEvaluator, ThingWindows};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A record entering the per-thing stage: a decoded reading (with its ingest instant, nanoseconds on
/// the process clock of [`crate::pipeline::clock_ns`]) or a message that failed to decode.
/// Serialized (between processes only) by `pipeline::wire`.
#[derive(Clone, Debug)]
pub enum Record {
    Point(Point, u64),
    Dead(DeadLetter),
}

impl Record {
    /// Order key within an epoch.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Point(p, _) => p.seq,
            Record::Dead(d) => d.seq,
        }
    }
}

/// What the per-thing stage emits.
/// Serialized (between processes only) by `pipeline::wire`.
#[derive(Clone, Debug)]
pub enum Output {
    Alert(Alert),
    Score(ScoreLine),
    Dead(DeadLetter),
    /// A remaining-useful-life prediction (dataflows with a `rul` section).
    Prediction(Box<Prediction>),
}

/// Counters a worker accumulates between metric flushes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub points: u64,
    pub malformed: [u64; MalformedReason::ALL.len()],
    pub anomalies: u64,
    pub alerts: u64,
    pub suppressed_dedup: u64,
    pub suppressed_rate: u64,
    /// RUL predictions emitted.
    pub predictions: u64,
    /// Readings of tracked things the RUL model could not use (a model sensor missing).
    pub rul_skipped: u64,
}

impl Counters {
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
    /// Counts an alert candidate the policy suppressed.
    fn suppressed(&mut self, why: Suppressed, alert_type: &str) {
        match why {
            Suppressed::Dedup => {
                tracing::trace!(alert_type, "alert suppressed (dedup)");
                self.suppressed_dedup += 1;
            }
            Suppressed::RateLimit => {
                tracing::debug!(alert_type, "alert suppressed (rate limit)");
                self.suppressed_rate += 1;
            }
        }
    }
    fn count_dead(&mut self, reason: &str) {
        if let Some(i) = MalformedReason::ALL
            .iter()
            .position(|r| r.as_str() == reason)
        {
            self.malformed[i] += 1;
        }
    }
}

/// After this many consecutive anomalous readings the model learns again: the new behaviour is the
/// new normal (a permanent re-rating of the machine), and alerting on it forever helps nobody.
const MAX_FROZEN_READINGS: u32 = 600;

/// The statistics' settings of a dataflow.
fn stats_params(cfg: &DataflowConfig) -> StatsParams {
    StatsParams::new(
        cfg.detectors.stats.estimator,
        cfg.window,
        cfg.detectors.ewma_alpha,
    )
}

/// Source of [`Layout::id`]s, unique in the process.
static NEXT_LAYOUT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// All per-thing state of one worker, plus the configuration it runs with.
pub struct Engine {
    cfg: Arc<DataflowConfig>,
    windows: PolicyWindows,
    rules: RulesHandle,
    rule_set: Arc<RuleSet>,
    rule_generation: u64,
    /// Boxed: the table then holds a pointer per thing, so its unused slots (up to half of them
    /// after a resize) cost 8 bytes each instead of a whole state.
    things: hashbrown::HashMap<Name, Box<ThingState>, FxBuildHasher>,
    /// Layouts and settings the things share.
    shared: Shared,
    /// Remaining-useful-life state per thing (dataflows with a `rul` section and a loaded model).
    rul: Option<RulTracker>,
    emit_scores: bool,
    pub counters: Counters,
    /// Ingest-to-emit latencies (ns) of alerts since the last drain.
    pub alert_latencies_ns: Vec<u64>,
    /// Type and severity of every alert candidate (before the policy) since the last drain.
    pub anomaly_kinds: Vec<(String, Severity)>,
    scratch: Scratch,
}

struct Scratch {
    model: Vec<f64>,
    /// Per-feature contributions to T^2 of the online (or regime) model that scored the reading,
    /// filled only when it is anomalous (for its alert's explanation).
    model_contributions: Vec<f64>,
    feature_scores: Vec<FeatureScores>,
    per_feature: Vec<f64>,
    /// The model's smoothed T^2 of the reading being scored (learned into the thing's state after).
    t2_smoothed: Option<f64>,
    /// Sensor faults that started or cleared on the reading being processed.
    fault_events: Vec<FaultEvent>,
    /// The layout slot of each value of the reading being processed (`usize::MAX`: none).
    value_slots: Vec<usize>,
    /// The address of the thing state the previous reading touched (see `process_point`): only a
    /// hint, so a state freed and another allocated at the same address costs nothing but a touch.
    touched: usize,
    /// The registry model's input row of the reading being scored, and its raw score.
    registry_row: Vec<f64>,
    registry_score: f64,
    /// The reading's operating regime (things with fitted regimes), its standardised regime features
    /// and the terms of its distance from the regime.
    regime: Option<Assignment>,
    regime_by: Vec<f64>,
    regime_z: Vec<f64>,
    regime_terms: Vec<f64>,
    /// The regime model's smoothed T^2 of the reading, and (within, distance) scores, when a regime
    /// scored it.
    regime_t2_smoothed: Option<f64>,
    regime_scores: Option<(f64, f64)>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            model: Vec::new(),
            model_contributions: Vec::new(),
            feature_scores: Vec::new(),
            per_feature: Vec::new(),
            t2_smoothed: None,
            fault_events: Vec::new(),
            value_slots: Vec::new(),
            touched: 0,
            registry_row: Vec::new(),
            registry_score: f64::NAN,
            regime: None,
            regime_by: Vec::new(),
            regime_z: Vec::new(),
            regime_terms: Vec::new(),
            regime_t2_smoothed: None,
            regime_scores: None,
        }
    }
}

struct ThingState {
    /// Feature names and what follows from them, shared by every thing with the same equipment type
    /// and features.
    layout: Arc<Layout>,
    /// The loaded reading's values, the previous reading's and which slots the loaded reading has.
    slots: Slots,
    stats: StatsSet,
    /// The online model (None when `detectors.model.enabled` is off).
    online: Option<Box<Online>>,
    rule_state: RuleState,
    /// Instrument faults of this thing's sensors (None when `sensor_faults.enabled` is off).
    faults: Option<Box<SensorFaultDetector>>,
    /// Readings learned, saturating: only compared with the warm-up length (a `u32` beside
    /// `consecutive_anomalous` keeps the struct in a smaller allocator size class, issue 7).
    learned: u32,
    /// Timestamp of the newest reading (`i64::MIN` before the first); the previous reading's, for
    /// rate-of-change, while a reading is being processed.
    last_ts: i64,
    consecutive_anomalous: u32,
    /// The alert policy's state, allocated at the thing's first anomaly or alert (most things have
    /// none).
    policy: Option<Box<PolicyState>>,
    /// SQL features, registry binding and operating regimes: None unless the dataflow uses one.
    extras: Option<Box<Extras>>,
}

/// The parts of a thing's state only some dataflows use, boxed together so that a thing without them
/// pays one pointer (issue 7: memory per thing).
#[derive(Default)]
struct Extras {
    /// The dataflow's SQL feature set (`features.sql`), when configured: its outputs are the derived
    /// features instead of the built-in ones.
    sql: Option<SqlFeatures>,
    /// The registry model that scores this thing, if the dataflow has a `models` section.
    registry: Option<RegistryBinding>,
    /// Operating regimes (`detectors.regimes`; None when off).
    regimes: Option<RegimePhase>,
    /// Slots (indices into the values) of the regime features.
    regime_slots: Vec<usize>,
}

impl Extras {
    /// Bytes of the box and of the slot lists it owns (not of SQL windows or fitted regimes).
    fn bytes(&self) -> usize {
        std::mem::size_of::<Extras>()
            + self.registry.as_ref().map_or(0, |b| b.slots.capacity() * 8)
            + self.regime_slots.capacity() * 8
    }
}

/// A thing's values by slot in one allocation (issue 7: each allocation costs a size class's
/// slack): `n` current values, `n` previous values, then one presence byte per slot (1: the loaded
/// reading has the slot) in the room of `ceil(n / 8)` more floats.
#[derive(Default)]
struct Slots(Box<[f64]>);

impl Slots {
    /// `n` slots: values and previous values NaN, nothing present.
    fn new(n: usize) -> Slots {
        let mut buf = vec![f64::NAN; 2 * n + n.div_ceil(8)];
        buf[2 * n..].fill(0.0);
        Slots(buf.into_boxed_slice())
    }

    /// Slots with these contents (all three of one length).
    fn from_parts(values: &[f64], prev_values: &[f64], present: &[bool]) -> Slots {
        let mut s = Slots::new(values.len());
        s.values_mut().copy_from_slice(values);
        s.prev_values_mut().copy_from_slice(prev_values);
        for (p, &b) in s.present_mut().iter_mut().zip(present) {
            *p = u8::from(b);
        }
        s
    }

    /// The slot count: the buffer holds `2n + ceil(n / 8)` floats, and `8 (2n + ceil(n / 8)) / 17`
    /// is `n` for every `n` (n = 8k + r: `8 (17k + 2r + [r > 0]) / 17 = 8k + r`, r < 8).
    fn len(&self) -> usize {
        self.0.len() * 8 / 17
    }

    fn values(&self) -> &[f64] {
        &self.0[..self.len()]
    }

    /// The value of slot `i` (< `len()`, not checked: the rules call this per value, and the slot
    /// count costs a division).
    fn value(&self, i: usize) -> f64 {
        self.0[i]
    }

    fn values_mut(&mut self) -> &mut [f64] {
        let n = self.len();
        &mut self.0[..n]
    }

    fn prev_values(&self) -> &[f64] {
        let n = self.len();
        &self.0[n..2 * n]
    }

    fn prev_values_mut(&mut self) -> &mut [f64] {
        let n = self.len();
        &mut self.0[n..2 * n]
    }

    /// Presence flags (0 or 1) by slot.
    fn present(&self) -> &[u8] {
        let n = self.len();
        &bytemuck::cast_slice::<f64, u8>(&self.0[2 * n..])[..n]
    }

    fn present_mut(&mut self) -> &mut [u8] {
        self.values_present_mut().1
    }

    fn values_present_mut(&mut self) -> (&mut [f64], &mut [u8]) {
        let n = self.len();
        let (values, rest) = self.0.split_at_mut(n);
        let present = &mut bytemuck::cast_slice_mut::<f64, u8>(&mut rest[n..])[..n];
        (values, present)
    }

    /// The loaded reading's values becoming the previous ones, no slot present.
    fn advance(&mut self) {
        let n = self.len();
        let (values, rest) = self.0.split_at_mut(n);
        rest[..n].copy_from_slice(values);
        rest[n..].fill(0.0);
    }

    /// The previous values becoming the loaded ones again (an out-of-order reading is forgotten).
    fn undo(&mut self) {
        let n = self.len();
        let (values, rest) = self.0.split_at_mut(n);
        values.copy_from_slice(&rest[..n]);
    }

    /// Bytes of the buffer.
    fn bytes(&self) -> usize {
        self.0.len() * 8
    }
}

/// A feature layout: the names of a thing's features and what the configuration derives from them.
/// Interned per engine ([`Layouts`]): things reporting the same sensors share one.
#[derive(Debug)]
struct Layout {
    /// Unique in the process; rules resolve their features to slots per layout id.
    id: u64,
    /// The equipment type of the things with this layout (a thing's first reading's).
    equipment_type: Name,
    /// Raw features first (`n_raw`), then derived ones.
    names: Vec<Name>,
    n_raw: usize,
    plan: DerivedPlan,
    /// Slots (indices into `values`) of the model's features, and each slot's model position.
    model_slots: Vec<usize>,
    model_pos: Vec<Option<usize>>,
}

/// What one engine's things share: their layouts, by (equipment type, raw feature count, names), and
/// the sensor-fault settings.
struct Shared {
    layouts: FxHashMap<(Name, usize, Vec<Name>), Arc<Layout>>,
    /// Table size at which unused layouts are swept next.
    sweep_at: usize,
    /// The rules' resolution per (equipment type, layout).
    rules: RuleCache,
    faults: Arc<crate::detectors::sensor_faults::SensorFaultConfig>,
}

impl Shared {
    fn new(cfg: &DataflowConfig) -> Shared {
        Shared {
            layouts: FxHashMap::default(),
            sweep_at: 64,
            rules: RuleCache::default(),
            faults: Arc::new(cfg.sensor_faults.clone()),
        }
    }

    /// The shared layout of these features (`names` = raw then derived) for this equipment type.
    fn get(
        &mut self,
        equipment_type: &Name,
        names: Vec<Name>,
        n_raw: usize,
        plan: DerivedPlan,
        cfg: &DataflowConfig,
    ) -> Arc<Layout> {
        let key = (equipment_type.clone(), n_raw, names);
        if let Some(l) = self.layouts.get(&key) {
            return Arc::clone(l);
        }
        let names = key.2.clone();
        let (model_slots, model_pos) = model_slots(&names, cfg);
        let layout = Arc::new(Layout {
            id: NEXT_LAYOUT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            equipment_type: equipment_type.clone(),
            names,
            n_raw,
            plan,
            model_slots,
            model_pos,
        });
        // Layouts no thing uses any more (a thing that gained a sensor moved to a new one) are
        // dropped whenever the table has doubled since the last sweep.
        if self.layouts.len() >= self.sweep_at {
            self.layouts.retain(|_, l| Arc::strong_count(l) > 1);
            self.sweep_at = (2 * self.layouts.len()).max(64);
        }
        self.layouts.insert(key, Arc::clone(&layout));
        layout
    }
}

/// A thing's online model and its per-thing scoring state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Online {
    model: OnlineMahalanobis,
    /// The current reading's model features (gathered from `values`).
    model_x: Vec<f64>,
    /// EWMA of the model's T^2 (`detectors.model.smoothing`).
    t2_smooth: Option<f64>,
    /// Warm-up model vectors kept for threshold calibration (flattened), freed once calibrated.
    warm_buffer: Vec<f64>,
    /// This thing's calibrated T^2 threshold (`detectors.model.calibration_quantile`).
    t2_threshold: Option<f64>,
}

impl Online {
    fn new(dim: usize, cfg: &DataflowConfig) -> Online {
        Online {
            model: OnlineMahalanobis::new(dim, &cfg.detectors.model),
            model_x: vec![f64::NAN; dim],
            t2_smooth: None,
            warm_buffer: Vec::new(),
            t2_threshold: None,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.model.heap_bytes() + (self.model_x.capacity() + self.warm_buffer.capacity()) * 8
    }
}

/// Bytes one thing's state takes, by part (see `ThingState::footprint`): a lower bound of its
/// memory (SQL window contents, fitted regimes and allocator overheads are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Features (slots) of the thing; not bytes, not in [`Footprint::total`].
    pub features: usize,
    /// The state struct itself.
    pub state: usize,
    /// Current and previous values and presence flags.
    pub values: usize,
    /// Per-feature statistics.
    pub stats: usize,
    /// The online model, its warm-up buffer and scoring state.
    pub model: usize,
    /// Sensor-fault state.
    pub sensor_faults: usize,
    /// Rule state (counters and resolved features).
    pub rules: usize,
    /// Alert-policy state.
    pub policy: usize,
    /// SQL feature, registry-binding and regime state.
    pub other: usize,
}

impl Footprint {
    pub fn total(&self) -> usize {
        self.state
            + self.values
            + self.stats
            + self.model
            + self.sensor_faults
            + self.rules
            + self.policy
            + self.other
    }
}

/// Where a thing is with its operating regimes.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum RegimePhase {
    /// Keeping its learnable readings (regime features, then model features, row-major) until
    /// `detectors.regimes.warmup` readings have been seen.
    Learning {
        by: Vec<f64>,
        x: Vec<f64>,
        seen: usize,
    },
    /// No regimes (a regime feature missing, or no distinct phases): plain scoring.
    Plain,
    Fitted(Box<Regimes>),
}

/// A thing's registry model and where its features sit among the thing's slots, resolved against one
/// snapshot generation and one feature layout (either changing re-resolves it).
#[derive(Default)]
struct RegistryBinding {
    generation: u64,
    layout_id: u64,
    model: Option<Arc<ActiveModel>>,
    /// Slot in `values` of each of the model's features, in the model's order.
    slots: Vec<usize>,
}

impl RegistryBinding {
    fn is_current(&self, generation: u64, layout_id: u64) -> bool {
        self.generation == generation && self.layout_id == layout_id
    }
}

/// A thing's SQL feature state: its windows and where the set's inputs sit among the raw slots.
struct SqlFeatures {
    eval: StreamEvaluator,
    windows: ThingWindows,
    /// Raw slot of each input of the set (`None`: this thing has no such sensor, the input is NULL).
    input_slots: Vec<Option<usize>>,
    inputs: Vec<Option<f64>>,
    outputs: Vec<Option<f64>>,
}

impl SqlFeatures {
    fn new(eval: StreamEvaluator) -> SqlFeatures {
        SqlFeatures {
            windows: eval.new_thing(),
            input_slots: Vec::new(),
            inputs: vec![None; eval.inputs().len()],
            outputs: vec![None; eval.outputs().len()],
            eval,
        }
    }

    /// Evaluates the reading (every reading advances the windows); false when a feature is NULL or not
    /// finite (window warm-up, a missing sensor), so the reading cannot be scored as a whole.
    fn compute(&mut self, raw: &[f64], derived: &mut [f64]) -> bool {
        for (x, slot) in self.inputs.iter_mut().zip(&self.input_slots) {
            *x = slot.map(|s| raw[s]).filter(|v| !v.is_nan());
        }
        self.eval
            .evaluate(&mut self.windows, &self.inputs, &mut self.outputs);
        let mut complete = true;
        for (d, o) in derived.iter_mut().zip(&self.outputs) {
            *d = o.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
            complete &= d.is_finite();
        }
        complete
    }
}

impl ThingState {
    fn new(p: &Point, cfg: &DataflowConfig, shared: &mut Shared) -> ThingState {
        let raw: Vec<Name> = p.values.iter().map(|(n, _)| n.clone()).collect();
        let mut t = ThingState {
            layout: shared.get(
                &p.equipment_type,
                Vec::new(),
                0,
                DerivedPlan::default(),
                cfg,
            ),
            slots: Slots::default(),
            stats: StatsSet::new(&stats_params(cfg)),
            online: None,
            rule_state: RuleState::default(),
            faults: cfg
                .sensor_faults
                .enabled
                .then(|| Box::new(SensorFaultDetector::new(Arc::clone(&shared.faults)))),
            learned: 0,
            last_ts: i64::MIN,
            consecutive_anomalous: 0,
            policy: None,
            extras: cfg.features.sql_set.as_ref().map(|set| {
                Box::new(Extras {
                    sql: Some(SqlFeatures::new(set.evaluator())),
                    ..Extras::default()
                })
            }),
        };
        t.set_layout(raw, cfg, shared);
        t
    }

    fn names(&self) -> &[Name] {
        &self.layout.names
    }

    fn equipment_type(&self) -> &Name {
        &self.layout.equipment_type
    }

    /// The previous reading's timestamp: the newest one's while a reading is being processed (None
    /// before the first).
    fn prev_ts(&self) -> Option<i64> {
        (self.last_ts != i64::MIN).then_some(self.last_ts)
    }

    fn sql(&self) -> Option<&SqlFeatures> {
        self.extras.as_ref().and_then(|e| e.sql.as_ref())
    }

    fn registry(&self) -> Option<&RegistryBinding> {
        self.extras.as_ref().and_then(|e| e.registry.as_ref())
    }

    fn regimes(&self) -> Option<&RegimePhase> {
        self.extras.as_ref().and_then(|e| e.regimes.as_ref())
    }

    fn regime_slots(&self) -> &[usize] {
        self.extras.as_ref().map_or(&[], |e| &e.regime_slots)
    }

    /// Bytes this thing's state takes, by part: the state struct itself (boxed in the engine's
    /// table) and the heap it owns, by allocated capacity. The layout (feature names, slots) is
    /// shared by every thing with the same features and not counted; nor are allocator overheads.
    fn footprint(&self) -> Footprint {
        Footprint {
            features: self.slots.len(),
            state: std::mem::size_of::<ThingState>(),
            values: self.slots.bytes(),
            stats: self.stats.heap_bytes(),
            model: self
                .online
                .as_ref()
                .map_or(0, |o| std::mem::size_of::<Online>() + o.heap_bytes()),
            sensor_faults: self.faults.as_ref().map_or(0, |f| {
                std::mem::size_of::<SensorFaultDetector>() + f.heap_bytes()
            }),
            rules: self.rule_state.heap_bytes(),
            policy: self
                .policy
                .as_ref()
                .map_or(0, |p| std::mem::size_of::<PolicyState>() + p.heap_bytes()),
            other: self.extras.as_ref().map_or(0, |e| e.bytes()),
        }
    }

    /// The online model's features of the loaded reading (empty without the online model).
    fn model_x(&self) -> &[f64] {
        self.online.as_ref().map_or(&[], |o| &o.model_x)
    }

    /// (Re)builds the feature layout; statistics of features that remain are kept, the multivariate
    /// model restarts because its dimensions changed.
    fn set_layout(&mut self, raw: Vec<Name>, cfg: &DataflowConfig, shared: &mut Shared) {
        let (plan, derived) = match self.extras.as_mut().and_then(|e| e.sql.as_mut()) {
            // The SQL set replaces the built-in derived features; its windows survive a layout change.
            Some(sql) => {
                sql.input_slots = sql
                    .eval
                    .inputs()
                    .iter()
                    .map(|i| raw.iter().position(|n| n.as_str() == i.as_str()))
                    .collect();
                let names = sql.eval.outputs().iter().map(|o| Name::from(o.as_str()));
                (DerivedPlan::default(), names.collect())
            }
            None => DerivedPlan::new(&raw, &cfg.features),
        };
        let n_raw = raw.len();
        let names: Vec<Name> = raw.into_iter().chain(derived).collect();
        // Where each new slot's state comes from (None: a new feature).
        let from: Vec<Option<usize>> = names
            .iter()
            .map(|n| self.names().iter().position(|o| o == n))
            .collect();
        let mut slots = Slots::new(names.len());
        let carry = |old: &[f64], new: &mut [f64]| {
            for (x, f) in new.iter_mut().zip(&from) {
                *x = f.and_then(|i| old.get(i).copied()).unwrap_or(f64::NAN);
            }
        };
        carry(self.slots.values(), slots.values_mut());
        carry(self.slots.prev_values(), slots.prev_values_mut());
        self.slots = slots;
        self.stats.relayout(&from, &stats_params(cfg));
        let d = &cfg.detectors;
        let equipment_type = self.layout.equipment_type.clone();
        self.layout = shared.get(&equipment_type, names, n_raw, plan, cfg);
        let names = &self.layout.names;
        let model_slots = &self.layout.model_slots;
        self.online = d
            .model
            .enabled
            .then(|| Box::new(Online::new(model_slots.len(), cfg)));
        if let Some(rc) = &d.regimes {
            // The regimes restart with the model: their models have its dimensions.
            let slots: Option<Vec<usize>> = if rc.by.is_empty() {
                Some(model_slots.clone())
            } else {
                rc.by
                    .iter()
                    .map(|b| names.iter().position(|n| n == b.as_str()))
                    .collect()
            };
            let extras = self.extras.get_or_insert_with(Box::default);
            extras.regimes = Some(match slots {
                Some(slots) if !slots.is_empty() => {
                    extras.regime_slots = slots;
                    RegimePhase::Learning {
                        by: Vec::new(),
                        x: Vec::new(),
                        seen: 0,
                    }
                }
                _ => {
                    tracing::warn!(by = ?rc.by, "the thing lacks a regime feature; scored without regimes");
                    extras.regime_slots.clear();
                    RegimePhase::Plain
                }
            });
        }
    }

    /// Writes the reading's values into their slots, and each value's slot into `slots` (`usize::MAX`
    /// for none); false if a name has no slot yet.
    fn write_values(&mut self, p: &Point, slots: &mut Vec<usize>) -> bool {
        let mut all = true;
        slots.clear();
        let l = &*self.layout;
        let (values, present) = self.slots.values_present_mut();
        for (i, (name, v)) in p.values.iter().enumerate() {
            match slot_of(l, i, name) {
                Some(s) => {
                    values[s] = *v;
                    present[s] = 1;
                    slots.push(s);
                }
                None => {
                    all = false;
                    slots.push(usize::MAX);
                }
            }
        }
        all
    }

    /// Writes the reading into the slots (missing sensors keep their last value). Returns false when
    /// a slot has no value yet (a sensor never seen), so the reading cannot be scored as a whole.
    /// `slots` receives each value's slot (see [`ThingState::write_values`]).
    fn load(
        &mut self,
        p: &Point,
        cfg: &DataflowConfig,
        shared: &mut Shared,
        slots: &mut Vec<usize>,
    ) -> bool {
        self.slots.advance();
        if !self.write_values(p, slots) {
            // A sensor this thing has not reported before: rebuild the layout (rare), then write again.
            let new: Vec<Name> = p
                .values
                .iter()
                .enumerate()
                .filter(|(i, (n, _))| slot_of(&self.layout, *i, n).is_none())
                .map(|(_, (n, _))| n.clone())
                .collect();
            let raw: Vec<Name> = self.layout.names[..self.layout.n_raw]
                .iter()
                .cloned()
                .chain(new)
                .collect();
            tracing::info!(thing = %p.thing_id, features = raw.len(), "feature set changed; model restarts");
            self.set_layout(raw, cfg, shared);
            let complete = self.write_values(p, slots);
            debug_assert!(complete, "every name has a slot after the layout update");
        }
        let n_raw = self.layout.n_raw;
        let (values, present) = self.slots.values_present_mut();
        let (raw, derived) = values.split_at_mut(n_raw);
        let sql_complete = self
            .extras
            .as_mut()
            .and_then(|e| e.sql.as_mut())
            .is_none_or(|sql| sql.compute(raw, derived));
        if raw.iter().any(|v| v.is_nan()) || !sql_complete {
            return false;
        }
        self.layout.plan.compute(raw, derived);
        present[n_raw..].fill(1);
        if let Some(o) = self.online.as_mut() {
            for (x, &i) in o.model_x.iter_mut().zip(&self.layout.model_slots) {
                *x = values[i];
            }
        }
        true
    }

    /// Binds this thing to its scope's active model in `snap` (its thing id first, else its equipment
    /// class). A model whose features this thing does not have is not used (logged once per binding):
    /// scoring it on other features would be wrong, the online model scores instead.
    fn bind_registry(&mut self, thing_id: &str, snap: &ModelSnapshot, sql_hash: Option<&str>) {
        let b = self
            .extras
            .get_or_insert_with(Box::default)
            .registry
            .get_or_insert_with(RegistryBinding::default);
        b.generation = snap.generation;
        b.layout_id = self.layout.id;
        b.slots.clear();
        b.model = None;
        let Some(m) = snap.resolve(thing_id, &self.layout.equipment_type) else {
            return;
        };
        // A model trained on a SQL feature set scores only where the stream computes that same set
        // (same text, same hash): a same-named feature defined differently would be silently wrong.
        if let Some(trained) = m.sql_hash.as_deref() {
            if sql_hash != Some(trained) {
                tracing::warn!(thing = %thing_id, model = %m.id, model_sql_hash = trained, dataflow_sql_hash = ?sql_hash, "the model was trained on another SQL feature set; scored by the online model");
                return;
            }
        }
        for f in &m.features {
            match self.layout.names.iter().position(|n| n == f) {
                Some(slot) => b.slots.push(slot),
                None => {
                    tracing::warn!(thing = %thing_id, model = %m.id, feature = %f, "the thing lacks a feature of its scope's model; scored by the online model");
                    b.slots.clear();
                    return;
                }
            }
        }
        tracing::debug!(thing = %thing_id, model = %m.id, "thing bound to a registry model");
        b.model = Some(Arc::clone(m));
    }

    /// Gathers the registry model's features of the loaded reading into `row`; false when one is not
    /// finite (the reading is then scored by the online model).
    fn registry_row(&self, row: &mut Vec<f64>) -> bool {
        row.clear();
        if let Some(b) = self.registry() {
            let values = self.slots.values();
            row.extend(b.slots.iter().map(|&i| values[i]));
        }
        row.iter().all(|v| v.is_finite())
    }
}

impl Online {
    /// Sets this thing's T^2 threshold to the `q`-quantile of the (smoothed) T^2 of its warm-up readings
    /// under the model fitted on them, and starts the smoothing from the last of those values. Leaves
    /// the global threshold in force when the model cannot score yet. Frees the warm-up readings.
    fn calibrate(&mut self, q: f64, smoothing: f64) {
        let buf = std::mem::take(&mut self.warm_buffer);
        let dim = self.model.dim();
        if dim == 0 {
            return;
        }
        if let Some((thr, last)) =
            self.model
                .calibrated_threshold(buf.chunks_exact(dim), q, smoothing)
        {
            self.t2_threshold = Some(thr);
            self.t2_smooth = Some(last);
        }
    }
}

struct ThingReadings<'a> {
    t: &'a ThingState,
    ts: i64,
    in_order: bool,
}

impl Readings for ThingReadings<'_> {
    fn ts(&self) -> i64 {
        self.ts
    }
    fn value(&self, feature: &str) -> Option<f64> {
        let i = self.t.names().iter().position(|n| n == feature)?;
        Some(self.t.slots.values()[i]).filter(|v| !v.is_nan())
    }
    fn previous(&self, feature: &str) -> Option<(f64, i64)> {
        if !self.in_order {
            return None;
        }
        let ts = self.t.prev_ts()?;
        let i = self.t.names().iter().position(|n| n == feature)?;
        Some((self.t.slots.prev_values()[i], ts)).filter(|(v, _)| !v.is_nan())
    }
    fn feature_names(&self) -> Vec<&str> {
        self.t.names().iter().map(|n| n.as_str()).collect()
    }
    fn for_each_value<'a>(&'a self, f: &mut dyn FnMut(&'a str, f64)) {
        for (name, v) in self.t.names().iter().zip(self.t.slots.values()) {
            if !v.is_nan() {
                f(name.as_str(), *v);
            }
        }
    }
    fn layout(&self) -> Option<(u64, &[Name])> {
        Some((self.t.layout.id, self.t.names()))
    }
    fn value_at(&self, slot: usize) -> f64 {
        self.t.slots.value(slot)
    }
    fn name_at(&self, slot: usize) -> &str {
        &self.t.names()[slot]
    }
    fn previous_at(&self, slot: usize) -> Option<(f64, i64)> {
        if !self.in_order {
            return None;
        }
        let ts = self.t.prev_ts()?;
        Some((self.t.slots.prev_values()[slot], ts)).filter(|(v, _)| !v.is_nan())
    }
}

/// The slot of the reading's `i`-th value, named `name`: the `i`-th raw slot when the reading lists
/// its sensors in the layout's order (the usual case), else the raw slot of that name.
/// Inlined (it runs for every value of every reading; a call cost about as much as the compare),
/// with the search by name out of line.
#[inline(always)]
fn slot_of(l: &Layout, i: usize, name: &str) -> Option<usize> {
    if i < l.n_raw && same_bytes(l.names[i].as_bytes(), name.as_bytes()) {
        return Some(i);
    }
    raw_slot_by_name(l, name)
}

#[cold]
#[inline(never)]
fn raw_slot_by_name(l: &Layout, name: &str) -> Option<usize> {
    l.names[..l.n_raw].iter().position(|n| n == name)
}

/// One scored reading, before the alert policy.
struct Scored {
    ensemble: f64,
    stats: f64,
    model: Option<f64>,
    /// The model score came from the thing's registry model (else from the online model).
    by_registry: bool,
    anomalous: bool,
}

impl Engine {
    pub fn new(cfg: Arc<DataflowConfig>, rules: RulesHandle, emit_scores: bool) -> Engine {
        let (rule_set, rule_generation) = rules.current();
        // `pipeline::run` checks the section (and that its model is loaded) before building engines.
        let rul = match (&cfg.rul, &cfg.rul_model) {
            (Some(rc), Some(m)) => RulTracker::new(m.clone(), rc.clone()).ok(),
            _ => None,
        };
        let shared = Shared::new(&cfg);
        Engine {
            rul,
            windows: PolicyWindows::from(&cfg.policy),
            cfg,
            rules,
            rule_set,
            rule_generation,
            things: hashbrown::HashMap::default(),
            shared,
            emit_scores,
            counters: Counters::default(),
            alert_latencies_ns: Vec::new(),
            anomaly_kinds: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Picks up reloaded rules; call once per batch.
    pub fn refresh_rules(&mut self) {
        let (set, generation) = self.rules.current();
        if generation != self.rule_generation {
            self.rule_set = set;
            self.rule_generation = generation;
        }
    }

    pub fn things(&self) -> usize {
        self.things.len()
    }

    /// A fingerprint of the rules in force (their text): a checkpoint's rule counters are restored
    /// only under the same rules.
    pub fn rules_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.rule_set.text.as_bytes())
    }

    /// Bytes one thing's state takes (see [`ThingState::footprint`]); None for an unknown thing.
    pub fn thing_footprint(&self, thing_id: &str) -> Option<Footprint> {
        self.things.get(thing_id).map(|t| t.footprint())
    }

    /// Calls `f` with every thing's state, in thing-id order (so a checkpoint's bytes depend on the
    /// state only), one snapshot at a time.
    pub fn for_each_snapshot<E>(
        &self,
        mut f: impl FnMut(&Name, &ThingSnapshot) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut ids: Vec<&Name> = self.things.keys().collect();
        ids.sort_unstable();
        for id in ids {
            f(id, &self.things[id.as_str()].snapshot())?;
        }
        Ok(())
    }

    /// Restores things from a checkpoint (replacing any state they have). `rules_hash` is the
    /// [`Engine::rules_hash`] the snapshots were taken under: the rules' `for:` counters continue
    /// when it is the current one and restart otherwise. Errors name the thing.
    pub fn restore(
        &mut self,
        things: impl IntoIterator<Item = (Name, ThingSnapshot)>,
        rules_hash: u64,
    ) -> Result<(), String> {
        let same_rules = rules_hash == self.rules_hash();
        let (set, cfg) = (Arc::clone(&self.rule_set), Arc::clone(&self.cfg));
        let rules = same_rules.then_some(set.as_ref());
        for (id, s) in things {
            let t = ThingState::restore(s, &cfg, rules, &mut self.shared)
                .map_err(|e| format!("thing {id}: {e}"))?;
            self.things.insert(id, Box::new(t));
        }
        Ok(())
    }

    /// Processes one record, appending what it causes to `out` as (seq, output).
    pub fn process(&mut self, record: Record, now_ns: u64, out: &mut Vec<(u64, Output)>) {
        match record {
            Record::Dead(d) => {
                self.counters.count_dead(&d.reason);
                out.push((d.seq, Output::Dead(d)));
            }
            Record::Point(p, ingest_ns) => self.process_point(p, ingest_ns, now_ns, out),
        }
    }

    fn dead(
        counters: &mut Counters,
        p: &Point,
        reason: MalformedReason,
        detail: String,
        out: &mut Vec<(u64, Output)>,
    ) {
        let raw = serde_json::to_vec(p).unwrap_or_default();
        let d = DeadLetter {
            reason: reason.as_str().to_string(),
            detail,
            raw,
            seq: p.seq,
            origin: p.origin.clone(),
        };
        tracing::debug!(reason = %d.reason, detail = %d.detail, "reading rejected");
        counters.count_dead(&d.reason);
        out.push((p.seq, Output::Dead(d)));
    }

    /// Emits an admitted alert.
    fn emit(
        counters: &mut Counters,
        latencies_ns: &mut Vec<u64>,
        latency_ns: u64,
        seq: u64,
        alert: Alert,
        out: &mut Vec<(u64, Output)>,
    ) {
        tracing::debug!(
            alert_id = %alert.alert_id,
            alert_type = %alert.alert_type,
            severity = alert.severity.as_str(),
            ts = alert.ts,
            "alert emitted"
        );
        counters.alerts += 1;
        latencies_ns.push(latency_ns);
        out.push((seq, Output::Alert(alert)));
    }

    fn process_point(
        &mut self,
        p: Point,
        ingest_ns: u64,
        now_ns: u64,
        out: &mut Vec<(u64, Output)>,
    ) {
        let cfg = &*self.cfg;
        // Stage spans (debug level: free when disabled) carry the thing, so every event of a stage
        // says which thing it is about.
        let window_span = tracing::debug_span!("window", thing_id = %p.thing_id).entered();
        let shared = &mut self.shared;
        let t = self
            .things
            .entry_ref(p.thing_id.as_str())
            .or_insert_with(|| {
                tracing::debug!(equipment_type = %p.equipment_type, "first reading of a thing");
                Box::new(ThingState::new(&p, cfg, shared))
            });
        let last_ts = t.last_ts;
        if p.ts == last_ts {
            let detail = format!("thing {} already has a reading at ts {}", p.thing_id, p.ts);
            return Self::dead(
                &mut self.counters,
                &p,
                MalformedReason::DuplicateTimestamp,
                detail,
                out,
            );
        }
        if last_ts != i64::MIN && p.ts < last_ts - cfg.allowed_lateness_ms {
            let detail = format!(
                "ts {} is {} ms behind the thing's newest reading (allowed {} ms)",
                p.ts,
                last_ts - p.ts,
                cfg.allowed_lateness_ms
            );
            return Self::dead(&mut self.counters, &p, MalformedReason::Late, detail, out);
        }
        if !p.learn_only {
            self.counters.points += 1;
        }
        let in_order = p.ts > last_ts;
        // The alert policy's state lives only while one of its windows is open for the readings the
        // thing still accepts (an expired state decides like a fresh one).
        let oldest = t.last_ts.saturating_sub(cfg.allowed_lateness_ms);
        if t.policy
            .as_ref()
            .is_some_and(|pol| pol.expired(&self.windows, oldest))
        {
            t.policy = None;
        }
        // Start every cache miss of a cold thing at once (see RollingWindow::touch). An epoch's
        // readings come grouped by thing, so only the first of a group finds the state cold: the
        // rest would read some 200 warm cache lines each for nothing.
        let address = &**t as *const ThingState as usize;
        if self.scratch.touched != address {
            self.scratch.touched = address;
            std::hint::black_box(t.stats.touch());
        }
        let complete = t.load(&p, cfg, &mut self.shared, &mut self.scratch.value_slots);
        if let Some(active) = cfg.active_models.as_ref() {
            let current = t
                .registry()
                .is_some_and(|b| b.is_current(active.generation(), t.layout.id));
            if !current {
                let sql_hash = cfg.features.sql_set.as_ref().map(|s| s.sql_hash());
                t.bind_registry(&p.thing_id, &active.current(), sql_hash.as_deref());
            }
        }
        self.scratch.regime = None;
        if let (Some(RegimePhase::Fitted(r)), true) = (t.regimes(), complete) {
            let s = &mut self.scratch;
            s.regime_by.clear();
            let values = t.slots.values();
            s.regime_by
                .extend(t.regime_slots().iter().map(|&i| values[i]));
            r.scale_into(&s.regime_by, &mut s.regime_z);
            s.regime = Some(r.assign(&s.regime_z, &mut s.regime_terms));
        }
        self.scratch.fault_events.clear();
        if let (Some(faults), true) = (t.faults.as_mut(), in_order) {
            // The values' slots (just resolved) find their features without matching names again.
            let s = &mut self.scratch;
            let slots = Some((t.layout.id, s.value_slots.as_slice()));
            faults.observe_slots(p.ts, &p.values, slots, &mut s.fault_events);
        }
        drop(window_span);

        let hits = if self.rule_set.is_empty() || !complete {
            Vec::new()
        } else {
            let mut state = std::mem::take(&mut t.rule_state);
            let readings = ThingReadings {
                t,
                ts: p.ts,
                in_order,
            };
            let _span = tracing::debug_span!("rules", thing_id = %p.thing_id).entered();
            let hits = evaluate_shared(
                &self.rule_set,
                t.equipment_type(),
                &readings,
                &mut state,
                &mut self.shared.rules,
            );
            t.rule_state = state;
            for hit in &hits {
                tracing::debug!(rule = %hit.rule, alert_type = %hit.alert_type, ts = p.ts, "rule matched");
            }
            hits
        };

        let scored = if complete && u64::from(t.learned) >= cfg.warmup as u64 {
            let _span = tracing::debug_span!("detect", thing_id = %p.thing_id).entered();
            let s = score(t, cfg, &mut self.scratch, self.emit_scores);
            if s.anomalous {
                tracing::debug!(score = s.ensemble, ts = p.ts, "anomalous reading");
            }
            Some(s)
        } else {
            None
        };
        let anomalous = scored.as_ref().is_some_and(|s| s.anomalous);

        // The alert candidates of this reading, in the order the policy sees them. Only the admitted
        // ones are built (most are suppressed by dedup or the rate limit), and before the reading is
        // learned: explanations read the state before it.
        let ensemble = scored.as_ref().filter(|s| s.anomalous).map(|s| {
            // A registry model's exact attribution (TreeSHAP: about a millisecond for a 100-tree
            // forest) is computed only for an alert the rate limit lets through; a suppressed one is
            // explained by the statistics (only a burst alert built from it would show that).
            let explain_model = !t
                .policy
                .as_ref()
                .is_some_and(|pol| pol.rate_limited(&self.windows, p.ts));
            (s, ensemble_lead(t, s, cfg, &self.scratch, explain_model))
        });
        let mut candidates: Vec<(Candidate<'_>, bool)> =
            hits.iter().map(|h| (Candidate::Rule(h), false)).collect();
        if let Some((s, lead)) = &ensemble {
            candidates.push((Candidate::Ensemble(s, lead), false));
        }
        // Instrument faults are their own class: alerted when they start (edge-triggered, so they
        // bypass the per-thing rate limit that an anomaly of the same reading may have used up; dedup
        // still applies) and never counted as anomalies of the machine (no burst).
        for ev in self.scratch.fault_events.iter().filter(|e| e.started) {
            candidates.push((Candidate::Sensor(ev), true));
        }
        if (anomalous || !hits.is_empty())
            && t.policy
                .get_or_insert_with(Box::default)
                .record_anomaly(&self.windows, p.ts)
            && !candidates.is_empty()
        {
            candidates.push((Candidate::Burst, true));
        }
        if !p.learn_only && (anomalous || !hits.is_empty()) {
            self.counters.anomalies += 1;
        }
        {
            let _policy = (!candidates.is_empty())
                .then(|| tracing::debug_span!("policy", thing_id = %p.thing_id).entered());
            for (c, bypass) in &candidates {
                let (alert_type, severity) = c.kind(cfg);
                if !p.learn_only {
                    self.anomaly_kinds.push((alert_type.to_string(), severity));
                }
                let admitted = t.policy.get_or_insert_with(Box::default).admit(
                    &self.windows,
                    alert_type,
                    p.ts,
                    *bypass,
                );
                if p.learn_only {
                    // Re-read for state only: the policy learns these candidates (so its dedup and
                    // rate-limit windows end up as they were when the readings were first processed)
                    // but nothing is emitted or counted.
                    continue;
                }
                if let Err(why) = admitted {
                    self.counters.suppressed(why, alert_type);
                    continue;
                }
                let sc = &self.scratch;
                let alert = match c {
                    // A burst escalates the reading's first candidate (never itself a burst).
                    Candidate::Burst => candidates[0]
                        .0
                        .alert(&p, t, sc, self.rule_generation)
                        .map(|first| burst_alert(&first, cfg)),
                    c => c.alert(&p, t, sc, self.rule_generation),
                };
                if let Some(alert) = alert {
                    Self::emit(
                        &mut self.counters,
                        &mut self.alert_latencies_ns,
                        now_ns.saturating_sub(ingest_ns),
                        p.seq,
                        alert,
                        out,
                    );
                }
            }
        }

        let t2_smoothed = self.scratch.t2_smoothed.take();
        let regime = RegimeStep {
            assignment: self.scratch.regime,
            z: &self.scratch.regime_z,
            t2_smoothed: self.scratch.regime_t2_smoothed.take(),
        };
        learn(
            t,
            cfg,
            t2_smoothed,
            regime,
            complete,
            anomalous,
            in_order,
            p.ts,
        );

        // Remaining useful life: in-order readings only (its features are sequences of cycles). The
        // maintenance alert joins the candidates so the same policy (dedup, rate limit) applies.
        let mut prediction = None;
        let mut rul_alert = None;
        if let (Some(tracker), Some(rc)) = (self.rul.as_mut(), cfg.rul.as_ref()) {
            let tracked = rc
                .equipment_type
                .as_deref()
                .is_none_or(|e| e == p.equipment_type.as_str());
            if tracked && in_order {
                match tracker.observe_with_alert(&p) {
                    Ok((pred, alert)) => {
                        prediction = pred;
                        rul_alert = alert;
                    }
                    Err(e) => {
                        if !p.learn_only {
                            self.counters.rul_skipped += 1;
                        }
                        tracing::debug!(thing = %p.thing_id, error = %e, "reading skipped by the RUL model");
                    }
                }
            }
        }

        // The maintenance alert comes last, under the same policy (dedup, rate limit).
        if let Some(alert) = rul_alert {
            if !p.learn_only {
                self.anomaly_kinds
                    .push((alert.alert_type.clone(), alert.severity));
            }
            let admitted = t.policy.get_or_insert_with(Box::default).admit(
                &self.windows,
                &alert.alert_type,
                alert.ts,
                false,
            );
            if admitted == Err(Suppressed::RateLimit) {
                // A maintenance alert hidden by the rate limit is raised again at the thing's next
                // prediction inside the horizon, so it is delayed, never lost.
                if let Some(tracker) = self.rul.as_mut() {
                    tracker.rearm(&alert.thing_id);
                }
            }
            if !p.learn_only {
                match admitted {
                    Ok(()) => Self::emit(
                        &mut self.counters,
                        &mut self.alert_latencies_ns,
                        now_ns.saturating_sub(ingest_ns),
                        p.seq,
                        alert,
                        out,
                    ),
                    Err(why) => self.counters.suppressed(why, &alert.alert_type),
                }
            }
        }
        if p.learn_only {
            return;
        }
        if let Some(pred) = prediction {
            self.counters.predictions += 1;
            out.push((p.seq, Output::Prediction(Box::new(pred))));
        }
        if self.emit_scores {
            let registry_scored = t
                .registry()
                .and_then(|b| b.model.as_ref())
                .filter(|_| scored.as_ref().is_some_and(|s| s.by_registry));
            let score = if hits.is_empty() {
                scored.as_ref().map_or(0.0, |s| s.ensemble)
            } else {
                1.0
            };
            out.push((
                p.seq,
                Output::Score(ScoreLine {
                    thing_id: p.thing_id.clone(),
                    ts: p.ts,
                    score: round4(score),
                    anomaly: anomalous || !hits.is_empty(),
                    label: p.label,
                    model_version: registry_scored.map(|m| Name::from(m.id.as_str())),
                    model_score: registry_scored
                        .and(scored.as_ref().and_then(|s| s.model))
                        .map(round4),
                }),
            ));
        }
    }
}

/// An alert candidate of the reading being processed: its alert is built only if the policy admits
/// it.
enum Candidate<'a> {
    Rule(&'a RuleHit),
    /// The ensemble anomaly.
    Ensemble(&'a Scored, &'a EnsembleLead),
    /// A sensor fault that started.
    Sensor(&'a FaultEvent),
    /// The burst escalation of the reading's first candidate.
    Burst,
}

impl Candidate<'_> {
    /// The alert's type and severity (what the policy and the metrics see).
    fn kind<'c>(&'c self, cfg: &'c DataflowConfig) -> (&'c str, Severity) {
        match self {
            Candidate::Rule(hit) => (&hit.alert_type, hit.severity),
            Candidate::Ensemble(_, lead) => (lead.alert_type, lead.severity),
            Candidate::Sensor(ev) => (ev.kind.alert_type(), Severity::Warning),
            Candidate::Burst => ("burst", cfg.policy.burst_severity),
        }
    }

    /// The alert (None for a burst, which is built from the candidate it escalates).
    fn alert(
        &self,
        p: &Point,
        t: &ThingState,
        sc: &Scratch,
        rule_generation: u64,
    ) -> Option<Alert> {
        Some(match self {
            Candidate::Rule(hit) => rule_alert(p, t, hit, rule_generation),
            Candidate::Ensemble(s, lead) => ensemble_alert(p, t, s, sc, lead),
            Candidate::Sensor(ev) => sensor_alert(p, t, ev),
            Candidate::Burst => return None,
        })
    }
}

/// The reading's operating regime, for [`learn`].
struct RegimeStep<'a> {
    assignment: Option<Assignment>,
    /// The standardised regime features (valid with `assignment`).
    z: &'a [f64],
    /// The regime model's smoothed T^2, when a regime scored the reading.
    t2_smoothed: Option<f64>,
}

/// The slots of the model's features (every feature but `detectors.model.exclude`), and each slot's
/// position in the model.
fn model_slots(names: &[Name], cfg: &DataflowConfig) -> (Vec<usize>, Vec<Option<usize>>) {
    let exclude = &cfg.detectors.model.exclude;
    let slots: Vec<usize> = (0..names.len())
        .filter(|&i| !exclude.iter().any(|x| names[i] == x.as_str()))
        .collect();
    let mut pos = vec![None; names.len()];
    for (k, &i) in slots.iter().enumerate() {
        pos[i] = Some(k);
    }
    (slots, pos)
}

/// One thing's state as a checkpoint stores it (docs/CHECKPOINTS.md): everything the thing has
/// learned. What follows from the configuration (the derived-feature plan, the SQL evaluator, the
/// model's slots) is resolved again on restore, and the registry model is bound again on the
/// thing's next reading. Serialised positionally (bincode): any change here changes the checkpoint
/// format, so bump `checkpoint::FORMAT_VERSION` with it (a test guards this).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThingSnapshot {
    equipment_type: Name,
    names: Vec<Name>,
    n_raw: usize,
    sql_windows: Option<ThingWindows>,
    values: Vec<f64>,
    present: Vec<bool>,
    prev_values: Vec<f64>,
    prev_ts: Option<i64>,
    stats: StatsSet,
    /// The online model (absent when `detectors.model.enabled` is off).
    online: Option<Online>,
    /// The rules' `for:` counters (kept only when the rules are the same on restore).
    rule_counts: Vec<u32>,
    faults: Option<SensorFaultDetector>,
    learned: u64,
    last_ts: i64,
    consecutive_anomalous: u32,
    policy: PolicyState,
    /// Operating regimes (`detectors.regimes`): the warm-up readings kept, or the fitted regimes.
    regimes: Option<RegimePhase>,
    regime_slots: Vec<usize>,
}

impl ThingSnapshot {
    /// Readings learned so far (the warm-up counter).
    pub fn learned(&self) -> u64 {
        self.learned
    }
}

impl ThingState {
    fn snapshot(&self) -> ThingSnapshot {
        ThingSnapshot {
            equipment_type: self.equipment_type().clone(),
            names: self.names().to_vec(),
            n_raw: self.layout.n_raw,
            sql_windows: self.sql().map(|s| s.windows.clone()),
            values: self.slots.values().to_vec(),
            present: self.slots.present().iter().map(|&p| p != 0).collect(),
            prev_values: self.slots.prev_values().to_vec(),
            prev_ts: self.prev_ts(),
            stats: self.stats.clone(),
            online: self.online.as_deref().cloned(),
            rule_counts: self.rule_state.counts().to_vec(),
            faults: self.faults.as_deref().cloned(),
            learned: u64::from(self.learned),
            last_ts: self.last_ts,
            consecutive_anomalous: self.consecutive_anomalous,
            policy: self.policy.as_deref().cloned().unwrap_or_default(),
            regimes: self.regimes().cloned(),
            regime_slots: self.regime_slots().to_vec(),
        }
    }

    /// Rebuilds a thing from its snapshot under `cfg`; `rules` is the rule set the snapshot's rule
    /// counters belong to (None: they restart). Refuses a snapshot that does not fit `cfg`.
    fn restore(
        s: ThingSnapshot,
        cfg: &DataflowConfig,
        rules: Option<&RuleSet>,
        shared: &mut Shared,
    ) -> Result<ThingState, String> {
        let n = s.names.len();
        if s.n_raw > n
            || s.values.len() != n
            || s.present.len() != n
            || s.prev_values.len() != n
            || s.stats.len() != n
        {
            return Err(format!(
                "{n} features but {} values, {} statistics",
                s.values.len(),
                s.stats.len()
            ));
        }
        let raw = &s.names[..s.n_raw];
        let (plan, derived, sql) = match cfg.features.sql_set.as_ref() {
            Some(set) => {
                let mut sql = SqlFeatures::new(set.evaluator());
                let windows = s
                    .sql_windows
                    .ok_or("no SQL window state, but the dataflow has a SQL feature set")?;
                sql.eval.check_thing(&windows)?;
                sql.windows = windows;
                sql.input_slots = sql
                    .eval
                    .inputs()
                    .iter()
                    .map(|i| raw.iter().position(|n| n.as_str() == i.as_str()))
                    .collect();
                let names: Vec<Name> = sql
                    .eval
                    .outputs()
                    .iter()
                    .map(|o| Name::from(o.as_str()))
                    .collect();
                (DerivedPlan::default(), names, Some(sql))
            }
            None => {
                let (plan, names) = DerivedPlan::new(raw, &cfg.features);
                (plan, names, None)
            }
        };
        if s.names[s.n_raw..] != derived[..] {
            return Err(format!(
                "derived features {:?}, the dataflow derives {derived:?}",
                &s.names[s.n_raw..]
            ));
        }
        let layout = shared.get(&s.equipment_type, s.names, s.n_raw, plan, cfg);
        let model_slots = &layout.model_slots;
        // The online model follows the dataflow's setting (the fingerprint check compared it).
        let online = match (cfg.detectors.model.enabled, s.online) {
            (false, _) => None,
            (true, None) => Some(Box::new(Online::new(model_slots.len(), cfg))),
            (true, Some(o)) => {
                o.model.check()?;
                if o.model.dim() != model_slots.len() || o.model_x.len() != model_slots.len() {
                    return Err(format!(
                        "online model of dimension {} for {} model features",
                        o.model.dim(),
                        model_slots.len()
                    ));
                }
                Some(Box::new(o))
            }
        };
        s.stats.check(&stats_params(cfg))?;
        let faults = match (cfg.sensor_faults.enabled, s.faults) {
            (false, _) => None,
            (true, Some(mut f)) => {
                f.check()?;
                f.set_config(Arc::clone(&shared.faults));
                Some(Box::new(f))
            }
            (true, None) => Some(Box::new(SensorFaultDetector::new(Arc::clone(
                &shared.faults,
            )))),
        };
        let rule_state = match rules {
            Some(set) => RuleState::restored(set, &s.equipment_type, s.rule_counts),
            None => RuleState::default(),
        };
        // The regimes follow the dataflow's setting (the fingerprint check compared it); their
        // slots and models must fit this thing's features.
        let regimes = match (&cfg.detectors.regimes, s.regimes) {
            (None, _) | (Some(_), None) => None,
            (Some(_), Some(phase)) => {
                if s.regime_slots.iter().any(|&i| i >= n) {
                    return Err(format!(
                        "regime feature slots {:?} for {n} features",
                        s.regime_slots
                    ));
                }
                if let RegimePhase::Fitted(r) = &phase {
                    for regime in &r.regimes {
                        regime.model.check()?;
                        if regime.model.dim() != model_slots.len() {
                            return Err(format!(
                                "regime model of dimension {} for {} model features",
                                regime.model.dim(),
                                model_slots.len()
                            ));
                        }
                    }
                    if r.dims() != s.regime_slots.len() {
                        return Err(format!(
                            "regimes over {} features but {} regime slots",
                            r.dims(),
                            s.regime_slots.len()
                        ));
                    }
                }
                Some(phase)
            }
        };
        let policy = (!s.policy.is_fresh()).then(|| Box::new(s.policy));
        let extras = (sql.is_some() || regimes.is_some()).then(|| {
            Box::new(Extras {
                sql,
                registry: None,
                regime_slots: if regimes.is_some() {
                    s.regime_slots
                } else {
                    Vec::new()
                },
                regimes,
            })
        });
        // The previous reading's timestamp is the newest one's (`ThingState::prev_ts`): the
        // snapshot's copy of it is not needed.
        Ok(ThingState {
            layout,
            slots: Slots::from_parts(&s.values, &s.prev_values, &s.present),
            stats: s.stats,
            online,
            rule_state,
            faults,
            learned: u32::try_from(s.learned).unwrap_or(u32::MAX),
            last_ts: s.last_ts,
            consecutive_anomalous: s.consecutive_anomalous,
            policy,
            extras,
        })
    }
}

/// Learns the loaded reading of `t` (after it has been scored and explained).
#[allow(clippy::too_many_arguments)]
fn learn(
    t: &mut ThingState,
    cfg: &DataflowConfig,
    t2_smoothed: Option<f64>,
    regime: RegimeStep<'_>,
    complete: bool,
    anomalous: bool,
    in_order: bool,
    ts: i64,
) {
    if complete {
        let sp = stats_params(cfg);
        for (i, (&present, &v)) in t.slots.present().iter().zip(t.slots.values()).enumerate() {
            if present != 0 {
                t.stats.update(i, v, &sp);
            }
        }
        t.consecutive_anomalous = if anomalous {
            t.consecutive_anomalous + 1
        } else {
            0
        };
        let m = &cfg.detectors.model;
        let in_warmup = u64::from(t.learned) < cfg.warmup as u64;
        let learnable = (in_warmup || m.learn_after_warmup)
            && (!anomalous || t.consecutive_anomalous > MAX_FROZEN_READINGS);
        if let (true, Some(o)) = (learnable, t.online.as_mut()) {
            o.model.update(&o.model_x);
        }
        let model_x: &[f64] = t.online.as_ref().map_or(&[], |o| &o.model_x);
        let extras = t.extras.as_deref_mut();
        if let (
            Some(Extras {
                regimes: Some(phase),
                regime_slots,
                ..
            }),
            Some(rc),
        ) = (extras, cfg.detectors.regimes.as_ref())
        {
            match phase {
                RegimePhase::Learning { by, x, seen } => {
                    *seen += 1;
                    if learnable {
                        let values = t.slots.values();
                        by.extend(regime_slots.iter().map(|&i| values[i]));
                        x.extend_from_slice(model_x);
                    }
                    if *seen >= rc.warmup {
                        let d = regime_slots.len();
                        let fitted = regimes::fit(by, d, x, model_x.len(), rc, m);
                        *phase = match fitted {
                            Ok(r) => {
                                tracing::info!(
                                    regimes = r.len(),
                                    silhouette = r.silhouette,
                                    "operating regimes fitted"
                                );
                                RegimePhase::Fitted(Box::new(r))
                            }
                            Err(why) => {
                                tracing::info!(reason = %why, "no operating regimes; plain scoring");
                                RegimePhase::Plain
                            }
                        };
                    }
                }
                RegimePhase::Fitted(r) => {
                    if let Some(a) = regime.assignment {
                        r.observe(&a, regime.z, model_x, learnable, regime.t2_smoothed);
                    }
                }
                RegimePhase::Plain => {}
            }
        }
        t.learned = t.learned.saturating_add(1);
        if let Some(o) = t.online.as_mut() {
            if let Some(v) = t2_smoothed {
                o.t2_smooth = Some(v);
            }
            if let (Some(q), true) = (m.calibration_quantile, in_warmup) {
                if o.warm_buffer.capacity() == 0 {
                    // Sized exactly for the warm-up (no doubling slack); freed by `calibrate`.
                    o.warm_buffer.reserve_exact(cfg.warmup * o.model_x.len());
                }
                o.warm_buffer.extend_from_slice(&o.model_x);
                if u64::from(t.learned) == cfg.warmup as u64 {
                    o.calibrate(q, m.smoothing);
                }
            }
        }
    }
    if in_order {
        t.last_ts = ts;
    } else {
        // The previous values stay those of the newest reading: rate-of-change compares in-order
        // neighbours only.
        t.slots.undo();
    }
}

/// Scores the loaded reading of `t` against its state before the reading.
///
/// The model is scored first. Unless every score is wanted (`full`, for score lines), the per-feature
/// statistics are skipped when they cannot change the outcome: the statistics score is at most 1, so a
/// reading with `stats_weight + model_weight * model < threshold` is not anomalous whatever they say
/// (IEEE rounding is monotonic, so the bound holds in floating point too). Most readings are normal,
/// and the statistics (median/MAD selection, quartiles, four mappings per feature) are the most
/// expensive part of scoring. The windows sort their samples only for the readings scored in full,
/// keeping a sorted copy while consecutive readings are (see `detectors::window`).
fn score(t: &mut ThingState, cfg: &DataflowConfig, s: &mut Scratch, full: bool) -> Scored {
    let d = &cfg.detectors;
    let e = &cfg.ensemble;
    s.t2_smoothed = None;
    s.regime_t2_smoothed = None;
    s.regime_scores = None;
    let registry = t
        .registry()
        .and_then(|b| b.model.as_ref())
        .filter(|_| t.registry_row(&mut s.registry_row));
    let by_registry = registry.is_some();
    let model = if let Some(m) = registry {
        s.registry_score = m.model.score(&s.registry_row);
        Some(normalise(m.model.threshold_ratio(s.registry_score), 1.0))
    } else if let Some(m) = regime_score(t, cfg, s) {
        Some(m)
    } else if let Some((o, t2)) = t
        .online
        .as_deref()
        .and_then(|o| Some((o, o.model.t2(&o.model_x, &mut s.model)?)))
    {
        let m = &d.model;
        let smoothed = t2_smooth_step(o.t2_smooth, t2, m.smoothing);
        s.t2_smoothed = Some(smoothed);
        Some(model_normalised(&o.model, o.t2_threshold, smoothed, m))
    } else {
        None
    };
    let model_part = e.model_weight * model.unwrap_or(0.0);
    // Without an online model (`detectors.model.enabled: false`), a reading no registry model scores
    // is scored by its statistics alone.
    let stats_weight = if model.is_none() && t.online.is_none() {
        1.0
    } else {
        e.stats_weight
    };
    if !full && stats_weight + model_part < e.threshold {
        return Scored {
            ensemble: f64::NAN,
            stats: f64::NAN,
            model,
            by_registry,
            anomalous: false,
        };
    }
    s.feature_scores.clear();
    s.per_feature.clear();
    let mut best = [0.0f64; 4];
    let sp = stats_params(cfg);
    let (values, present) = (t.slots.values(), t.slots.present());
    for i in 0..t.stats.len() {
        let fs = if present[i] != 0 {
            t.stats.score(i, values[i], &sp)
        } else {
            FeatureScores::default()
        };
        let each = [
            normalise(fs.z, d.zscore_threshold),
            normalise(fs.robust_z, d.robust_z_threshold),
            normalise(fs.ewma_z, d.ewma_threshold),
            normalise(fs.iqr, d.iqr_k),
        ];
        for (b, e) in best.iter_mut().zip(each) {
            *b = b.max(e);
        }
        s.per_feature.push(each.into_iter().fold(0.0, f64::max));
        s.feature_scores.push(fs);
    }
    let stats = best.iter().sum::<f64>() / 4.0;
    let ensemble = stats_weight * stats + model_part;
    let anomalous = ensemble >= e.threshold;
    if anomalous && model.is_some() && !by_registry {
        online_contributions(t, s);
    }
    Scored {
        ensemble,
        stats,
        model,
        by_registry,
        anomalous,
    }
}

/// The per-feature contributions to T^2 of the loaded reading under the model that scored it (its
/// regime's when a regime did, else the thing's online model) into `s.model_contributions`, for the
/// alert's explanation; scoring needs the T^2 alone, which takes half the work.
fn online_contributions(t: &ThingState, s: &mut Scratch) {
    let by_regime = match (s.regime_scores, s.regime, t.regimes()) {
        (Some(_), Some(a), Some(RegimePhase::Fitted(r))) => Some(&r.regimes[a.regime].model),
        _ => None,
    };
    s.model_contributions.clear();
    if let Some(m) = by_regime.or(t.online.as_deref().map(|o| &o.model)) {
        // It scored this reading, so it explains it too.
        m.contributions_into(t.model_x(), &mut s.model, &mut s.model_contributions);
    }
}

/// The online model's normalised score of a reading: its smoothed T^2 against the calibrated threshold
/// when there is one (which maps to 0.8, like every detector's threshold), else its normal-equivalent z
/// against `detectors.model.threshold` (without smoothing, `smoothed` is the reading's T^2).
fn model_normalised(
    model: &OnlineMahalanobis,
    threshold: Option<f64>,
    smoothed: f64,
    m: &crate::config::ModelConfig,
) -> f64 {
    match threshold {
        Some(thr) => normalise((smoothed / thr).sqrt(), 1.0),
        None => normalise(model.z(smoothed), m.threshold),
    }
}

/// Scores the loaded reading within its operating regime: the larger of the regime model's score and
/// the reading's distance from the regime. None (the thing's all-regime model scores) when the thing
/// has no fitted regimes, the reading has not settled in its regime, or the regime cannot score yet.
fn regime_score(t: &ThingState, cfg: &DataflowConfig, s: &mut Scratch) -> Option<f64> {
    let a = s.regime.filter(|a| a.settled)?;
    let Some(RegimePhase::Fitted(r)) = t.regimes() else {
        return None;
    };
    let reg = &r.regimes[a.regime];
    let t2 = reg.model.t2(t.model_x(), &mut s.model)?;
    let m = &cfg.detectors.model;
    // A regime just entered starts its smoothing afresh.
    let prev = if a.since == 0 { None } else { r.t2_smooth };
    let smoothed = t2_smooth_step(prev, t2, m.smoothing);
    s.regime_t2_smoothed = Some(smoothed);
    let within = model_normalised(&reg.model, reg.threshold, smoothed, m);
    let distance = normalise(r.distance_z(&a), m.threshold);
    s.regime_scores = Some((within, distance));
    Some(within.max(distance))
}

/// One EWMA step of the model's T^2 (`alpha` = 1: no smoothing).
fn t2_smooth_step(prev: Option<f64>, t2: f64, alpha: f64) -> f64 {
    match prev {
        Some(p) if alpha < 1.0 => alpha * t2 + (1.0 - alpha) * p,
        _ => t2,
    }
}

fn severity_for(score: f64, cfg: &DataflowConfig) -> Severity {
    if score >= cfg.ensemble.critical_score {
        Severity::Critical
    } else if score >= cfg.ensemble.warning_score {
        Severity::Warning
    } else {
        Severity::Info
    }
}

/// What distinguishes one alert from another of the same reading.
struct AlertParts<'a> {
    source: &'a str,
    alert_type: &'a str,
    severity: Severity,
    score: f64,
    model_version: String,
    explained: Explanation,
    sentence: String,
}

fn make_alert(p: &Point, t: &ThingState, a: AlertParts<'_>) -> Alert {
    Alert {
        alert_id: alert_id(&p.thing_id, a.alert_type, p.ts),
        thing_id: p.thing_id.clone(),
        equipment_type: t.equipment_type().clone(),
        ts: p.ts,
        severity: a.severity,
        source: a.source.to_string(),
        alert_type: a.alert_type.to_string(),
        score: round4(a.score),
        model_version: a.model_version,
        top_features: a.explained.top_features,
        families: a.explained.families,
        explanation: a.sentence,
        input_offsets: p.origin.clone(),
        label: p.label,
        detectors: Vec::new(),
    }
}

fn rule_alert(p: &Point, t: &ThingState, hit: &RuleHit, generation: u64) -> Alert {
    make_alert(
        p,
        t,
        AlertParts {
            source: "rule",
            alert_type: &hit.alert_type,
            severity: hit.severity,
            score: 1.0,
            model_version: format!("rules/{generation}"),
            explained: explain(hit.contributions.iter().map(|(n, c)| (n, *c))),
            sentence: format!("rule {}: {}", hit.rule, hit.message),
        },
    )
}

/// What decides an ensemble anomaly's admission, worked out before its alert is built: the signed
/// per-feature contributions, the alert type they imply (from the leading feature) and the severity.
/// Most candidates are suppressed by the policy (dedup, rate limit), so the alert itself (explanation,
/// sentence, detectors' attributions) is built by [`ensemble_alert`] only for those it admits.
struct EnsembleLead {
    /// The scoring model's raw attribution per slot (0 for features it does not take).
    model_by_slot: Vec<f64>,
    /// Signed per-feature contributions (see [`ensemble_lead`]).
    contributions: Vec<f64>,
    /// The scoring model: its detector kind, whether it is the thing's registry model, and whether
    /// it attributed the reading.
    model_detector: Option<(&'static str, bool, bool)>,
    alert_type: &'static str,
    severity: Severity,
}

/// Signed per-feature contributions of an ensemble anomaly: each detector family's share of the
/// evidence, weighted like the ensemble, signed by the direction of the deviation, and the alert type
/// of the leading one. The alert also carries each detector's own attribution (see
/// [`ensemble_alert`]): the statistics' per-feature z, and the scoring model's (exact TreeSHAP for an
/// Isolation Forest, per-feature reconstruction error for an autoencoder, the online model's
/// per-feature share of T^2).
fn ensemble_lead(
    t: &ThingState,
    s: &Scored,
    cfg: &DataflowConfig,
    sc: &Scratch,
    explain_model: bool,
) -> EnsembleLead {
    let e = &cfg.ensemble;
    let n = t.names().len();
    let mut model_by_slot = vec![0.0; n];
    let mut model_detector = None;
    if s.model.is_some() {
        let binding = t.registry().filter(|_| s.by_registry);
        match binding.and_then(|b| Some((b, b.model.as_ref()?))) {
            Some((b, m)) => {
                let explain_model = explain_model && cfg.models.as_ref().is_none_or(|c| c.explain);
                if explain_model {
                    let c = m.model.explain(&sc.registry_row);
                    for (&slot, v) in b.slots.iter().zip(c) {
                        model_by_slot[slot] += v;
                    }
                }
                model_detector = Some((m.model.kind(), true, explain_model));
            }
            None => {
                match sc.regime_scores {
                    // Far from every regime: the distance's terms are the model's attribution.
                    Some((within, distance)) if distance > within => {
                        for (&slot, v) in t.regime_slots().iter().zip(&sc.regime_terms) {
                            model_by_slot[slot] += v;
                        }
                    }
                    _ => {
                        for (slot, pos) in t.layout.model_pos.iter().enumerate() {
                            if let Some(k) = pos {
                                model_by_slot[slot] = sc.model_contributions[*k];
                            }
                        }
                    }
                }
                model_detector = Some(("online_mahalanobis", false, true));
            }
        }
    }
    let stats_total: f64 = sc.per_feature.iter().sum();
    let model_total: f64 = model_by_slot.iter().map(|c| c.abs()).sum();
    let contributions: Vec<f64> = (0..n)
        .map(|i| {
            let stats_share = if stats_total > 0.0 {
                sc.per_feature[i] / stats_total
            } else {
                0.0
            };
            let model_share = if model_total > 0.0 {
                model_by_slot[i].abs() / model_total
            } else {
                0.0
            };
            let fs = sc.feature_scores[i];
            let dir = if fs.z != 0.0 { fs.z } else { fs.robust_z };
            let sign = if dir < 0.0 { -1.0 } else { 1.0 };
            sign * (e.stats_weight * stats_share + e.model_weight * model_share)
        })
        .collect();
    let lead = lead_feature(t.names(), &contributions).unwrap_or("multivariate");
    EnsembleLead {
        model_by_slot,
        contributions,
        model_detector,
        alert_type: alert_type_for(lead),
        severity: severity_for(s.ensemble, cfg),
    }
}

/// The feature [`explain`] puts first for these contributions, without building the explanation: the
/// largest finite non-zero contribution by absolute value, ties broken by the smaller name.
pub(super) fn lead_feature<'a>(names: &'a [Name], contributions: &[f64]) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for (name, &c) in names.iter().zip(contributions) {
        if !c.is_finite() || c == 0.0 {
            continue;
        }
        let a = c.abs();
        let better = match best {
            None => true,
            Some((bn, ba)) => a > ba || (a == ba && name.as_str() < bn),
        };
        if better {
            best = Some((name.as_str(), a));
        }
    }
    best.map(|(name, _)| name)
}

/// The alert of an ensemble anomaly whose admission [`ensemble_lead`] decided.
fn ensemble_alert(
    p: &Point,
    t: &ThingState,
    s: &Scored,
    sc: &Scratch,
    lead: &EnsembleLead,
) -> Alert {
    let regime = regime_attribution(t, s, sc);
    let ex = explain(t.names().iter().zip(lead.contributions.iter().copied()));
    let mut detectors = vec![DetectorAttribution {
        detector: "statistics".to_string(),
        model_version: None,
        score: round4(s.stats),
        top_features: top_contributions(
            t.names()
                .iter()
                .zip(&sc.feature_scores)
                .map(|(name, fs)| (name, fs.z)),
        ),
        regime: None,
    }];
    let online_version = || format!("{}/online_mahalanobis/1", t.equipment_type());
    let mut model_version = None;
    if let (Some((kind, by_registry, explained)), Some(score)) = (lead.model_detector, s.model) {
        let id = match t.registry().and_then(|b| b.model.as_ref()) {
            Some(m) if by_registry => m.id.clone(),
            _ => online_version(),
        };
        model_version = Some(id.clone());
        detectors.push(DetectorAttribution {
            detector: kind.to_string(),
            model_version: Some(id),
            score: round4(score),
            top_features: if explained {
                top_contributions(t.names().iter().zip(lead.model_by_slot.iter().copied()))
            } else {
                Vec::new()
            },
            regime: regime.clone(),
        });
    }
    let model_version = model_version.unwrap_or_else(online_version);
    let lead_name = ex
        .top_features
        .first()
        .map(|f| f.feature.clone())
        .unwrap_or_else(|| Name::from("multivariate"));
    debug_assert_eq!(alert_type_for(&lead_name), lead.alert_type);
    let sentence = match t.names().iter().position(|n| *n == lead_name) {
        Some(i) => {
            let value = t.slots.values()[i];
            let mean = t.stats.mean(i);
            let pct = if mean.abs() > 1e-9 {
                (value - mean) / mean.abs() * 100.0
            } else {
                0.0
            };
            let others: Vec<&str> = ex
                .top_features
                .iter()
                .skip(1)
                .map(|f| f.feature.as_str())
                .collect();
            let also = if others.is_empty() {
                String::new()
            } else {
                format!("; also {}", others.join(", "))
            };
            format!(
                "{lead_name} {:.1}% {} its rolling mean ({value:.3} vs {mean:.3}, z={:.1}){also}; score {:.2} (stats {:.2}, model {:.2})",
                pct.abs(),
                if value >= mean { "above" } else { "below" },
                sc.feature_scores[i].z,
                s.ensemble,
                s.stats,
                s.model.unwrap_or(0.0)
            )
        }
        None => format!("multivariate anomaly, score {:.2}", s.ensemble),
    };
    let sentence = match &regime {
        Some(r) => {
            let centre: Vec<String> = r
                .centre
                .iter()
                .take(3)
                .map(|(f, v)| format!("{f} {v:.4}"))
                .collect();
            let where_ = if r.distance_score > r.within_score {
                "far from every learned operating regime; nearest"
            } else {
                "in operating"
            };
            format!(
                "{sentence}; {where_} regime {} of {} ({})",
                r.id,
                r.count,
                centre.join(", ")
            )
        }
        None => sentence,
    };
    let mut alert = make_alert(
        p,
        t,
        AlertParts {
            source: "ensemble",
            alert_type: lead.alert_type,
            severity: lead.severity,
            score: s.ensemble,
            model_version,
            explained: ex,
            sentence,
        },
    );
    alert.detectors = detectors;
    alert
}

/// The operating regime the online model scored the reading in, if it did.
fn regime_attribution(t: &ThingState, s: &Scored, sc: &Scratch) -> Option<RegimeAttribution> {
    let (within, distance) = sc.regime_scores.filter(|_| !s.by_registry)?;
    let a = sc.regime?;
    let Some(RegimePhase::Fitted(r)) = t.regimes() else {
        return None;
    };
    Some(RegimeAttribution {
        id: a.regime + 1,
        count: r.len(),
        centre: t
            .regime_slots()
            .iter()
            .zip(r.centre_of(a.regime))
            .map(|(&slot, v)| (t.names()[slot].to_string(), round4(v)))
            .collect(),
        distance_score: round4(distance),
        within_score: round4(within),
    })
}

fn sensor_alert(p: &Point, t: &ThingState, ev: &FaultEvent) -> Alert {
    make_alert(
        p,
        t,
        AlertParts {
            source: "sensor",
            alert_type: ev.kind.alert_type(),
            severity: Severity::Warning,
            score: 1.0,
            model_version: "sensor_faults/1".to_string(),
            explained: explain(std::iter::once((&Name::from(ev.feature.as_str()), 1.0))),
            sentence: format!("instrument fault, not the machine: {}", ev.detail),
        },
    )
}

fn burst_alert(first: &Alert, cfg: &DataflowConfig) -> Alert {
    let p = &cfg.policy;
    let mut a = first.clone();
    a.alert_type = "burst".to_string();
    a.source = "burst".to_string();
    a.severity = p.burst_severity;
    a.alert_id = alert_id(&a.thing_id, "burst", a.ts);
    a.explanation = format!(
        "{} anomalous readings within {} s; latest: {}",
        p.burst_count, p.burst_within_s, first.explanation
    );
    a
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_keep_their_three_parts_apart_in_one_buffer() {
        for n in 0..300 {
            let values: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let prev: Vec<f64> = (0..n).map(|i| -(i as f64) - 0.5).collect();
            let present: Vec<bool> = (0..n).map(|i| i % 3 == 1).collect();
            let mut s = Slots::from_parts(&values, &prev, &present);
            assert_eq!(s.len(), n);
            assert_eq!(s.bytes(), (2 * n + n.div_ceil(8)) * 8);
            assert_eq!(s.values(), &values[..]);
            assert_eq!(s.prev_values(), &prev[..]);
            let flags: Vec<bool> = s.present().iter().map(|&p| p == 1).collect();
            assert_eq!(flags, present);
            // The next reading: the values become the previous ones, nothing is present yet.
            s.advance();
            assert_eq!(s.prev_values(), &values[..]);
            assert!(s.present().iter().all(|&p| p == 0));
            let (v, p) = s.values_present_mut();
            if n > 0 {
                v[n - 1] = 7.0;
                p[n - 1] = 1;
            }
            assert_eq!(
                s.present().iter().filter(|&&p| p == 1).count(),
                usize::from(n > 0)
            );
            // An out-of-order reading is undone: the values are the previous ones again.
            s.undo();
            assert_eq!(s.values(), &values[..]);
            assert_eq!(s.prev_values(), &values[..]);
        }
        let empty = Slots::default();
        assert_eq!(
            (empty.len(), empty.values().len(), empty.present().len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_thing_state_fits_the_allocators_128_byte_class() {
        // Boxed in the engine's table: mimalloc rounds 129..=160 bytes up to 160, so every byte over
        // 128 costs 32 per thing (issue 7).
        assert!(
            std::mem::size_of::<super::ThingState>() <= 128,
            "{} bytes",
            std::mem::size_of::<super::ThingState>()
        );
    }
}
