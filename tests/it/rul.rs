//! Remaining useful life on NASA C-MAPSS FD001: the standard protocol's accuracy, the model versioned in
//! the model registry (and the standalone saved file), and the live path (flat JSONL -> decoder ->
//! RulTracker, the model named by its registry id) giving exactly the evaluation's predictions.

use crate::common::bin;
use egizml::commands::eval_cmapss::{eval_cmapss, CmapssArgs, CmapssReport};
use egizml::config::DecodeConfig;
use egizml::decode::Decoder;
use egizml::rul::model::RulModel;
use egizml::rul::predict::{LoadedRulModel, RulConfig, RulTracker};
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
    registry: PathBuf,
    _dir: tempfile::TempDir,
}

/// One training run shared by the tests below (training is the slow part).
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("test_FD001.jsonl");
        let registry = dir.path().join("registry");
        let mut args = CmapssArgs::new(data_dir());
        args.save_model = Some(dir.path().join("models"));
        args.register = true;
        args.registry = registry.clone();
        args.activate = true;
        args.export_jsonl = Some(jsonl.clone());
        let report = eval_cmapss(&args).expect("FD001 evaluation runs");
        Run {
            report,
            jsonl,
            registry,
            _dir: dir,
        }
    })
}

#[test]
fn fd001_rmse_meets_the_target_with_a_sane_phm08_score() {
    let s = &run().report.summary;
    assert_eq!(s.subset, "FD001");
    assert_eq!(s.units, 100);
    // 13.655 measured (docs/ACCURACY.md); the bound is 14.
    assert!(s.rmse <= 13.8, "RMSE {} > 13.8", s.rmse);
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
    assert!(meta["metrics"]["test_rmse"].as_f64().unwrap() <= 13.8);
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
    let mut tracker = RulTracker::new(LoadedRulModel::standalone(model), cfg).unwrap();
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

/// The live path end to end: `egizml replay` of the test units (flat JSONL, one thing per unit, one
/// cycle per hour) with a dataflow whose `rul` section names the registered model (the scope's active
/// version on 1 worker, the pinned `turbofan/v1` on 2). Each unit's last prediction is the evaluation's
/// number, bit for bit, whatever the worker count, and carries the registry id.
#[test]
fn replay_with_a_rul_dataflow_predicts_what_eval_predicts() {
    let run = run();
    assert_eq!(run.report.summary.model_id.as_deref(), Some("turbofan/v1"));
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow.yaml");
    let mut by_workers = Vec::new();
    for (workers, id) in [(1, "turbofan"), (2, "turbofan/v1")] {
        std::fs::write(
            &flow,
            format!(
                "name: cmapss\nrul:\n  model:\n    registry: {{path: {}}}\n    id: {id}\n  equipment_type: turbofan\n  emit_every_s: 3600\n  alert_horizon_hours: 72\n",
                run.registry.display()
            ),
        )
        .unwrap();
        let preds = dir.path().join(format!("predictions-{workers}.jsonl"));
        let alerts = dir.path().join(format!("alerts-{workers}.jsonl"));
        let out = std::process::Command::new(bin())
            .arg("replay")
            .arg("--input")
            .arg(&run.jsonl)
            .arg("--alerts")
            .arg(&alerts)
            .arg("--predictions")
            .arg(&preds)
            .arg("--config")
            .arg(&flow)
            .args(["--workers", &workers.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_str(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        let lines = crate::common::read_json_lines(&preds);
        // One cycle per hour and a 1 h period: every reading predicts.
        assert_eq!(summary["predictions"].as_u64().unwrap(), lines.len() as u64);
        assert_eq!(summary["points"].as_u64().unwrap(), lines.len() as u64);
        let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for p in &lines {
            last.insert(p["thing_id"].as_str().unwrap().to_string(), p.clone());
        }
        assert_eq!(last.len(), 100);
        for (unit, eval_pred, _) in &run.report.predictions {
            let p = &last[&format!("fd001-test-{unit:03}")];
            assert_eq!(p["rul"].as_f64().unwrap(), *eval_pred, "unit {unit}");
            assert_eq!(p["model_version"], "turbofan/v1", "unit {unit}");
            let lo = p["interval"]["lower"].as_f64().unwrap();
            let hi = p["interval"]["upper"].as_f64().unwrap();
            assert!(lo <= *eval_pred && *eval_pred <= hi + 1e-9, "unit {unit}");
            let p24 = p["failure_probability_24h"].as_f64().unwrap();
            let p72 = p["failure_probability_72h"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p24) && p24 <= p72 && p72 <= 1.0);
            assert!(p["degradation_trend"].is_number());
            assert!(p["contributing_factors"].is_array());
            assert!(!p["recommended_action"].as_str().unwrap().is_empty());
        }
        // Maintenance alerts went through the alert policy into the alerts file: at most one per unit
        // (a unit's RUL does not climb back above the horizon), and one for every unit whose last
        // prediction is inside it.
        let maint: Vec<serde_json::Value> = crate::common::read_json_lines(&alerts)
            .into_iter()
            .filter(|a| a["type"] == "maintenance_due")
            .collect();
        let mut alerted = std::collections::BTreeSet::new();
        for a in &maint {
            assert_eq!(a["source"], "rul");
            assert_eq!(a["model_version"], "turbofan/v1");
            assert!(alerted.insert(a["thing_id"].as_str().unwrap().to_string()));
        }
        for (thing, p) in &last {
            if p["rul"].as_f64().unwrap() <= 72.0 {
                assert!(alerted.contains(thing), "{thing}: due but no alert");
            }
        }
        assert!(!maint.is_empty());
        by_workers.push((std::fs::read(&preds).unwrap(), maint));
    }
    assert!(by_workers[0] == by_workers[1], "1 and 2 workers differ");

    // A 3 h cadence emits every third cycle of each unit (the first reading always predicts), with the
    // same values: every reading still updates the state, only emission is periodic. The model named by
    // its standalone file (`--save-model`) predicts the same, under its file's own id.
    let every_hour: BTreeMap<(String, i64), f64> =
        crate::common::read_json_lines(&dir.path().join("predictions-1.jsonl"))
            .iter()
            .map(|p| {
                let key = (
                    p["thing_id"].as_str().unwrap().to_string(),
                    p["ts"].as_i64().unwrap(),
                );
                (key, p["rul"].as_f64().unwrap())
            })
            .collect();
    std::fs::write(
        &flow,
        format!(
            "rul:\n  model: {}\n  emit_every_s: 10800\n",
            run.report.saved.as_ref().unwrap().display()
        ),
    )
    .unwrap();
    let sparse = dir.path().join("predictions-3h.jsonl");
    let status = std::process::Command::new(bin())
        .arg("replay")
        .arg("--input")
        .arg(&run.jsonl)
        .arg("--alerts")
        .arg(dir.path().join("alerts-3h.jsonl"))
        .arg("--predictions")
        .arg(&sparse)
        .arg("--config")
        .arg(&flow)
        .args(["--workers", "1"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let lines = crate::common::read_json_lines(&sparse);
    let mut per_thing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in &lines {
        let thing = p["thing_id"].as_str().unwrap().to_string();
        let key = (thing.clone(), p["ts"].as_i64().unwrap());
        assert_eq!(p["rul"].as_f64().unwrap(), every_hour[&key], "{key:?}");
        assert_eq!(p["model_version"], "FD001/rul/1");
        per_thing
            .entry(thing)
            .or_default()
            .push(p["cycles"].as_u64().unwrap());
    }
    assert_eq!(per_thing.len(), 100);
    for (thing, cycles) in &per_thing {
        let want: Vec<u64> = (0..cycles.len() as u64).map(|k| 1 + 3 * k).collect();
        assert_eq!(cycles, &want, "{thing}");
    }
    let total_cycles = every_hour.len();
    assert!(lines.len() * 3 >= total_cycles && lines.len() * 3 <= total_cycles + 300);
}

/// The first `train_units` training units, `test_units` test units and their true RUL, as C-MAPSS
/// files in `dir`: a subset small enough to train in a moment.
fn small_subset(dir: &Path, train_units: u32, test_units: u32) {
    let data = data_dir();
    for (name, keep) in [("train", train_units), ("test", test_units)] {
        let text = std::fs::read_to_string(data.join(format!("{name}_FD001.txt"))).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|u| u.parse::<u32>().ok())
                    .is_some_and(|u| u <= keep)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.join(format!("{name}_FD001.txt")), kept).unwrap();
    }
    let rul = std::fs::read_to_string(data.join("RUL_FD001.txt")).unwrap();
    let kept: String = rul
        .lines()
        .take(test_units as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("RUL_FD001.txt"), kept).unwrap();
}

fn egizml(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

/// `eval cmapss --register` versions the model in the registry the anomaly models use: `models list`
/// shows it (model_type rul, its RMSE), activation picks what a dataflow naming the scope serves, and
/// an anomaly model cannot be trained into the RUL scope.
#[test]
fn eval_cmapss_registers_versions_that_models_list_and_dataflows_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    small_subset(&data, 20, 10);
    let registry = dir.path().join("registry");
    let jsonl = dir.path().join("test.jsonl");
    let os = |s: &str| std::ffi::OsString::from(s);
    let eval = |extra: &[&str]| {
        let mut args = vec![
            os("eval"),
            os("cmapss"),
            os("--data"),
            data.clone().into(),
            os("--trees"),
            os("10"),
            os("--register"),
            os("--registry"),
            registry.clone().into(),
            os("--export-jsonl"),
            jsonl.clone().into(),
        ];
        args.extend(extra.iter().map(|s| os(s)));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (ok, out, err) = egizml(&args);
        assert!(ok, "{err}");
        let summary = last_json(&out);
        (out, summary)
    };
    let (out, first) = eval(&["--activate"]);
    assert_eq!(first["model_id"], "turbofan/v1", "{out}");
    assert_eq!(first["activated"], true);
    assert_eq!(first["units"], 10);
    assert!(
        out.contains("model registered as turbofan/v1 (model_type rul), active"),
        "{out}"
    );
    let (_, second) = eval(&["--seed", "7"]);
    assert_eq!(second["model_id"], "turbofan/v2");
    assert_eq!(second["activated"], false);

    let reg: std::ffi::OsString = registry.clone().into();
    let (ok, out, err) = egizml(&[
        os("models").as_os_str(),
        os("list").as_os_str(),
        os("--registry").as_os_str(),
        &reg,
    ]);
    assert!(ok, "{err}");
    let list = last_json(&out);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{out}");
    for (v, summary, active) in [(&list[0], &first, true), (&list[1], &second, false)] {
        assert_eq!(v["id"], summary["model_id"]);
        assert_eq!(v["model_type"], "rul");
        assert_eq!(v["scope"], "turbofan");
        assert_eq!(v["scope_kind"], "equipment_class");
        assert_eq!(v["active"], active);
        assert_eq!(v["metrics"]["rmse"], summary["rmse"]);
        assert_eq!(v["metrics"]["phm08"], summary["phm08"]);
        assert_eq!(v["metrics"]["coverage"], summary["coverage"]);
        assert_eq!(v["metrics"]["units"], 10.0);
        assert!(v["metrics"]["model_bytes"].as_f64().unwrap() > 1000.0);
        assert_eq!(v["hyper_parameters"]["forest"]["n_trees"], 10);
        assert!(v["samples"].as_u64().unwrap() > 1000);
    }
    assert_eq!(list[1]["hyper_parameters"]["forest"]["seed"], 7);
    let rmse = first["rmse"].as_f64().unwrap();
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains(&format!("rmse {rmse:.3}")),
        "{out}"
    );

    // A dataflow naming the scope serves its active version, read at start-up.
    let flow = dir.path().join("flow.yaml");
    std::fs::write(
        &flow,
        format!(
            "rul:\n  model:\n    registry: {{path: {}}}\n    id: turbofan\n  emit_every_s: 0\n",
            registry.display()
        ),
    )
    .unwrap();
    let served = |name: &str| {
        let preds = dir.path().join(format!("{name}.jsonl"));
        let args = [
            os("replay"),
            os("--input"),
            jsonl.clone().into(),
            os("--alerts"),
            dir.path().join(format!("{name}-alerts.jsonl")).into(),
            os("--predictions"),
            preds.clone().into(),
            os("--config"),
            flow.clone().into(),
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (ok, _, err) = egizml(&args);
        assert!(ok, "{err}");
        let lines = crate::common::read_json_lines(&preds);
        assert!(!lines.is_empty());
        let versions: std::collections::BTreeSet<String> = lines
            .iter()
            .map(|p| p["model_version"].as_str().unwrap().to_string())
            .collect();
        versions.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(served("before"), ["turbofan/v1"]);
    let (ok, _, err) = egizml(&[
        os("models").as_os_str(),
        os("activate").as_os_str(),
        os("turbofan/v2").as_os_str(),
        os("--registry").as_os_str(),
        &reg,
    ]);
    assert!(ok, "{err}");
    assert_eq!(served("after"), ["turbofan/v2"]);

    // The scope holds RUL models: an anomaly model is refused there, in one line.
    let (ok, _, err) = egizml(&[
        os("train").as_os_str(),
        os("--equipment-type").as_os_str(),
        os("turbofan").as_os_str(),
        os("--history").as_os_str(),
        jsonl.as_os_str(),
        os("--registry").as_os_str(),
        &reg,
    ]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "scope `turbofan` holds rul models; register anomaly models under another scope"
        ),
        "{err}"
    );
}
