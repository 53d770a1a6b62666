//! `egizml bench`: throughput and latency of the full pipeline on a generated workload, from one of
//! three sources:
//!
//! - `file` (default): simulator telemetry serialised to JSONL in memory (or `--input`), read by the
//!   workers like a replayed file (each decodes its own things' lines): decoding, every detector and
//!   the alert policy, but no disk I/O;
//! - `live`: the simulator on its own thread pushing readings through a bounded channel into worker 0,
//!   the path of `egizml run` with a simulator source (no input held in memory: the scale bench);
//! - `kafka`: simulator telemetry produced to a fresh topic on `--brokers` while the Kafka source (the
//!   code path of `egizml run` with a Kafka source) consumes it; `--mock-cluster` runs librdkafka's
//!   mock cluster (an in-memory Kafka-protocol broker) in this process instead of `--brokers`.
//!
//! Latencies are measured on one monotonic clock, the process's (`pipeline::clock_ns`): the bench
//! produces and consumes in the same process. The summary's `latency_clock` says what each figure spans.

use super::load_dataflow;
use crate::event::Origin;
use crate::pipeline::{self, clock_ns, Input, Output, OutputSink, RunOptions, RunReport};
use crate::sources::kafka::KafkaSourceConfig;
use crate::sources::simulator::{write_jsonl, FaultKind, Simulator, SimulatorConfig};
use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the bench's readings come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchSource {
    /// JSONL in memory (or `--input`), read by the workers like a replayed file.
    #[default]
    File,
    /// The simulator on its own thread, through a bounded channel (the `run` simulator source).
    Live,
    /// A fresh Kafka topic on `--brokers`, filled by the bench while the Kafka source consumes it.
    Kafka,
}

/// Arguments of `egizml bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Readings in the workload (ignored with `--duration`).
    #[arg(long, default_value_t = 1_000_000)]
    pub points: usize,
    /// Things the readings are spread over (round-robin), up to millions.
    #[arg(long, default_value_t = 1_000)]
    pub things: usize,
    /// Timely workers (default: the machine's cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Dataflow file (default: the embedded default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replay this JSONL file instead of generating a workload (`--source file` only).
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BenchSource::File)]
    pub source: BenchSource,
    /// Readings per second offered to the pipeline (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of load at `--rate`: the workload is then rate x duration readings.
    #[arg(long, requires = "rate")]
    pub duration: Option<f64>,
    /// Fault mix: expected fault episodes per thing per 1,000 readings.
    #[arg(long, default_value_t = 2.0)]
    pub faults: f64,
    /// Fault mix: the kinds injected, comma-separated (default: every kind), e.g.
    /// `voltage_spike,phase_imbalance`.
    #[arg(long, value_delimiter = ',')]
    pub fault_kinds: Vec<FaultKind>,
    /// Simulator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Records a live or Kafka source may have in flight per worker (backpressure bound; also the live
    /// source's channel).
    #[arg(long, default_value_t = pipeline::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Kafka bootstrap servers (`--source kafka`).
    #[arg(long, conflicts_with = "mock_cluster")]
    pub brokers: Option<String>,
    /// `--source kafka` against librdkafka's mock cluster (one in-memory broker, started in this
    /// process on a free 127.0.0.1 port; clients still speak the Kafka protocol over TCP) instead of
    /// `--brokers`: what the pipeline does with a broker that answers fetches as soon as data is there.
    /// It keeps only a short log per partition, so use it with `--rate`: a consumer that falls far
    /// behind gets "offset out of range" and the bench stops for lack of progress.
    #[arg(long)]
    pub mock_cluster: bool,
    /// Kafka topic to create and fill (default: `egizml-bench-<unix ms>`); it must not exist.
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The bench producer's `linger.ms` (batching delay before a produce request).
    #[arg(long, default_value_t = 5.0)]
    pub linger_ms: f64,
    /// The consumers' `fetch.wait.max.ms`: how long the broker may hold a fetch with no new data
    /// (librdkafka's default, 500, shows up whole in the latency with brokers that hold a fetch
    /// that long).
    #[arg(long, default_value_t = 1)]
    pub fetch_wait_ms: u64,
    /// Seconds to wait after the warm-up readings were consumed, before the timed load (lets a
    /// consumer group that forms in two rebalances settle).
    #[arg(long, default_value_t = 1.0)]
    pub settle_s: f64,
    /// Extra librdkafka consumer property `KEY=VALUE` (repeatable).
    #[arg(long = "consumer-property", value_parser = parse_property)]
    pub consumer_properties: Vec<(String, String)>,
    /// `--source kafka`: also produce the alerts to a fresh topic (`<topic>-alerts`, `--partitions`)
    /// through the Kafka sink of `egizml run`, and time each alert until a consumer of that topic
    /// receives it (`kafka.event_to_alert_consumed_us`); `event_to_alert_us` then ends at the
    /// broker's acknowledgement of the alert.
    #[arg(long)]
    pub kafka_sink: bool,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            points: 1_000_000,
            things: 1_000,
            workers: None,
            config: None,
            input: None,
            source: BenchSource::File,
            rate: None,
            duration: None,
            faults: 2.0,
            fault_kinds: Vec::new(),
            seed: 42,
            max_in_flight: pipeline::DEFAULT_MAX_IN_FLIGHT,
            brokers: None,
            mock_cluster: false,
            topic: None,
            partitions: 4,
            linger_ms: 5.0,
            fetch_wait_ms: 1,
            settle_s: 1.0,
            consumer_properties: Vec::new(),
            kafka_sink: false,
        }
    }
}

