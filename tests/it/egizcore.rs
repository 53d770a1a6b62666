//! EgizCore end to end against the fake EgizCore of `fake_egizcore.rs` (the only faked server: there
//! is no public EgizCore): labelled simulator telemetry pushed as StateChanged frames over the
//! WebSocket subscription -> `egizml run` -> alerts PUT to the fake's REST API, compared with a replay
//! of the same frames and field by field with the alerts.

use crate::common::*;
use crate::fake_egizcore::{FakeEgizCore, Put};
use egizml::event::Alert;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The types the service subscribes to; the simulator's conveyors are pushed too and must be
/// filtered out by the subscription.
const SUBSCRIBED: [&str; 2] = ["oven", "mixer"];

/// A flat simulator line as an EgizCore StateChanged frame (DESIGN.md): per-phase values nested
/// under `electrical`, zones as the `temperature_zones` array, the rest under `process`; RFC 3339
/// timestamp; the label carried along.
fn state_changed(flat_line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(flat_line).expect("simulator JSON");
    let values = v["values"].as_object().expect("values");
    let mut electrical = serde_json::Map::new();
    let mut zones: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut process = serde_json::Map::new();
    for (k, x) in values {
        if let Some((quantity, phase)) = k
            .split_once('_')
            .filter(|(q, p)| (*q == "voltage" || *q == "current") && ["a", "b", "c"].contains(p))
        {
            electrical
                .entry(quantity)
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .unwrap()
                .insert(phase.to_string(), x.clone());
        } else if let Some(n) = k.strip_prefix("temp_zone_") {
            zones.push((n.parse().expect("zone number"), x.clone()));
        } else if k == "power_factor" {
            electrical.insert(k.clone(), x.clone());
        } else {
            process.insert(k.clone(), x.clone());
        }
    }
    zones.sort_by_key(|(n, _)| *n);
    let mut features = serde_json::Map::new();
    if !electrical.is_empty() {
        features.insert(
            "electrical".into(),
            serde_json::json!({"properties": electrical}),
        );
    }
    if !zones.is_empty() {
        let zones: Vec<_> = zones.into_iter().map(|(_, x)| x).collect();
        features.insert(
            "thermal".into(),
            serde_json::json!({"properties": {"temperature_zones": zones}}),
        );
    }
    if !process.is_empty() {
        features.insert("process".into(), serde_json::json!({"properties": process}));
    }
    let ts = v["ts"].as_i64().expect("epoch ms");
    let mut frame = serde_json::json!({
        "event": "StateChanged",
        "thing_id": format!("factory:{}", v["thing_id"].as_str().unwrap()),
        "equipment_type": v["equipment_type"],
        "timestamp": egizml::decode::timestamp::format_rfc3339(ts),
        "features": features,
    });
    if let Some(label) = v.get("label").filter(|l| !l.is_null()) {
        frame["label"] = label.clone();
    }
    frame.to_string()
}

/// Three frames the decoder must dead-letter (reasons bad_json, bad_timestamp, unsupported_event).
fn malformed() -> Vec<String> {
    vec![
        "{not json".to_string(),
        r#"{"event":"StateChanged","thing_id":"factory:oven-x","equipment_type":"oven","timestamp":"yesterday","features":{"electrical":{"properties":{"power_factor":0.9}}}}"#.to_string(),
        r#"{"event":"ThingDeleted","thing_id":"factory:oven-y","equipment_type":"oven"}"#.to_string(),
    ]
}

struct Workload {
    /// Every frame the fake pushes (all equipment types, malformed ones included), in order.
    frames: Vec<String>,
    /// Valid frames the subscription lets through.
    delivered_points: u64,
    /// Alerts of a replay of the delivered frames.
    expected: Vec<Alert>,
}

