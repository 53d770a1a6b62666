//! Kafka end to end against a real broker (tansu, started per test on a free port): labelled
//! simulator telemetry in, `egizml run` as a child process, alerts and dead letters out.

use crate::common::*;
use egizml::testkit::Tansu;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Sends lines keyed by their thing_id (malformed ones keyed `bad`), `per_sec` lines a second
/// (0 = as fast as possible).
pub(crate) fn produce(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    lines: &[String],
    per_sec: f64,
) {
    let t0 = Instant::now();
    for (i, line) in lines.iter().enumerate() {
        if per_sec > 0.0 {
            let due = Duration::from_secs_f64(i as f64 / per_sec);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["thing_id"].as_str().map(str::to_string))
            .unwrap_or_else(|| "bad".to_string());
        let mut record = BaseRecord::to(topic).key(&key).payload(line);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .expect("telemetry delivered");
}

/// Every message of partition 0 of `topic`, read until nothing new arrives for `quiet`.
pub(crate) fn consume_all(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
) -> Vec<(String, Vec<u8>, BTreeMap<String, String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "egizml-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).expect("assign");
    // Everything up to the high watermark at call time, then whatever arrives until `quiet`.
    let (_, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut out = Vec::new();
    let mut next = 0i64;
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (next < high || last.elapsed() < quiet) && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                next = m.offset() + 1;
                let key = String::from_utf8_lossy(m.key().unwrap_or(b"")).to_string();
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or(b"")).to_string(),
                        );
                    }
                }
                out.push((key, m.payload().unwrap_or(b"").to_vec(), headers));
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    out
}

pub(crate) fn service_config(
    dir: &Path,
    bootstrap: &str,
    topic: &str,
    extra_source: &str,
    workers: usize,
) -> std::path::PathBuf {
    let path = dir.join("service.yaml");
    std::fs::write(
        &path,
        format!(
            "workers: {workers}\n\
             source:\n  kafka:\n    brokers: {bootstrap}\n    topics: [{topic}]\n    group_id: egizml-{topic}\n    commit_interval_ms: 200\n{extra_source}\
             sinks:\n  kafka:\n    brokers: {bootstrap}\n    alerts_topic: {topic}-alerts\n    dead_letter_topic: {topic}-dlq\n"
        ),
    )
    .unwrap();
    path
}

/// Creates `topic` with `partitions` partitions and the alerts and dead-letter topics that
/// [`service_config`] names after it (one partition each).
pub(crate) fn create_service_topics(broker: &Tansu, topic: &str, partitions: i32) {
    broker.create_topic(topic, partitions).unwrap();
    broker.create_topic(&format!("{topic}-alerts"), 1).unwrap();
    broker.create_topic(&format!("{topic}-dlq"), 1).unwrap();
}

/// Labelled telemetry lines plus the alert ids a deterministic replay of the same lines gives.
pub(crate) struct Workload {
    pub(crate) lines: Vec<String>,
    pub(crate) replay_alerts: Vec<egizml::event::Alert>,
    pub(crate) episodes: Vec<egizml::sources::simulator::FaultEpisode>,
}

