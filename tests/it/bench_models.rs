//! `egizml bench-models`: the summary line's contract and the loaded models' accounting (the memory
//! figures themselves are measured in docs/BENCHMARKS.md, never asserted here).

use crate::common::*;
use egizml::registry::{ActiveModels, LocalRegistry, Registry};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn bench_models(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("bench-models")
        .args(args)
        .output()
        .expect("egizml bench-models runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn num(s: &serde_json::Value, key: &str) -> f64 {
    s[key]
        .as_f64()
        .unwrap_or_else(|| panic!("number `{key}` in {s}"))
}

#[test]
fn bench_models_trains_loads_and_accounts_isolation_forests() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("models");
    let (ok, stdout, stderr) = bench_models(&[
        "--models",
        "5",
        "--features",
        "4",
        "--rows",
        "600",
        "--registry",
        registry.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let s: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("summary line")).expect("JSON summary");
    assert_eq!(s["models"], 5, "{s}");
    assert_eq!(s["kind"], "isolation_forest", "{s}");
    assert_eq!(s["features"], 4, "{s}");
    // The files are on disk where the registry keeps them, and their sizes add up.
    let files: u64 = (0..5)
        .map(|i| {
            std::fs::metadata(registry.join(format!("bench-model-{i:05}/v1/model.json")))
                .expect("model file")
                .len()
        })
        .sum();
    assert_eq!(num(&s, "file_bytes") as u64, files, "{s}");
    assert!((num(&s, "file_bytes_per_model") - files as f64 / 5.0).abs() < 1e-6);
    for key in ["rss_per_model_bytes", "rss_used_per_model_bytes", "load_s"] {
        assert!(num(&s, key) >= 0.0, "{key}: {s}");
    }
    assert!(num(&s, "rss_loaded_bytes") > 0.0, "{s}");
    // The accounting: 100 trees per forest, 24 bytes per node (two u16 buffers' worth of 4 slots, two
    // f64 slots), plus the structs around them: at least the nodes, not much more.
    let nodes = num(&s, "nodes_per_tree");
    assert!(nodes > 1.0 && nodes <= 511.0, "{s}");
    let node_bytes = nodes * 100.0 * 24.0;
    let accounted = num(&s, "accounted_bytes_per_model");
    assert!(
        accounted >= node_bytes && accounted < node_bytes + 16_384.0,
        "accounted {accounted} for {node_bytes} bytes of nodes: {s}"
    );

    // The same registry loaded in this process through the stream's loader gives that figure.
    let reg: Arc<dyn Registry> = Arc::new(LocalRegistry::new(&registry));
    let active = ActiveModels::watch(reg, Duration::from_secs(3600)).unwrap();
    let snap = active.current();
    assert_eq!(snap.by_scope.len(), 5);
    let total: usize = snap.by_scope.values().map(|m| m.memory_bytes()).sum();
    assert!(
        (total as f64 / 5.0 - accounted).abs() < 1e-6,
        "{total} vs {s}"
    );
    for m in snap.by_scope.values() {
        assert!(m.memory_bytes() > m.model.memory_bytes());
    }

    // A registry that already holds something is refused, with a one-line reason.
    let (ok, _, stderr) =
        bench_models(&["--models", "1", "--registry", registry.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("must be absent or empty") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn bench_models_measures_autoencoders_and_refuses_zero_models() {
    let (ok, stdout, stderr) = bench_models(&[
        "--models",
        "2",
        "--kind",
        "autoencoder",
        "--features",
        "5",
        "--rows",
        "300",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let s: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("summary line")).expect("JSON summary");
    assert_eq!(s["kind"], "autoencoder", "{s}");
    assert!(s["nodes_per_tree"].is_null(), "{s}");
    // 5-5-2-5-5 with default hidden [5, 2, 5]: weights and biases as f64, scaler mean and std.
    let weights = (5 * 5 + 5) + (5 * 2 + 2) + (2 * 5 + 5) + (5 * 5 + 5);
    let floor = ((weights + 2 * 5) * 8) as f64;
    let accounted = num(&s, "accounted_bytes_per_model");
    assert!(
        accounted > floor && accounted < floor + 4_096.0,
        "{accounted} vs {floor}: {s}"
    );
    assert!(num(&s, "file_bytes") > 0.0);
    let (ok, _, stderr) = bench_models(&["--models", "0"]);
    assert!(!ok && stderr.contains("--models"), "{stderr}");
}
