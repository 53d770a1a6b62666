//! Sensor-fault detection: the instrument is broken, not the machine.
//!
//! A stuck transmitter, a disconnected analog input, a sensor pinned at its range limit or a sensor that
//! stopped reporting all look like "anomalies" to a statistical detector, but they need a technician
//! with a multimeter, not a maintenance stop. Operators lose trust in alerts that confuse the two, so
//! these faults are their own class with their own type:
//! - `stuck`: the bit-identical value repeated for `stuck_after` consecutive readings (a frozen gateway
//!   register or a transmitter that stopped updating; live sensors always carry some noise).
//! - `flatlined`: the value still changes, but its spread over the last `flatline_window` readings fell
//!   below `flatline_ratio` times the spread such a window had while the detector learned it (a broken
//!   wire reading ADC noise, a sensor out of its medium). The learned spread is the smallest spread of a
//!   full window seen while learning, not the spread of all learned readings: on a machine with
//!   production phases (a conveyor at 600, 1200, 1800 rpm) the latter is the distance between phases,
//!   and every steady stretch of one phase would look flat next to it.
//! - `saturated`: at or beyond a configured range limit for `saturated_after` consecutive readings.
//! - `dropout`: a feature the thing used to report is absent from `dropout_after` consecutive readings, or
//!   (via [`SensorFaultDetector::check_silence`]) has not been seen for `dropout_ms` of event time.
//!
//! One detector per thing. Each fault is reported once when it starts ([`FaultEvent::started`] = true)
//! and once when it clears (false), so alerting is edge-triggered, not one alert per reading.

use crate::event::Name;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Settings of the sensor-fault detector (the dataflow's `sensor_faults` section).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorFaultConfig {
    /// Raise `sensor_*` alerts (the detector runs on every raw feature of every thing).
    pub enabled: bool,
    /// Identical consecutive readings that make a sensor `stuck`.
    pub stuck_after: usize,
    /// Readings in the window whose spread is compared with the learned spread.
    pub flatline_window: usize,
    /// `flatlined` when the window's standard deviation is below this fraction of the learned one (the
    /// smallest standard deviation of a `flatline_window` of readings seen while learning).
    pub flatline_ratio: f64,
    /// Readings per feature from which the normal spread is learned before `flatlined` can fire (should
    /// span a few windows of each production phase of phased machines).
    pub baseline_readings: usize,
    /// Range limits per feature, `[low, high]`: readings at or beyond them are saturated.
    pub limits: BTreeMap<String, [f64; 2]>,
    /// Consecutive readings at a limit that make a sensor `saturated`.
    pub saturated_after: usize,
    /// Consecutive readings without a feature that make it a `dropout`.
    pub dropout_after: usize,
    /// Event time without a feature after which [`SensorFaultDetector::check_silence`] reports it.
    pub dropout_ms: i64,
}

impl Default for SensorFaultConfig {
    fn default() -> Self {
        SensorFaultConfig {
            enabled: true,
            stuck_after: 60,
            flatline_window: 60,
            flatline_ratio: 0.05,
            baseline_readings: 200,
            limits: BTreeMap::new(),
            saturated_after: 3,
            dropout_after: 5,
            dropout_ms: 60_000,
        }
    }
}

/// The kind of instrument fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Stuck,
    Flatlined,
    Saturated,
    Dropout,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Stuck,
        FaultKind::Flatlined,
        FaultKind::Saturated,
        FaultKind::Dropout,
    ];

    /// The alert type: `sensor_stuck`, `sensor_flatlined`, `sensor_saturated`, `sensor_dropout`.
    pub fn alert_type(&self) -> &'static str {
        match self {
            FaultKind::Stuck => "sensor_stuck",
            FaultKind::Flatlined => "sensor_flatlined",
            FaultKind::Saturated => "sensor_saturated",
            FaultKind::Dropout => "sensor_dropout",
        }
    }

    fn index(&self) -> usize {
        *self as usize
    }
}

/// A fault starting or clearing.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultEvent {
    pub feature: String,
    pub kind: FaultKind,
    /// True when the fault starts, false when it clears.
    pub started: bool,
    /// Event time of the reading that changed the state.
    pub ts: i64,
    /// Human-readable cause.
    pub detail: String,
}

/// Running mean of the learned readings (the centre the window's sums are shifted by once learned).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Moments {
    n: u64,
    mean: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
    }
}

