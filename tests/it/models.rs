//! Registry models in the stream: an Isolation Forest scores and explains alerts (TreeSHAP), and
//! activating a version in the registry swaps the running service's model without a restart.

use crate::common::*;
use egizml::config::{DataflowConfig, StreamModelsConfig};
use egizml::event::Name;
use egizml::models::{Fit, IsolationForestParams};
use egizml::pipeline::{Engine, Output, Record};
use egizml::registry::{ActiveModel, ActiveModels, ScopeKind};
use egizml::rules::{RuleSet, RulesHandle};
use egizml::training::{feature_matrix, HistorySpec};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An Isolation Forest fitted on healthy oven readings, with the stream's feature columns.
fn healthy_forest(dir: &Path) -> ActiveModel {
    let lines: Vec<String> = (0..2_000i64)
        .map(|i| flat("train-oven", T0 + i * 1000, &oven(i)))
        .collect();
    let history = dir.join("healthy.jsonl");
    write_lines(&history, &lines);
    let data = feature_matrix(
        &HistorySpec::File(history),
        "oven",
        ScopeKind::EquipmentClass,
    )
    .expect("feature matrix");
    let forest = IsolationForestParams::default()
        .fit(data.dataset.x.view())
        .expect("fit");
    ActiveModel {
        id: "oven/v1".into(),
        features: data
            .dataset
            .columns
            .iter()
            .map(|c| Name::from(c.as_str()))
            .collect(),
        sql_hash: None,
        model: Arc::new(forest),
    }
}

#[test]
fn a_registry_isolation_forest_scores_the_stream_and_explains_its_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let active = healthy_forest(dir.path());
    let features = active.features.clone();
    let model = Arc::clone(&active.model);
    let cfg = DataflowConfig {
        models: Some(StreamModelsConfig::default()),
        active_models: Some(ActiveModels::fixed([("oven".to_string(), active)])),
        ..DataflowConfig::default()
    };
    let mut engine = Engine::new(Arc::new(cfg), RulesHandle::fixed(RuleSet::empty()), true);
    let mut out = Vec::new();
    for i in 0..600i64 {
        let rec = Record::Point(point("oven-1", T0 + i * 1000, &oven(i), i as u64), 0);
        engine.process(rec, 0, &mut out);
    }
    // Healthy readings: scored by the registry model, not anomalous by it.
    let scores: Vec<_> = out
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Score(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let by_model: Vec<_> = scores
        .iter()
        .filter(|s| s.model_version.as_deref() == Some("oven/v1"))
        .collect();
    assert!(
        by_model.len() >= 500,
        "scored readings after warm-up carry the registry model: {} of {}",
        by_model.len(),
        scores.len()
    );
    let high = by_model
        .iter()
        .filter(|s| s.model_score.unwrap() >= 0.8)
        .count();
    assert!(
        high * 20 < by_model.len(),
        "healthy readings are mostly below the model threshold: {high}"
    );
    // Phase B current collapses: the forest isolates it, and the alert says so.
    out.clear();
    for i in 600..640i64 {
        let mut v = oven(i);
        v[4].1 = 6.0;
        let rec = Record::Point(point("oven-1", T0 + i * 1000, &v, i as u64), 0);
        engine.process(rec, 0, &mut out);
    }
    let alert = out
        .iter()
        .find_map(|(_, o)| match o {
            Output::Alert(a) if a.source == "ensemble" => Some(a.clone()),
            _ => None,
        })
        .expect("an ensemble alert for the current drop");
    assert_eq!(alert.model_version, "oven/v1");
    let det: Vec<&str> = alert
        .detectors
        .iter()
        .map(|d| d.detector.as_str())
        .collect();
    assert_eq!(det, ["statistics", "isolation_forest"], "{alert:?}");
    let forest = &alert.detectors[1];
    assert_eq!(forest.model_version.as_deref(), Some("oven/v1"));
    // Isolation saturates (a path cannot be shorter than one split), so an extreme reading sits near,
    // not far above, the threshold's 0.8; a healthy one near 0.
    assert!(
        forest.score > 0.5,
        "the forest flags the reading: {forest:?}"
    );
    let lead = forest.top_features[0].feature.as_str();
    assert!(
        lead == "current_b" || lead.contains("current"),
        "TreeSHAP puts the current first: {forest:?}"
    );
    assert!(forest.top_features[0].contribution > 0.0);
    // The attribution is the model's exact TreeSHAP of that reading (recomputed from its features).
    let mut row: Vec<f64> = Vec::new();
    let i = (alert.ts - T0) / 1000;
    let mut v = oven(i);
    v[4].1 = 6.0;
    let raw: Vec<Name> = v.iter().map(|(n, _)| Name::from(*n)).collect();
    let (plan, derived_names) =
        egizml::features::DerivedPlan::new(&raw, &egizml::config::FeatureConfig::default());
    let mut derived = vec![0.0; derived_names.len()];
    let raw_values: Vec<f64> = v.iter().map(|(_, x)| *x).collect();
    plan.compute(&raw_values, &mut derived);
    for f in &features {
        let pos = raw.iter().position(|n| n == f);
        row.push(match pos {
            Some(p) => raw_values[p],
            None => derived[derived_names.iter().position(|n| n == f).unwrap()],
        });
    }
    let shap = model.explain(&row);
    let want = egizml::explain::top_contributions(features.iter().zip(shap.iter().copied()));
    assert_eq!(forest.top_features, want, "exact TreeSHAP attribution");
    let ensemble_lead = &alert.top_features[0].feature;
    assert!(ensemble_lead.contains("current"), "{alert:?}");
}

