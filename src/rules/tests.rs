use super::*;
use crate::config::ConfigError;
use crate::event::{Name, Severity};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A reading with an optional previous one, as the pipeline would provide.
#[derive(Default)]
struct R {
    ts: i64,
    now: Vec<(String, f64)>,
    prev: Vec<(String, f64, i64)>,
}

impl R {
    fn new(values: &[(&str, f64)]) -> R {
        R {
            ts: 10_000,
            now: values.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            prev: Vec::new(),
        }
    }
    fn with_prev(mut self, values: &[(&str, f64)], prev_ts: i64) -> R {
        self.prev = values
            .iter()
            .map(|(n, v)| (n.to_string(), *v, prev_ts))
            .collect();
        self
    }
}

impl Readings for R {
    fn ts(&self) -> i64 {
        self.ts
    }
    fn value(&self, feature: &str) -> Option<f64> {
        self.now.iter().find(|(n, _)| n == feature).map(|(_, v)| *v)
    }
    fn previous(&self, feature: &str) -> Option<(f64, i64)> {
        self.prev
            .iter()
            .find(|(n, _, _)| n == feature)
            .map(|(_, v, t)| (*v, *t))
    }
    fn feature_names(&self) -> Vec<&str> {
        self.now.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The same reading through the slot-addressed path ([`Readings::layout`]), as the engine provides it.
struct Slotted<'a> {
    inner: &'a dyn Readings,
    names: Vec<Name>,
    layout: u64,
}

impl<'a> Slotted<'a> {
    fn new(inner: &'a dyn Readings, layout: u64) -> Slotted<'a> {
        let names = inner.feature_names().into_iter().map(Name::new).collect();
        Slotted {
            inner,
            names,
            layout,
        }
    }
}

impl Readings for Slotted<'_> {
    fn ts(&self) -> i64 {
        self.inner.ts()
    }
    fn value(&self, feature: &str) -> Option<f64> {
        self.inner.value(feature)
    }
    fn previous(&self, feature: &str) -> Option<(f64, i64)> {
        self.inner.previous(feature)
    }
    fn feature_names(&self) -> Vec<&str> {
        self.names.iter().map(|n| n.as_str()).collect()
    }
    fn layout(&self) -> Option<(u64, &[Name])> {
        Some((self.layout, &self.names))
    }
    fn value_at(&self, slot: usize) -> f64 {
        self.inner.value(&self.names[slot]).unwrap_or(f64::NAN)
    }
    fn name_at(&self, slot: usize) -> &str {
        &self.names[slot]
    }
    fn previous_at(&self, slot: usize) -> Option<(f64, i64)> {
        self.inner.previous(&self.names[slot])
    }
}

fn rules(yaml: &str) -> RuleSet {
    RuleSet::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn one(rule: &str) -> RuleSet {
    rules(&format!("rules:\n  - name: r\n{rule}"))
}

/// Hits of a fresh state on one reading; the slot-resolved path must give the same hits as the
/// name-based one.
fn fire(set: &RuleSet, equipment: &str, r: &dyn Readings) -> Vec<RuleHit> {
    let by_name = evaluate(set, equipment, r, &mut RuleState::default());
    let by_slot = evaluate(
        set,
        equipment,
        &Slotted::new(r, 1),
        &mut RuleState::default(),
    );
    assert_eq!(
        by_name, by_slot,
        "slot-resolved rules disagree with name lookups"
    );
    by_name
}

fn fires(set: &RuleSet, r: &R) -> bool {
    !fire(set, "oven", r).is_empty()
}

fn err(yaml: &str) -> String {
    match RuleSet::parse(yaml, "bad.yaml") {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(yaml: &str, line: usize, needles: &[&str]) {
    let e = err(yaml);
    assert!(
        e.starts_with(&format!("bad.yaml:{line}:")),
        "expected line {line}: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in: {e}");
    }
}

fn abs_sum(h: &RuleHit) -> f64 {
    h.contributions.iter().map(|(_, c)| c.abs()).sum()
}

// ---------------------------------------------------------------------------------------------- kinds

#[test]
fn threshold_strict_and_non_strict_boundaries() {
    let gt = one("    kind: threshold\n    feature: t\n    op: \">\"\n    value: 250\n");
    assert!(!fires(&gt, &R::new(&[("t", 250.0)])));
    assert!(fires(&gt, &R::new(&[("t", 250.01)])));
    let ge = one("    kind: threshold\n    feature: t\n    op: \">=\"\n    value: 250\n");
    assert!(fires(&ge, &R::new(&[("t", 250.0)])));
    assert!(!fires(&ge, &R::new(&[("t", 249.99)])));
    let lt = one("    kind: threshold\n    feature: pf\n    op: \"<\"\n    value: 0.8\n");
    assert!(!fires(&lt, &R::new(&[("pf", 0.8)])));
    assert!(fires(&lt, &R::new(&[("pf", 0.79)])));
    let le = one("    kind: threshold\n    feature: pf\n    op: \"<=\"\n    value: 0.8\n");
    assert!(fires(&le, &R::new(&[("pf", 0.8)])));
    assert!(!fires(&le, &R::new(&[("pf", 0.81)])));

    let h = &fire(&gt, "oven", &R::new(&[("t", 262.14)]))[0];
    assert_eq!(h.message, "t = 262.14 above limit 250");
    assert_eq!(h.contributions, vec![(Name::new("t"), 1.0)]);
    assert_eq!(h.rule, "r");
    assert_eq!(h.alert_type, "r", "type defaults to the name");
    assert_eq!(
        h.severity,
        Severity::Warning,
        "severity defaults to warning"
    );
    let h = &fire(&lt, "oven", &R::new(&[("pf", 0.75)]))[0];
    assert_eq!(h.contributions, vec![(Name::new("pf"), -1.0)]);
    assert!(h.message.contains("below limit 0.8"), "{}", h.message);
}

#[test]
fn range_fires_only_outside_the_closed_interval() {
    let set = one("    kind: range\n    feature: v\n    min: 207\n    max: 253\n");
    for (v, expect) in [
        (207.0, false),
        (253.0, false),
        (230.0, false),
        (206.9, true),
        (253.1, true),
    ] {
        assert_eq!(fires(&set, &R::new(&[("v", v)])), expect, "v = {v}");
    }
    let h = &fire(&set, "oven", &R::new(&[("v", 260.0)]))[0];
    assert_eq!(h.contributions, vec![(Name::new("v"), 1.0)]);
    assert_eq!(h.message, "v = 260 above allowed range [207, 253]");
    let h = &fire(&set, "oven", &R::new(&[("v", 200.0)]))[0];
    assert_eq!(h.contributions, vec![(Name::new("v"), -1.0)]);
}

#[test]
fn range_with_glob_names_the_worst_feature() {
    let set = one("    kind: range\n    feature: voltage_?\n    min: 207\n    max: 253\n");
    let r = R::new(&[
        ("voltage_a", 255.0),
        ("voltage_b", 200.0),
        ("voltage_c", 230.0),
    ]);
    let h = &fire(&set, "oven", &r)[0];
    assert_eq!(h.contributions, vec![(Name::new("voltage_b"), -1.0)]);
}

#[test]
fn rate_of_change_per_second_and_direction() {
    let both = one("    kind: rate_of_change\n    feature: t\n    max_per_s: 5\n");
    // 10 degrees in 2 s = 5/s: not above the limit.
    let r = R::new(&[("t", 190.0)]).with_prev(&[("t", 180.0)], 8_000);
    assert!(!fires(&both, &r));
    let r = R::new(&[("t", 190.2)]).with_prev(&[("t", 180.0)], 8_000);
    let h = &fire(&both, "oven", &r)[0];
    assert_eq!(h.contributions, vec![(Name::new("t"), 1.0)]);
    assert_eq!(
        h.message,
        "t rising at 5.1/s, faster than limit 5/s (180 -> 190.2 in 2 s)"
    );
    let falling = R::new(&[("t", 160.0)]).with_prev(&[("t", 180.0)], 8_000);
    let h = &fire(&both, "oven", &falling)[0];
    assert_eq!(h.contributions, vec![(Name::new("t"), -1.0)]);

    let up = one("    kind: rate_of_change\n    feature: t\n    max_per_s: 5\n    direction: up\n");
    assert!(!fires(&up, &falling));
    assert!(fires(&up, &r));
    let down =
        one("    kind: rate_of_change\n    feature: t\n    max_per_s: 5\n    direction: down\n");
    assert!(fires(&down, &falling));
    assert!(!fires(&down, &r));

    // No previous reading, or one at the same time: nothing to compare.
    assert!(!fires(&both, &R::new(&[("t", 999.0)])));
    let same_ts = R::new(&[("t", 999.0)]).with_prev(&[("t", 0.0)], 10_000);
    assert!(!fires(&both, &same_ts));
}

#[test]
fn spread_uses_max_minus_min_strictly() {
    let set = one("    kind: spread\n    features: [a, b, c]\n    max: 25\n");
    assert!(!fires(
        &set,
        &R::new(&[("a", 180.0), ("b", 205.0), ("c", 190.0)])
    ));
    let r = R::new(&[("a", 180.0), ("b", 205.5), ("c", 190.0)]);
    let h = &fire(&set, "oven", &r)[0];
    assert_eq!(
        h.contributions,
        vec![(Name::new("b"), 0.5), (Name::new("a"), -0.5)]
    );
    assert_eq!(
        h.message,
        "spread 25.5 between b (205.5) and a (180) above limit 25"
    );
    // A listed feature missing: the rule does not apply.
    assert!(!fires(&set, &R::new(&[("a", 0.0), ("b", 100.0)])));
}

#[test]
fn imbalance_is_range_over_mean_in_percent() {
    let set = one("    kind: imbalance\n    features: [i1, i2, i3]\n    max_pct: 10\n");
    // (11 - 10) / 10.5 * 100 = 9.52 %.
    assert!(!fires(
        &set,
        &R::new(&[("i1", 10.0), ("i2", 11.0), ("i3", 10.5)])
    ));
    // (11 - 9.5) / 10.0 * 100 = 15 %.
    let r = R::new(&[("i1", 9.5), ("i2", 11.0), ("i3", 9.5)]);
    let h = &fire(&set, "oven", &r)[0];
    assert_eq!(
        h.message,
        "imbalance 15% between i2 (11) and i1 (9.5) (mean 10) above limit 10%"
    );
    assert_eq!(h.contributions[0], (Name::new("i2"), 0.5));
    assert_eq!(h.contributions[1], (Name::new("i1"), -0.5));
    // Exactly 10 % does not fire: (10.5 - 9.5) / 10 * 100.
    assert!(!fires(
        &set,
        &R::new(&[("i1", 9.5), ("i2", 10.5), ("i3", 10.0)])
    ));
    assert!(fires(
        &set,
        &R::new(&[("i1", 9.5), ("i2", 10.51), ("i3", 10.0)])
    ));
    // All zero (machine off): no division by zero, no alert.
    assert!(!fires(
        &set,
        &R::new(&[("i1", 0.0), ("i2", 0.0), ("i3", 0.0)])
    ));

    let idle =
        one("    kind: imbalance\n    features: [i1, i2, i3]\n    max_pct: 10\n    min_mean: 1\n");
    assert!(!fires(
        &idle,
        &R::new(&[("i1", 0.1), ("i2", 0.5), ("i3", 0.3)])
    ));
    assert!(fires(
        &idle,
        &R::new(&[("i1", 1.0), ("i2", 5.0), ("i3", 3.0)])
    ));
}

#[test]
fn compare_with_offset() {
    let set = one(
        "    kind: compare\n    left: motor\n    op: \">\"\n    right: ambient\n    offset: 40\n",
    );
    assert!(!fires(&set, &R::new(&[("motor", 65.0), ("ambient", 25.0)])));
    let h = &fire(&set, "oven", &R::new(&[("motor", 66.0), ("ambient", 25.0)]))[0];
    assert_eq!(h.message, "motor = 66 > ambient = 25 + 40 (= 65)");
    assert_eq!(
        h.contributions,
        vec![(Name::new("motor"), 0.5), (Name::new("ambient"), -0.5)]
    );
    let le = one("    kind: compare\n    left: a\n    op: \"<=\"\n    right: b\n");
    assert!(fires(&le, &R::new(&[("a", 1.0), ("b", 1.0)])));
    assert!(!fires(&le, &R::new(&[("a", 1.1), ("b", 1.0)])));
    let h = &fire(&le, "oven", &R::new(&[("a", 1.0), ("b", 2.0)]))[0];
    assert_eq!(h.contributions[0], (Name::new("a"), -0.5));
    assert!(!fires(&le, &R::new(&[("a", 1.0)])), "missing right side");
}

// ------------------------------------------------------------------------------------- semantics

#[test]
fn for_counts_consecutive_samples_and_resets_when_broken() {
    let set =
        one("    kind: threshold\n    feature: t\n    op: \">\"\n    value: 250\n    for: 3\n");
    let hot = R::new(&[("t", 260.0)]);
    let ok = R::new(&[("t", 200.0)]);
    let missing = R::new(&[("x", 1.0)]);
    let mut st = RuleState::default();
    let mut seq = |r: &R| evaluate(&set, "oven", r, &mut st).len();
    assert_eq!(seq(&hot), 0);
    assert_eq!(seq(&hot), 0);
    assert_eq!(seq(&hot), 1, "fires when the count reaches `for`");
    assert_eq!(seq(&hot), 1, "keeps firing while it holds");
    assert_eq!(seq(&ok), 0);
    assert_eq!(seq(&hot), 0, "a break restarts the count");
    assert_eq!(seq(&hot), 0);
    assert_eq!(seq(&missing), 0, "a missing feature breaks the run too");
    assert_eq!(seq(&hot), 0);
    assert_eq!(seq(&hot), 0);
    assert_eq!(seq(&hot), 1);

    let mut st = RuleState::default();
    for _ in 0..4 {
        evaluate(&set, "oven", &hot, &mut st);
    }
    let h = evaluate(&set, "oven", &hot, &mut st);
    assert_eq!(h[0].message, "t = 260 above limit 250 (5 samples)");
}

#[test]
fn state_resets_when_the_generation_changes() {
    let mut set =
        one("    kind: threshold\n    feature: t\n    op: \">\"\n    value: 1\n    for: 2\n");
    let hot = R::new(&[("t", 5.0)]);
    let mut st = RuleState::default();
    evaluate(&set, "oven", &hot, &mut st);
    assert_eq!(st.count(0), 1);
    set.generation = 7;
    assert!(evaluate(&set, "oven", &hot, &mut st).is_empty());
    assert_eq!(st.count(0), 1, "counter restarted under the new generation");
    assert_eq!(st.generation, 7);
    assert_eq!(evaluate(&set, "oven", &hot, &mut st).len(), 1);
    assert!(!st.reset_if(7));
    assert!(st.reset_if(8));
    assert_eq!(st.count(0), 0);
}

#[test]
fn equipment_filter_and_disabled_rules() {
    let set = rules(
        "rules:
  - name: oven_only
    equipment: [oven]
    kind: threshold
    feature: t
    op: '>'
    value: 1
  - name: star
    equipment: '*'
    kind: threshold
    feature: t
    op: '>'
    value: 1
  - name: mixer_or_conveyor
    equipment: [mixer, conveyor]
    kind: threshold
    feature: t
    op: '>'
    value: 1
  - name: off
    enabled: false
    kind: threshold
    feature: t
    op: '>'
    value: 1
",
    );
    let r = R::new(&[("t", 2.0)]);
    let names =
        |eq: &str| -> Vec<String> { fire(&set, eq, &r).into_iter().map(|h| h.rule).collect() };
    assert_eq!(names("oven"), ["oven_only", "star"]);
    assert_eq!(names("conveyor"), ["star", "mixer_or_conveyor"]);
    assert_eq!(names("pump"), ["star"]);
    assert_eq!(set.len(), 4);
    // One state reused across equipment types (should not happen, but must not misfire).
    let mut st = RuleState::default();
    assert_eq!(evaluate(&set, "oven", &r, &mut st).len(), 2);
    assert_eq!(
        evaluate(&set, "mixer", &r, &mut st)[1].rule,
        "mixer_or_conveyor"
    );
}

#[test]
fn globs_match_zones_but_not_derived_features() {
    let set = rules(
        "rules:
  - name: hot
    kind: threshold
    feature: temp_zone_[0-9]*
    op: '>'
    value: 250
  - name: spread
    kind: spread
    features: ['temp_zone_[0-9]*']
    max: 25
",
    );
    let r = R::new(&[
        ("temp_zone_1", 185.0),
        ("temp_zone_2", 262.1),
        ("temp_zone_10", 190.0),
        ("temp_zone_spread", 300.0),
        ("voltage_a", 400.0),
    ]);
    let hits = fire(&set, "oven", &r);
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].message, "temp_zone_2 = 262.1 above limit 250");
    assert_eq!(
        hits[1].contributions,
        vec![
            (Name::new("temp_zone_2"), 0.5),
            (Name::new("temp_zone_1"), -0.5)
        ]
    );
    // A single matching zone is not a spread.
    assert!(fire(&set, "oven", &R::new(&[("temp_zone_1", 100.0)])).is_empty());

    let star = one("    kind: threshold\n    feature: temp_*\n    op: '>'\n    value: 250\n");
    let h = &fire(&star, "oven", &r)[0];
    assert!(
        h.message.starts_with("temp_zone_spread = 300"),
        "{}",
        h.message
    );
}

#[test]
fn glob_matcher() {
    let p = |s: &str| Pattern::new(s).unwrap();
    assert!(p("temp_zone_*").matches("temp_zone_1"));
    assert!(p("temp_zone_*").matches("temp_zone_"));
    assert!(!p("temp_zone_*").matches("temp_zon"));
    assert!(p("*_a").matches("voltage_a"));
    assert!(!p("*_a").matches("voltage_b"));
    assert!(p("v*t*_?").matches("voltage_c"));
    assert!(p("voltage_[a-c]").matches("voltage_b"));
    assert!(!p("voltage_[a-c]").matches("voltage_d"));
    assert!(p("voltage_[!a]").matches("voltage_b"));
    assert!(!p("voltage_[!a]").matches("voltage_a"));
    assert!(p("a**b").matches("ab"));
    assert!(!p("voltage_a").is_glob());
    assert!(p("voltage_a").matches("voltage_a"));
    assert!(Pattern::new("temp_[0-9").is_err());
    assert!(
        Pattern::new("a]").unwrap().matches("a]"),
        "a lone `]` is literal"
    );
    assert!(Pattern::new("a b").is_err());
}

#[test]
fn missing_features_do_not_fire() {
    let set = rules(
        "rules:
  - {name: t, kind: threshold, feature: nope, op: '>', value: 0}
  - {name: g, kind: threshold, feature: 'nope_*', op: '>', value: 0}
  - {name: r, kind: range, feature: nope, min: 0, max: 1}
  - {name: d, kind: rate_of_change, feature: nope, max_per_s: 1}
  - {name: s, kind: spread, features: [a, nope], max: 0}
  - {name: i, kind: imbalance, features: ['nope_*'], max_pct: 1}
  - {name: c, kind: compare, left: a, op: '>', right: nope}
",
    );
    let r = R::new(&[("a", 1e9)]).with_prev(&[("a", 0.0)], 0);
    assert!(fire(&set, "oven", &r).is_empty());
    assert!(fire(&set, "oven", &R::new(&[])).is_empty());
    // Non-finite readings are ignored rather than compared.
    let nan = R::new(&[("nope", f64::NAN), ("a", f64::INFINITY)]);
    assert!(fire(&set, "oven", &nan).is_empty());
}

#[test]
fn contributions_sum_to_one_for_every_kind() {
    let set = rules(
        "rules:
  - {name: t, kind: threshold, feature: 'x*', op: '<', value: 5}
  - {name: r, kind: range, feature: x1, min: 0, max: 1}
  - {name: d, kind: rate_of_change, feature: x1, max_per_s: 0.1}
  - {name: s, kind: spread, features: ['x*'], max: 1}
  - {name: i, kind: imbalance, features: [x1, x2, x3], max_pct: 1}
  - {name: c, kind: compare, left: x1, op: '<', right: x3, offset: -1}
",
    );
    let r = R::new(&[("x1", 3.0), ("x2", 4.5), ("x3", 9.0)]).with_prev(&[("x1", 0.0)], 0);
    let hits = fire(&set, "oven", &r);
    assert_eq!(hits.len(), 6, "{hits:?}");
    for h in &hits {
        assert!((abs_sum(h) - 1.0).abs() < 1e-12, "{h:?}");
    }
}

#[test]
fn no_rules_no_hits() {
    let set = RuleSet::empty();
    assert!(set.is_empty());
    assert!(fire(&set, "oven", &R::new(&[("t", 1.0)])).is_empty());
    let set = rules("# nothing yet\n");
    assert!(set.is_empty());
    let set = rules("rules: []\n");
    assert!(set.is_empty());
}

// ------------------------------------------------------------------------------------ validation

const GOOD: &str = "rules:
  - name: ok
    kind: threshold
    feature: t
    op: '>'
    value: 1
";

#[test]
fn unknown_field_names_its_line() {
    let yaml = format!(
        "{GOOD}  - name: bad\n    kind: threshold\n    feature: t\n    op: '>'\n    valeu: 3\n"
    );
    assert_err(&yaml, 11, &["rules[1]", "unknown field `valeu`"]);
    assert_err("rule:\n  - name: x\n", 1, &["unknown field `rule`"]);
}

#[test]
fn bad_op_and_bad_severity_name_their_line() {
    let yaml = format!(
        "{GOOD}  - name: bad\n    kind: threshold\n    feature: t\n    op: '=>'\n    value: 3\n"
    );
    assert_err(&yaml, 10, &["rules[1].op", "unknown variant `=>`"]);
    let yaml = format!(
        "{GOOD}  - name: bad\n    severity: severe\n    kind: threshold\n    feature: t\n    op: '>'\n    value: 3\n"
    );
    assert_err(&yaml, 8, &["rules[1].severity", "severe", "critical"]);
    let yaml = format!("{GOOD}  - name: bad\n    kind: thresh\n");
    assert_err(&yaml, 8, &["rules[1].kind", "thresh", "rate_of_change"]);
    let yaml = format!(
        "{GOOD}  - name: bad\n    kind: threshold\n    feature: t\n    op: '>'\n    value: high\n"
    );
    assert_err(&yaml, 11, &["rules[1].value"]);
}

#[test]
fn range_min_not_below_max_names_max() {
    let yaml =
        format!("{GOOD}  - name: v\n    kind: range\n    feature: v\n    min: 253\n    max: 207\n");
    assert_err(&yaml, 11, &["rules[1].max", "greater than `min` (253)"]);
    let yaml =
        format!("{GOOD}  - name: v\n    kind: range\n    feature: v\n    max: 5\n    min: 5\n");
    assert_err(&yaml, 10, &["rules[1].max"]);
}

#[test]
fn duplicate_names_point_at_the_second_rule() {
    let yaml =
        format!("{GOOD}  - name: ok\n    kind: range\n    feature: v\n    min: 1\n    max: 2\n");
    assert_err(
        &yaml,
        7,
        &["rules[1].name", "duplicate rule name `ok`", "line 2"],
    );
}

#[test]
fn missing_required_fields_point_at_the_rule() {
    // Per-kind field: the rule's line.
    let yaml = format!(
        "{GOOD}  # a comment\n\n  - name: nop\n    kind: threshold\n    feature: t\n    value: 3\n"
    );
    assert_err(&yaml, 9, &["rules[1]:", "missing field `op`", "threshold"]);
    // Fields every rule needs are checked by serde, which also points at the rule.
    let yaml = format!("{GOOD}  - kind: threshold\n    feature: t\n");
    assert_err(&yaml, 7, &["rules[1]", "missing field `name`"]);
    let yaml = format!("{GOOD}  - name: x\n    feature: t\n");
    assert_err(&yaml, 7, &["rules[1]", "missing field `kind`"]);
}

#[test]
fn other_cross_field_checks_name_line_and_field() {
    let base = "rules:\n  - name: r\n";
    assert_err(
        &format!(
            "{base}    kind: threshold\n    feature: t\n    op: '>'\n    value: 1\n    min: 0\n"
        ),
        7,
        &["rules[0].min", "does not apply to kind `threshold`"],
    );
    assert_err(
        &format!("{base}    kind: threshold\n    feature: t\n    op: '>'\n    value: .nan\n"),
        6,
        &["rules[0].value", "finite"],
    );
    assert_err(
        &format!(
            "{base}    kind: threshold\n    for: 0\n    feature: t\n    op: '>'\n    value: 1\n"
        ),
        4,
        &["rules[0].for", ">= 1"],
    );
    assert_err(
        &format!("{base}    kind: spread\n    features: [a]\n    max: 1\n"),
        4,
        &["rules[0].features", "at least 2"],
    );
    assert_err(
        &format!("{base}    kind: spread\n    features:\n      - a\n      - a\n    max: 1\n"),
        5,
        &["rules[0].features", "twice"],
    );
    assert_err(
        &format!("{base}    kind: rate_of_change\n    feature: t\n    max_per_s: 0\n"),
        5,
        &["rules[0].max_per_s", "> 0"],
    );
    assert_err(
        &format!(
            "{base}    kind: threshold\n    feature: 'temp_[0-9'\n    op: '>'\n    value: 1\n"
        ),
        4,
        &["rules[0].feature", "missing `]`"],
    );
    assert_err(
        &format!("{base}    kind: compare\n    left: a\n    op: '>'\n    right: a\n"),
        6,
        &["rules[0].right", "differ"],
    );
    assert_err(
        &format!("{base}    kind: compare\n    left: 'a*'\n    op: '>'\n    right: b\n"),
        4,
        &["rules[0].left", "one feature"],
    );
    assert_err(
        &format!("{base}    equipment: []\n    kind: threshold\n    feature: t\n    op: '>'\n    value: 1\n"),
        3,
        &["rules[0].equipment"],
    );
    assert_err(
        "rules:\n  - name: 'bad name'\n    kind: threshold\n    feature: t\n    op: '>'\n    value: 1\n",
        2,
        &["rules[0].name"],
    );
    // Flow style: the line of the rule's own mapping.
    assert_err(
        "rules:\n  - {name: a, kind: threshold, feature: t, op: '>', value: 1}\n  - {name: b, kind: range, feature: t, min: 2, max: 1}\n",
        3,
        &["rules[1].max"],
    );
}

#[test]
fn shipped_rules_parse_and_fire_on_their_scenarios() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/rules.yaml");
    let set = RuleSet::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.len() >= 8);
    assert!(set.text.contains("EN 50160"));
    let normal_oven = R::new(&[
        ("voltage_a", 230.1),
        ("voltage_b", 229.8),
        ("voltage_c", 230.4),
        ("current_a", 15.1),
        ("current_b", 14.9),
        ("current_c", 15.0),
        ("power_factor", 0.92),
        ("temp_zone_1", 185.2),
        ("temp_zone_2", 190.1),
        ("temp_zone_3", 188.0),
        ("voltage_imbalance", 0.6),
        ("current_imbalance_pct", 1.3),
        ("temp_zone_spread", 4.9),
    ])
    .with_prev(&[("temp_zone_1", 185.0), ("temp_zone_2", 190.0)], 9_000);
    let mut st = RuleState::default();
    for _ in 0..10 {
        assert!(evaluate(&set, "oven", &normal_oven, &mut st).is_empty());
    }
    let mut hot = normal_oven;
    hot.now[8].1 = 262.1;
    let hits = fire(&set, "oven", &hot);
    let types: Vec<&str> = hits.iter().map(|h| h.alert_type.as_str()).collect();
    assert!(types.contains(&"overheat"), "{hits:?}");
    let overheat = hits.iter().find(|h| h.rule == "oven_overheat").unwrap();
    assert_eq!(overheat.severity, Severity::Critical);
    assert_eq!(overheat.message, "temp_zone_2 = 262.1 above limit 250");

    let mixer = R::new(&[("vibration_rms", 7.2), ("temp_motor", 60.0)]);
    let hits = fire(&set, "mixer", &mixer);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].alert_type, "bearing_wear");
    assert!(
        fire(&set, "oven", &mixer).is_empty(),
        "vibration rule is not for ovens"
    );

    let sag = R::new(&[
        ("voltage_a", 230.0),
        ("voltage_b", 200.0),
        ("voltage_c", 230.0),
    ]);
    let hits = fire(&set, "conveyor", &sag);
    assert_eq!(hits[0].rule, "voltage_out_of_range");
    assert_eq!(hits[0].contributions, vec![(Name::new("voltage_b"), -1.0)]);
}