pub(crate) fn workload(dir: &Path, things: usize, points: usize, seed: u64) -> Workload {
    let (input, episodes) = simulate(dir, things, points, seed);
    let mut lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Malformed input for the dead-letter topic, spread through the stream.
    for (i, bad) in [
        "{not json",
        r#"{"thing_id":"x","ts":"yesterday","values":{}}"#,
        "[]",
    ]
    .iter()
    .enumerate()
    {
        lines.insert(100 + i * 5000, bad.to_string());
    }
    let file = dir.join("with-bad.jsonl");
    write_lines(&file, &lines);
    let args = replay_args(&file, dir, 1);
    run_replay(&args);
    let replay_alerts = std::fs::read_to_string(&args.alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Workload {
        lines,
        replay_alerts,
        episodes,
    }
}

pub(crate) fn parse_alerts(
    msgs: &[(String, Vec<u8>, BTreeMap<String, String>)],
) -> Vec<egizml::event::Alert> {
    msgs.iter()
        .map(|(key, v, _)| {
            let a: egizml::event::Alert = serde_json::from_slice(v).expect("alert JSON");
            assert_eq!(key, a.thing_id.as_str(), "alerts are keyed by thing_id");
            a
        })
        .collect()
}

/// Episodes (thing, start, end) with at least one alert of their thing from start to end + 5 s.
pub(crate) fn detected(
    alerts: &[egizml::event::Alert],
    episodes: &[egizml::sources::simulator::FaultEpisode],
) -> BTreeSet<(String, i64)> {
    episodes
        .iter()
        .filter(|e| {
            alerts
                .iter()
                .any(|a| a.thing_id == e.thing_id && a.ts >= e.start_ts && a.ts <= e.end_ts + 5_000)
        })
        .map(|e| (e.thing_id.to_string(), e.start_ts))
        .collect()
}

#[test]
fn kafka_to_kafka_alerts_every_episode_once_with_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    let w = workload(dir.path(), 20, 20_000, 21);
    create_service_topics(&broker, "telemetry", 4);
    produce(&producer(&bs), "telemetry", &w.lines, 0.0);

    // Idle stop well above a consumer-group rebalance (a few seconds when both tests share the cores).
    // Two workers, one group member: the process's consumer feeds both through the exchange by thing.
    let config = service_config(
        dir.path(),
        &bs,
        "telemetry",
        "    stop_after_idle_s: 10\n",
        2,
    );
    let log = dir.path().join("run.log");
    let out = wait_exit(spawn_service(&config, &log), Duration::from_secs(180), &log);
    let summary = summary(&out);
    assert_eq!(summary["points"], 20_000, "{out}");
    assert_eq!(summary["malformed"], 3, "{out}");

    let alerts = parse_alerts(&consume_all(
        &bs,
        "telemetry-alerts",
        Duration::from_secs(3),
    ));
    let ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicate alert_id");
    // Per-thing order is kept by the keyed partitions, so the live run alerts exactly as the replay.
    let expected: BTreeSet<&str> = w
        .replay_alerts
        .iter()
        .map(|a| a.alert_id.as_str())
        .collect();
    assert_eq!(
        unique, expected,
        "same alerts as a replay of the same telemetry"
    );
    assert!(!w.episodes.is_empty());
    let found = detected(&alerts, &w.episodes);
    assert_eq!(found, detected(&w.replay_alerts, &w.episodes));
    assert!(
        found.len() as f64 >= 0.9 * w.episodes.len() as f64,
        "{} of {} episodes alerted",
        found.len(),
        w.episodes.len()
    );
    for a in &alerts {
        assert!(
            matches!(a.input_offsets, egizml::event::Origin::Kafka { ref topic, .. } if topic == "telemetry")
        );
    }

    let dead = consume_all(&bs, "telemetry-dlq", Duration::from_secs(2));
    assert_eq!(dead.len(), 3);
    let reasons: BTreeSet<&str> = dead.iter().map(|(_, _, h)| h["reason"].as_str()).collect();
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
    assert!(dead.iter().any(|(_, v, _)| v == b"{not json"));
}