fn workload(dir: &Path, things: usize, points: usize, seed: u64) -> Workload {
    let (input, _episodes) = simulate(dir, things, points, seed);
    let mut frames: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(state_changed)
        .collect();
    for (i, bad) in malformed().into_iter().enumerate() {
        frames.insert(40 + i * (frames.len() / 3), bad);
    }
    let delivered: Vec<String> = frames
        .iter()
        .filter(|f| {
            serde_json::from_str::<serde_json::Value>(f)
                .ok()
                .and_then(|v| v["equipment_type"].as_str().map(str::to_string))
                .is_none_or(|t| SUBSCRIBED.contains(&t.as_str()))
        })
        .cloned()
        .collect();
    assert!(delivered.len() < frames.len(), "some conveyors filtered");
    let file = dir.join("delivered.jsonl");
    write_lines(&file, &delivered);
    let args = replay_args(&file, dir, 1);
    let (summary, _) = run_replay(&args);
    assert_eq!(summary.malformed, 3, "the replay dead-letters the three");
    let expected = read_alerts(&args.alerts);
    assert!(!expected.is_empty(), "the workload has alerts");
    Workload {
        delivered_points: delivered.len() as u64 - 3,
        frames,
        expected,
    }
}

fn read_alerts(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("alert JSON"))
        .collect()
}

/// A service config: the egizcore source plus `sink_yaml` (the egizcore sink's extra keys) and a
/// JSONL copy of the alerts.
fn service_config(
    dir: &Path,
    fake: &FakeEgizCore,
    source_extra: &str,
    sink_extra: &str,
) -> PathBuf {
    let path = dir.join("service.yaml");
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    std::fs::write(
        &path,
        format!(
            "workers: 2\n\
             source:\n  egizcore:\n    url: {}\n    equipment_types: [oven, mixer]\n    stop_after_idle_s: 4\n{}\
             sinks:\n  jsonl:\n    alerts: alerts.jsonl\n  egizcore:\n    url: {}\n{}",
            fake.ws_url(),
            indent(source_extra),
            fake.http_url(),
            indent(sink_extra),
        ),
    )
    .unwrap();
    path
}

/// Successful PUTs by alert_id (each alert at most once).
fn published(puts: &[Put]) -> BTreeMap<String, Put> {
    let mut out = BTreeMap::new();
    for p in puts.iter().filter(|p| p.status == 204) {
        let id = p.body["properties"]["alert_id"]
            .as_str()
            .expect("alert_id")
            .to_string();
        assert!(
            out.insert(id.clone(), p.clone()).is_none(),
            "alert {id} published twice"
        );
    }
    out
}

/// The PUT carries exactly the documented body for `alert`, to the alert's thing.
fn check_put(put: &Put, alert: &Alert) {
    assert_eq!(put.thing_id, alert.thing_id.as_str(), "path thing_id");
    let props = put.body["properties"].as_object().expect("properties");
    let keys: BTreeSet<&str> = props.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "anomaly",
            "anomaly_score",
            "severity",
            "top_features",
            "alert_id"
        ]),
        "{}",
        put.body
    );
    assert_eq!(put.body.as_object().unwrap().len(), 1, "only properties");
    assert_eq!(props["anomaly"], true);
    assert_eq!(props["anomaly_score"].as_f64(), Some(alert.score));
    assert_eq!(props["severity"], alert.severity.as_str());
    assert_eq!(
        props["top_features"],
        serde_json::to_value(&alert.top_features).unwrap()
    );
    assert!(!alert.top_features.is_empty());
    assert_eq!(props["alert_id"], alert.alert_id.as_str());
}

