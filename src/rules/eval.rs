//! Rule evaluation on the hot path: no allocation unless a rule fires.

use super::config::{Condition, Direction, FeatureSet, Op, Rule};
use super::glob::Pattern;
use super::{Readings, RuleHit, RuleSet};
use crate::event::Name;
use std::fmt::Write as _;
use std::sync::Arc;

/// Per-thing evaluation state: consecutive-sample counters for `for:` and the rules that apply to the
/// thing's equipment type.
///
/// [`evaluate`] resets it by itself when it is handed a rule set of another generation (the
/// [`super::RulesHandle`] stamps every rule set it installs with a new generation), so callers just keep
/// one `RuleState` per thing. [`RuleState::reset_if`] does the same explicitly.
#[derive(Clone, Debug, Default)]
pub struct RuleState {
    /// Generation of the rule set the counters belong to.
    pub generation: u64,
    /// Consecutive readings each rule's condition has held, by rule index (a boxed slice: this is
    /// per-thing state, issue 7).
    counts: Box<[u32]>,
    /// Which rules apply and where their features are, shared by the things with the same rules,
    /// equipment type and layout (see [`RuleCache`]). None until the first evaluation and after a
    /// reset: the counters are then not in use.
    resolved: Option<Arc<Resolved>>,
}

/// The rules that apply to one equipment type, resolved against one feature layout.
#[derive(Debug, Default)]
struct Resolved {
    equipment: Name,
    /// Layout id (see [`Readings::layout`]) the rules' features are resolved against (None: the
    /// readings give no layout; `bound` is then empty and features are found by name).
    layout: Option<u64>,
    /// Indices of the enabled rules that apply to `equipment`.
    applicable: Vec<u32>,
    /// The resolution, parallel to `applicable`.
    bound: Vec<Bound>,
}

/// Resolutions shared by the things evaluated with the rule sets of one [`super::RulesHandle`] (whose
/// generations tell its rule sets apart): one per (equipment type, layout) instead of one per thing.
/// Holds the current generation's only.
#[derive(Debug, Default)]
pub struct RuleCache {
    generation: u64,
    resolved: rustc_hash::FxHashMap<(Name, Option<u64>), Arc<Resolved>>,
}

impl RuleCache {
    fn get(
        &mut self,
        rules: &RuleSet,
        equipment_type: &str,
        readings: &dyn Readings,
    ) -> Arc<Resolved> {
        let layout = readings.layout();
        let layout_id = layout.map(|(id, _)| id);
        if self.generation != rules.generation {
            self.resolved.clear();
            self.generation = rules.generation;
        }
        let key = (Name::new(equipment_type), layout_id);
        if let Some(r) = self.resolved.get(&key) {
            return Arc::clone(r);
        }
        let r = Arc::new(Resolved::new(rules, equipment_type, layout));
        self.resolved.insert(key, Arc::clone(&r));
        r
    }
}

impl Resolved {
    fn new(rules: &RuleSet, equipment_type: &str, layout: Option<(u64, &[Name])>) -> Resolved {
        let applicable: Vec<u32> = rules
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.enabled && r.applies_to(equipment_type))
            .map(|(i, _)| i as u32)
            .collect();
        let bound = match layout {
            Some((_, names)) => applicable
                .iter()
                .map(|&i| Bound::resolve(&rules.rules[i as usize].condition, names))
                .collect(),
            None => Vec::new(),
        };
        Resolved {
            equipment: Name::new(equipment_type),
            layout: layout.map(|(id, _)| id),
            applicable,
            bound,
        }
    }
}

/// A rule's features resolved to the slots of one layout.
#[derive(Clone, Debug)]
enum Bound {
    /// The slots one pattern matches, in layout order (a literal name: its first slot, if any).
    Matches(Vec<u32>),
    /// A feature set without globs: each literal's slot in pattern order (`None`: not in the layout).
    Literals(Vec<Option<u32>>),
    /// A feature set with globs: every matched slot in layout order, and whether the first pattern
    /// matching it is a literal.
    Globbed(Vec<(u32, bool)>),
    /// `compare`: the slots of the left and right features.
    Pair(Option<u32>, Option<u32>),
}