/// Percentiles of one latency histogram, microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Percentiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Memory the run's per-thing state took.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryUse {
    /// How it was measured.
    pub method: String,
    /// `VmRSS` before the run, with the workload (or the load generator) already in memory.
    pub rss_before_bytes: u64,
    /// `VmRSS` once every reading was processed, every worker still holding its per-thing state.
    pub rss_end_bytes: u64,
    /// Things the workers held state for at the end.
    pub things: u64,
    /// (end - before) / things.
    pub bytes_per_thing: f64,
}

/// What the Kafka bench produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KafkaBench {
    /// The broker: `--brokers`' bootstrap servers, or `mock cluster` (`--mock-cluster`).
    #[serde(default)]
    pub broker: String,
    pub topic: String,
    pub partitions: i32,
    /// Readings the broker acknowledged.
    pub produced: u64,
    /// Readings per second the producer achieved.
    pub produce_per_sec: f64,
    /// Per reading: the bench producer's send() to its delivery report (producer batching, broker
    /// write and acknowledgement).
    pub send_to_ack_us: Percentiles,
    /// Alerts whose reading's produce instant was unknown (no delivery report): not in
    /// `event_to_alert_us`.
    pub unmatched_alerts: u64,
    /// `--kafka-sink`: the alerts topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_topic: Option<String>,
    /// `--kafka-sink`: alerts a consumer of the alerts topic received.
    #[serde(default)]
    pub alerts_consumed: u64,
    /// `--kafka-sink`: per alert, the bench producer's send() of its reading to a consumer of the
    /// alerts topic receiving the alert (the whole way, as a downstream consumer sees it).
    #[serde(default)]
    pub event_to_alert_consumed_us: Percentiles,
}

/// The last stdout line of `bench` (a contract, see DESIGN.md: the first seven fields are the
/// original ones, the rest were added later and are optional when read back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchSummary {
    pub points: u64,
    pub points_per_sec: f64,
    /// Ingest to scored, per reading (see `latency_clock`).
    pub p50_us: f64,
    pub p99_us: f64,
    pub alerts: u64,
    pub workers: usize,
    pub elapsed_s: f64,
    #[serde(default)]
    pub source: BenchSource,
    #[serde(default)]
    pub things: usize,
    /// Offered readings per second (absent: as fast as possible).
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub malformed: u64,
    /// What the latency figures span, and on which clock.
    #[serde(default)]
    pub latency_clock: String,
    /// Per reading: ingest to scored (includes waiting for the epoch to close).
    #[serde(default)]
    pub ingest_to_scored_us: Percentiles,
    /// Per record: the per-thing stage's processing time.
    #[serde(default)]
    pub processing_us: Percentiles,
    /// Per alert: ingest of its reading to the sink's flush.
    #[serde(default)]
    pub ingest_to_alert_us: Percentiles,
    /// Per alert: the event (Kafka: the bench producer's `send` of the reading; other sources: its
    /// ingest) to the sink's flush.
    #[serde(default)]
    pub event_to_alert_us: Percentiles,
    #[serde(default)]
    pub memory: Option<MemoryUse>,
    #[serde(default)]
    pub kafka: Option<KafkaBench>,
}

