//! Backpressure from a slow sink to a Kafka source: the source reads at the sink's rate and what is
//! in flight stays bounded (counts, not wall time). The live-channel case is a unit test of
//! `pipeline::run` (src/pipeline/tests.rs).

use crate::common::*;
use egizml::pipeline::{self, Input, Output, OutputSink, RunOptions};
use egizml::testkit::Tansu;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Takes `delay` per write; at each write, records how far the source's reads are ahead of the
/// score lines written (one per reading).
struct SlowSink {
    delay: Duration,
    flow: Arc<pipeline::FlowCounters>,
    written: Arc<AtomicU64>,
    max_ahead: Arc<AtomicU64>,
}

impl OutputSink for SlowSink {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        let ahead = self
            .flow
            .read
            .load(Ordering::SeqCst)
            .saturating_sub(self.written.load(Ordering::SeqCst));
        self.max_ahead.fetch_max(ahead, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let scores = outputs
            .iter()
            .filter(|(_, o)| matches!(o, Output::Score(_)))
            .count();
        self.written.fetch_add(scores as u64, Ordering::SeqCst);
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

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
    let written = Arc::new(AtomicU64::new(0));
    let max_ahead = Arc::new(AtomicU64::new(0));
    let sink = SlowSink {
        delay: Duration::from_millis(3),
        flow: Arc::clone(&opts.flow),
        written: Arc::clone(&written),
        max_ahead: Arc::clone(&max_ahead),
    };
    let flow = Arc::clone(&opts.flow);
    let (cfg, rules) = egizml::commands::load_dataflow(None).unwrap();
    let report = pipeline::run(cfg, rules, Input::Kafka(source), Box::new(sink), opts).unwrap();
    assert_eq!(report.counters.points, POINTS as u64);
    assert_eq!(
        written.load(Ordering::SeqCst),
        POINTS as u64,
        "nothing lost"
    );
    assert_eq!(flow.read.load(Ordering::SeqCst), POINTS as u64);
    let ahead = max_ahead.load(Ordering::SeqCst);
    assert!(
        ahead <= IN_FLIGHT as u64,
        "the source read {ahead} records ahead of the sink (bound {IN_FLIGHT})"
    );
    assert!(
        ahead >= IN_FLIGHT as u64 / 2,
        "the bound, not the source, limited reading: {ahead}"
    );
}