impl Bound {
    fn resolve(cond: &Condition, names: &[Name]) -> Bound {
        let first = |name: &str| names.iter().position(|n| n == name).map(|i| i as u32);
        let matches = |p: &Pattern| {
            if p.is_glob() {
                let slots = names.iter().enumerate();
                Bound::Matches(
                    slots
                        .filter(|(_, n)| p.matches(n))
                        .map(|(i, _)| i as u32)
                        .collect(),
                )
            } else {
                Bound::Matches(first(p.as_str()).into_iter().collect())
            }
        };
        match cond {
            Condition::Threshold { feature, .. }
            | Condition::Range { feature, .. }
            | Condition::RateOfChange { feature, .. } => matches(feature),
            Condition::Spread { features, .. } | Condition::Imbalance { features, .. } => {
                if features.has_glob() {
                    Bound::Globbed(
                        names
                            .iter()
                            .enumerate()
                            .filter_map(|(i, n)| {
                                let p = features.patterns.iter().position(|p| p.matches(n))?;
                                Some((i as u32, p < features.literals))
                            })
                            .collect(),
                    )
                } else {
                    Bound::Literals(
                        features
                            .patterns
                            .iter()
                            .map(|p| first(p.as_str()))
                            .collect(),
                    )
                }
            }
            Condition::Compare { left, right, .. } => Bound::Pair(first(left), first(right)),
        }
    }
}

impl RuleState {
    /// Heap bytes this thing owns (its counters; the resolution is shared).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.counts)
    }

    /// Clears the counters when `generation` differs from the one they belong to. Returns whether it did.
    pub fn reset_if(&mut self, generation: u64) -> bool {
        if self.ready() && self.generation == generation {
            return false;
        }
        self.generation = generation;
        self.counts = Box::default();
        self.resolved = None;
        true
    }

    /// The `for:` counters by rule index (empty before the first evaluation): what a state checkpoint
    /// keeps of a thing's rule state (the rest is resolved again from the rules).
    pub fn counts(&self) -> &[u32] {
        if self.ready() {
            &self.counts
        } else {
            &[]
        }
    }

    /// Rule state that continues `counts` (from [`RuleState::counts`], saved under the same rules)
    /// for a thing of `equipment_type`; a fresh state when they do not fit `rules`.
    pub fn restored(rules: &RuleSet, equipment_type: &str, counts: Vec<u32>) -> RuleState {
        if counts.is_empty() || counts.len() != rules.rules.len() {
            return RuleState::default();
        }
        RuleState {
            generation: rules.generation,
            counts: counts.into_boxed_slice(),
            resolved: Some(Arc::new(Resolved::new(rules, equipment_type, None))),
        }
    }

    /// Whether the counters are in use (evaluated, or restored, since the last reset).
    fn ready(&self) -> bool {
        self.resolved.is_some()
    }

    /// The current consecutive count of rule `index` (0 when its condition did not hold last time).
    pub fn count(&self, index: usize) -> u32 {
        self.counts.get(index).copied().unwrap_or(0)
    }

    fn prepare(
        &mut self,
        rules: &RuleSet,
        equipment_type: &str,
        readings: &dyn Readings,
        cache: &mut RuleCache,
    ) {
        let layout_id = readings.layout().map(|(id, _)| id);
        let resolved = self.resolved.as_deref();
        let same_rules = self.ready()
            && self.generation == rules.generation
            && self.counts.len() == rules.rules.len()
            && resolved.is_some_and(|r| r.equipment == equipment_type);
        if same_rules && resolved.is_some_and(|r| r.layout == layout_id) {
            return;
        }
        if !same_rules {
            self.generation = rules.generation;
            self.counts = vec![0; rules.rules.len()].into_boxed_slice();
        }
        // A new layout keeps the `for:` counters (the same rules, the same thing): only the slots move.
        self.resolved = Some(cache.get(rules, equipment_type, readings));
    }
}

