//! Structured logs: `EGIZML_LOG_FORMAT=json` makes every stderr line a JSON object, and the dataflow's
//! events sit in spans named after their stage (decode, thing_state > window / rules / detect / policy,
//! sink), the per-thing ones carrying `thing_id`.

use crate::common::bin;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn span_names(line: &Value) -> Vec<String> {
    line["spans"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|x| x["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn json_logs_carry_stage_spans_and_thing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let alerts_path = dir.path().join("alerts.jsonl");
    let out = Command::new(bin())
        .args([
            "simulate", "--points", "20000", "--things", "10", "--seed", "3",
        ])
        .args(["--faults-per-1000", "8", "--output"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two malformed lines: dead letters, logged by the decode stage.
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("not json\n{\"thing_id\": 5}\n");
    std::fs::write(&input, text).unwrap();

    let out = Command::new(bin())
        .args(["replay", "--workers", "2", "--input"])
        .arg(&input)
        .arg("--alerts")
        .arg(&alerts_path)
        .env("EGIZML_LOG_FORMAT", "json")
        .env("EGIZML_LOG", "egizml=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}",
        &stderr[..stderr.len().min(2000)]
    );
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["malformed"], 2, "{summary}");

    // Every line is a JSON event with a level, a timestamp, a target and a message.
    let mut by_stage: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(
            v["target"].as_str().unwrap().starts_with("egizml"),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        if let Some(name) = v["span"]["name"].as_str() {
            by_stage.entry(name.to_string()).or_default().push(v);
        }
    }
    assert!(lines > 0, "no log line at debug level");
    for stage in ["decode", "window", "rules", "detect", "policy", "sink"] {
        assert!(
            by_stage.contains_key(stage),
            "no event in a `{stage}` span; stages seen: {:?}",
            by_stage.keys().collect::<Vec<_>>()
        );
    }
    // Per-thing stages: inside the worker's thing_state span, with the thing's id.
    for stage in ["window", "rules", "detect", "policy"] {
        for v in &by_stage[stage] {
            let thing = v["span"]["thing_id"].as_str().unwrap_or("");
            assert!(!thing.is_empty(), "{v}");
            assert!(span_names(v).contains(&"thing_state".to_string()), "{v}");
        }
    }
    // Every thing's first reading is logged once by the window stage.
    let first: BTreeSet<&str> = by_stage["window"]
        .iter()
        .filter(|v| v["fields"]["message"] == "first reading of a thing")
        .map(|v| v["span"]["thing_id"].as_str().unwrap())
        .collect();
    assert_eq!(first.len(), 10, "{first:?}");

    // The policy stage logs exactly the alerts written, each with its thing.
    let written: BTreeSet<(String, String)> = std::fs::read_to_string(&alerts_path)
        .unwrap()
        .lines()
        .map(|l| {
            let a: Value = serde_json::from_str(l).unwrap();
            (
                a["thing_id"].as_str().unwrap().to_string(),
                a["alert_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!written.is_empty(), "the replay raised no alert");
    let logged: BTreeSet<(String, String)> = by_stage["policy"]
        .iter()
        .filter(|v| v["fields"]["message"] == "alert emitted")
        .map(|v| {
            (
                v["span"]["thing_id"].as_str().unwrap().to_string(),
                v["fields"]["alert_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        logged, written,
        "alerts logged by the policy stage vs written"
    );
    // The sink logs what each epoch wrote; the decode stage each dead letter.
    let sunk: u64 = by_stage["sink"]
        .iter()
        .map(|v| v["fields"]["alerts"].as_u64().unwrap())
        .sum();
    assert_eq!(sunk as usize, written.len());
    let malformed = by_stage["decode"]
        .iter()
        .filter(|v| v["fields"]["message"] == "malformed input")
        .count();
    assert_eq!(malformed, 2);
}
