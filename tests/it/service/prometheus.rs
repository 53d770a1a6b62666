//! A real Prometheus server (Debian package) scrapes the EgizML API's /metrics; the test reads the
//! samples back through Prometheus' query API.

use super::procs::{self, free_port, wait_for, KillOnDrop};
use egizml::api::{self, ApiState};
use std::process::{Command, Stdio};
use std::time::Duration;

fn prometheus_bin() -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The value of the single sample `query` returns, if any.
fn query(base: &str, q: &str) -> Option<(serde_json::Value, f64)> {
    let mut resp = ureq::get(format!("{base}/api/v1/query"))
        .query("query", q)
        .call()
        .ok()?;
    let v: serde_json::Value = resp.body_mut().read_json().ok()?;
    let result = v["data"]["result"].as_array()?;
    let first = result.first()?;
    let value = first["value"][1].as_str()?.parse().ok()?;
    Some((first["metric"].clone(), value))
}

#[test]
fn prometheus_scrapes_and_queries_egizml_metrics() {
    let Some(bin) = prometheus_bin() else {
        procs::unavailable::<()>("prometheus binary not found".into());
        return;
    };
    let m = egizml::metrics::global();
    m.points_ingested.inc_by(5);
    m.inference_latency.observe(0.000_42);
    m.kafka_consumer_lag
        .with_label_values(&["telemetry", "0"])
        .set(17);
    let server = api::spawn("127.0.0.1:0".parse().unwrap(), ApiState::without_store()).unwrap();
    let target = server.local_addr();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: egizml\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prom = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");

    // Bounded: Prometheus starts in a second or two and scrapes every second.
    let ingested = wait_for(Duration::from_secs(60), || {
        query(&base, "egizml_points_ingested_total{job=\"egizml\"}")
    })
    .expect("Prometheus returned no egizml_points_ingested_total sample within 60 s");
    assert!(ingested.1 >= 5.0, "{ingested:?}");
    assert_eq!(ingested.0["instance"], target.to_string());

    let (_, up) = query(&base, "up{job=\"egizml\"}").unwrap();
    assert_eq!(up, 1.0);
    let (labels, info) = query(&base, "egizml_build_info").unwrap();
    assert_eq!(info, 1.0);
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    let (_, lag) = query(
        &base,
        "egizml_kafka_consumer_lag{topic=\"telemetry\",partition=\"0\"}",
    )
    .unwrap();
    assert_eq!(lag, 17.0);
    // The histogram is usable by the dashboard's quantile queries.
    let (_, count) = query(&base, "egizml_inference_latency_seconds_count").unwrap();
    assert!(count >= 1.0);
    let (_, p99) = query(
        &base,
        "histogram_quantile(0.99, egizml_inference_latency_seconds_bucket)",
    )
    .unwrap();
    assert!(p99 > 0.0 && p99 <= 0.1, "{p99}");
    // Labelled counters pre-created at 0 are visible before anything happens.
    let (_, malformed) = query(&base, "count(egizml_points_malformed_total)").unwrap();
    assert!(malformed >= 1.0);
    // Every dashboard and alert expression is valid PromQL for this Prometheus.
    for expr in super::docker::dashboard_exprs()
        .into_iter()
        .chain(super::docker::alert_exprs())
    {
        let mut resp = ureq::get(format!("{base}/api/v1/query"))
            .query("query", &expr)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        let v: serde_json::Value = resp.body_mut().read_json().unwrap();
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
    server.shutdown().unwrap();
}