/// Evaluates every enabled rule that applies to `equipment_type` against the current reading.
///
/// A rule fires on the reading where its condition has held for `for` consecutive readings and keeps
/// firing while it holds (the alert policy dedups). A reading without the rule's features, or a
/// `rate_of_change` rule without a previous reading, breaks the run.
pub fn evaluate(
    rules: &RuleSet,
    equipment_type: &str,
    readings: &dyn Readings,
    state: &mut RuleState,
) -> Vec<RuleHit> {
    evaluate_shared(
        rules,
        equipment_type,
        readings,
        state,
        &mut RuleCache::default(),
    )
}

/// [`evaluate`] with the resolution of the thing's rules shared through `cache` (one per rule
/// handle, e.g. per engine), so that things with the same equipment type and layout share it.
pub fn evaluate_shared(
    rules: &RuleSet,
    equipment_type: &str,
    readings: &dyn Readings,
    state: &mut RuleState,
    cache: &mut RuleCache,
) -> Vec<RuleHit> {
    state.prepare(rules, equipment_type, readings, cache);
    let mut hits = Vec::new();
    let Some(resolved) = state.resolved.as_deref() else {
        return hits;
    };
    for (k, &i) in resolved.applicable.iter().enumerate() {
        let i = i as usize;
        let rule = &rules.rules[i];
        let count = &mut state.counts[i];
        match check(&rule.condition, resolved.bound.get(k), readings) {
            Some(finding) => {
                *count = count.saturating_add(1);
                if *count >= rule.for_samples {
                    hits.push(hit(rule, &finding, *count));
                }
            }
            None => *count = 0,
        }
    }
    hits
}