/// Spread of the last `capacity` readings in O(1) per reading: sums of `x - shift` (`shift` = the
/// learned mean, so the sums stay small for a signal near its normal level), recomputed exactly every
/// `capacity` readings so the add/subtract drift cannot build up. The readings are a ring (a full one
/// overwrites its oldest in place, `head`), which a checkpoint stores oldest first like a queue.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "RecentSpreadState", into = "RecentSpreadState")]
struct RecentSpread {
    values: Vec<f64>,
    /// The oldest reading's index once the ring is full (0 before).
    head: usize,
    shift: f64,
    s1: f64,
    s2: f64,
    since_exact: usize,
}

/// [`RecentSpread`] as checkpoints store it: the readings oldest first.
#[derive(serde::Serialize, serde::Deserialize)]
struct RecentSpreadState {
    values: std::collections::VecDeque<f64>,
    shift: f64,
    s1: f64,
    s2: f64,
    since_exact: usize,
}

impl From<RecentSpreadState> for RecentSpread {
    fn from(s: RecentSpreadState) -> Self {
        RecentSpread {
            values: s.values.into(),
            head: 0,
            shift: s.shift,
            s1: s.s1,
            s2: s.s2,
            since_exact: s.since_exact,
        }
    }
}

impl From<RecentSpread> for RecentSpreadState {
    fn from(s: RecentSpread) -> Self {
        RecentSpreadState {
            values: s.oldest_first().collect(),
            shift: s.shift,
            s1: s.s1,
            s2: s.s2,
            since_exact: s.since_exact,
        }
    }
}

impl RecentSpread {
    /// Inlined into the per-value loop (it runs for every value of every reading); the exact
    /// recompute stays out of line.
    #[inline]
    fn push(&mut self, x: f64, capacity: usize, shift: f64) {
        if self.values.len() >= capacity {
            let old = std::mem::replace(&mut self.values[self.head], x) - self.shift;
            self.head += 1;
            if self.head == self.values.len() {
                self.head = 0;
            }
            self.s1 -= old;
            self.s2 -= old * old;
        } else {
            if self.head != 0 {
                // A larger window than the ring was filled for (a changed configuration): the new
                // reading goes after the newest.
                self.values.rotate_left(self.head);
                self.head = 0;
            }
            if self.values.capacity() < capacity {
                self.values.reserve_exact(capacity - self.values.len());
            }
            self.values.push(x);
        }
        let d = x - self.shift;
        self.s1 += d;
        self.s2 += d * d;
        self.since_exact += 1;
        if self.since_exact >= capacity || shift.to_bits() != self.shift.to_bits() {
            self.recompute(shift);
        }
    }
    /// Re-centres the sums on `shift` and recomputes them exactly.
    #[inline(never)]
    fn recompute(&mut self, shift: f64) {
        self.shift = shift;
        self.since_exact = 0;
        // Oldest first, the order the sums have always been taken in (the same bits).
        (self.s1, self.s2) = self.oldest_first().fold((0.0, 0.0), |(s1, s2), v| {
            let d = v - shift;
            (s1 + d, s2 + d * d)
        });
    }
    /// The readings, oldest first.
    fn oldest_first(&self) -> impl Iterator<Item = f64> + '_ {
        let (newer, older) = self.values.split_at(self.head);
        older.iter().chain(newer).copied()
    }
    fn len(&self) -> usize {
        self.values.len()
    }
    /// Sample standard deviation of the window.
    fn std(&self) -> f64 {
        let n = self.values.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        ((self.s2 - self.s1 * self.s1 / n) / (n - 1.0))
            .max(0.0)
            .sqrt()
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct FeatureState {
    last: Option<f64>,
    repeats: usize,
    baseline: Moments,
    /// Smallest spread of a full window of readings seen while learning (None until a window filled).
    window_spread: Option<f64>,
    recent: RecentSpread,
    at_limit: usize,
    /// Range limits of this feature (from the configuration), looked up once.
    limits: Option<[f64; 2]>,
    absent: usize,
    last_seen_ts: i64,
    /// Seen in the reading being observed.
    seen: bool,
    active: [bool; 4],
}

/// Sensor-fault state of one thing.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SensorFaultDetector {
    /// The settings, shared by every thing of the dataflow (not stored in checkpoints: a restored
    /// detector gets them with [`SensorFaultDetector::set_config`]).
    #[serde(skip)]
    cfg: Arc<SensorFaultConfig>,
    /// Feature names in first-seen order, parallel to `features` (a thing's readings list their
    /// sensors in the same order, so the i-th value is almost always the i-th feature).
    names: Vec<Name>,
    features: Vec<FeatureState>,
    /// The feature of each slot of the caller's feature layout `by_slot_layout`, as far as seen
    /// ([`NO_FEATURE`] for a slot not seen yet): lets [`SensorFaultDetector::observe_slots`] find a
    /// value's feature without matching its name. A cache, not stored in checkpoints.
    #[serde(skip)]
    by_slot: Vec<u32>,
    #[serde(skip)]
    by_slot_layout: u64,
}

