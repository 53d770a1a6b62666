//! SKAB and NAB evaluation: the benchmark on the shared valve1 data, the CLI contract, NAB scoring of
//! fixture files, and the engine options the hydraulic dataflow relies on.

use crate::common::*;
use egizml::commands::eval_nab::{eval_nab, EvalNabArgs};
use egizml::commands::eval_skab::{eval_skab, skab_dataflow, EvalSkabArgs};
use egizml::config::{parse_yaml, DataflowConfig};
use egizml::event::{Name, Origin, Point};
use egizml::pipeline::{Engine, Output, Record};
use egizml::rules::{RuleSet, RulesHandle};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// `../shared/datasets/skab` from the repository root (CI), or from an ancestor of it (a worktree).
fn skab_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = root
        .ancestors()
        .skip(1)
        .map(|a| a.join("shared/datasets/skab"))
        .find(|d| d.join("data/valve1").is_dir());
    found.unwrap_or_else(|| {
        panic!(
            "the shared SKAB data is expected at {}",
            root.join("../shared/datasets/skab").display()
        )
    })
}

#[test]
fn valve1_with_the_shipped_dataflow_reaches_f1_0_80_at_far_15_percent() {
    let args = EvalSkabArgs {
        data: skab_dir(),
        subset: Some("valve1".into()),
        config: None,
    };
    let (s, report) = eval_skab(&args).unwrap();
    println!("{s:?}");
    assert_eq!(s.files, 16);
    // 18,176 data rows in 16 files, 400 of each learn-only.
    assert_eq!(s.test_points, 18_176 - 16 - 16 * 400);
    assert!(s.f1 >= 0.80, "F1 {}", s.f1);
    assert!(s.far <= 15.0, "FAR {}", s.far);
    assert!(s.mar <= 25.0, "MAR {}", s.mar);
    // Changepoint detection beats the null detector.
    assert!(s.nab_standard > 0.0, "NAB {}", s.nab_standard);
    // Every test point is accounted for, per file and pooled.
    let sum: u64 = report.files.iter().map(|f| f.labels.len() as u64).sum();
    assert_eq!(sum, s.test_points);
    // The shipped dataflow file and the embedded one are the same document.
    let on_disk =
        DataflowConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/skab.yaml"))
            .unwrap();
    let (embedded, _) = skab_dataflow(None).unwrap();
    assert_eq!(
        serde_json::to_value(&on_disk).unwrap(),
        serde_json::to_value(&*embedded).unwrap()
    );
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eval_skab_cli_prints_the_table_and_the_summary_json_last() {
    let dir = skab_dir();
    let (ok, stdout, stderr) = run(&[
        "eval",
        "skab",
        "--data",
        dir.to_str().unwrap(),
        "--subset",
        "valve1",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Conv-AE"), "{stdout}");
    assert!(stdout.contains("valve1/15.csv"), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for k in ["f1", "far", "mar", "nab_standard"] {
        assert!(last[k].is_number(), "{k} in {last}");
    }

    // Bad input: non-zero exit, one line naming the problem.
    let (ok, _, stderr) = run(&["eval", "skab", "--data", "/nonexistent/skab"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/skab"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("valve1")).unwrap();
    std::fs::write(
        tmp.path().join("valve1/0.csv"),
        "datetime,Accelerometer1RMS\n2020-01-01 00:00:00,1\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&["eval", "skab", "--data", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("0.csv:1: no `datetime` column"), "{stderr}");
}

/// A NAB fixture: 100 points 1 min apart; one label at point 50 -> window [45, 55]; probation 15.
fn nab_fixture(dir: &Path, detections: &[usize], with_scores: bool) -> EvalNabArgs {
    let t0 = 1_396_000_000_000i64; // 2014-03-28
    let stamp = |i: usize| {
        egizml::decode::timestamp::format_rfc3339(t0 + i as i64 * 60_000)
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string()
    };
    let mut csv = if with_scores {
        "timestamp,value,anomaly_score\n".to_string()
    } else {
        "timestamp,value\n".to_string()
    };
    for i in 0..100 {
        let s = if detections.contains(&i) { 0.9 } else { 0.1 };
        let v = 10.0 + (i % 3) as f64 * 0.1 + if detections.contains(&i) { 50.0 } else { 0.0 };
        if with_scores {
            csv.push_str(&format!("{},{v},{s}\n", stamp(i)));
        } else {
            csv.push_str(&format!("{},{v}\n", stamp(i)));
        }
    }
    std::fs::create_dir_all(dir.join("data/artificial")).unwrap();
    std::fs::write(dir.join("data/artificial/a.csv"), csv).unwrap();
    let labels = dir.join("labels.json");
    std::fs::write(
        &labels,
        format!(r#"{{"artificial/a.csv": ["{}"]}}"#, stamp(50)),
    )
    .unwrap();
    EvalNabArgs {
        data: dir.join("data"),
        labels,
        threshold: 0.5,
        config: None,
    }
}

#[test]
fn eval_nab_scores_fixture_files_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // A detection at the window start (perfect), one in probation (ignored), one well before the window
    // (full A_fp).
    let args = nab_fixture(dir.path(), &[5, 30, 45], true);
    let (s, files) = eval_nab(&args).unwrap();
    assert_eq!(files[0].windows, 1);
    assert_eq!(files[0].raw[0].false_positives, 1);
    // standard: (1 - 0.11 + 1) / 2 * 100 = 94.5; low FP: (1 - 0.22 + 1) / 2 = 89; low FN: (1 - 0.11 + 2) / 3.
    assert_eq!(s.standard, 94.5);
    assert_eq!(s.low_fp, 89.0);
    assert_eq!(s.low_fn, ((2.89f64 / 3.0) * 10_000.0).round() / 100.0);

    // The same window given as NAB's combined_windows.json.
    let w = dir.path().join("windows.json");
    let stamp = |i: i64| egizml::decode::timestamp::format_rfc3339(1_396_000_000_000 + i * 60_000);
    std::fs::write(
        &w,
        format!(
            r#"{{"artificial/a.csv": [["{}", "{}"]]}}"#,
            stamp(45),
            stamp(55)
        ),
    )
    .unwrap();
    let (s2, _) = eval_nab(&EvalNabArgs {
        labels: w,
        ..args.clone()
    })
    .unwrap();
    assert_eq!(s2, s);

    // The binary prints the table and the same summary as its last stdout line.
    let (ok, stdout, stderr) = run(&[
        "eval",
        "nab",
        "--data",
        args.data.to_str().unwrap(),
        "--labels",
        args.labels.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("artificial/a.csv"), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["standard"], 94.5);
    assert_eq!(last["low_fp"], 89.0);

    // Bad labels: a clear error naming the file.
    std::fs::write(&args.labels, r#"{"artificial/a.csv": [42]}"#).unwrap();
    let e = eval_nab(&args).unwrap_err().to_string();
    assert!(e.contains("labels.json"), "{e}");
}

#[test]
fn eval_nab_runs_the_engine_on_files_without_scores() {
    let dir = tempfile::tempdir().unwrap();
    // A large spike at the window start: the default dataflow detects it; nothing else moves.
    let args = nab_fixture(dir.path(), &[45], false);
    let (s, files) = eval_nab(&args).unwrap();
    assert_eq!(files[0].raw[0].detected, 1, "{files:?}");
    assert!(s.standard > 90.0, "{s:?}");
}

fn point(i: usize, values: &[(&str, f64)]) -> Point {
    Point {
        thing_id: Name::from("bed-1"),
        equipment_type: Name::from("hydraulic_test_bed"),
        ts: 1_700_000_000_000 + i as i64 * 1000,
        values: values.iter().map(|(n, v)| (Name::from(*n), *v)).collect(),
        label: None,
        seq: i as u64,
        origin: Origin::None,
        learn_only: false,
    }
}

/// Feeds `n` readings from `f` and returns the per-reading anomaly flags.
fn flags(
    cfg: DataflowConfig,
    n: usize,
    f: impl Fn(usize) -> Vec<(&'static str, f64)>,
) -> Vec<bool> {
    let mut e = Engine::new(Arc::new(cfg), RulesHandle::fixed(RuleSet::empty()), true);
    let mut out = Vec::new();
    let mut flags = Vec::new();
    for i in 0..n {
        out.clear();
        e.process(Record::Point(point(i, &f(i)), 0), 0, &mut out);
        let s = out.iter().find_map(|(_, o)| match o {
            Output::Score(s) => Some(s.anomaly),
            _ => None,
        });
        flags.push(s.unwrap());
    }
    flags
}

/// Deterministic pseudo-noise in [-0.5, 0.5).
fn noise(i: usize, k: u64) -> f64 {
    let x =
        (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
}

#[test]
fn frozen_calibrated_model_keeps_flagging_a_long_shift_and_ignores_excluded_drift() {
    let cfg: DataflowConfig = parse_yaml(egizml::eval::skab::SKAB_DATAFLOW, "skab.yaml").unwrap();
    // 400 warm-up readings; then the temperature drifts far (excluded), and from 600 to 1000 the flow
    // drops by 3 noise widths (a closed valve).
    let gen = |i: usize| {
        let flow = 32.0 + noise(i, 1) - if (600..1000).contains(&i) { 3.0 } else { 0.0 };
        let temp = 70.0
            + noise(i, 2)
            + if i >= 400 {
                (i - 400) as f64 * 0.05
            } else {
                0.0
            };
        vec![
            ("flow", flow),
            ("pressure", 1.0 + 0.1 * noise(i, 3)),
            ("Temperature", temp),
            ("Thermocouple", 25.0 + noise(i, 4)),
        ]
    };
    let f = flags(cfg.clone(), 1200, gen);
    assert!(f[..400].iter().all(|x| !x), "warm-up is never scored");
    let false_alarms = f[400..600].iter().chain(&f[1060..]).filter(|x| **x).count();
    assert_eq!(false_alarms, 0, "temperature drift is not an anomaly");
    // Detected within a few readings (smoothing) and for the whole 400 readings, never absorbed.
    let hits = f[600..1000].iter().filter(|x| **x).count();
    assert!(hits >= 380, "{hits} of 400");

    // Without the exclusion the same frozen model alarms on the drift alone.
    let mut all = cfg.clone();
    all.detectors.model.exclude.clear();
    let f = flags(all, 1200, gen);
    assert!(f[450..600].iter().filter(|x| **x).count() > 100);
}

#[test]
fn bad_model_options_are_rejected_with_their_field() {
    let e = parse_yaml::<DataflowConfig>("detectors:\n  model:\n    smoothing: 0\n", "f.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f.yaml:3:") && e.contains("detectors.model.smoothing"),
        "{e}"
    );
    let cfg = parse_yaml::<DataflowConfig>(
        "detectors:\n  model:\n    calibration_quantile: 1.5\n",
        "f.yaml",
    )
    .unwrap();
    let e = cfg.validate("f.yaml").unwrap_err().to_string();
    assert!(e.contains("calibration_quantile"), "{e}");
}

#[test]
fn healthy_skab_sensors_raise_no_sensor_fault_with_the_defaults() {
    use egizml::detectors::sensor_faults::{SensorFaultConfig, SensorFaultDetector};
    use egizml::eval::skab::{find_files, load_file, SENSORS};
    let dir = skab_dir();
    let mut paths = find_files(&dir, Some("valve1")).unwrap();
    paths.push(dir.join("data/anomaly-free/anomaly-free.csv"));
    for p in paths {
        let f = load_file(&p, &p.display().to_string()).unwrap();
        let mut d = SensorFaultDetector::new(SensorFaultConfig::default());
        for r in &f.rows {
            let values: Vec<(&str, f64)> = SENSORS.iter().copied().zip(r.values).collect();
            let ev = d.observe(r.ts, &values);
            assert!(ev.is_empty(), "{}: {ev:?}", f.name);
        }
    }
}
