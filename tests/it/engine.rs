//! The per-thing engine without the dataflow: policy over event time, rule hot swap.

use crate::common::*;
use egizml::config::DataflowConfig;
use egizml::pipeline::{Engine, Output, Record};
use egizml::rules::{RuleSet, RulesHandle};
use std::sync::Arc;

fn alerts(out: &[(u64, Output)]) -> Vec<(i64, String)> {
    out.iter()
        .filter_map(|(_, o)| match o {
            Output::Alert(a) => Some((a.ts, a.alert_type.clone())),
            _ => None,
        })
        .collect()
}

const HOT_RULE: &str = "rules:\n  - name: hot\n    kind: threshold\n    feature: temp_zone_1\n    op: \">\"\n    value: 200\n";

#[test]
fn a_sustained_rule_violation_alerts_once_per_dedup_window_plus_bursts() {
    let rules = RulesHandle::fixed(RuleSet::parse(HOT_RULE, "t.yaml").unwrap());
    let mut engine = Engine::new(Arc::new(DataflowConfig::default()), rules, false);
    let mut out = Vec::new();
    // 11 minutes at 1 Hz, all above the limit.
    for i in 0..660i64 {
        let mut v = oven(i);
        v[7].1 = 210.0;
        engine.process(
            Record::Point(point("oven-1", T0 + i * 1000, &v, i as u64), 0),
            0,
            &mut out,
        );
    }
    let got = alerts(&out);
    let hot: Vec<i64> = got
        .iter()
        .filter(|(_, t)| t == "hot")
        .map(|(ts, _)| (ts - T0) / 1000)
        .collect();
    // Dedup: same thing and type at most once per 300 s.
    assert_eq!(hot, vec![0, 300, 600]);
    // Bursts (10 anomalous readings) bypass the rate limit but are deduplicated too.
    let bursts: Vec<i64> = got
        .iter()
        .filter(|(_, t)| t == "burst")
        .map(|(ts, _)| (ts - T0) / 1000)
        .collect();
    assert_eq!(bursts, vec![9, 309, 609]);
    // The bit-identical 210.0 is also a stuck sensor, alerted once on its 60th reading.
    let stuck: Vec<i64> = got
        .iter()
        .filter(|(_, t)| t == "sensor_stuck")
        .map(|(ts, _)| (ts - T0) / 1000)
        .collect();
    assert_eq!(stuck, vec![59]);
    assert_eq!(engine.counters.alerts, 7);
    assert!(engine.counters.suppressed_dedup > 600);
}

#[test]
fn rules_swapped_at_run_time_apply_to_the_next_reading() {
    let handle = RulesHandle::fixed(RuleSet::empty());
    let mut engine = Engine::new(Arc::new(DataflowConfig::default()), handle.clone(), false);
    let mut out = Vec::new();
    let mut v = oven(0);
    v[7].1 = 210.0;
    engine.process(Record::Point(point("oven-1", T0, &v, 0), 0), 0, &mut out);
    assert!(alerts(&out).is_empty());
    handle.replace(RuleSet::parse(HOT_RULE, "<api>").unwrap());
    engine.refresh_rules();
    engine.process(
        Record::Point(point("oven-1", T0 + 1000, &v, 1), 0),
        0,
        &mut out,
    );
    assert_eq!(alerts(&out), vec![(T0 + 1000, "hot".to_string())]);
}

#[test]
fn the_ensemble_needs_warm_up_and_then_flags_a_multivariate_break() {
    let rules = RulesHandle::fixed(RuleSet::empty());
    let mut engine = Engine::new(Arc::new(DataflowConfig::default()), rules, true);
    let mut out = Vec::new();
    for i in 0..200i64 {
        engine.process(
            Record::Point(point("oven-1", T0 + i * 1000, &oven(i), i as u64), 0),
            0,
            &mut out,
        );
    }
    let scores: Vec<f64> = out
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Score(s) => Some(s.score),
            _ => None,
        })
        .collect();
    assert_eq!(scores.len(), 200);
    assert!(
        scores[..60].iter().all(|s| *s == 0.0),
        "warm-up readings are not scored"
    );
    assert!(
        alerts(&out).is_empty(),
        "healthy data raised {:?}",
        alerts(&out)
    );
    // Phase b drops 25%: only a multivariate or imbalance view explains it.
    let mut v = oven(200);
    v[4].1 *= 0.75;
    out.clear();
    engine.process(
        Record::Point(point("oven-1", T0 + 200_000, &v, 200), 0),
        0,
        &mut out,
    );
    let got = alerts(&out);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "phase_imbalance");
}