// ------------------------------------------------------------------------------------ hot reload

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn hot_reload_swaps_valid_files_and_keeps_rules_on_invalid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    let v1 = "rules:\n  - {name: hot, kind: threshold, feature: t, op: '>', value: 100}\n";
    std::fs::write(&path, v1).unwrap();
    let handle = RulesHandle::watch(Some(&path), 0.01).unwrap();
    let (set, g1) = handle.current();
    assert_eq!(set.len(), 1);
    assert_eq!(handle.generation(), g1);
    assert_eq!(handle.path(), Some(path.as_path()));
    let r = R::new(&[("t", 150.0)]);
    let mut st = RuleState::default();
    assert_eq!(evaluate(&set, "oven", &r, &mut st).len(), 1);

    let v2 = "rules:\n  - {name: hot, kind: threshold, feature: t, op: '>', value: 200}\n  - {name: cold, kind: threshold, feature: t, op: '<', value: 0}\n";
    std::fs::write(&path, v2).unwrap();
    assert!(wait_until(|| handle.generation() > g1), "reload not seen");
    let (set, g2) = handle.current();
    assert_eq!(set.len(), 2);
    assert_eq!(set.text, v2);
    assert!(
        evaluate(&set, "oven", &r, &mut st).is_empty(),
        "new limit applies"
    );

    std::fs::write(
        &path,
        "rules:\n  - {name: hot, kind: range, feature: t, min: 5, max: 1}\n",
    )
    .unwrap();
    assert!(
        wait_until(|| handle.last_error().is_some()),
        "bad file not seen"
    );
    let e = handle.last_error().unwrap();
    assert!(e.contains(":2:") && e.contains("rules[0].max"), "{e}");
    let (kept, g3) = handle.current();
    assert_eq!(g3, g2);
    assert_eq!(kept.len(), 2);
    assert!(Arc::ptr_eq(&kept, &set));

    std::fs::write(&path, v1).unwrap();
    assert!(wait_until(|| handle.generation() > g2), "recovery not seen");
    assert!(handle.last_error().is_none());
    assert_eq!(handle.current().0.len(), 1);
}

