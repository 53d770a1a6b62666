//! Backpressure from a slow sink to a Kafka source: the source reads at the sink's rate and what is
//! in flight stays bounded (counts, not wall time). The live-channel case is a unit test of
//! `pipeline::run` (src/pipeline/tests.rs).

use crate::common::*;
use egizml::pipeline::{self, Input, RunOptions};
use egizml::testkit::{SlowSink, Tansu};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn a_slow_sink_holds_the_kafka_source_to_its_rate() {
    const POINTS: usize = 6_000;
    const IN_FLIGHT: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    broker.create_topic("slow", 4).unwrap();
    let (input, _) = simulate(dir.path(), 10, POINTS, 5);
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Everything is in the topic before the run: the source could read it all at once.
    crate::kafka::produce(&crate::kafka::producer(&bs), "slow", &lines, 0.0);

    let mut source = egizml::sources::kafka::KafkaSourceConfig::new(&bs, "slow");
    source.group_id = "slow-sink".into();
    source.stop_after_idle_s = Some(3.0);
    let opts = RunOptions {
        workers: 1,
        emit_scores: true,
        max_in_flight: IN_FLIGHT,
        ..RunOptions::default()
    };
    let flow = Arc::clone(&opts.flow);
    // How far the source is ahead of the sink: records it has read.
    let read = Arc::clone(&opts.flow);
    let sink = SlowSink::new(Duration::from_millis(3), move || {
        read.read.load(Ordering::SeqCst)
    });
    let progress = sink.progress();
    let (cfg, rules) = egizml::commands::load_dataflow(None).unwrap();
    let report = pipeline::run(cfg, rules, Input::Kafka(source), Box::new(sink), opts).unwrap();
    assert_eq!(report.counters.points, POINTS as u64);
    assert_eq!(
        progress.written.load(Ordering::SeqCst),
        POINTS as u64,
        "nothing lost"
    );
    assert_eq!(flow.read.load(Ordering::SeqCst), POINTS as u64);
    let ahead = progress.max_ahead.load(Ordering::SeqCst);
    assert!(
        ahead <= IN_FLIGHT as u64,
        "the source read {ahead} records ahead of the sink (bound {IN_FLIGHT})"
    );
    assert!(
        ahead >= IN_FLIGHT as u64 / 2,
        "the bound, not the source, limited reading: {ahead}"
    );
}
