//! `egizml train` and `egizml models`: train on history, list, show, activate, roll back.

use crate::common::{bin, simulate};
use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run egizml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

#[test]
fn train_registers_versions_and_models_activates_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (history, _) = simulate(dir.path(), 3, 12_000, 5);
    let reg = dir.path().join("models");
    let reg = reg.to_str().unwrap();
    let history = history.to_str().unwrap();

    // v1: Isolation Forest for the oven class, activated.
    let (ok, out, err) = run(&[
        "train",
        "--history",
        history,
        "--equipment-type",
        "oven",
        "--registry",
        reg,
        "--activate",
    ]);
    assert!(ok, "{err}");
    let v1 = last_json(&out);
    assert_eq!(v1["model"]["id"], "oven/v1");
    assert_eq!(v1["activated"], true);
    assert!(out.contains("validation precision"), "{out}");
    for k in ["precision", "recall", "f1", "train_s", "model_bytes"] {
        assert!(v1["model"]["metrics"][k].is_number(), "{k}: {v1}");
    }
    assert!(std::path::Path::new(reg)
        .join("oven/v1/model.json")
        .is_file());

    // v2: an autoencoder with a hyper-parameter, registered but not activated.
    let (ok, out, err) = run(&[
        "train",
        "--history",
        history,
        "--equipment-type",
        "oven",
        "--registry",
        reg,
        "--model",
        "autoencoder",
        "--param",
        "epochs=3",
    ]);
    assert!(ok, "{err}");
    let v2 = last_json(&out);
    assert_eq!(v2["model"]["id"], "oven/v2");
    assert_eq!(v2["model"]["hyper_parameters"]["epochs"], 3);
    assert_eq!(v2["activated"], false);

    let (ok, out, _) = run(&["models", "list", "--registry", reg]);
    assert!(ok);
    let list = last_json(&out);
    let active: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        active,
        [("oven/v1".into(), true), ("oven/v2".into(), false)]
    );
    assert!(
        out.lines().next().unwrap().starts_with("* oven/v1"),
        "{out}"
    );

    let (ok, _, err) = run(&["models", "activate", "oven/v2", "--registry", reg]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["models", "show", "oven", "--registry", reg]);
    assert!(ok);
    assert!(out.contains("\"model_type\": \"autoencoder\""), "{out}");

    let (ok, out, err) = run(&["models", "rollback", "oven", "--registry", reg]);
    assert!(ok, "{err}");
    assert_eq!(last_json(&out)["active"], 1);
    let (ok, _, err) = run(&["models", "rollback", "oven", "--registry", reg]);
    assert!(!ok);
    assert!(err.contains("no earlier active version"), "{err}");
}

#[test]
fn bad_training_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("models");
    let reg = reg.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--simulator",
                "--thing",
                "oven-00000",
                "--param",
                "contamination=0.9",
            ],
            "contamination",
        ),
        (
            &["--simulator", "--thing", "oven-00000", "--param", "trees=5"],
            "trees",
        ),
        (
            &["--simulator", "--thing", "pump-1"],
            "no readings for thing `pump-1`",
        ),
        (
            &["--history", "/nonexistent/h.jsonl", "--thing", "a"],
            "/nonexistent/h.jsonl",
        ),
    ];
    for (args, expect) in cases {
        let mut all = vec!["train", "--registry", reg, "--sim-points", "3000"];
        all.extend_from_slice(args);
        let (ok, _, err) = run(&all);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let (ok, _, err) = run(&["models", "activate", "oven/v9", "--registry", reg]);
    assert!(!ok);
    assert!(err.contains("no version 9 of `oven`"), "{err}");
}