#[test]
fn watch_fails_fast_and_handles_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    assert!(matches!(
        RulesHandle::watch(Some(&path), 1.0),
        Err(ConfigError::Io { .. })
    ));
    std::fs::write(&path, "rules:\n  - name: x\n    kind: nope\n").unwrap();
    let e = RulesHandle::watch(Some(&path), 1.0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rules.yaml:3:") && e.contains("rules[0].kind"),
        "{e}"
    );

    let none = RulesHandle::watch(None, 1.0).unwrap();
    assert!(none.current().0.is_empty());
    assert!(none.path().is_none());

    let fixed = RulesHandle::fixed(one(
        "    kind: threshold\n    feature: t\n    op: '>'\n    value: 1\n",
    ));
    let (set, g) = fixed.current();
    assert_eq!(set.len(), 1);
    assert_eq!(set.generation, g);
    let g2 = fixed.replace(RuleSet::empty());
    assert!(g2 > g);
    assert_eq!(fixed.current().1, g2);
    assert!(fixed.current().0.is_empty());
}

/// Readings that only support the allocation-free iteration: patterns must not need `feature_names`.
struct Streamed(Vec<(&'static str, f64)>, std::cell::Cell<u32>);

impl Readings for Streamed {
    fn ts(&self) -> i64 {
        0
    }
    fn value(&self, feature: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| *n == feature).map(|(_, v)| *v)
    }
    fn previous(&self, _: &str) -> Option<(f64, i64)> {
        None
    }
    fn feature_names(&self) -> Vec<&str> {
        self.1.set(self.1.get() + 1);
        self.0.iter().map(|(n, _)| *n).collect()
    }
    fn for_each_value<'a>(&'a self, f: &mut dyn FnMut(&'a str, f64)) {
        for (n, v) in &self.0 {
            f(n, *v)
        }
    }
}

#[test]
fn patterns_use_for_each_value_when_overridden() {
    let set = rules(
        "rules:
  - {name: hot, kind: threshold, feature: 'z*', op: '>', value: 5}
  - {name: sp, kind: imbalance, features: [a, 'z*'], max_pct: 10}
",
    );
    let r = Streamed(
        vec![("a", 10.0), ("z1", 6.0), ("z2", 4.0)],
        Default::default(),
    );
    // Name-based path only: the slot-resolved one (`fire`) reads the layout's names instead.
    let by_name = |r: &Streamed| evaluate(&set, "oven", r, &mut RuleState::default());
    let hits = by_name(&r);
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].message, "z1 = 6 above limit 5");
    assert_eq!(
        hits[1].contributions,
        vec![(Name::new("a"), 0.5), (Name::new("z2"), -0.5)]
    );
    assert_eq!(r.1.get(), 0, "feature_names() was called");
    // The plain name `a` is required even though the pattern matches others.
    let r = Streamed(vec![("z1", 6.0), ("z2", 4.0)], Default::default());
    assert_eq!(by_name(&r).len(), 1);
}