/// A slot of [`SensorFaultDetector::by_slot`] without a feature yet.
const NO_FEATURE: u32 = u32::MAX;

/// Moves one fault's state, recording an event on a change. A macro rather than a function so the
/// detail (a closure of the feature's name, formatted only on a change) is built only then: it is
/// called four times per feature per reading and a change is rare, and even an unused closure costs
/// the stores of what it captures.
macro_rules! set {
    ($st:expr, $name:expr, $kind:expr, $on:expr, $ts:expr, $detail:expr, $events:expr) => {
        if $st.active[$kind.index()] != $on {
            change($st, $name.as_ref(), $kind, $on, $ts, $detail, $events);
        }
    };
}

impl SensorFaultDetector {
    pub fn new(cfg: impl Into<Arc<SensorFaultConfig>>) -> Self {
        SensorFaultDetector {
            cfg: cfg.into(),
            names: Vec::new(),
            features: Vec::new(),
            by_slot: Vec::new(),
            by_slot_layout: 0,
        }
    }

    /// Sets the settings (of a detector restored from a checkpoint).
    pub fn set_config(&mut self, cfg: Arc<SensorFaultConfig>) {
        self.cfg = cfg;
    }

    /// Heap bytes owned (names, per-feature state and recent-spread windows, by capacity).
    pub fn heap_bytes(&self) -> usize {
        self.names.capacity() * std::mem::size_of::<Name>()
            + self
                .names
                .iter()
                .map(|n| {
                    if n.is_heap_allocated() {
                        n.capacity()
                    } else {
                        0
                    }
                })
                .sum::<usize>()
            + self.features.capacity() * std::mem::size_of::<FeatureState>()
            + self
                .features
                .iter()
                .map(|f| f.recent.values.capacity() * std::mem::size_of::<f64>())
                .sum::<usize>()
            + self.by_slot.capacity() * std::mem::size_of::<u32>()
    }

    /// Checks that a deserialised detector (a state checkpoint) is consistent.
    pub fn check(&self) -> Result<(), String> {
        if self.names.len() != self.features.len() {
            return Err(format!(
                "sensor-fault state with {} names for {} features",
                self.names.len(),
                self.features.len()
            ));
        }
        Ok(())
    }

    /// Faults currently active, as (feature, kind), by feature name.
    pub fn active(&self) -> Vec<(String, FaultKind)> {
        let mut out = Vec::new();
        for (name, st) in self.names.iter().zip(&self.features) {
            for k in FaultKind::ALL {
                if st.active[k.index()] {
                    out.push((name.to_string(), k));
                }
            }
        }
        out.sort();
        out
    }

