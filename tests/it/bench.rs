//! `egizml bench` from its three sources: the summary line's contract, the latency histograms and
//! the memory figure (speed itself is measured in docs/BENCHMARKS.md, never asserted here).

use crate::common::*;
use egizml::testkit::Tansu;
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin())
        .arg("bench")
        .args(args)
        .output()
        .expect("egizml bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bench failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("summary line")).expect("JSON summary")
}

fn count(s: &serde_json::Value, hist: &str) -> u64 {
    s[hist]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("{hist} in {s}"))
}

/// Percentiles in order and positive.
fn check_percentiles(s: &serde_json::Value, hist: &str) {
    let h = &s[hist];
    let q: Vec<f64> = ["p50_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|k| h[k].as_f64().unwrap_or_else(|| panic!("{hist}.{k} in {s}")))
        .collect();
    assert!(q[0] > 0.0, "{hist}: {h}");
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{hist}: {h}");
}

/// `bench --source kafka` on a fresh tansu broker (see [`kafka_bench_on`]).
fn kafka_bench(workers: &str, extra: &[&str]) -> serde_json::Value {
    let broker = Tansu::start().expect("tansu starts");
    kafka_bench_on(&["--brokers", &broker.bootstrap()], workers, extra)
}

/// `bench --source kafka` on the broker `broker_args` name: 5 things x 800 readings at 4,000/s (past
/// the simulator's 300-reading warm-up, so faults are injected), on `workers`, plus `extra` arguments.
fn kafka_bench_on(broker_args: &[&str], workers: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--source", "kafka"];
    args.extend_from_slice(broker_args);
    args.extend_from_slice(&[
        "--points",
        "4000",
        "--things",
        "5",
        "--workers",
        workers,
        "--rate",
        "4000",
        "--faults",
        "20",
        "--settle-s",
        "0",
    ]);
    args.extend_from_slice(extra);
    bench(&args)
}

#[test]
fn bench_from_kafka_times_event_to_alert_from_the_producer_send() {
    let s = kafka_bench("1", &[]);
    assert_eq!(s["source"], "kafka", "{s}");
    let partitions = s["kafka"]["partitions"].as_u64().unwrap();
    assert_eq!(partitions, 4, "default partitions: {s}");
    // The timed readings plus one warm-up reading per partition, each acknowledged and processed.
    assert_eq!(s["kafka"]["produced"], 4000 + partitions, "{s}");
    assert_eq!(s["points"], 4000 + partitions, "{s}");
    assert_eq!(s["malformed"], 0, "{s}");
    assert!(s["points_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    let alerts = s["alerts"].as_u64().unwrap();
    assert!(alerts > 0, "faults were injected: {s}");
    // Every alert's reading was matched to its send() instant.
    assert_eq!(s["kafka"]["unmatched_alerts"], 0, "{s}");
    assert_eq!(count(&s, "event_to_alert_us"), alerts, "{s}");
    assert_eq!(count(&s, "ingest_to_alert_us"), alerts, "{s}");
    assert_eq!(count(&s, "ingest_to_scored_us"), 4000 + partitions, "{s}");
    assert_eq!(count(&s, "processing_us"), 4000 + partitions, "{s}");
    // Warm-up readings are not timed.
    assert_eq!(count(&s["kafka"], "send_to_ack_us"), 4000, "{s}");
    for h in [
        "event_to_alert_us",
        "ingest_to_alert_us",
        "ingest_to_scored_us",
        "processing_us",
    ] {
        check_percentiles(&s, h);
    }
    // Each alert's event (send) precedes its ingest, so every percentile is at least the ingest one
    // (up to the histograms' 3 significant digits).
    for q in ["p50_us", "p99_us", "max_us"] {
        let event = s["event_to_alert_us"][q].as_f64().unwrap();
        let ingest = s["ingest_to_alert_us"][q].as_f64().unwrap();
        assert!(
            event >= ingest * 0.999,
            "{q}: event {event} < ingest {ingest}"
        );
    }
    // Processing a reading is part of getting it scored.
    let processing = s["processing_us"]["p50_us"].as_f64().unwrap();
    assert!(processing <= s["ingest_to_scored_us"]["p50_us"].as_f64().unwrap() * 1.001);
    assert_eq!(s["p99_us"], s["ingest_to_scored_us"]["p99_us"], "{s}");
    let clock = s["latency_clock"].as_str().unwrap();
    assert!(
        clock.contains("send()") && clock.contains("monotonic"),
        "{clock}"
    );
    assert_eq!(s["memory"]["things"], 5 + partitions, "{s}");
    assert!(s["kafka"].get("alerts_topic").is_none(), "{s}");
}

#[test]
fn bench_against_librdkafkas_mock_cluster_times_every_alert() {
    let s = kafka_bench_on(&["--mock-cluster"], "1", &["--partitions", "1"]);
    assert_eq!(s["kafka"]["broker"], "mock cluster", "{s}");
    assert_eq!(s["kafka"]["produced"], 4000 + 1, "{s}");
    assert_eq!(s["points"], 4000 + 1, "{s}");
    let alerts = s["alerts"].as_u64().unwrap();
    assert!(alerts > 0, "faults were injected: {s}");
    assert_eq!(s["kafka"]["unmatched_alerts"], 0, "{s}");
    assert_eq!(count(&s, "event_to_alert_us"), alerts, "{s}");
    check_percentiles(&s, "event_to_alert_us");
    // The broker's log is in the bench process: no memory figure.
    assert!(s.get("memory").is_none_or(|m| m.is_null()), "{s}");
}

#[test]
fn bench_with_the_kafka_sink_times_alerts_until_a_consumer_reads_them() {
    let s = kafka_bench("2", &["--kafka-sink"]);
    let alerts = s["alerts"].as_u64().unwrap();
    assert!(alerts > 0, "faults were injected: {s}");
    let topic = s["kafka"]["topic"].as_str().unwrap();
    assert_eq!(s["kafka"]["alerts_topic"], format!("{topic}-alerts"), "{s}");
    // Every alert went through the broker and was read back from the alerts topic.
    assert_eq!(s["kafka"]["alerts_consumed"], alerts, "{s}");
    assert_eq!(
        count(&s["kafka"], "event_to_alert_consumed_us"),
        alerts,
        "{s}"
    );
    assert_eq!(count(&s, "event_to_alert_us"), alerts, "{s}");
    check_percentiles(&s["kafka"], "event_to_alert_consumed_us");
    check_percentiles(&s, "event_to_alert_us");
}

#[test]
fn bench_live_reports_histograms_and_memory_per_thing_at_many_things() {
    let s = bench(&[
        "--source",
        "live",
        "--points",
        "60000",
        "--things",
        "30000",
        "--workers",
        "2",
        "--fault-kinds",
        "voltage_spike,phase_imbalance",
    ]);
    assert_eq!(s["source"], "live", "{s}");
    assert_eq!(s["points"], 60_000, "{s}");
    assert_eq!(s["things"], 30_000, "{s}");
    assert_eq!(count(&s, "processing_us"), 60_000);
    assert_eq!(count(&s, "ingest_to_scored_us"), 60_000);
    check_percentiles(&s, "processing_us");
    check_percentiles(&s, "ingest_to_scored_us");
    let m = &s["memory"];
    assert_eq!(m["things"], 30_000, "{s}");
    let per_thing = m["bytes_per_thing"].as_f64().unwrap();
    let growth = m["rss_end_bytes"].as_f64().unwrap() - m["rss_before_bytes"].as_f64().unwrap();
    assert!(per_thing > 0.0, "{s}");
    assert!((per_thing * 30_000.0 - growth).abs() < 1.0, "{s}");
    assert!(m["method"].as_str().unwrap().contains("VmRSS"), "{s}");
    // Ingest instant = taken from the channel: the clock says so.
    assert!(s["latency_clock"]
        .as_str()
        .unwrap()
        .contains("live channel"));
}

#[test]
fn bench_rejects_inconsistent_arguments_with_one_line() {
    for (args, reason) in [
        (&["--source", "kafka"][..], "--source kafka needs --brokers"),
        (&["--brokers", "127.0.0.1:1"][..], "need --source kafka"),
        (&["--mock-cluster"][..], "need --source kafka"),
        (&["--things", "0"][..], "--things must be at least 1"),
        (&["--rate", "0"][..], "--rate must be > 0"),
        (&["--fault-kinds", "meltdown"][..], "unknown fault kind"),
    ] {
        let out = Command::new(bin())
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}
