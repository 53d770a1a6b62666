//! Remaining useful life on NASA C-MAPSS FD001: the standard protocol's accuracy, the saved model, and
//! the live path (flat JSONL -> decoder -> RulTracker) giving exactly the evaluation's predictions.

use crate::common::bin;
use egizml::commands::eval_cmapss::{eval_cmapss, CmapssArgs, CmapssReport};
use egizml::config::DecodeConfig;
use egizml::decode::Decoder;
use egizml::rul::model::RulModel;
use egizml::rul::predict::{RulConfig, RulTracker};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// `../shared/datasets/cmapss` beside the repository (CI), or two levels up from a git worktree.
fn data_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let near = root.join("../shared/datasets/cmapss");
    let far = root.join("../../shared/datasets/cmapss");
    if near.is_dir() || !far.is_dir() {
        near
    } else {
        far
    }
}

struct Run {
    report: CmapssReport,
    jsonl: PathBuf,
    _dir: tempfile::TempDir,
}

/// One training run shared by the tests below (training is the slow part).
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("test_FD001.jsonl");
        let mut args = CmapssArgs::new(data_dir());
        args.save_model = Some(dir.path().join("models"));
        args.export_jsonl = Some(jsonl.clone());
        let report = eval_cmapss(&args).expect("FD001 evaluation runs");
        Run {
            report,
            jsonl,
            _dir: dir,
        }
    })
}

#[test]
fn fd001_rmse_meets_the_target_with_a_sane_phm08_score() {
    let s = &run().report.summary;
    assert_eq!(s.subset, "FD001");
    assert_eq!(s.units, 100);
    assert!(s.rmse <= 14.0, "RMSE {} > 14", s.rmse);
    // Deep LSTM scores 338 at RMSE 16; a model at RMSE <= 14 that is not systematically late stays well
    // below 600.
    assert!(s.phm08 > 0.0 && s.phm08 < 600.0, "PHM08 {}", s.phm08);
    // The 90 % interval covers most test units.
    assert!(s.coverage >= 0.8, "coverage {}", s.coverage);
}

#[test]
fn saved_model_is_versioned_and_reloads_to_the_same_predictions() {
    let r = &run().report;
    let path = r.saved.as_ref().expect("model saved");
    assert!(
        path.ends_with("FD001/rul/1/model.json"),
        "{}",
        path.display()
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.with_file_name("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["train_units"], 100);
    assert_eq!(meta["forest"]["seed"], 42);
    assert!(meta["metrics"]["test_rmse"].as_f64().unwrap() <= 14.0);
    let loaded = RulModel::load(path).unwrap();
    assert_eq!(loaded.meta.version, 1);
    let data = egizml::rul::cmapss::load_subset(&data_dir(), "FD001").unwrap();
    let rows: Vec<Vec<f64>> = data
        .test
        .iter()
        .map(|u| {
            egizml::rul::model::unit_rows(&loaded.spec, u)
                .pop()
                .unwrap()
        })
        .collect();
    let again = loaded.predict_rows(&rows).unwrap();
    let before: Vec<f64> = r.predictions.iter().map(|p| p.1).collect();
    assert_eq!(again, before);
    // A damaged file is a clear error, not a panic.
    let bad = path.with_file_name("broken.json");
    std::fs::write(&bad, b"{\"meta\": 3}").unwrap();
    let e = RulModel::load(&bad).unwrap_err().to_string();
    assert!(e.contains("broken.json:1:"), "{e}");
}

#[test]
fn live_replay_of_test_units_gives_the_eval_predictions() {
    let run = run();
    let model = Arc::new(RulModel::load(run.report.saved.as_ref().unwrap()).unwrap());
    let cfg = RulConfig {
        emit_every_s: 0,
        ..RulConfig::default()
    };
    let mut tracker = RulTracker::new(model, cfg).unwrap();
    let mut decoder = Decoder::new(&DecodeConfig::default());
    let mut last = BTreeMap::new();
    let mut alerts = BTreeMap::new();
    let f = std::fs::File::open(&run.jsonl).unwrap();
    for line in std::io::BufReader::new(f).lines() {
        let point = decoder
            .decode(line.unwrap().as_bytes())
            .expect("valid line");
        let (pred, alert) = tracker.observe_with_alert(&point).unwrap();
        let pred = pred.expect("emit_every_s 0 predicts every reading");
        if let Some(a) = alert {
            assert_eq!(a.alert_type, "maintenance_due");
            assert!(
                alerts.insert(a.thing_id.to_string(), a).is_none(),
                "one crossing per unit"
            );
        }
        last.insert(pred.thing_id.to_string(), pred);
    }
    assert_eq!(tracker.things(), 100);
    assert_eq!(last.len(), 100);
    for (unit, eval_pred, truth) in &run.report.predictions {
        let p = &last[&format!("fd001-test-{unit:03}")];
        // Exactly the same number: same feature code, same model.
        assert_eq!(p.rul, *eval_pred, "unit {unit}");
        assert!(p.interval.lower <= p.rul && p.rul <= p.interval.upper + 1e-9);
        assert!((0.0..=1.0).contains(&p.failure_probability_24h));
        assert!(p.failure_probability_72h >= p.failure_probability_24h);
        assert!(!p.recommended_action.is_empty());
        assert_eq!(p.model_version, "FD001/rul/1");
        // Units close to failure are flagged, ones far from it are not.
        if *truth <= 15.0 {
            assert!(
                p.maintenance_due,
                "unit {unit}: rul {} truth {truth}",
                p.rul
            );
            assert!(alerts.contains_key(&p.thing_id.to_string()));
        }
        if *truth >= 120.0 {
            assert!(
                !p.maintenance_due,
                "unit {unit}: rul {} truth {truth}",
                p.rul
            );
        }
    }
    // Units whose RUL falls through the horizon are degrading at about the nominal rate.
    let degrading: Vec<f64> = last
        .values()
        .filter(|p| p.rul < 60.0)
        .map(|p| p.degradation_trend)
        .collect();
    assert!(!degrading.is_empty());
    let mean = degrading.iter().sum::<f64>() / degrading.len() as f64;
    assert!(mean < -0.3, "mean trend {mean}");
}

#[test]
fn eval_cmapss_fails_in_one_line_on_a_missing_directory() {
    let out = std::process::Command::new(bin())
        .args(["eval", "cmapss", "--data", "/nonexistent/cmapss"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/cmapss/train_FD001.txt"), "{err}");
}