#[test]
fn egizcore_websocket_to_rest_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let w = workload(dir.path(), 10, 8_000, 41);
    let fake = FakeEgizCore::start(Some("s3cret"));
    // The source reads its token from the environment, the sink from the file.
    let config = service_config(
        dir.path(),
        &fake,
        "token_env: EGIZML_TEST_EGIZCORE_TOKEN\n",
        "token: s3cret\nmin_interval_s: 0\n",
    );
    let log = dir.path().join("run.log");
    let child = run_command(&config, &log)
        .env("EGIZML_TEST_EGIZCORE_TOKEN", "s3cret")
        .spawn()
        .expect("egizml run starts");
    fake.wait_subscriptions(1, Duration::from_secs(60));
    let sub = &fake.subscriptions()[0];
    assert_eq!(sub.equipment_types, SUBSCRIBED);
    assert_eq!(sub.authorization.as_deref(), Some("Bearer s3cret"));

    assert_eq!(fake.push(&w.frames), 1);
    let summary = summary(&wait_exit(child, Duration::from_secs(120), &log));
    assert_eq!(summary["points"], w.delivered_points, "{summary}");
    assert_eq!(
        summary["malformed"], 3,
        "dead-lettered, not lost: {summary}"
    );

    // The service alerts exactly like a replay of the frames its subscription delivered.
    let alerts = read_alerts(&dir.path().join("alerts.jsonl"));
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let expected: BTreeSet<&str> = w.expected.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids, expected);
    assert_eq!(ids.len(), alerts.len(), "no duplicate alert_id");
    assert!(
        alerts.iter().any(|a| a.label == Some(1)),
        "alerts on labelled fault readings"
    );

    // Every alert reached EgizCore once, with the documented body.
    let puts = fake.puts();
    assert!(puts.iter().all(|p| p.status == 204), "{puts:?}");
    assert!(puts
        .iter()
        .all(|p| p.authorization.as_deref() == Some("Bearer s3cret")));
    let by_id = published(&puts);
    assert_eq!(by_id.len(), alerts.len());
    for a in &alerts {
        check_put(
            by_id
                .get(a.alert_id.as_str())
                .unwrap_or_else(|| panic!("alert {} not published", a.alert_id)),
            a,
        );
    }
    assert!(
        puts.iter().all(|p| p.thing_id.starts_with("factory:")),
        "thing ids with ':' survive the path"
    );
    let e = &summary["egizcore"];
    assert_eq!(e["published"], alerts.len() as u64, "{summary}");
    assert_eq!(e["failed_attempts"], 0, "{summary}");
    assert!(
        e["dropped"].as_object().unwrap().values().all(|v| v == 0),
        "{summary}"
    );
}

/// `connection_status` values (the gauge read back right after each change) logged by the source,
/// in order, from a JSON log (`EGIZML_LOG_FORMAT=json`).
fn logged_status(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("egizcore websocket"))
        })
        .filter_map(|v| v["fields"]["connection_status"].as_u64())
        .collect()
}

#[test]
fn egizcore_source_reconnects_after_the_socket_drops() {
    let dir = tempfile::tempdir().unwrap();
    let w = workload(dir.path(), 10, 8_000, 42);
    let fake = FakeEgizCore::start(None);
    let config = service_config(
        dir.path(),
        &fake,
        "min_reconnect_delay_ms: 50\nmax_reconnect_delay_ms: 400\nping_interval_s: 60\n",
        "min_interval_s: 0\n",
    );
    let log = dir.path().join("run.log");
    let child = run_command(&config, &log)
        .env("EGIZML_LOG_FORMAT", "json")
        .spawn()
        .expect("egizml run starts");
    fake.wait_subscriptions(1, Duration::from_secs(60));

    let (first, second) = w.frames.split_at(w.frames.len() / 2);
    assert_eq!(fake.push(first), 1);
    // Mid-stream: the frames queued so far are written, then the TCP connection just goes.
    fake.drop_connections();
    fake.wait_subscriptions(2, Duration::from_secs(30));
    assert_eq!(fake.subscriptions()[1].equipment_types, SUBSCRIBED);
    assert_eq!(fake.push(second), 1);

    let summary = summary(&wait_exit(child, Duration::from_secs(120), &log));
    let text = std::fs::read_to_string(&log).unwrap();
    // The gauge as the source logged it: connected (1), dropped (0), connected again (1).
    let status = logged_status(&text);
    assert!(
        status.starts_with(&[1, 0, 1]),
        "connection_status sequence {status:?}\n{text}"
    );
    assert_eq!(
        summary["points"], w.delivered_points,
        "nothing written before the drop was lost: {summary}"
    );
    assert_eq!(summary["malformed"], 3, "{summary}");

    let alerts = read_alerts(&dir.path().join("alerts.jsonl"));
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let expected: BTreeSet<&str> = w.expected.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids, expected, "same alerts as a replay");
    // Frames pushed after the reconnection still produce alerts, and they reach EgizCore.
    let split_ts = serde_json::from_str::<serde_json::Value>(&second[0])
        .ok()
        .and_then(|v| v["timestamp"].as_str().map(str::to_string))
        .and_then(|t| egizml::decode::timestamp::parse_rfc3339(&t))
        .expect("a StateChanged frame starts the second half");
    let later: Vec<&Alert> = alerts.iter().filter(|a| a.ts > split_ts).collect();
    assert!(!later.is_empty(), "alerts after the reconnection");
    let by_id = published(&fake.puts());
    for a in later {
        check_put(by_id.get(a.alert_id.as_str()).expect("published"), a);
    }
    assert_eq!(by_id.len(), alerts.len());
}