#[test]
fn service_killed_mid_stream_resumes_without_losing_an_episode() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    let w = workload(dir.path(), 20, 20_000, 22);
    create_service_topics(&broker, "plant", 4);
    let (first, second) = w.lines.split_at(w.lines.len() / 2);
    let p = producer(&bs);
    produce(&p, "plant", first, 0.0);

    // Run 1: no idle stop; killed (SIGKILL) while the second half is still arriving.
    // The warm start re-reads each partition's whole history (no state checkpoints yet), so run 2
    // rebuilds exactly the state run 1 had, including the alert policy's windows.
    let config = service_config(
        dir.path(),
        &bs,
        "plant",
        "    warm_start_messages: 1000000\n",
        2,
    );
    let log1 = dir.path().join("run1.log");
    let mut child = spawn_service(&config, &log1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while consume_all(&bs, "plant-alerts", Duration::from_millis(500)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no alert from run 1\n{}",
            std::fs::read_to_string(&log1).unwrap_or_default()
        );
    }
    let second = second.to_vec();
    let bs2 = bs.clone();
    let feeder = std::thread::spawn(move || produce(&producer(&bs2), "plant", &second, 4_000.0));
    std::thread::sleep(Duration::from_millis(800));
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = consume_all(&bs, "plant-alerts", Duration::from_millis(500)).len();

    // Run 2: resumes from the committed offsets, re-reading a little for state, until idle.
    let config = service_config(
        dir.path(),
        &bs,
        "plant",
        "    warm_start_messages: 1000000\n    stop_after_idle_s: 10\n",
        2,
    );
    let log2 = dir.path().join("run2.log");
    let child = spawn_service(&config, &log2);
    feeder.join().unwrap();
    wait_exit(child, Duration::from_secs(180), &log2);

    let alerts = parse_alerts(&consume_all(&bs, "plant-alerts", Duration::from_secs(3)));
    assert!(alerts.len() > after_kill, "run 2 alerted too");
    // At-least-once: an alert written after run 1's last commit is written again by run 2 with the
    // same id and content (downstream dedupes by alert_id); nothing else is duplicated.
    let mut by_id = BTreeMap::new();
    for a in &alerts {
        if let Some(prev) = by_id.insert(a.alert_id.clone(), a.clone()) {
            assert_eq!(
                serde_json::to_value(&prev).unwrap(),
                serde_json::to_value(a).unwrap(),
                "a re-emitted alert is the same alert"
            );
        }
    }
    let deduped: Vec<_> = by_id.into_values().collect();
    let expected = detected(&w.replay_alerts, &w.episodes);
    let found = detected(&deduped, &w.episodes);
    let lost: Vec<_> = expected.difference(&found).collect();
    let show = |alerts: &[egizml::event::Alert], thing: &str| -> Vec<String> {
        alerts
            .iter()
            .filter(|a| a.thing_id.as_str() == thing)
            .map(|a| format!("{} {} {}", a.ts, a.alert_type, a.alert_id))
            .collect()
    };
    assert!(
        lost.is_empty(),
        "episodes lost across the restart: {lost:?}\nreplay: {:?}\nservice: {:?}",
        lost.iter()
            .map(|(t, _)| show(&w.replay_alerts, t))
            .collect::<Vec<_>>(),
        lost.iter()
            .map(|(t, _)| show(&deduped, t))
            .collect::<Vec<_>>()
    );
}