    fn index_of(&mut self, hint: usize, name: &str) -> usize {
        if self.names.get(hint).is_some_and(|n| n == name) {
            return hint;
        }
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i;
        }
        self.names.push(Name::from(name));
        self.features.push(FeatureState {
            limits: self.cfg.limits.get(name).copied(),
            ..FeatureState::default()
        });
        self.names.len() - 1
    }

    /// Observes one reading (all values of the thing at `ts`); appends faults that started or cleared
    /// to `events`. Non-finite values count as absent. Allocation-free unless something changes.
    pub fn observe_into<N: AsRef<str>>(
        &mut self,
        ts: i64,
        values: &[(N, f64)],
        events: &mut Vec<FaultEvent>,
    ) {
        self.observe_slots(ts, values, None, events)
    }

    /// [`SensorFaultDetector::observe_into`] with the caller's resolution of the values' names:
    /// `slots` = (an id of the caller's feature layout, the layout slot of each value). The detector
    /// then finds each value's feature by its slot (remembered per layout id) instead of matching
    /// names: a layout maps each slot to one name, so the result is the same. A slot out of range
    /// (`usize::MAX`: no slot) falls back to the name.
    pub fn observe_slots<N: AsRef<str>>(
        &mut self,
        ts: i64,
        values: &[(N, f64)],
        slots: Option<(u64, &[usize])>,
        events: &mut Vec<FaultEvent>,
    ) {
        if let Some((layout, _)) = slots {
            if layout != self.by_slot_layout {
                self.by_slot.clear();
                self.by_slot_layout = layout;
            }
        }
        for (hint, (name, v)) in values.iter().enumerate() {
            // The name's text is needed only to find a new feature or to describe a change (rare):
            // `as_ref` on an inline name is a branch and a few moves per value otherwise.
            let v = *v;
            if !v.is_finite() {
                continue;
            }
            let slot = slots.and_then(|(_, s)| s.get(hint).copied());
            let i = match slot.and_then(|s| self.by_slot.get(s)) {
                Some(&f) if f != NO_FEATURE => f as usize,
                _ => {
                    let i = self.index_of(hint, name.as_ref());
                    if let (Some(s), Ok(f)) = (slot, u32::try_from(i)) {
                        // Layout slots are few (tens): the table stays small.
                        if s < (1 << 16) {
                            if self.by_slot.len() <= s {
                                self.by_slot.resize(s + 1, NO_FEATURE);
                            }
                            self.by_slot[s] = f;
                        }
                    }
                    i
                }
            };
            let cfg = &self.cfg;
            let st = &mut self.features[i];
            st.seen = true;
            st.last_seen_ts = ts;
            st.absent = 0;
            set!(
                st,
                name,
                FaultKind::Dropout,
                false,
                ts,
                |_| String::new(),
                events
            );

            // Stuck: bit-identical repeats.
            st.repeats = match st.last {
                Some(l) if l.to_bits() == v.to_bits() => st.repeats + 1,
                _ => 1,
            };
            st.last = Some(v);
            let stuck = st.repeats >= cfg.stuck_after.max(2);
            let repeats = st.repeats;
            set!(
                st,
                name,
                FaultKind::Stuck,
                stuck,
                ts,
                |name| format!("{name} repeated {v} for {repeats} readings"),
                events
            );

            // Flatlined: the recent spread collapsed relative to the learned spread.
            let learned = st.baseline.n >= cfg.baseline_readings as u64;
            if !learned {
                st.baseline.push(v);
            }
            let window = cfg.flatline_window.max(2);
            // The shift is the feature's first value while learning (a sample, so a constant signal
            // has exactly zero spread) and moves to the learned mean once (re-centring the sums); it
            // stays put otherwise rather than forcing an exact recompute on every reading.
            let shift = if learned {
                st.baseline.mean
            } else if st.recent.len() == 0 {
                v
            } else {
                st.recent.shift
            };
            st.recent.push(v, window, shift);
            if !learned && st.recent.len() >= window {
                let spread = st.recent.std();
                st.window_spread = Some(st.window_spread.map_or(spread, |m| m.min(spread)));
            }
            let base = st.window_spread.unwrap_or(0.0);
            // Only meaningful for a feature that varied while learning, and not for a value sitting on
            // one bit pattern for most of the window: that is a sensor getting `stuck`, reported as such.
            let flat = learned
                && st.recent.len() >= window
                && base > 0.0
                && st.recent.std() < cfg.flatline_ratio * base
                && st.repeats * 2 < window;
            let ratio = cfg.flatline_ratio;
            set!(
                st,
                name,
                FaultKind::Flatlined,
                flat,
                ts,
                |name| {
                    format!(
                        "{name} spread fell below {:.0}% of its learned spread {base:.4}",
                        ratio * 100.0
                    )
                },
                events
            );

            // Saturated: at or beyond a configured limit.
            let at = st.limits.filter(|&[lo, hi]| v <= lo || v >= hi);
            st.at_limit = if at.is_some() { st.at_limit + 1 } else { 0 };
            let saturated = st.at_limit >= cfg.saturated_after.max(1);
            set!(
                st,
                name,
                FaultKind::Saturated,
                saturated,
                ts,
                |name| match at {
                    Some([lo, _]) if v <= lo => format!("{name} at its low limit {lo} ({v})"),
                    Some([_, hi]) => format!("{name} at its high limit {hi} ({v})"),
                    None => String::new(),
                },
                events
            );
        }
        // Dropout: known features missing from this reading.
        let dropout_after = self.cfg.dropout_after.max(1);
        for (name, st) in self.names.iter().zip(&mut self.features) {
            if std::mem::take(&mut st.seen) {
                continue;
            }
            st.absent += 1;
            if st.absent >= dropout_after {
                let absent = st.absent;
                set!(
                    st,
                    name,
                    FaultKind::Dropout,
                    true,
                    ts,
                    |name| format!("{name} missing from {absent} readings"),
                    events
                );
            }
        }
    }

    /// [`SensorFaultDetector::observe_into`] returning the events.
    pub fn observe<N: AsRef<str>>(&mut self, ts: i64, values: &[(N, f64)]) -> Vec<FaultEvent> {
        let mut events = Vec::new();
        self.observe_into(ts, values, &mut events);
        events
    }

    /// Reports features not seen for more than `dropout_ms` of event time before `now` (call it from a
    /// timer, since a silent sensor produces no reading to observe).
    pub fn check_silence(&mut self, now: i64) -> Vec<FaultEvent> {
        let limit = self.cfg.dropout_ms;
        let mut events = Vec::new();
        for (name, st) in self.names.iter().zip(&mut self.features) {
            let silent = now - st.last_seen_ts;
            if silent > limit {
                set!(
                    st,
                    name,
                    FaultKind::Dropout,
                    true,
                    now,
                    |name| format!("{name} silent for {} s", silent / 1000),
                    &mut events
                );
            }
        }
        events
    }
}