/// Stops a spawned `egizml run` with SIGTERM and asserts it drained and exited 0.
fn stop_with_sigterm(mut child: std::process::Child) {
    crate::common::sigterm_and_wait(&mut child, Duration::from_secs(120), "egizml run");
    let out = child.wait_with_output().expect("run stops on SIGTERM");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads the score lines written so far (complete lines only).
fn score_lines(path: &Path) -> Vec<serde_json::Value> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

fn egizml(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().expect("run egizml");
    assert!(
        out.status.success(),
        "egizml {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until a score line of `version` appears after line `from`; returns its index and the wait.
fn wait_for_version(path: &Path, from: usize, version: &str) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        let lines = score_lines(path);
        if let Some(i) = lines
            .iter()
            .skip(from)
            .position(|l| l["model_version"] == version)
        {
            return (from + i, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no score line of {version} after line {from} within 60 s ({} lines)",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn activating_versions_swaps_the_running_services_model_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (history, _) = simulate(dir.path(), 4, 16_000, 11);
    let reg = dir.path().join("models");
    let (reg_s, history_s) = (reg.to_str().unwrap(), history.to_str().unwrap());
    // v1: the default forest (threshold at the 99th percentile of training scores), active.
    egizml(&[
        "train",
        "--history",
        history_s,
        "--equipment-type",
        "oven",
        "--registry",
        reg_s,
        "--activate",
    ]);
    // v2: a forest that expects half its training rows to be anomalies: a far lower threshold.
    egizml(&[
        "train",
        "--history",
        history_s,
        "--equipment-type",
        "oven",
        "--registry",
        reg_s,
        "--param",
        "contamination=0.5",
    ]);

    // Live telemetry from another seed, paced (it would last 100 s; the test stops the run earlier).
    let (live, _) = simulate(dir.path(), 4, 200_000, 12);
    let dataflow = dir.path().join("dataflow.yaml");
    std::fs::write(
        &dataflow,
        format!("models:\n  registry:\n    path: {reg_s}\n  poll_s: 0.25\n"),
    )
    .unwrap();
    let scores = dir.path().join("scores.jsonl");
    let service = dir.path().join("service.yaml");
    std::fs::write(
        &service,
        format!(
            "dataflow: {}\nworkers: 2\nscores: true\nsource:\n  file:\n    path: {}\n    rate: 2000\nsinks:\n  jsonl:\n    alerts: {}\n    scores: {}\n",
            dataflow.display(),
            live.display(),
            dir.path().join("alerts.jsonl").display(),
            scores.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config", service.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egizml run");

    let (first_v1, _) = wait_for_version(&scores, 0, "oven/v1");
    std::thread::sleep(Duration::from_secs(3));
    let before_v2 = score_lines(&scores).len();
    egizml(&["models", "activate", "oven/v2", "--registry", reg_s]);
    let (first_v2, swap_v2) = wait_for_version(&scores, before_v2, "oven/v2");
    std::thread::sleep(Duration::from_secs(4));
    // Back to the older version.
    let before_v1 = score_lines(&scores).len();
    egizml(&["models", "activate", "oven/v1", "--registry", reg_s]);
    let (back_v1, swap_v1) = wait_for_version(&scores, before_v1, "oven/v1");
    std::thread::sleep(Duration::from_secs(2));
    // Graceful stop (SIGTERM drains what is in flight); the file would last longer.
    stop_with_sigterm(child);
    eprintln!("swap latencies: v1->v2 {swap_v2:?}, v2->v1 {swap_v1:?}");
    // The activation is picked up within a second (poll 0.25 s); slack for a loaded CI machine.
    assert!(swap_v2 < Duration::from_secs(3) && swap_v1 < Duration::from_secs(3));

    let lines = score_lines(&scores);
    // Per thing, the versions form exactly the segments v1, v2, v1: a reading is scored by one model,
    // and no thing falls back to an older snapshot.
    let mut per_thing: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in lines.iter().filter(|l| l["model_version"].is_string()) {
        let seq = per_thing
            .entry(l["thing_id"].as_str().unwrap().to_string())
            .or_default();
        let v = l["model_version"].as_str().unwrap().to_string();
        if seq.last() != Some(&v) {
            seq.push(v);
        }
    }
    assert!(!per_thing.is_empty());
    for (thing, seq) in &per_thing {
        assert!(
            thing.starts_with("oven"),
            "only ovens have a model: {thing}"
        );
        assert_eq!(seq, &["oven/v1", "oven/v2", "oven/v1"], "{thing}");
    }
    assert!(
        lines
            .iter()
            .filter(|l| !l["thing_id"].as_str().unwrap().starts_with("oven"))
            .all(|l| l["model_version"].is_null()),
        "mixers and conveyors keep the online model"
    );
    // Scoring follows the version: v2's low threshold flags far more readings than v1.
    let share_high = |range: std::ops::Range<usize>, version: &str| {
        let scored: Vec<f64> = lines[range]
            .iter()
            .filter(|l| l["model_version"] == version)
            .map(|l| l["model_score"].as_f64().unwrap())
            .collect();
        assert!(scored.len() > 100, "{version}: {} readings", scored.len());
        scored.iter().filter(|s| **s >= 0.8).count() as f64 / scored.len() as f64
    };
    let a = share_high(first_v1..first_v2, "oven/v1");
    let b = share_high(first_v2..back_v1, "oven/v2");
    let c = share_high(back_v1..lines.len(), "oven/v1");
    eprintln!(
        "share of readings at or above the model threshold: v1 {a:.3}, v2 {b:.3}, v1 again {c:.3}"
    );
    assert!(b > 0.2, "v2 flags many readings: {b}");
    assert!(a < 0.1 && c < 0.1, "v1 flags few: {a} {c}");
}

/// Score lines of a replay of `input` through `dataflow`.
fn replay_scores(dir: &Path, input: &Path, dataflow: &Path, tag: &str) -> Vec<serde_json::Value> {
    let scores = dir.join(format!("scores-{tag}.jsonl"));
    egizml(&[
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--alerts",
        dir.join(format!("alerts-{tag}.jsonl")).to_str().unwrap(),
        "--scores",
        scores.to_str().unwrap(),
        "--config",
        dataflow.to_str().unwrap(),
    ]);
    score_lines(&scores)
}

#[test]
fn a_model_trained_on_a_sql_feature_set_scores_only_where_the_stream_computes_that_set() {
    let dir = tempfile::tempdir().unwrap();
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/electrical.sql");
    let set = egizml::sql_features::FeatureSet::from_file(&sql).unwrap();
    let (history, _) = simulate(dir.path(), 3, 9_000, 21);
    let reg = dir.path().join("models");
    let out = egizml(&[
        "train",
        "--history",
        history.to_str().unwrap(),
        "--equipment-type",
        "oven",
        "--features-sql",
        sql.to_str().unwrap(),
        "--registry",
        reg.to_str().unwrap(),
        "--activate",
    ]);
    let trained: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let meta = &trained["model"];
    assert_eq!(meta["sql_hash"], set.sql_hash().as_str(), "{meta}");
    let features: Vec<&str> = meta["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        features, set.outputs,
        "the model's features are the set's outputs"
    );

    let (live, _) = simulate(dir.path(), 3, 3_000, 22);
    let models = format!("models:\n  registry:\n    path: {}\n", reg.display());
    let with_set = dir.path().join("with-set.yaml");
    std::fs::write(
        &with_set,
        format!("features:\n  sql: {}\n{models}", sql.display()),
    )
    .unwrap();
    let lines = replay_scores(dir.path(), &live, &with_set, "set");
    let ovens: Vec<_> = lines
        .iter()
        .filter(|l| l["thing_id"].as_str().unwrap().starts_with("oven"))
        .collect();
    let by_model = ovens
        .iter()
        .filter(|l| l["model_version"] == "oven/v1")
        .count();
    assert!(
        by_model * 10 >= ovens.len() * 8,
        "the stream's SQL features feed the model: {by_model} of {} oven readings",
        ovens.len()
    );
    // The same model under a dataflow with the built-in features: the same names would not mean the
    // same features, so the model is not used.
    let without_set = dir.path().join("without-set.yaml");
    std::fs::write(&without_set, &models).unwrap();
    let lines = replay_scores(dir.path(), &live, &without_set, "builtin");
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l["model_version"].is_null()),
        "a model of another feature set never scores"
    );
}

#[test]
fn scheduled_retraining_registers_and_swaps_in_a_new_version_while_the_service_runs() {
    use egizml::registry::{LocalRegistry, Registry};
    let dir = tempfile::tempdir().unwrap();
    let (history, _) = simulate(dir.path(), 4, 8_000, 21);
    let (live, _) = simulate(dir.path(), 4, 200_000, 22);
    let reg = dir.path().join("models");
    let dataflow = dir.path().join("dataflow.yaml");
    std::fs::write(
        &dataflow,
        format!(
            "models:\n  registry:\n    path: {}\n  poll_s: 0.25\n",
            reg.display()
        ),
    )
    .unwrap();
    let scores = dir.path().join("scores.jsonl");
    let service = dir.path().join("service.yaml");
    let port = egizml::testkit::free_port().unwrap();
    // No version exists: the schedule trains one at once, then one every 4 s, each activated.
    std::fs::write(
        &service,
        format!(
            "dataflow: {}\nworkers: 1\nscores: true\nsource:\n  file:\n    path: {}\n    rate: 2000\n\
             sinks:\n  jsonl:\n    alerts: {}\n    scores: {}\n\
             api:\n  listen: 127.0.0.1:{port}\n  fleet: false\n  registry:\n    path: {}\n  train_history:\n    file: {}\n\
             retrain:\n  every: 4s\n  scopes: [oven]\n  activate: always\n  params: {{n_estimators: 20}}\n",
            dataflow.display(),
            live.display(),
            dir.path().join("alerts.jsonl").display(),
            scores.display(),
            reg.display(),
            history.display(),
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config", service.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egizml run");
    let (first_v1, _) = wait_for_version(&scores, 0, "oven/v1");
    let (first_v2, waited) = wait_for_version(&scores, first_v1, "oven/v2");
    let metrics = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .unwrap();
    stop_with_sigterm(child);
    eprintln!("v2 scored {waited:?} after v1 first did");
    // Nobody activated anything: the schedule trained v1 at start and v2 one period after v1.
    let versions = LocalRegistry::new(reg.clone()).list(Some("oven")).unwrap();
    assert!(versions.len() >= 2, "{versions:?}");
    let trained = |v: u32| {
        let meta = &versions.iter().find(|x| x.meta.version == v).unwrap().meta;
        egizml::decode::timestamp::parse_rfc3339(&meta.trained_at).unwrap()
    };
    assert!(
        trained(2) - trained(1) >= 4_000,
        "v2 trained {} ms after v1",
        trained(2) - trained(1)
    );
    let lines = score_lines(&scores);
    assert!(first_v2 > first_v1);
    // Once v2 scores a thing, that thing never goes back to v1.
    let mut seen_v2 = std::collections::BTreeSet::new();
    for l in &lines {
        let thing = l["thing_id"].as_str().unwrap().to_string();
        match l["model_version"].as_str() {
            Some("oven/v2") => {
                seen_v2.insert(thing);
            }
            Some("oven/v1") => assert!(!seen_v2.contains(&thing), "{thing} back on v1"),
            _ => {}
        }
    }
    let submitted = metrics
        .lines()
        .find(|l| {
            l.starts_with("egizml_retrain_jobs_total")
                && l.contains("scope=\"oven\"")
                && l.contains("outcome=\"submitted\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(submitted.is_some_and(|n| n >= 2.0), "{metrics}");
}