#[test]
fn run_rejects_a_bad_service_config_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.yaml");
    std::fs::write(
        &path,
        "source:\n  kafka:\n    brokers: 127.0.0.1:1\n    topics: [t]\n    bogus: 1\nsinks:\n  jsonl:\n    alerts: out.jsonl\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("svc.yaml:5:"), "{err}");
    assert!(err.contains("source.kafka"), "{err}");
    assert!(err.contains("bogus"), "{err}");

    std::fs::write(
        &path,
        "source: {}\nsinks:\n  jsonl:\n    alerts: out.jsonl\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set exactly one of kafka, file, simulator"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Alerts of `topic`-alerts deduplicated by alert_id (a redelivered alert has the same id and the
/// same content), and how many duplicates there were.
fn dedupe(alerts: &[egizml::event::Alert]) -> (Vec<egizml::event::Alert>, usize) {
    let mut by_id = BTreeMap::new();
    let mut dups = 0;
    for a in alerts {
        if let Some(prev) = by_id.insert(a.alert_id.clone(), a.clone()) {
            assert_eq!(prev.thing_id, a.thing_id);
            assert_eq!(prev.ts, a.ts);
            dups += 1;
        }
    }
    (by_id.into_values().collect(), dups)
}

#[test]
fn broker_restarted_mid_stream_loses_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start_persistent(&dir.path().join("tansu.db")).expect("tansu starts");
    let bs = broker.bootstrap();
    let w = workload(dir.path(), 20, 20_000, 23);
    create_service_topics(&broker, "line", 4);
    let (first, second) = w.lines.split_at(w.lines.len() / 2);
    produce(&producer(&bs), "line", first, 0.0);

    // Idle stop above the broker's outage plus librdkafka's reconnect backoff.
    let config = service_config(dir.path(), &bs, "line", "    stop_after_idle_s: 20\n", 2);
    let log = dir.path().join("run.log");
    let child = spawn_service(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while consume_all(&bs, "line-alerts", Duration::from_millis(300)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no alert before the broker restart\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // Stopped (SIGKILL) while the service reads and writes, down for a moment, then started again
    // on the same port and SQLite file.
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart().expect("tansu restarts");
    produce(&producer(&bs), "line", second, 0.0);
    let out = wait_exit(child, Duration::from_secs(240), &log);
    let summary = summary(&out);
    assert!(summary["points"].as_u64().unwrap() >= 20_000, "{out}");

    let alerts = parse_alerts(&consume_all(&bs, "line-alerts", Duration::from_secs(3)));
    let (deduped, _dups) = dedupe(&alerts);
    let ids: BTreeSet<&str> = deduped.iter().map(|a| a.alert_id.as_str()).collect();
    let expected: BTreeSet<&str> = w
        .replay_alerts
        .iter()
        .map(|a| a.alert_id.as_str())
        .collect();
    let lost: Vec<_> = expected.difference(&ids).collect();
    assert!(
        lost.is_empty(),
        "alerts lost across the broker restart: {lost:?}"
    );
    assert_eq!(ids, expected, "no alert beyond a replay's");
    assert!(!w.episodes.is_empty());
    assert_eq!(
        detected(&deduped, &w.episodes),
        detected(&w.replay_alerts, &w.episodes),
        "every episode a replay alerts is alerted"
    );
}

/// Two processes of two workers on 127.0.0.1, one group member each, partitions spread over both:
/// the same set of alert ids as one worker replaying the same telemetry, none twice.
#[test]
fn two_processes_of_two_workers_alert_like_one_worker_from_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    let w = workload(dir.path(), 20, 20_000, 24);
    create_service_topics(&broker, "fleet", 4);
    produce(&producer(&bs), "fleet", &w.lines, 0.0);

    let config = service_config(dir.path(), &bs, "fleet", "    stop_after_idle_s: 10\n", 2);
    let hosts = crate::cluster::hostfile(dir.path(), 2);
    let children = (0..2)
        .map(|id| {
            let log = dir.path().join(format!("member-{id}.log"));
            (
                crate::cluster::spawn_member(&config, &hosts, 2, id, 2, &log),
                log,
            )
        })
        .collect();
    let summaries = crate::cluster::wait_all(children, Duration::from_secs(240));
    let sum = |k: &str| {
        summaries
            .iter()
            .map(|s| s[k].as_u64().unwrap())
            .sum::<u64>()
    };
    let logs: String = (0..2)
        .map(|id| {
            let log = dir.path().join(format!("member-{id}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            format!("--- member {id}\n{text}")
        })
        .collect();
    // A message re-read after a rebalance is dropped before processing: every reading once.
    assert_eq!(sum("points"), 20_000, "{summaries:?}\n{logs}");
    assert_eq!(sum("malformed"), 3, "{summaries:?}");
    assert!(
        summaries.iter().all(|s| s["points"].as_u64().unwrap() > 0),
        "both processes' workers own things: {summaries:?}"
    );

    let alerts = parse_alerts(&consume_all(&bs, "fleet-alerts", Duration::from_secs(3)));
    let ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicate alert_id");
    let expected: BTreeSet<&str> = w
        .replay_alerts
        .iter()
        .map(|a| a.alert_id.as_str())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(
        unique, expected,
        "same alerts as one worker replaying the input"
    );
    assert_eq!(
        consume_all(&bs, "fleet-dlq", Duration::from_secs(2)).len(),
        3
    );
}

/// Offsets the consumer group `group` has committed on `topic`, summed over `partitions`.
fn committed_total(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .map(|list| {
            list.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A service suspended for longer than `stop_after_idle_s` while telemetry kept arriving reads that
/// backlog once it resumes, instead of stopping at its first turn as idle with the backlog unread (a
/// two-process test once ended short of its points while the machine's other processes were being
/// stopped and resumed for a benchmark).
#[test]
fn kafka_source_resumed_after_a_pause_reads_the_backlog_before_stopping_idle() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    let (input, _) = simulate(dir.path(), 5, 3_000, 13);
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    create_service_topics(&broker, "telemetry", 2);
    let p = producer(&bs);
    produce(&p, "telemetry", &lines[..1_000], 0.0);

    let config = service_config(
        dir.path(),
        &bs,
        "telemetry",
        "    stop_after_idle_s: 3\n",
        1,
    );
    let log = dir.path().join("run.log");
    let mut child = spawn_service(&config, &log);
    // The first thousand are read, processed and committed: the consumer's queue is empty.
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_total(&bs, "egizml-telemetry", "telemetry", 2) < 1_000 {
        assert!(
            exited(&mut child, &log, "egizml run").is_none(),
            "stopped before the first readings were committed"
        );
        assert!(Instant::now() < deadline, "first readings not committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&child, "-STOP");
    produce(&p, "telemetry", &lines[1_000..], 0.0);
    // Longer than stop_after_idle_s: on resuming, the wall clock says the source has been idle.
    std::thread::sleep(Duration::from_secs(5));
    signal(&child, "-CONT");
    let out = wait_exit(child, Duration::from_secs(180), &log);
    assert_eq!(summary(&out)["points"], 3_000, "{out}");
}
