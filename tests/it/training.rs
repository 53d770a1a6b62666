//! `egizml train` and `egizml models`: train on history, list, show, activate, roll back.

use crate::common::{bin, http_agent, simulate};
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

/// One HTTP call to the running service: status and JSON body.
fn call(method: &str, url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let agent = http_agent(std::time::Duration::from_secs(10));
    let mut resp = match method {
        "GET" => agent.get(url).call(),
        _ => {
            let mut req = agent.post(url).header("content-type", "application/json");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            req.send(body)
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Kills the demo when the test ends, pass or fail.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_running_service_trains_in_the_background_and_serves_the_registry() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let registry = dir.path().join("models");
    let _demo = Child(
        Command::new(bin())
            .args([
                "demo",
                "--duration",
                "120",
                "--things",
                "6",
                "--rate",
                "200",
                "--quiet",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", dir.path().join("demo.db").to_str().unwrap()])
            .args([
                "--registry",
                registry.to_str().unwrap(),
                "--train-points",
                "12000",
            ])
            .env("EGIZML_API_TOKEN", "tok")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("demo starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(100);
    let health = format!("http://127.0.0.1:{port}/health");
    while ureq::get(&health).call().is_err() {
        assert!(Instant::now() < deadline, "the demo's API never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        call("GET", &format!("{base}/models"), None, "").1["models"],
        serde_json::json!([])
    );

    let train = |thing: &str, body: &str| {
        let (status, job) = call("POST", &format!("{base}/train/{thing}"), Some("tok"), body);
        assert_eq!(status, 202, "{job}");
        let url = format!(
            "http://127.0.0.1:{port}{}",
            job["status_url"].as_str().unwrap()
        );
        loop {
            let (status, job) = call("GET", &url, None, "");
            assert_eq!(status, 200);
            if job["state"] == "succeeded" || job["state"] == "failed" {
                return job;
            }
            assert!(Instant::now() < deadline, "training did not finish: {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (status, _) = call("POST", &format!("{base}/train/oven-00000"), None, "");
    assert_eq!(status, 401, "training needs the token");
    let v1 = train("oven-00000", r#"{"activate":"always"}"#);
    assert_eq!(v1["state"], "succeeded", "{v1}");
    assert_eq!(v1["report"]["model"]["id"], "oven-00000/v1");
    let v2 = train(
        "oven-00000",
        r#"{"model":"autoencoder","params":{"epochs":2}}"#,
    );
    assert_eq!(v2["report"]["model"]["model_type"], "autoencoder", "{v2}");

    let (status, active) = call("GET", &format!("{base}/models/oven-00000"), None, "");
    assert_eq!(
        (status, &active["id"]),
        (200, &serde_json::json!("oven-00000/v1"))
    );
    let (status, m) = call(
        "GET",
        &format!("{base}/models/oven-00000/v2/metrics"),
        None,
        "",
    );
    assert_eq!(status, 200);
    assert!(m["metrics"]["train_s"].is_number(), "{m}");
    let (status, v) = call(
        "POST",
        &format!("{base}/models/oven-00000/v2/activate"),
        Some("tok"),
        "",
    );
    assert_eq!(
        (status, &v["active"]),
        (200, &serde_json::json!(true)),
        "{v}"
    );
    let (status, v) = call(
        "POST",
        &format!("{base}/models/oven-00000/rollback"),
        Some("tok"),
        "",
    );
    assert_eq!(
        (status, &v["id"]),
        (200, &serde_json::json!("oven-00000/v1")),
        "{v}"
    );
    // The CLI sees the same registry.
    let (ok, out, err) = run(&["models", "list", "--registry", registry.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("* oven-00000/v1"), "{out}");
}
