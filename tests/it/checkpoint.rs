//! State checkpoints end to end: `egizml run` on a Kafka topic (real tansu broker) stopped mid-stream
//! (SIGTERM, SIGKILL) and restarted from its checkpoint: the restarted run does not re-learn, and the
//! two runs together alert exactly as a replay of the whole stream that never stopped.

use crate::common::{spawn_service, summary, wait_exit};
use crate::kafka::{
    consume_all, create_service_topics, detected, parse_alerts, produce, producer, service_config,
    workload,
};
use egizml::testkit::Tansu;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const THINGS: usize = 20;

/// The service config of `kafka.rs`'s tests plus a `checkpoint` section.
fn config(dir: &Path, bs: &str, topic: &str, extra_source: &str, interval_s: f64) -> PathBuf {
    let path = service_config(dir, bs, topic, extra_source, 1);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "checkpoint:\n  dir: checkpoints\n  interval_s: {interval_s}\n  keep: 2\n"
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Complete checkpoints (folders with a manifest), oldest first.
fn complete_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.join("MANIFEST.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs the service until it has alerted, then streams the rest of the telemetry and stops it with
/// `signal` while the stream is still arriving; returns the feeder (still producing) and run 1's
/// stdout (empty after SIGKILL).
fn run_and_stop(
    dir: &Path,
    bs: &str,
    topic: &str,
    lines: &[String],
    signal: &str,
    interval_s: f64,
) -> (std::thread::JoinHandle<()>, String) {
    let (first, second) = lines.split_at(lines.len() / 2);
    produce(&producer(bs), topic, first, 0.0);
    let config = config(dir, bs, topic, "", interval_s);
    let log = dir.join("run1.log");
    let child = spawn_service(&config, &log);
    let alerts_topic = format!("{topic}-alerts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while consume_all(bs, &alerts_topic, Duration::from_millis(500)).is_empty()
        || (signal == "KILL" && complete_checkpoints(dir).is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "run 1 neither alerted nor checkpointed\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let (second, bs2, topic2) = (second.to_vec(), bs.to_string(), topic.to_string());
    let feeder = std::thread::spawn(move || produce(&producer(&bs2), &topic2, &second, 4_000.0));
    std::thread::sleep(Duration::from_millis(1_000));
    let out = stop(child, signal, &log);
    (feeder, out)
}

fn stop(child: Child, signal: &str, log: &Path) -> String {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    if signal == "KILL" {
        let mut child = child;
        child.wait().unwrap();
        return String::new();
    }
    wait_exit(child, Duration::from_secs(120), log)
}

#[test]
fn sigterm_mid_stream_restarts_from_the_shutdown_checkpoint_without_relearning_or_realerting() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    let w = workload(dir.path(), THINGS, 20_000, 31);
    create_service_topics(&broker, "line", 2);

    let (feeder, out1) = run_and_stop(dir.path(), &bs, "line", &w.lines, "TERM", 60.0);
    let s1 = summary(&out1);
    let c1 = &s1["checkpoint"];
    assert_eq!(c1["written"], 1, "the shutdown checkpoint: {out1}");
    assert!(c1["restored"].is_null(), "{out1}");
    let ckpt = complete_checkpoints(dir.path());
    assert_eq!(ckpt.len(), 1);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt[0].join("MANIFEST.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["shutdown"], true);
    assert_eq!(manifest["things"], THINGS);
    // Every thing is past its warm-up in the checkpoint: a cold restart would not score for a while.
    let mut learned = Vec::new();
    egizml::checkpoint::read_worker_file(&ckpt[0].join("worker-0.bin"), |_, s| {
        learned.push(s.learned())
    })
    .unwrap();
    assert_eq!(learned.len(), THINGS);
    assert!(learned.iter().all(|&n| n > 60), "{learned:?}");

    let config = config(dir.path(), &bs, "line", "    stop_after_idle_s: 8\n", 60.0);
    let log2 = dir.path().join("run2.log");
    let child = spawn_service(&config, &log2);
    feeder.join().unwrap();
    let out2 = wait_exit(child, Duration::from_secs(180), &log2);
    let s2 = summary(&out2);
    assert_eq!(s2["checkpoint"]["restored"], c1["last"], "{out2}");
    assert_eq!(s2["checkpoint"]["restored_things"], THINGS, "{out2}");
    // Every reading processed once: run 2 started where run 1's state ended.
    assert_eq!(
        s1["points"].as_u64().unwrap() + s2["points"].as_u64().unwrap(),
        20_000,
        "{out1}\n{out2}"
    );
    assert!(s2["alerts"].as_u64().unwrap() > 0, "run 2 alerted: {out2}");

    let alerts = parse_alerts(&consume_all(&bs, "line-alerts", Duration::from_secs(3)));
    let ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no alert_id emitted twice");
    let expected: BTreeSet<&str> = w
        .replay_alerts
        .iter()
        .map(|a| a.alert_id.as_str())
        .collect();
    assert_eq!(
        unique, expected,
        "the two runs alert exactly as a replay that never stopped"
    );
    let found = detected(&alerts, &w.episodes);
    assert!(!found.is_empty());
    assert_eq!(found, detected(&w.replay_alerts, &w.episodes));
}

#[test]
fn sigkill_after_a_periodic_checkpoint_restores_it_and_rereads_for_state_only() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    let w = workload(dir.path(), THINGS, 20_000, 32);
    create_service_topics(&broker, "cell", 2);

    let (feeder, _) = run_and_stop(dir.path(), &bs, "cell", &w.lines, "KILL", 0.5);
    let before: Vec<PathBuf> = complete_checkpoints(dir.path());
    assert!(!before.is_empty());
    let newest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(before.last().unwrap().join("MANIFEST.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(newest["shutdown"], false, "periodic");

    let config = config(dir.path(), &bs, "cell", "    stop_after_idle_s: 8\n", 0.5);
    let log2 = dir.path().join("run2.log");
    let child = spawn_service(&config, &log2);
    feeder.join().unwrap();
    let out2 = wait_exit(child, Duration::from_secs(180), &log2);
    let s2 = summary(&out2);
    assert_eq!(s2["checkpoint"]["restored"], newest["id"], "{out2}");
    assert_eq!(s2["checkpoint"]["restored_things"], THINGS, "{out2}");

    // At-least-once after a crash: an alert acknowledged but not yet committed is emitted again,
    // with the same id and content; deduplicated by id, the runs alert exactly as the replay.
    let alerts = parse_alerts(&consume_all(&bs, "cell-alerts", Duration::from_secs(3)));
    let mut by_id: BTreeMap<&str, &egizml::event::Alert> = BTreeMap::new();
    for a in &alerts {
        if let Some(prev) = by_id.insert(a.alert_id.as_str(), a) {
            assert_eq!(
                serde_json::to_value(prev).unwrap(),
                serde_json::to_value(a).unwrap(),
                "a re-emitted alert is the same alert"
            );
        }
    }
    let unique: BTreeSet<&str> = by_id.keys().copied().collect();
    let expected: BTreeSet<&str> = w
        .replay_alerts
        .iter()
        .map(|a| a.alert_id.as_str())
        .collect();
    assert_eq!(unique, expected);
    assert_eq!(
        detected(&alerts, &w.episodes),
        detected(&w.replay_alerts, &w.episodes)
    );
}

#[test]
fn a_bad_checkpoint_section_fails_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.yaml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(crate::common::bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let sinks = "sinks:\n  jsonl:\n    alerts: out.jsonl\n";
    let e = run(&format!(
        "source:\n  simulator: {{things: 2}}\n{sinks}checkpoint:\n  dir: ck\n  interval_s: 0\n"
    ));
    // A value's own check is placed at the first line of its mapping (serde_norway), the field named.
    assert!(e.contains("svc.yaml:7:"), "{e}");
    assert!(
        e.contains("checkpoint.interval_s") && e.contains("> 0"),
        "{e}"
    );
    let e = run(&format!(
        "source:\n  simulator: {{things: 2}}\n{sinks}checkpoint:\n  dir: ck\n  on_mismatch: ignore\n"
    ));
    assert!(
        e.contains("svc.yaml:8:") && e.contains("on_mismatch"),
        "{e}"
    );
    // A file is replayed from its start on every run: a checkpoint makes no sense there.
    let e = run(&format!(
        "source:\n  file: {{path: t.jsonl}}\n{sinks}checkpoint:\n  dir: ck\n"
    ));
    assert!(e.contains("svc.yaml:6:"), "{e}");
    assert!(
        e.contains("`checkpoint`") && e.contains("live source"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}
