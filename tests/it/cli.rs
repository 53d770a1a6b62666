//! The binary's contract: summary line, one-line errors naming file, line and field.

use crate::common::*;
use std::process::Command;

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
fn replay_prints_the_summary_json_as_its_last_stdout_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..50)
        .map(|i| flat("oven-1", T0 + i * 1000, &oven(i)))
        .collect();
    lines.push("not json".into());
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &lines);
    let alerts = dir.path().join("out/alerts.jsonl");
    let (ok, stdout, stderr) = run(&[
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    assert!(ok, "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["points"], 50);
    assert_eq!(last["malformed"], 1);
    assert_eq!(last["alerts"], 0);
    assert!(last["elapsed_s"].as_f64().unwrap() > 0.0);
    assert!(last["points_per_sec"].as_f64().unwrap() > 0.0);
    assert!(alerts.exists());
    // The dead letter lands next to the alerts by default.
    let dead = read_json_lines(&dir.path().join("out/alerts.dead.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "bad_json");
    assert_eq!(dead[0]["raw"], "not json");
}

#[test]
fn a_bad_dataflow_file_fails_fast_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &[flat("oven-1", T0, &oven(0))]);
    let flow = dir.path().join("flow.yaml");
    std::fs::write(
        &flow,
        "name: test\nwindow: 60\nensemble:\n  threshold: 1.7\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(&[
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--alerts",
        dir.path().join("a.jsonl").to_str().unwrap(),
        "--config",
        flow.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:4:", flow.display())),
        "{stderr}"
    );
    assert!(stderr.contains("ensemble.threshold"), "{stderr}");
}

#[test]
fn a_bad_rules_file_fails_fast_naming_the_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_lines(&input, &[flat("oven-1", T0, &oven(0))]);
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n  - name: r1\n    kind: range\n    feature: voltage_a\n    min: 260\n    max: 200\n",
    )
    .unwrap();
    let flow = dir.path().join("flow.yaml");
    std::fs::write(&flow, "rules: rules.yaml\n").unwrap();
    let (ok, _, stderr) = run(&[
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--alerts",
        dir.path().join("a.jsonl").to_str().unwrap(),
        "--config",
        flow.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("rules.yaml:"), "{stderr}");
    assert!(
        stderr.contains("rules[0].max") || stderr.contains("rules[0].min"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_dataflow_loads_and_matches_the_embedded_default() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped =
        egizml::config::DataflowConfig::load(&root.join("dataflows/default.yaml")).unwrap();
    let embedded = egizml::config::DataflowConfig::default();
    let strip = |c: &egizml::config::DataflowConfig| {
        let mut v = serde_json::to_value(c).unwrap();
        v.as_object_mut().unwrap().remove("rules");
        v
    };
    assert_eq!(strip(&shipped), strip(&embedded));
    assert!(shipped.rules.unwrap().ends_with("configs/rules.yaml"));
}

#[test]
fn a_missing_input_file_is_a_one_line_error() {
    let (ok, _, stderr) = run(&[
        "replay",
        "--input",
        "/nonexistent/x.jsonl",
        "--alerts",
        "/tmp/never.jsonl",
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/x.jsonl"), "{stderr}");
}