#[cold]
#[inline(never)]
fn change(
    st: &mut FeatureState,
    name: &str,
    kind: FaultKind,
    on: bool,
    ts: i64,
    detail: impl FnOnce(&str) -> String,
    events: &mut Vec<FaultEvent>,
) {
    // Only called by `set!`, on a change.
    st.active[kind.index()] = on;
    events.push(FaultEvent {
        feature: name.to_string(),
        kind,
        started: on,
        ts,
        detail: if on {
            detail(name)
        } else {
            format!("{name} {} cleared", kind.alert_type())
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-0.5, 0.5).
    fn noise(i: usize) -> f64 {
        let x = (i as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let x = (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    fn cfg() -> SensorFaultConfig {
        let mut c = SensorFaultConfig {
            stuck_after: 10,
            flatline_window: 20,
            baseline_readings: 100,
            ..SensorFaultConfig::default()
        };
        c.limits.insert("pressure".into(), [0.0, 10.0]);
        c
    }

    /// Runs `n` readings of `f` and returns all events with their reading index.
    fn run(
        d: &mut SensorFaultDetector,
        range: std::ops::Range<usize>,
        f: impl Fn(usize) -> Vec<(&'static str, f64)>,
    ) -> Vec<(usize, FaultEvent)> {
        let mut out = Vec::new();
        for i in range {
            for e in d.observe(i as i64 * 1000, &f(i)) {
                out.push((i, e));
            }
        }
        out
    }

    /// The ring of recent readings gives the same sums, bit for bit, as the queue it replaced (the
    /// readings oldest first), through a checkpoint round trip at every ring position and a window
    /// that grows and shrinks; a checkpoint stores the readings oldest first, as the queue did.
    #[test]
    fn recent_spread_ring_matches_a_queue_through_checkpoints() {
        use std::collections::VecDeque;
        // The queue version, as it was.
        let mut queue: VecDeque<f64> = VecDeque::new();
        let (mut q_shift, mut q_s1, mut q_s2, mut q_since) = (0.0f64, 0.0f64, 0.0f64, 0usize);
        let mut ring = RecentSpread::default();
        let mut restored = 0;
        for i in 0..600 {
            let capacity = match i {
                0..300 => 20,
                300..450 => 35,
                _ => 12,
            };
            let x = 50.0 + noise(i) + if i % 97 == 0 { 30.0 } else { 0.0 };
            let shift: f64 = if i < 150 { 50.0 } else { 49.5 };
            if queue.len() >= capacity {
                let old = queue.pop_front().unwrap() - q_shift;
                q_s1 -= old;
                q_s2 -= old * old;
            }
            queue.push_back(x);
            q_s1 += x - q_shift;
            q_s2 += (x - q_shift) * (x - q_shift);
            q_since += 1;
            if q_since >= capacity || shift.to_bits() != q_shift.to_bits() {
                q_shift = shift;
                q_since = 0;
                (q_s1, q_s2) = queue.iter().fold((0.0, 0.0), |(s1, s2), v| {
                    (s1 + (v - shift), s2 + (v - shift) * (v - shift))
                });
            }
            ring.push(x, capacity, shift);
            assert_eq!(
                ring.oldest_first().collect::<Vec<_>>(),
                Vec::from(queue.clone()),
                "step {i}"
            );
            assert_eq!(
                (ring.s1.to_bits(), ring.s2.to_bits()),
                (q_s1.to_bits(), q_s2.to_bits()),
                "step {i}"
            );
            if i % 7 == 3 {
                let json = serde_json::to_value(&ring).unwrap();
                let values: Vec<f64> = serde_json::from_value(json["values"].clone()).unwrap();
                assert_eq!(
                    values,
                    Vec::from(queue.clone()),
                    "step {i}: stored oldest first"
                );
                ring = serde_json::from_value(json).unwrap();
                restored += 1;
            }
        }
        assert!(restored > 80);
    }

    /// Finding features by the caller's layout slots gives the same events and state as matching
    /// their names, across a layout change, reordered values, a missing sensor and a value without a
    /// slot.
    #[test]
    fn observing_by_slot_equals_observing_by_name() {
        let mut by_name = SensorFaultDetector::new(cfg());
        let mut by_slot = SensorFaultDetector::new(cfg());
        // Layout 1: slots flow=0, pressure=1. Layout 2 (a sensor appeared): temp=0, flow=1, pressure=2.
        let slot_in = |layout: u64, name: &str| -> usize {
            let names: &[&str] = if layout == 1 {
                &["flow", "pressure"]
            } else {
                &["temp", "flow", "pressure"]
            };
            names.iter().position(|n| *n == name).unwrap_or(usize::MAX)
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..900usize {
            let layout = if i < 400 { 1 } else { 2 };
            let flow = if (150..250).contains(&i) {
                31.25
            } else {
                32.0 + noise(i)
            };
            let pressure = if (500..520).contains(&i) {
                10.0
            } else {
                5.0 + noise(i + 1)
            };
            let mut values = vec![("pressure", pressure), ("flow", flow)];
            if i % 3 == 0 {
                values.reverse();
            }
            if layout == 2 {
                values.push(("temp", 80.0 + noise(i + 2)));
            }
            if (600..610).contains(&i) {
                values.retain(|(n, _)| *n != "flow");
            }
            let mut slots: Vec<usize> = values.iter().map(|(n, _)| slot_in(layout, n)).collect();
            if i == 700 {
                // A value the caller has no slot for falls back to its name.
                slots[0] = usize::MAX;
            }
            let ts = i as i64 * 1000;
            by_name.observe_into(ts, &values, &mut a);
            by_slot.observe_slots(ts, &values, Some((layout, &slots)), &mut b);
        }
        assert_eq!(a, b);
        assert!(a.len() >= 4, "the run has faults: {a:?}");
        assert_eq!(by_name.active(), by_slot.active());
        assert_eq!(by_name.names, by_slot.names);
    }

    #[test]
    fn healthy_noisy_sensors_raise_nothing() {
        let mut d = SensorFaultDetector::new(cfg());
        let ev = run(&mut d, 0..1000, |i| {
            vec![("flow", 32.0 + noise(i)), ("pressure", 5.0 + noise(i + 1))]
        });
        assert!(ev.is_empty(), "{ev:?}");
        // A quantised sensor that repeats a few times is not stuck.
        let ev = run(&mut d, 1000..1100, |i| {
            vec![
                ("flow", 32.0 + (i / 5 % 2) as f64),
                ("pressure", 5.0 + noise(i)),
            ]
        });
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn stuck_is_reported_once_and_cleared() {
        let mut d = SensorFaultDetector::new(cfg());
        let ev = run(&mut d, 0..300, |i| {
            let flow = if (100..200).contains(&i) {
                31.25
            } else {
                32.0 + noise(i)
            };
            vec![("flow", flow)]
        });
        let kinds: Vec<(usize, FaultKind, bool)> =
            ev.iter().map(|(i, e)| (*i, e.kind, e.started)).collect();
        // Starts at the 10th identical reading, clears at the first different one.
        assert_eq!(
            kinds,
            vec![
                (109, FaultKind::Stuck, true),
                (200, FaultKind::Stuck, false)
            ]
        );
        assert_eq!(ev[0].1.kind.alert_type(), "sensor_stuck");
        assert!(
            ev[0].1.detail.contains("repeated 31.25"),
            "{}",
            ev[0].1.detail
        );
    }

    #[test]
    fn flatline_needs_a_learned_spread_and_a_collapsed_window() {
        let mut d = SensorFaultDetector::new(cfg());
        // Learn a spread of ~0.29; then the signal keeps changing by tiny amounts (ADC noise).
        let ev = run(&mut d, 0..400, |i| {
            let v = if i < 200 {
                32.0 + noise(i)
            } else {
                4.0 + 0.001 * noise(i)
            };
            vec![("flow", v)]
        });
        let starts: Vec<(usize, FaultKind)> = ev
            .iter()
            .filter(|(_, e)| e.started)
            .map(|(i, e)| (*i, e.kind))
            .collect();
        // The window of 20 must hold only flat readings: from reading 219 on.
        assert_eq!(starts, vec![(219, FaultKind::Flatlined)]);
        assert!(d
            .active()
            .contains(&("flow".to_string(), FaultKind::Flatlined)));
    }

    #[test]
    fn phases_are_not_a_flatline_but_a_collapsed_window_in_a_phase_is() {
        // Three production phases of 50 readings (600, 1200, 1800) with the same noise: the spread of
        // all learned readings (~490) is the distance between phases, the spread of a window inside a
        // phase ~0.29. A steady stretch of a phase must not look flat.
        let level = |i: usize| [600.0, 1200.0, 1800.0][(i / 50) % 3];
        let mut d = SensorFaultDetector::new(cfg());
        let ev = run(&mut d, 0..1_500, |i| vec![("speed", level(i) + noise(i))]);
        assert!(ev.is_empty(), "{ev:?}");
        // Then the sensor reads ADC noise in a phase: flatlined once its window holds only that.
        let ev = run(&mut d, 1_500..1_550, |i| {
            vec![("speed", level(i) + 0.001 * noise(i))]
        });
        let starts: Vec<(usize, FaultKind)> = ev
            .iter()
            .filter(|(_, e)| e.started)
            .map(|(i, e)| (*i, e.kind))
            .collect();
        assert_eq!(starts, vec![(1_519, FaultKind::Flatlined)]);
    }

    #[test]
    fn saturation_at_a_configured_limit() {
        let mut d = SensorFaultDetector::new(cfg());
        let ev = run(&mut d, 0..60, |i| {
            let p = match i {
                10 => 10.0,                       // one reading at the rail: not yet
                20..=29 => 10.0 + noise(i).abs(), // pinned high
                40..=44 => -0.2,                  // pinned low
                _ => 5.0 + noise(i),
            };
            vec![("pressure", p)]
        });
        let kinds: Vec<(usize, FaultKind, bool)> =
            ev.iter().map(|(i, e)| (*i, e.kind, e.started)).collect();
        assert_eq!(
            kinds,
            vec![
                (22, FaultKind::Saturated, true),
                (30, FaultKind::Saturated, false),
                (42, FaultKind::Saturated, true),
                (45, FaultKind::Saturated, false),
            ]
        );
        assert!(
            ev[0].1.detail.contains("high limit 10"),
            "{}",
            ev[0].1.detail
        );
        assert!(ev[2].1.detail.contains("low limit 0"), "{}", ev[2].1.detail);
    }

    #[test]
    fn dropout_by_missing_readings_and_by_silence() {
        let mut d = SensorFaultDetector::new(cfg());
        let ev = run(&mut d, 0..40, |i| {
            let mut v = vec![("flow", 32.0 + noise(i))];
            if !(10..20).contains(&i) {
                v.push(("pressure", 5.0 + noise(i + 3)));
            }
            if i == 30 {
                v[0].1 = f64::NAN; // a NaN is not a reading
            }
            v
        });
        let kinds: Vec<(usize, &str, FaultKind, bool)> = ev
            .iter()
            .map(|(i, e)| (*i, e.feature.as_str(), e.kind, e.started))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (14, "pressure", FaultKind::Dropout, true),
                (20, "pressure", FaultKind::Dropout, false),
            ]
        );
        // Silence: nothing for 2 minutes of event time.
        let ev = d.check_silence(39_000 + 120_000);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| e.kind == FaultKind::Dropout && e.started));
        assert!(
            ev[0].detail.contains("silent for 120 s"),
            "{}",
            ev[0].detail
        );
        // Reported once, not again while it lasts.
        assert!(d.check_silence(39_000 + 180_000).is_empty());
    }
}