/// What made a condition hold, kept until a hit is built (names borrow from the rule or the readings).
enum Finding<'a> {
    /// A feature above (`upper`) or below a limit.
    Level {
        feature: &'a str,
        value: f64,
        limit: f64,
        op: Op,
    },
    /// A feature outside a range.
    OutOfRange {
        feature: &'a str,
        value: f64,
        min: f64,
        max: f64,
    },
    Rate {
        feature: &'a str,
        prev: f64,
        value: f64,
        dt_s: f64,
        rate: f64,
        limit: f64,
    },
    Spread {
        hi: (&'a str, f64),
        lo: (&'a str, f64),
        spread: f64,
        limit: f64,
    },
    Imbalance {
        hi: (&'a str, f64),
        lo: (&'a str, f64),
        mean: f64,
        pct: f64,
        limit: f64,
    },
    Compare {
        left: (&'a str, f64),
        right: (&'a str, f64),
        op: Op,
        offset: f64,
    },
}

#[inline]
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// A feature of the reading: by its slot (when the rule's names are resolved) or by name. A slot's
/// name is looked up only for a finding (a rule that holds), not for every value a rule reads.
#[derive(Clone, Copy)]
enum Feature<'a> {
    Slot(u32),
    Named(&'a str),
}

impl<'a> Feature<'a> {
    fn name(self, readings: &'a dyn Readings) -> &'a str {
        match self {
            Feature::Slot(slot) => readings.name_at(slot as usize),
            Feature::Named(name) => name,
        }
    }
}

/// Calls `f` for every feature of the reading that `pattern` names, with its finite value.
#[inline]
fn for_matching<'a>(
    pattern: &'a Pattern,
    bound: Option<&'a Bound>,
    readings: &'a dyn Readings,
    f: &mut dyn FnMut(Feature<'a>, f64),
) {
    if let Some(Bound::Matches(slots)) = bound {
        for &slot in slots {
            let v = readings.value_at(slot as usize);
            if v.is_finite() {
                f(Feature::Slot(slot), v)
            }
        }
    } else if pattern.is_glob() {
        readings.for_each_value(&mut |name, v| {
            if v.is_finite() && pattern.matches(name) {
                f(Feature::Named(name), v)
            }
        });
    } else if let Some(v) = finite(readings.value(pattern.as_str())) {
        f(Feature::Named(pattern.as_str()), v)
    }
}

/// The finite value of a feature, by slot when resolved.
#[inline]
fn value_of(readings: &dyn Readings, slot: Option<Option<u32>>, name: &str) -> Option<f64> {
    match slot {
        Some(slot) => slot
            .map(|s| readings.value_at(s as usize))
            .filter(|v| v.is_finite()),
        None => finite(readings.value(name)),
    }
}

fn check<'a>(
    cond: &'a Condition,
    bound: Option<&'a Bound>,
    readings: &'a dyn Readings,
) -> Option<Finding<'a>> {
    match cond {
        Condition::Threshold { feature, op, value } => {
            // The condition is monotone in the value, so only the most extreme match matters.
            let upper = op.is_upper();
            let mut worst: Option<(Feature, f64)> = None;
            for_matching(feature, bound, readings, &mut |feature, v| {
                let better = match worst {
                    None => true,
                    Some((_, w)) => (upper && v > w) || (!upper && v < w),
                };
                if better {
                    worst = Some((feature, v));
                }
            });
            let (feature, v) = worst?;
            op.holds(v, *value).then(|| Finding::Level {
                feature: feature.name(readings),
                value: v,
                limit: *value,
                op: *op,
            })
        }
        Condition::Range { feature, min, max } => {
            let mut worst: Option<(Feature, f64, f64)> = None;
            for_matching(feature, bound, readings, &mut |feature, v| {
                let excess = (v - max).max(min - v);
                if excess > 0.0 && worst.is_none_or(|(_, _, e)| excess > e) {
                    worst = Some((feature, v, excess));
                }
            });
            let (feature, v, _) = worst?;
            Some(Finding::OutOfRange {
                feature: feature.name(readings),
                value: v,
                min: *min,
                max: *max,
            })
        }
        Condition::RateOfChange {
            feature,
            max_per_s,
            direction,
        } => {
            let now = readings.ts();
            let mut worst: Option<(Feature, f64, f64, f64, f64)> = None;
            for_matching(feature, bound, readings, &mut |feature, v| {
                let previous = match feature {
                    Feature::Slot(s) => readings.previous_at(s as usize),
                    Feature::Named(name) => readings.previous(name),
                };
                let Some((prev, prev_ts)) = previous else {
                    return;
                };
                if !prev.is_finite() || now <= prev_ts {
                    return;
                }
                let dt_s = (now - prev_ts) as f64 / 1000.0;
                let rate = (v - prev) / dt_s;
                let exceeds = match direction {
                    Direction::Up => rate > *max_per_s,
                    Direction::Down => -rate > *max_per_s,
                    Direction::Both => rate.abs() > *max_per_s,
                };
                if exceeds && worst.is_none_or(|(_, _, _, _, r)| rate.abs() > r.abs()) {
                    worst = Some((feature, prev, v, dt_s, rate));
                }
            });
            let (feature, prev, v, dt_s, rate) = worst?;
            Some(Finding::Rate {
                feature: feature.name(readings),
                prev,
                value: v,
                dt_s,
                rate,
                limit: *max_per_s,
            })
        }
        Condition::Spread { features, max } => {
            let e = extremes(features, bound, readings)?;
            let spread = e.hi.1 - e.lo.1;
            (spread > *max).then(|| Finding::Spread {
                hi: (e.hi.0.name(readings), e.hi.1),
                lo: (e.lo.0.name(readings), e.lo.1),
                spread,
                limit: *max,
            })
        }
        Condition::Imbalance {
            features,
            max_pct,
            min_mean,
        } => {
            let e = extremes(features, bound, readings)?;
            let mean = e.sum / e.n as f64;
            // Below `min_mean` (an idle motor) the ratio is noise; a mean <= 0 makes it meaningless.
            if mean <= 0.0 || mean <= *min_mean {
                return None;
            }
            let pct = (e.hi.1 - e.lo.1) / mean * 100.0;
            (pct > *max_pct).then(|| Finding::Imbalance {
                hi: (e.hi.0.name(readings), e.hi.1),
                lo: (e.lo.0.name(readings), e.lo.1),
                mean,
                pct,
                limit: *max_pct,
            })
        }
        Condition::Compare {
            left,
            op,
            right,
            offset,
        } => {
            let (l_slot, r_slot) = match bound {
                Some(Bound::Pair(l, r)) => (Some(*l), Some(*r)),
                _ => (None, None),
            };
            let l = value_of(readings, l_slot, left)?;
            let r = value_of(readings, r_slot, right)?;
            op.holds(l, r + offset).then_some(Finding::Compare {
                left: (left.as_str(), l),
                right: (right.as_str(), r),
                op: *op,
                offset: *offset,
            })
        }
    }
}

struct Extremes<'a> {
    hi: (Feature<'a>, f64),
    lo: (Feature<'a>, f64),
    sum: f64,
    n: usize,
}

/// Max, min, sum and count over a feature set; `None` when a listed name is missing or fewer than two
/// features are present.
fn extremes<'a>(
    set: &'a FeatureSet,
    bound: Option<&'a Bound>,
    readings: &'a dyn Readings,
) -> Option<Extremes<'a>> {
    let mut e = Extremes {
        hi: (Feature::Named(""), f64::NEG_INFINITY),
        lo: (Feature::Named(""), f64::INFINITY),
        sum: 0.0,
        n: 0,
    };
    let add = |e: &mut Extremes<'a>, feature: Feature<'a>, v: f64| {
        if v > e.hi.1 {
            e.hi = (feature, v);
        }
        if v < e.lo.1 {
            e.lo = (feature, v);
        }
        e.sum += v;
        e.n += 1;
    };
    match bound {
        Some(Bound::Literals(slots)) => {
            for (p, slot) in set.patterns.iter().zip(slots) {
                let v = value_of(readings, Some(*slot), p.as_str())?;
                add(&mut e, Feature::Named(p.as_str()), v);
            }
        }
        Some(Bound::Globbed(slots)) => {
            let mut literals_seen = 0;
            for &(slot, literal) in slots {
                let v = readings.value_at(slot as usize);
                if v.is_finite() {
                    literals_seen += usize::from(literal);
                    add(&mut e, Feature::Slot(slot), v);
                }
            }
            if literals_seen < set.literals {
                return None;
            }
        }
        _ if !set.has_glob() => {
            for p in &set.patterns {
                let v = finite(readings.value(p.as_str()))?;
                add(&mut e, Feature::Named(p.as_str()), v);
            }
        }
        _ => {
            // One pass over the reading so a feature matched by two patterns counts once.
            let mut literals_seen = 0;
            readings.for_each_value(&mut |name, v| {
                if !v.is_finite() {
                    return;
                }
                if let Some(p) = set.patterns.iter().position(|p| p.matches(name)) {
                    if p < set.literals {
                        literals_seen += 1;
                    }
                    add(&mut e, Feature::Named(name), v);
                }
            });
            if literals_seen < set.literals {
                return None;
            }
        }
    }
    if e.n < 2 {
        return None;
    }
    Some(e)
}

/// Formats a number for messages: at most 3 decimals, no trailing zeros.
pub(crate) fn num(out: &mut String, v: f64) {
    let start = out.len();
    let _ = write!(out, "{v:.3}");
    if out[start..].contains('.') {
        while out.ends_with('0') {
            out.pop();
        }
        if out.ends_with('.') {
            out.pop();
        }
    }
    if &out[start..] == "-0" {
        out.replace_range(start.., "0");
    }
}

fn hit(rule: &Rule, finding: &Finding<'_>, count: u32) -> RuleHit {
    let mut m = String::with_capacity(96);
    let contributions: Vec<(Name, f64)> = match *finding {
        Finding::Level {
            feature,
            value,
            limit,
            op,
        } => {
            m.push_str(feature);
            m.push_str(" = ");
            num(&mut m, value);
            m.push_str(match op {
                Op::Gt => " above limit ",
                Op::Ge => " at or above limit ",
                Op::Lt => " below limit ",
                Op::Le => " at or below limit ",
            });
            num(&mut m, limit);
            let sign = if op.is_upper() { 1.0 } else { -1.0 };
            vec![(Name::new(feature), sign)]
        }
        Finding::OutOfRange {
            feature,
            value,
            min,
            max,
        } => {
            let above = value > max;
            m.push_str(feature);
            m.push_str(" = ");
            num(&mut m, value);
            m.push_str(if above { " above" } else { " below" });
            m.push_str(" allowed range [");
            num(&mut m, min);
            m.push_str(", ");
            num(&mut m, max);
            m.push(']');
            vec![(Name::new(feature), if above { 1.0 } else { -1.0 })]
        }
        Finding::Rate {
            feature,
            prev,
            value,
            dt_s,
            rate,
            limit,
        } => {
            m.push_str(feature);
            m.push_str(if rate > 0.0 {
                " rising at "
            } else {
                " falling at "
            });
            num(&mut m, rate.abs());
            m.push_str("/s, faster than limit ");
            num(&mut m, limit);
            m.push_str("/s (");
            num(&mut m, prev);
            m.push_str(" -> ");
            num(&mut m, value);
            m.push_str(" in ");
            num(&mut m, dt_s);
            m.push_str(" s)");
            vec![(Name::new(feature), if rate > 0.0 { 1.0 } else { -1.0 })]
        }
        Finding::Spread {
            hi,
            lo,
            spread,
            limit,
        } => {
            m.push_str("spread ");
            num(&mut m, spread);
            m.push_str(" between ");
            extremes_text(&mut m, hi, lo);
            m.push_str(" above limit ");
            num(&mut m, limit);
            split(hi.0, lo.0)
        }
        Finding::Imbalance {
            hi,
            lo,
            mean,
            pct,
            limit,
        } => {
            m.push_str("imbalance ");
            num(&mut m, pct);
            m.push_str("% between ");
            extremes_text(&mut m, hi, lo);
            m.push_str(" (mean ");
            num(&mut m, mean);
            m.push_str(") above limit ");
            num(&mut m, limit);
            m.push('%');
            split(hi.0, lo.0)
        }
        Finding::Compare {
            left,
            right,
            op,
            offset,
        } => {
            m.push_str(left.0);
            m.push_str(" = ");
            num(&mut m, left.1);
            m.push(' ');
            m.push_str(op.as_str());
            m.push(' ');
            m.push_str(right.0);
            m.push_str(" = ");
            num(&mut m, right.1);
            if offset != 0.0 {
                m.push_str(if offset > 0.0 { " + " } else { " - " });
                num(&mut m, offset.abs());
                m.push_str(" (= ");
                num(&mut m, right.1 + offset);
                m.push(')');
            }
            // Left is "too high" relative to right for `>`/`>=`, "too low" for `<`/`<=`.
            let s = if op.is_upper() { 0.5 } else { -0.5 };
            vec![(Name::new(left.0), s), (Name::new(right.0), -s)]
        }
    };
    if rule.for_samples > 1 {
        m.push_str(" (");
        let _ = write!(m, "{count}");
        m.push_str(" samples)");
    }
    RuleHit {
        rule: rule.name.clone(),
        alert_type: rule.alert_type.clone(),
        severity: rule.severity,
        contributions,
        message: m,
    }
}

fn extremes_text(m: &mut String, hi: (&str, f64), lo: (&str, f64)) {
    m.push_str(hi.0);
    m.push_str(" (");
    num(m, hi.1);
    m.push_str(") and ");
    m.push_str(lo.0);
    m.push_str(" (");
    num(m, lo.1);
    m.push(')');
}

/// Max feature +0.5, min feature -0.5; if one feature is both (all values equal) it gets the whole 1.
fn split(hi: &str, lo: &str) -> Vec<(Name, f64)> {
    if hi == lo {
        vec![(Name::new(hi), 1.0)]
    } else {
        vec![(Name::new(hi), 0.5), (Name::new(lo), -0.5)]
    }
}