#[test]
fn sensor_faults_alert_once_as_their_own_class() {
    let run = |cfg: DataflowConfig| {
        let mut engine = Engine::new(Arc::new(cfg), RulesHandle::fixed(RuleSet::empty()), false);
        let mut out = Vec::new();
        for i in 0..400i64 {
            let mut v = oven(i);
            if (250..400).contains(&i) {
                // temp_zone_2 frozen at its last value (a gateway register that stopped updating).
                v[8].1 = oven(249)[8].1;
            }
            if (100..200).contains(&i) {
                v.remove(5); // current_c dropped out
            }
            let p = point("oven-1", T0 + i * 1000, &v, i as u64);
            engine.process(Record::Point(p, 0), 0, &mut out);
        }
        out.into_iter()
            .filter_map(|(_, o)| match o {
                Output::Alert(a) if a.alert_type.starts_with("sensor_") => Some(a),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let got = run(DataflowConfig::default());
    let summary: Vec<(i64, &str, &str)> = got
        .iter()
        .map(|a| {
            let lead = a.top_features[0].feature.as_str();
            ((a.ts - T0) / 1000, a.alert_type.as_str(), lead)
        })
        .collect();
    // Dropout after 5 missing readings (the stale current_c also makes the ensemble flag a phase
    // imbalance at 102: the sensor alert is not rate-limited by it); stuck at the 60th identical
    // value. Each once.
    assert_eq!(
        summary,
        vec![
            (104, "sensor_dropout", "current_c"),
            (308, "sensor_stuck", "temp_zone_2"),
        ]
    );
    let stuck = &got[1];
    assert_eq!(stuck.source, "sensor");
    assert_eq!(stuck.families.get("temperature").copied(), Some(1.0));
    assert!(
        stuck
            .explanation
            .contains("temp_zone_2 repeated 189.9568 for 60 readings"),
        "{}",
        stuck.explanation
    );

    let mut off = DataflowConfig::default();
    off.sensor_faults.enabled = false;
    assert!(run(off).is_empty());
}

/// A dataflow with `features.sql`: the SQL set's outputs (here a 20-reading window average) are
/// features the rules and detectors see; without the option they do not exist.
#[test]
fn sql_feature_set_outputs_are_features_of_the_dataflow() {
    let dir = tempfile::tempdir().unwrap();
    let sql = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/thermal.sql");
    let flow = dir.path().join("flow.yaml");
    std::fs::write(&flow, format!("features:\n  sql: {}\n", sql.display())).unwrap();
    let with_sql = DataflowConfig::load(&flow).unwrap();
    assert!(with_sql.features.sql_set.is_some());
    let rule = "rules:\n  - name: avg_hot\n    kind: threshold\n    feature: temp_zone_1_avg_20\n    op: \">\"\n    value: 200\n";
    let run = |mut cfg: DataflowConfig| {
        // Rules only: the statistical detector sees the 240 jump first, and the per-thing rate limit
        // would then hold back the rule's alert.
        cfg.ensemble.threshold = 1e9;
        let rules = RulesHandle::fixed(RuleSet::parse(rule, "t.yaml").unwrap());
        let mut engine = Engine::new(Arc::new(cfg), rules, false);
        let mut out = Vec::new();
        for i in 0..120i64 {
            let mut v = oven(i);
            if i >= 60 {
                v[7].1 = 240.0;
            }
            engine.process(
                Record::Point(point("oven-1", T0 + i * 1000, &v, i as u64), 0),
                0,
                &mut out,
            );
        }
        alerts(&out)
            .into_iter()
            .filter(|(_, t)| t == "avg_hot")
            .map(|(ts, _)| (ts - T0) / 1000)
            .collect::<Vec<i64>>()
    };
    // The average of the last 20 readings passes 200 at the 6th reading at 240 (5 x 55 < 300 < 6 x 55).
    assert_eq!(run(with_sql).first(), Some(&65));
    assert_eq!(run(DataflowConfig::default()), Vec::<i64>::new());

    // Unsupported SQL fails at start-up naming the dataflow, the SQL file and the construct.
    let bad = dir.path().join("bad.sql");
    std::fs::write(&bad, "SELECT thing_id, ts, u FROM telemetry WHERE u > 0").unwrap();
    std::fs::write(&flow, "features:\n  sql: bad.sql\n").unwrap();
    let e = DataflowConfig::load(&flow).unwrap_err().to_string();
    assert!(
        e.contains("flow.yaml") && e.contains("bad.sql") && e.contains("Filter"),
        "{e}"
    );
}
