//! `egizml demo` end to end: simulator -> pipeline -> SQLite, served over REST with /metrics.

use crate::common::{bin, http_agent};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(url: &str) -> Option<(u16, String)> {
    let agent = http_agent(Duration::from_secs(5));
    let mut resp = agent.get(url).call().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_to_string().ok()?))
}

#[test]
fn demo_serves_health_metrics_and_anomalies_then_exits_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let store = dir.path().join("demo.db");
    let child = Command::new(bin())
        .args([
            "demo",
            "--duration",
            "20",
            "--things",
            "10",
            "--rate",
            "2000",
            "--quiet",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", store.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");

    // Wait for the API, then for the first stored anomaly (bounded).
    let deadline = Instant::now() + Duration::from_secs(18);
    let mut health = None;
    while health.is_none() && Instant::now() < deadline {
        health = get(&format!("{base}/health"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = health.expect("/health answers");
    assert_eq!(status, 200);
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");

    let mut page = serde_json::Value::Null;
    while Instant::now() < deadline {
        let (status, body) =
            get(&format!("{base}/api/v1/anomalies?limit=5")).expect("anomalies answers");
        assert_eq!(status, 200, "{body}");
        page = serde_json::from_str(&body).unwrap();
        if page["total"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        page["total"].as_u64().unwrap() > 0,
        "no anomaly stored: {page}"
    );
    let first = &page["items"][0];
    for field in [
        "alert_id",
        "thing_id",
        "equipment_type",
        "ts",
        "severity",
        "source",
        "type",
        "score",
        "model_version",
        "top_features",
        "families",
        "explanation",
    ] {
        assert!(!first[field].is_null(), "alert lacks {field}: {first}");
    }
    let thing = first["thing_id"].as_str().unwrap().to_string();
    let (status, body) = get(&format!("{base}/api/v1/anomalies/{thing}")).unwrap();
    assert_eq!(status, 200);
    let per_thing: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(per_thing["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["thing_id"] == thing.as_str()));

    // The differential-dataflow summaries follow the stored alerts (published once per epoch, so
    // poll until the stored alert's device appears).
    let mut device = (0, String::new());
    while Instant::now() < deadline {
        device = get(&format!("{base}/api/v1/devices/{thing}")).unwrap();
        if device.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(device.0, 200, "{}", device.1);
    let device: serde_json::Value = serde_json::from_str(&device.1).unwrap();
    assert!(device["alerts_total"].as_i64().unwrap() > 0, "{device}");
    assert!(device["scores_count"].as_i64().unwrap() > 0, "{device}");
    let (status, body) = get(&format!("{base}/api/v1/devices?limit=2")).unwrap();
    assert_eq!(status, 200, "{body}");
    let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(devices["items"].as_array().unwrap().len(), 2, "{devices}");
    assert!(devices["total"].as_u64().unwrap() >= 2, "{devices}");
    let (status, body) = get(&format!("{base}/api/v1/fleet?limit=3")).unwrap();
    assert_eq!(status, 200, "{body}");
    let fleet: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(fleet["alerts_total"].as_i64().unwrap() > 0, "{fleet}");
    assert_eq!(fleet["ranking"].as_array().unwrap().len(), 3, "{fleet}");

    let (status, metrics) = get(&format!("{base}/metrics")).unwrap();
    assert_eq!(status, 200);
    let ingested: f64 = metrics
        .lines()
        .find(|l| l.starts_with("egizml_points_ingested_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("points_ingested_total exported");
    assert!(ingested > 0.0);
    assert!(metrics.contains("egizml_event_to_alert_latency_seconds_count"));

    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(summary["points"].as_u64().unwrap() > 10_000, "{summary}");
    assert!(summary["alerts"].as_u64().unwrap() > 0);
}