/// Counts outputs and drops them.
struct Discard;

impl OutputSink for Discard {
    fn write(&mut self, _outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Remembers when each alert's Kafka input offset became durable: when `inner` (if any) acknowledged
/// it, else when it was written.
struct AlertClock {
    inner: Option<Box<dyn OutputSink>>,
    unflushed: Vec<(i32, i64)>,
    /// Flushes started: the inner sink's ticket and the alerts written before it.
    flushing: std::collections::VecDeque<(u64, Vec<(i32, i64)>)>,
    flushed: Arc<Mutex<Vec<(i32, i64, u64)>>>,
    /// Alerts written.
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl AlertClock {
    fn durable(&mut self, alerts: Vec<(i32, i64)>) {
        if !alerts.is_empty() {
            let now = clock_ns();
            let mut f = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
            f.extend(alerts.into_iter().map(|(p, o)| (p, o, now)));
        }
    }
}

impl OutputSink for AlertClock {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        for (_, o) in outputs {
            if let Output::Alert(a) = o {
                self.written.fetch_add(1, Ordering::Relaxed);
                if let Origin::Kafka {
                    partition, offset, ..
                } = a.input_offsets
                {
                    self.unflushed.push((partition, offset));
                }
            }
        }
        match self.inner.as_mut() {
            Some(inner) => inner.write(outputs),
            None => Ok(()),
        }
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(inner) = self.inner.as_mut() {
            inner.flush()?;
        }
        let mut alerts: Vec<_> = self.flushing.drain(..).flat_map(|(_, a)| a).collect();
        alerts.append(&mut self.unflushed);
        self.durable(alerts);
        Ok(())
    }
    fn flush_start(&mut self) -> anyhow::Result<u64> {
        let Some(inner) = self.inner.as_mut() else {
            self.flush()?;
            return Ok(0);
        };
        let ticket = inner.flush_start()?;
        self.flushing
            .push_back((ticket, std::mem::take(&mut self.unflushed)));
        Ok(ticket)
    }
    fn flushed(&mut self) -> anyhow::Result<u64> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(u64::MAX);
        };
        let done = inner.flushed()?;
        while self.flushing.front().is_some_and(|(t, _)| *t <= done) {
            let (_, alerts) = self.flushing.pop_front().expect("front");
            self.durable(alerts);
        }
        Ok(done)
    }
}

/// Consumes the alerts topic from its start until `stop`, then until `expected` alerts arrived (at
/// most 10 s more): per alert, its reading's partition and offset and the instant it was received.
fn consume_alerts(
    brokers: &str,
    topic: &str,
    fetch_wait_ms: u64,
    stop: &AtomicBool,
    expected: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<Vec<(i32, i64, u64)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-bench-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()
        .context("cannot create the alerts consumer")?;
    consumer.subscribe(&[topic])?;
    let mut received = Vec::new();
    let mut deadline = None;
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(1)) {
            let now = clock_ns();
            let m = m.with_context(|| format!("kafka topic {topic}"))?;
            let alert: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())
                .context("an alert that is not JSON")?;
            let at = &alert["input_offsets"];
            if let (Some(p), Some(o)) = (at["partition"].as_i64(), at["offset"].as_i64()) {
                received.push((p as i32, o, now));
            }
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
            if received.len() as u64 >= expected.load(Ordering::SeqCst) || Instant::now() > deadline
            {
                return Ok(received);
            }
        }
    }
}

fn sim_config(args: &BenchArgs) -> SimulatorConfig {
    SimulatorConfig {
        things: args.things,
        seed: args.seed,
        faults_per_1000: args.faults,
        fault_kinds: args.fault_kinds.clone(),
        ..SimulatorConfig::default()
    }
}