#[test]
fn slot_resolution_follows_layout_changes_and_keeps_for_counters() {
    let set = rules(
        "rules:
  - name: hot
    kind: threshold
    feature: temp_zone_*
    op: \">\"
    value: 250
    for: 2
  - name: spread
    kind: spread
    features: [temp_zone_*]
    max: 20
  - name: cmp
    kind: compare
    left: current_a
    op: \">\"
    right: current_b
    offset: 5
",
    );
    let mut by_name = RuleState::default();
    let mut by_slot = RuleState::default();
    let a = R::new(&[
        ("temp_zone_1", 251.0),
        ("temp_zone_2", 240.0),
        ("current_a", 10.0),
    ]);
    // The layout changes between the two readings (a new sensor first, the rest moved): the `for:`
    // counter of `hot` must carry over, and every slot must be re-resolved.
    let b = R::new(&[
        ("current_b", 1.0),
        ("temp_zone_3", 200.0),
        ("temp_zone_1", 252.0),
        ("current_a", 10.0),
    ]);
    for (i, r) in [&a, &b].into_iter().enumerate() {
        let n = evaluate(&set, "oven", r, &mut by_name);
        let s = evaluate(&set, "oven", &Slotted::new(r, 10 + i as u64), &mut by_slot);
        assert_eq!(n, s, "reading {i}");
    }
    let last = evaluate(&set, "oven", &Slotted::new(&b, 11), &mut by_slot);
    let names: Vec<&str> = last.iter().map(|h| h.rule.as_str()).collect();
    assert_eq!(names, ["hot", "spread", "cmp"], "{last:?}");
}