#[test]
fn egizcore_sink_retries_failed_puts_and_limits_each_thing() {
    let dir = tempfile::tempdir().unwrap();
    let w = workload(dir.path(), 10, 8_000, 43);
    let fake = FakeEgizCore::start(None);
    fake.fail_next_puts(3);
    let interval = Duration::from_secs(2);
    let config = service_config(
        dir.path(),
        &fake,
        "",
        "min_interval_s: 2\nmax_retries: 5\nretry_base_ms: 50\nretry_max_ms: 400\n",
    );
    let log = dir.path().join("run.log");
    let child = spawn_service(&config, &log);
    fake.wait_subscriptions(1, Duration::from_secs(60));
    assert_eq!(fake.push(&w.frames), 1);
    let summary = summary(&wait_exit(child, Duration::from_secs(120), &log));
    let alerts = read_alerts(&dir.path().join("alerts.jsonl"));
    assert_eq!(alerts.len(), w.expected.len(), "{summary}");
    let by_alert: BTreeMap<&str, &Alert> =
        alerts.iter().map(|a| (a.alert_id.as_str(), a)).collect();

    // The first alert failed three times and was retried until it got through.
    let puts = fake.puts();
    let statuses: Vec<u16> = puts.iter().take(4).map(|p| p.status).collect();
    assert_eq!(statuses, [500, 500, 500, 204], "{puts:?}");
    let first_id = &puts[0].body["properties"]["alert_id"];
    assert!(puts[..4]
        .iter()
        .all(|p| &p.body["properties"]["alert_id"] == first_id));
    assert!(puts[4..].iter().all(|p| p.status == 204));

    // Published alerts are the service's, with the documented body.
    let ok = published(&puts);
    for (id, put) in &ok {
        check_put(put, by_alert.get(id.as_str()).expect("a real alert"));
    }
    // At most one publish per thing per interval (EgizCore's own clock: arrival times at the fake).
    let mut per_thing: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for p in puts.iter().filter(|p| p.status == 204) {
        per_thing.entry(p.thing_id.as_str()).or_default().push(p.at);
    }
    for (thing, times) in &per_thing {
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= interval, "{thing}: two publishes {gap:?} apart");
        }
    }
    // Every thing with an alert got its status published; the rest were coalesced, and counted.
    let alerted: BTreeSet<&str> = alerts.iter().map(|a| a.thing_id.as_str()).collect();
    let put_things: BTreeSet<&str> = per_thing.keys().copied().collect();
    assert_eq!(alerted, put_things);
    let e = &summary["egizcore"];
    assert_eq!(e["failed_attempts"], 3, "{summary}");
    assert_eq!(e["published"], ok.len() as u64, "{summary}");
    let coalesced = e["dropped"]["rate_limit"].as_u64().unwrap();
    assert!(coalesced > 0, "the limit held some alerts back: {summary}");
    assert_eq!(
        ok.len() as u64 + coalesced,
        alerts.len() as u64,
        "every alert either published or counted as coalesced: {summary}"
    );
    for reason in ["queue_full", "retries_exhausted", "rejected", "shutdown"] {
        assert_eq!(e["dropped"][reason], 0, "{reason}: {summary}");
    }
}

#[test]
fn egizcore_config_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "source:\n  egizcore:\n    url: ws://127.0.0.1:1\n    equipment_types: [oven]\n    reconnect: fast\nsinks:\n  jsonl:\n    alerts: a.jsonl\n",
            ":5:",
            "reconnect",
        ),
        (
            "source:\n  file:\n    path: x.jsonl\nsinks:\n  egizcore:\n    url: http://127.0.0.1:1\n    retries: 3\n",
            ":7:",
            "retries",
        ),
        (
            "source:\n  egizcore:\n    url: http://127.0.0.1:1\n    equipment_types: [oven]\nsinks:\n  jsonl:\n    alerts: a.jsonl\n",
            "service.yaml",
            "source.egizcore.url",
        ),
        (
            "source:\n  file:\n    path: x.jsonl\nsinks:\n  egizcore:\n    url: http://127.0.0.1:1\n    min_interval_s: -5\n",
            "service.yaml",
            "sinks.egizcore.min_interval_s",
        ),
    ];
    for (yaml, place, field) in cases {
        let path = dir.path().join("service.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(err.contains(place) && err.contains(field), "{yaml}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