fn check(args: &BenchArgs) -> anyhow::Result<usize> {
    anyhow::ensure!(args.things > 0, "--things must be at least 1");
    anyhow::ensure!(
        args.faults.is_finite() && args.faults >= 0.0,
        "--faults must be >= 0"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be > 0");
    }
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be >= 1");
    let points = match (args.duration, args.rate) {
        (Some(d), Some(rate)) => {
            anyhow::ensure!(d.is_finite() && d > 0.0, "--duration must be > 0");
            (rate * d).round() as usize
        }
        (Some(_), None) => anyhow::bail!("--duration needs --rate"),
        _ => args.points,
    };
    anyhow::ensure!(points > 0, "the workload has no readings (--points)");
    if args.input.is_some() {
        anyhow::ensure!(
            args.source == BenchSource::File,
            "--input needs --source file"
        );
    }
    if args.source == BenchSource::Kafka {
        anyhow::ensure!(
            args.brokers.is_some() != args.mock_cluster,
            "--source kafka needs --brokers or --mock-cluster (one of them)"
        );
        anyhow::ensure!(args.partitions >= 1, "--partitions must be >= 1");
        anyhow::ensure!(
            args.linger_ms.is_finite() && args.linger_ms >= 0.0,
            "--linger-ms must be >= 0"
        );
        anyhow::ensure!(
            args.settle_s.is_finite() && args.settle_s >= 0.0,
            "--settle-s must be >= 0"
        );
    } else {
        anyhow::ensure!(
            args.brokers.is_none() && args.topic.is_none() && !args.mock_cluster,
            "--brokers, --mock-cluster and --topic need --source kafka"
        );
    }
    Ok(points)
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<BenchSummary> {
    let points = check(args)?;
    let (cfg, rules) = load_dataflow(args.config.as_deref())?;
    let workers = args.workers.unwrap_or_else(super::default_workers);
    anyhow::ensure!(workers >= 1, "--workers must be >= 1");
    let opts = RunOptions {
        workers,
        max_in_flight: args.max_in_flight,
        ..RunOptions::default()
    };
    let run = match args.source {
        BenchSource::File => {
            let data: Arc<dyn AsRef<[u8]> + Send + Sync> = match &args.input {
                Some(path) => crate::sources::file::open(path)?,
                None => {
                    let mut buf = Vec::with_capacity(points * 340);
                    write_jsonl(sim_config(args), points, &mut buf)?;
                    Arc::new(buf)
                }
            };
            let input = match args.rate {
                Some(rate) => Input::PacedLines(data, rate),
                None => Input::Lines(data),
            };
            let rss_before = pipeline::rss_bytes();
            let report = pipeline::run(cfg, rules, input, Box::new(Discard), opts)?;
            Measured::in_process(report, rss_before)
        }
        BenchSource::Live => {
            let sim = Simulator::new(sim_config(args));
            // The channel holds readings in flight too: bounded like the dataflow, so a memory
            // measurement with a small `--max-in-flight` is not dominated by queued readings.
            let (tx, rx) = std::sync::mpsc::sync_channel(args.max_in_flight);
            let rss_before = pipeline::rss_bytes();
            let rate = args.rate;
            let producer = std::thread::spawn(move || {
                let mut sim = sim;
                let t0 = Instant::now();
                let mut sent = 0usize;
                while sent < points {
                    let due = rate.map_or(points, |r| {
                        ((t0.elapsed().as_secs_f64() * r) as usize).min(points)
                    });
                    while sent < due {
                        if tx.send(sim.next_point()).is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    if sent < points {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
            let report = pipeline::run(cfg, rules, Input::Live(rx), Box::new(Discard), opts)?;
            let _ = producer.join();
            Measured::in_process(report, rss_before)
        }
        BenchSource::Kafka => bench_kafka(args, points, cfg, rules, opts)?,
    };
    Ok(summarise(args, workers, run))
}

/// A run and what the bench measured around it.
struct Measured {
    report: RunReport,
    /// Seconds the throughput is computed over, and the readings processed in them.
    elapsed_s: f64,
    timed_points: u64,
    rss_before: Option<u64>,
    event_to_alert: Option<hdrhistogram::Histogram<u64>>,
    kafka: Option<KafkaBench>,
}

impl Measured {
    /// A run fed from inside the process (file or live source): every reading is timed, and event
    /// time is ingest time.
    fn in_process(report: RunReport, rss_before: Option<u64>) -> Measured {
        Measured {
            elapsed_s: report.elapsed_s,
            timed_points: report.counters.points,
            report,
            rss_before,
            event_to_alert: None,
            kafka: None,
        }
    }
}

fn summarise(args: &BenchArgs, workers: usize, m: Measured) -> BenchSummary {
    let report = &m.report;
    let points = report.counters.points;
    let latency = report.latency_us.clone().unwrap_or_default();
    let h = report.histograms.as_ref();
    let pct = |f: fn(&pipeline::RunHistograms) -> &hdrhistogram::Histogram<u64>| {
        h.map(|h| Percentiles::of(f(h))).unwrap_or_default()
    };
    let ingest_to_alert = pct(|h| &h.ingest_to_alert);
    let (event_to_alert, clock) = match &m.event_to_alert {
        Some(e) => (
            Percentiles::of(e),
            "process monotonic clock (pipeline::clock_ns); event = the bench producer's send() of \
             the reading to Kafka; ingest = the Kafka source decoding the message; scored = the \
             per-thing stage done with the reading; alert = the sink's flush returning",
        ),
        None => (
            ingest_to_alert.clone(),
            "process monotonic clock (pipeline::clock_ns); event = ingest = the reading entering the \
             dataflow (decoded from the file, or taken from the live channel); scored = the \
             per-thing stage done with the reading; alert = the sink's flush returning",
        ),
    };
    let memory = match (m.rss_before, report.rss_end_bytes) {
        (Some(before), Some(end)) if report.things > 0 => Some(MemoryUse {
            method:
                "VmRSS growth (/proc/self/status) from before the run to the end of processing, \
                     divided by things: per-thing state plus allocator slack and in-flight buffers \
                     not yet returned to the OS (an upper bound)"
                    .into(),
            rss_before_bytes: before,
            rss_end_bytes: end,
            things: report.things as u64,
            bytes_per_thing: end.saturating_sub(before) as f64 / report.things as f64,
        }),
        _ => None,
    };
    BenchSummary {
        points,
        points_per_sec: m.timed_points as f64 / m.elapsed_s.max(1e-9),
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        alerts: report.counters.alerts,
        workers,
        elapsed_s: m.elapsed_s,
        source: args.source,
        things: args.things,
        rate: args.rate,
        malformed: report.counters.malformed_total(),
        latency_clock: clock.split_whitespace().collect::<Vec<_>>().join(" "),
        ingest_to_scored_us: pct(|h| &h.ingest_to_scored),
        processing_us: pct(|h| &h.processing),
        ingest_to_alert_us: ingest_to_alert,
        event_to_alert_us: event_to_alert,
        memory,
        kafka: m.kafka,
    }
}

/// The bench producer's delivery reports: per partition, the send instant (clock_ns) of each offset.
struct SendClock {
    sent_ns: Mutex<Vec<Vec<u64>>>,
    /// Send to delivery report (the broker's acknowledgement seen by the producer).
    acked_ns: Mutex<hdrhistogram::Histogram<u64>>,
    acked: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl ClientContext for SendClock {}
impl ProducerContext for SendClock {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) if sent_ns == 0 => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(m) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                let took = clock_ns().saturating_sub(sent_ns as u64).max(1);
                self.acked_ns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(took);
                let (p, o) = (m.partition(), m.offset());
                if p >= 0 && o >= 0 {
                    let mut s = self.sent_ns.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() <= p as usize {
                        s.resize_with(p as usize + 1, Vec::new);
                    }
                    let v = &mut s[p as usize];
                    if v.len() <= o as usize {
                        v.resize(o as usize + 1, 0);
                    }
                    v[o as usize] = sent_ns as u64;
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create the Kafka admin client")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .with_context(|| format!("kafka {brokers}: cannot create topic {topic}"))?;
    for r in results {
        if let Err((t, e)) = r {
            anyhow::bail!(
                "kafka {brokers}: cannot create topic {t}: {e} (the bench needs a fresh topic)"
            );
        }
    }
    Ok(())
}

/// Waits until `flow.read` reaches `n` (or the pipeline thread ended).
fn wait_for(
    what: &str,
    counter: &std::sync::atomic::AtomicU64,
    n: u64,
    done: &AtomicBool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut last = counter.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while counter.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            !done.load(Ordering::SeqCst),
            "the pipeline stopped before {what} ({} of {n})",
            counter.load(Ordering::Relaxed)
        );
        let now = counter.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        anyhow::ensure!(
            last_change.elapsed() < timeout,
            "no progress for {timeout:?} waiting for {what} ({now} of {n})"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Readings encoded as the Kafka bench sends them (flat JSON, keyed by thing), in one buffer.
struct Encoded {
    bytes: Vec<u8>,
    /// Per reading: where its key and its payload end in `bytes` (each starts where the previous
    /// one ended).
    ends: Vec<(usize, usize)>,
}

impl Encoded {
    fn simulate(sim: &mut Simulator, n: usize) -> Encoded {
        let mut e = Encoded {
            bytes: Vec::with_capacity(n * 320),
            ends: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let p = sim.next_point();
            e.bytes.extend_from_slice(p.thing_id.as_bytes());
            let key_end = e.bytes.len();
            super::loadgen::encode_into(&p, super::loadgen::Format::Flat, &mut e.bytes);
            e.ends.push((key_end, e.bytes.len()));
        }
        e
    }

    /// Reading `i`'s key (its thing id) and payload.
    fn get(&self, i: usize) -> (&str, &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
        let (key_end, end) = self.ends[i];
        // The key was copied from a `str`, whole.
        let key = std::str::from_utf8(&self.bytes[start..key_end]).expect("a thing id");
        (key, &self.bytes[key_end..end])
    }
}

fn bench_kafka(
    args: &BenchArgs,
    points: usize,
    cfg: Arc<crate::config::DataflowConfig>,
    rules: crate::rules::RulesHandle,
    opts: RunOptions,
) -> anyhow::Result<Measured> {
    // Dropped (the mock broker stopped) when the bench returns, after every client is gone.
    let mock = if args.mock_cluster {
        Some(MockCluster::new(1).context("cannot start librdkafka's mock cluster")?)
    } else {
        None
    };
    let brokers = match &mock {
        Some(cluster) => cluster.bootstrap_servers(),
        None => args.brokers.clone().expect("checked"),
    };
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("egizml-bench-{unix_ms}"));
    // The mock cluster does not serve the admin API's CreateTopics: it creates topics itself.
    let create = |topic: &str| match &mock {
        Some(cluster) => cluster
            .create_topic(topic, args.partitions, 1)
            .with_context(|| format!("mock cluster: cannot create topic {topic}")),
        None => create_topic(&brokers, topic, args.partitions),
    };
    create(&topic)?;
    // The timed readings are simulated and encoded before the clock starts, so the 2 cores spend the
    // run on the pipeline, the producer's client and the broker, not on the load generator
    // (simulating and JSON-encoding took about a sixth of the process's CPU at 50,000/s).
    let workload = Encoded::simulate(&mut Simulator::new(sim_config(args)), points);
    let producer: ThreadedProducer<SendClock> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", args.linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(SendClock {
            sent_ns: Mutex::default(),
            acked_ns: Mutex::new(pipeline::new_histogram()),
            acked: Default::default(),
            failed: Default::default(),
        })
        .context("cannot create the Kafka producer")?;
    let mut source = KafkaSourceConfig::new(&brokers, &topic);
    source.group_id = format!("{topic}-bench");
    source
        .properties
        .insert("fetch.wait.max.ms".into(), args.fetch_wait_ms.to_string());
    for (k, v) in &args.consumer_properties {
        source.properties.insert(k.clone(), v.clone());
    }
    let flow = Arc::clone(&opts.flow);
    let stop = Arc::clone(&opts.stop);
    let flushed: Arc<Mutex<Vec<(i32, i64, u64)>>> = Arc::default();
    // `--kafka-sink`: alerts through the Kafka sink to a fresh topic, read back by a consumer.
    let alerts_topic = args.kafka_sink.then(|| format!("{topic}-alerts"));
    let inner: Option<Box<dyn OutputSink>> = match &alerts_topic {
        Some(alerts) => {
            create(alerts)?;
            let cfg = crate::sinks::kafka::KafkaSinkConfig::new(&brokers, alerts);
            Some(Box::new(crate::sinks::kafka::KafkaSink::new(&cfg)?))
        }
        None => None,
    };
    let alerts_written: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    let sink = AlertClock {
        inner,
        unflushed: Vec::new(),
        flushing: Default::default(),
        flushed: Arc::clone(&flushed),
        written: Arc::clone(&alerts_written),
    };
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = alerts_topic.clone().map(|alerts| {
        let (brokers, stop, expected) = (
            brokers.clone(),
            Arc::clone(&reader_stop),
            Arc::clone(&alerts_written),
        );
        let fetch_wait_ms = args.fetch_wait_ms;
        std::thread::spawn(move || {
            consume_alerts(&brokers, &alerts, fetch_wait_ms, &stop, &expected)
        })
    });
    let rss_before = pipeline::rss_bytes();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let pipeline = std::thread::spawn(move || {
        let r = pipeline::run(cfg, rules, Input::Kafka(source), Box::new(sink), opts);
        done2.store(true, Ordering::SeqCst);
        r
    });
    // Warm-up readings (sent to a given partition) carry no send instant: they are not timed.
    let send = |key: &str, payload: &[u8], partition: Option<i32>| -> anyhow::Result<()> {
        let sent_ns = if partition.is_some() { 0 } else { clock_ns() };
        let mut record = BaseRecord::with_opaque_to(&topic, sent_ns as usize)
            .key(key)
            .payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, r)) => {
                    anyhow::ensure!(
                        e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "kafka produce: {e}"
                    );
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    };
    let result = (|| -> anyhow::Result<(Instant, Instant, u64)> {
        // Warm-up: one reading of its own thing per partition, waited for, so the consumer group has
        // formed (a rebalance takes seconds) and every partition is being fetched before the clock
        // starts; then `settle` for a late second rebalance.
        let mut warm = Simulator::new(SimulatorConfig {
            things: 1,
            ..SimulatorConfig::default()
        });
        let mut buf = Vec::with_capacity(512);
        for partition in 0..args.partitions {
            let mut p = warm.next_point();
            p.thing_id = crate::event::Name::from(format!("bench-warmup-{partition}").as_str());
            buf.clear();
            super::loadgen::encode_into(&p, super::loadgen::Format::Flat, &mut buf);
            send(&p.thing_id, &buf, Some(partition))?;
        }
        let warm_up = args.partitions as u64;
        wait_for(
            "the warm-up readings were consumed",
            &flow.read,
            warm_up,
            &done,
            Duration::from_secs(120),
        )?;
        std::thread::sleep(Duration::from_secs_f64(args.settle_s));
        let processed0 = flow.processed.load(Ordering::SeqCst);
        let t0 = Instant::now();
        let mut sent = 0usize;
        while sent < points {
            let due = args.rate.map_or(points, |r| {
                (1 + (t0.elapsed().as_secs_f64() * r) as usize).min(points)
            });
            while sent < due {
                let (key, payload) = workload.get(sent);
                send(key, payload, None)?;
                sent += 1;
            }
            if sent < points {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let produced_at = Instant::now();
        producer
            .flush(Duration::from_secs(60))
            .context("kafka: readings still undelivered after 60 s")?;
        wait_for(
            "every reading was processed",
            &flow.processed,
            points as u64 + warm_up,
            &done,
            Duration::from_secs(60),
        )?;
        Ok((
            t0,
            produced_at,
            flow.processed.load(Ordering::SeqCst) - processed0,
        ))
    })();
    let end = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let joined = pipeline.join();
    reader_stop.store(true, Ordering::SeqCst);
    let report = joined.map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    let consumed = match reader {
        Some(r) => Some(
            r.join()
                .map_err(|_| anyhow::anyhow!("the alerts consumer panicked"))??,
        ),
        None => None,
    };
    // Readings processed from the first timed send on (throughput).
    let (t0, produced_at, timed) = result?;
    let ctx = producer.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "kafka: {failed} readings were not delivered");
    let sent_ns = ctx.sent_ns.lock().unwrap_or_else(|e| e.into_inner());
    let mut e2a = pipeline::new_histogram();
    let mut unmatched = 0;
    for (p, o, ns) in flushed.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        match sent_ns
            .get(*p as usize)
            .and_then(|v| v.get(*o as usize))
            .filter(|s| **s > 0)
        {
            Some(s) => e2a.saturating_record(ns.saturating_sub(*s).max(1)),
            None => unmatched += 1,
        }
    }
    let mut e2a_consumed = pipeline::new_histogram();
    for (p, o, ns) in consumed.iter().flatten() {
        if let Some(s) = sent_ns
            .get(*p as usize)
            .and_then(|v| v.get(*o as usize))
            .filter(|s| **s > 0)
        {
            e2a_consumed.saturating_record(ns.saturating_sub(*s).max(1));
        }
    }
    let send_to_ack = {
        let h = ctx.acked_ns.lock().unwrap_or_else(|e| e.into_inner());
        Percentiles::of(&h)
    };
    let produced = ctx.acked.load(Ordering::Relaxed);
    drop(sent_ns);
    let elapsed_s = end.duration_since(t0).as_secs_f64();
    let produce_s = produced_at.duration_since(t0).as_secs_f64();
    Ok(Measured {
        report,
        elapsed_s,
        timed_points: timed,
        // The mock broker's log lives in this process: the RSS growth would not be the pipeline's.
        rss_before: rss_before.filter(|_| mock.is_none()),
        event_to_alert: Some(e2a),
        kafka: Some(KafkaBench {
            broker: if mock.is_some() {
                "mock cluster".into()
            } else {
                brokers.clone()
            },
            topic,
            partitions: args.partitions,
            produced,
            produce_per_sec: points as f64 / produce_s.max(1e-9),
            send_to_ack_us: send_to_ack,
            unmatched_alerts: unmatched,
            alerts_topic,
            alerts_consumed: consumed.as_ref().map_or(0, |c| c.len() as u64),
            event_to_alert_consumed_us: Percentiles::of(&e2a_consumed),
        }),
    })
}

/// The readable lines `egizml bench` prints before its JSON summary.
pub fn describe(s: &BenchSummary) -> Vec<String> {
    let p = |name: &str, x: &Percentiles| {
        format!(
            "  {name:<17} p50 {:>10.1} us  p99 {:>10.1} us  p99.9 {:>10.1} us  max {:>10.1} us  ({} samples)",
            x.p50_us, x.p99_us, x.p999_us, x.max_us, x.count
        )
    };
    let mut lines = vec![
        format!(
            "{} readings ({} things, source {:?}) on {} workers in {:.3} s: {:.0} readings/s, {} alerts",
            s.points, s.things, s.source, s.workers, s.elapsed_s, s.points_per_sec, s.alerts
        ),
        p("ingest->scored", &s.ingest_to_scored_us),
        p("processing", &s.processing_us),
        p("ingest->alert", &s.ingest_to_alert_us),
        p("event->alert", &s.event_to_alert_us),
        format!("  clock: {}", s.latency_clock),
    ];
    if let Some(m) = &s.memory {
        lines.push(format!(
            "  memory: {:.0} bytes per thing ({} things; VmRSS {:.1} MB -> {:.1} MB)",
            m.bytes_per_thing,
            m.things,
            m.rss_before_bytes as f64 / 1e6,
            m.rss_end_bytes as f64 / 1e6
        ));
    }
    if let Some(k) = &s.kafka {
        lines.push(format!(
            "  kafka ({}): topic {} ({} partitions), {} produced at {:.0}/s",
            k.broker, k.topic, k.partitions, k.produced, k.produce_per_sec
        ));
        lines.push(p("send->ack", &k.send_to_ack_us));
        if let Some(alerts) = &k.alerts_topic {
            lines.push(format!(
                "  alerts topic {alerts}: {} alerts consumed",
                k.alerts_consumed
            ));
            lines.push(p("event->alert consumed", &k.event_to_alert_consumed_us));
        }
    }
    lines
}
