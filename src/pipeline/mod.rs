//! The timely dataflow: sources -> decode -> exchange(thing) -> per-thing engine -> ordered sink.
//! A file's lines skip the exchange: every worker walks every line and decodes those of its own
//! things (see [`feed_lines`]).
//!
//! Timely timestamps are *ingest epochs*, not event times: for a file, epoch k is the k-th chunk of
//! lines; for live sources, it is the millisecond since start. Each
//! worker's [`Engine`] processes an epoch only once the frontier has passed it, in input order (`seq`),
//! so every thing sees its readings in exactly the input order whatever the worker count, and the sink
//! on worker 0 writes outputs in the same order. Event time then drives everything inside the engine
//! (windows, lateness, dedup, rate limit, bursts), per thing. This is what makes a replay give the same
//! alerts as the live run, and 1 worker the same bytes as N.

pub mod engine;
mod wire;

use crate::config::DataflowConfig;
use crate::decode::{DeadLetter, Decoder};
use crate::event::{same_bytes, Name, Origin, Point};
use crate::rules::RulesHandle;
pub use engine::{Counters, Engine, Footprint, Output, Record};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Input as _, InputCapability, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

/// One epoch's outputs at the sink, with each one's input position.
type Outputs = Vec<(u64, Output)>;

/// Lines per epoch when replaying a file.
pub const CHUNK_LINES: usize = 16_384;

/// Nanoseconds on a process-wide monotonic clock (for ingest-to-alert latencies).
pub fn clock_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Where the dataflow's records come from.
pub enum Input {
    /// A JSONL document (a memory-mapped file or bytes in memory), read in chunks of [`CHUNK_LINES`]
    /// lines (the epochs); each worker decodes the lines of the things it owns.
    Lines(Arc<dyn AsRef<[u8]> + Send + Sync>),
    /// [`Input::Lines`] read at most this many lines per second (a file replayed at a live pace).
    PacedLines(Arc<dyn AsRef<[u8]> + Send + Sync>, f64),
    /// Points pushed by another thread (simulator, network sources); worker 0 receives them. The run
    /// ends when the sender hangs up or `stop` is set.
    Live(Receiver<Point>),
    /// Raw messages (flat or EgizCore JSON, one reading each) pushed by a network source's thread
    /// (MQTT, EgizCore WebSocket); worker 0 decodes them, and a malformed one becomes a dead letter
    /// like any other source's. The run ends when the sender hangs up or `stop` is set.
    Messages(Receiver<Vec<u8>>),
    /// A Kafka consumer group: the first worker of every process runs the process's one group member
    /// and its records are exchanged by thing to all workers of all processes; epoch = wall-clock
    /// millisecond; offsets are committed once the sink has acknowledged every epoch they were read
    /// in (see [`crate::sources::kafka`]). The run ends on `stop` or after the configured idle time.
    Kafka(crate::sources::kafka::KafkaSourceConfig),
}

/// Receives the dataflow's outputs on worker 0, in input order.
///
/// An epoch's input is acknowledged (Kafka offsets committed, a checkpoint completed) only once
/// everything the sink wrote for it is durable. [`flush`](Self::flush) waits for that. A sink that
/// learns it later by itself (a Kafka producer's delivery reports) also implements
/// [`flush_start`](Self::flush_start) and [`flushed`](Self::flushed): worker 0, which also reads the
/// source, then does not wait for a broker round trip after every epoch with outputs.
pub trait OutputSink: Send {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()>;
    /// Returns once everything written is durable, or fails.
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Starts making everything written so far durable and returns at once: the writes are durable
    /// when [`flushed`](Self::flushed) returns this ticket or a later one. The default flushes,
    /// and its ticket is done at once.
    fn flush_start(&mut self) -> anyhow::Result<u64> {
        self.flush()?;
        Ok(0)
    }
    /// The newest ticket whose writes (and all before them) are durable; an error once a write has
    /// failed.
    fn flushed(&mut self) -> anyhow::Result<u64> {
        Ok(u64::MAX)
    }
}

/// Records a live source or a process's Kafka consumer may have in the dataflow by default (see
/// [`RunOptions::max_in_flight`]).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 65_536;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    pub workers: usize,
    /// Emit a score line per reading.
    pub emit_scores: bool,
    /// Set to end a run early (SIGTERM): a live or Kafka source stops reading, a file stops at a
    /// chunk boundary; what was read is processed and reaches the sink before the run returns.
    pub stop: Arc<AtomicBool>,
    /// Run as one process of a timely cluster (unset: a single process). See docs/CLUSTER.md.
    pub cluster: Option<ClusterConfig>,
    /// Backpressure: records (readings and dead letters) a live source (on worker 0) or a process's
    /// Kafka consumer (on its first worker) may have in the dataflow, read but not yet acknowledged
    /// by the sink, before it stops reading. A slow sink then
    /// slows the source to its own rate and memory stays bounded. A file source is bounded by epochs
    /// instead ([`MAX_EPOCHS_IN_FLIGHT`] chunks of [`CHUNK_LINES`] lines).
    pub max_in_flight: usize,
    /// Live counters of the run (load tests, backpressure tests).
    pub flow: Arc<FlowCounters>,
    /// State checkpoints (live and Kafka sources): the state to start from and where new checkpoints
    /// go (see [`crate::checkpoint`]).
    pub checkpoint: Option<Arc<crate::checkpoint::Checkpointing>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            emit_scores: false,
            stop: Arc::new(AtomicBool::new(false)),
            cluster: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            flow: Arc::new(FlowCounters::default()),
            checkpoint: None,
        }
    }
}

/// This process's place in a multi-process run: every process runs the same dataflow with
/// `workers` threads; worker `w` of process `p` is global worker `p * workers + w`.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of processes (>= 1).
    pub processes: usize,
    /// This process, `0..processes`; process 0 hosts the sink.
    pub process: usize,
    /// `host:port` of every process, in process order (timely's hostfile).
    pub addresses: Vec<String>,
}

impl ClusterConfig {
    /// Reads a hostfile: one `host:port` per line (blank lines and `#` comments skipped), at least
    /// `processes` of them; the first `processes` are used.
    pub fn from_hostfile(
        path: &std::path::Path,
        processes: usize,
        process: usize,
    ) -> anyhow::Result<ClusterConfig> {
        let file = path.display();
        anyhow::ensure!(processes >= 1, "--processes: must be >= 1");
        anyhow::ensure!(
            process < processes,
            "--process-id: {process} is not below --processes {processes}"
        );
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{file}: cannot read the hostfile: {e}"))?;
        let mut addresses = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let ok = line
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            anyhow::ensure!(ok, "{file}:{}: expected host:port, got `{line}`", i + 1);
            addresses.push(line.to_string());
        }
        anyhow::ensure!(
            addresses.len() >= processes,
            "{file}: {} address(es) for {processes} processes (one host:port per line)",
            addresses.len()
        );
        addresses.truncate(processes);
        Ok(ClusterConfig {
            processes,
            process,
            addresses,
        })
    }
}

/// Counters a run updates while it runs, readable from other threads.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Records (readings and dead letters) the sources have handed to the dataflow.
    pub read: AtomicU64,
    /// Records the per-thing stage has processed (updated once per epoch and worker).
    pub processed: AtomicU64,
}

/// Latency histograms of a run, nanoseconds (HDR, 3 significant digits).
#[derive(Clone, Debug)]
pub struct RunHistograms {
    /// Per reading: ingest (decoded from a file line or Kafka message, or taken from a live
    /// source's channel) to scored by the per-thing stage. Includes waiting for the epoch to close.
    pub ingest_to_scored: hdrhistogram::Histogram<u64>,
    /// Per record: the per-thing stage's own processing time (detectors, policy, explanation).
    pub processing: hdrhistogram::Histogram<u64>,
    /// Per alert: ingest of the reading that caused it to the sink's flush returning (the alert
    /// acknowledged by every sink).
    pub ingest_to_alert: hdrhistogram::Histogram<u64>,
}

impl RunHistograms {
    fn new() -> Self {
        RunHistograms {
            ingest_to_scored: new_histogram(),
            processing: new_histogram(),
            ingest_to_alert: new_histogram(),
        }
    }

    fn add(&mut self, other: &RunHistograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.ingest_to_scored.add(&other.ingest_to_scored);
        let _ = self.processing.add(&other.processing);
        let _ = self.ingest_to_alert.add(&other.ingest_to_alert);
    }
}

/// 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// The process's resident set size (`VmRSS` of /proc/self/status), bytes; `None` where unavailable.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub counters: Counters,
    pub elapsed_s: f64,
    pub things: usize,
    /// Per-reading ingest-to-scored latency, microseconds.
    pub latency_us: Option<LatencySummary>,
    /// The latency histograms behind `latency_us`, and more.
    pub histograms: Option<RunHistograms>,
    /// `VmRSS` once every record has been processed, with every worker still holding its per-thing
    /// state (Linux), bytes.
    pub rss_end_bytes: Option<u64>,
    /// What state checkpointing did (when configured).
    pub checkpoint: Option<crate::checkpoint::Summary>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LatencySummary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

struct WorkerResult {
    counters: Counters,
    things: usize,
    histograms: RunHistograms,
    rss_end_bytes: Option<u64>,
}

/// Runs the dataflow to completion (end of file, or end of a live input).
pub fn run(
    cfg: Arc<DataflowConfig>,
    rules: RulesHandle,
    input: Input,
    sink: Box<dyn OutputSink>,
    opts: RunOptions,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    if let Some(rc) = &cfg.rul {
        let model = cfg.rul_model.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "dataflow {}: `rul` is set but its model is not loaded",
                cfg.name
            )
        })?;
        crate::rul::predict::RulTracker::new(model.clone(), rc.clone())
            .map_err(|e| anyhow::anyhow!("dataflow {}: rul: {e}", cfg.name))?;
    }
    let workers = opts.workers.max(1);
    let sink_error: Arc<Mutex<Option<anyhow::Error>>> = Arc::new(Mutex::new(None));
    // Set by the sink (worker 0) once its input has ended with every epoch written and flushed: the
    // shutdown checkpoint may then complete.
    let acked_at_end = Arc::new(AtomicU64::new(0));
    let kafka_resume = Arc::new(crate::sources::kafka::ResumePoints::default());
    let mut pace = None;
    let (lines, live, kafka) = match input {
        Input::Lines(data) => (Some(data), None, None),
        Input::PacedLines(data, per_sec) => {
            pace = Some(per_sec).filter(|r| r.is_finite() && *r > 0.0);
            (Some(data), None, None)
        }
        Input::Live(rx) => (None, Some(LiveRx::Points(rx)), None),
        Input::Messages(rx) => (None, Some(LiveRx::Messages(rx)), None),
        Input::Kafka(cfg) => (None, None, Some(cfg)),
    };
    let sink: Box<dyn OutputSink> = if kafka.is_some() {
        Box::new(crate::sources::kafka::SkipReplayed::new(
            Arc::clone(&kafka_resume),
            sink,
        ))
    } else {
        sink
    };
    let sink = Arc::new(Mutex::new(Some(sink)));
    let ckpt = opts.checkpoint.clone();
    if ckpt.is_some() && lines.is_some() {
        anyhow::bail!(
            "state checkpoints need a live source (kafka, mqtt, egizcore, simulator), not a file"
        );
    }
    if ckpt.is_some() && opts.cluster.as_ref().is_some_and(|c| c.processes > 1) {
        anyhow::bail!("state checkpoints are not supported in a cluster run (--processes > 1)");
    }
    let epoch_origin = if ckpt.is_some() { wall_ms() } else { 0 };
    let restored = ckpt.as_ref().and_then(|c| c.take_restored());
    // Where each Kafka partition's state ends in the restored checkpoint: the consumers start there.
    let start_positions = restored
        .as_ref()
        .map(|r| r.manifest.offset_map())
        .unwrap_or_default();
    // Engines are built (and given their restored things, by the same routing as the exchange, so
    // any worker count can restore any checkpoint) before the workers start: a checkpoint that does
    // not fit fails the run before anything is read.
    let mut engines: Vec<Option<Engine>> = (0..workers)
        .map(|_| {
            Some(Engine::new(
                Arc::clone(&cfg),
                rules.clone(),
                opts.emit_scores,
            ))
        })
        .collect();
    if let Some(r) = restored {
        let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
        for (id, s) in r.things {
            per_worker[(thing_route(&id) % workers as u64) as usize].push((id, s));
        }
        for (engine, things) in engines.iter_mut().zip(per_worker) {
            if let Some(engine) = engine.as_mut() {
                engine
                    .restore(things, r.rules_hash)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", r.path.display()))?;
            }
        }
    }
    let engines = Arc::new(Mutex::new(engines));
    let kafka_idle = Arc::new(AtomicU64::new(0));
    // Shared by this process's workers only; in a cluster every process has its own (see
    // docs/CLUSTER.md): a live source runs in process 0, a file is read by every process.
    let live = Arc::new(Mutex::new(live));
    let file_stop = Arc::new(Mutex::new(FileStop::default()));
    let sink_error2 = Arc::clone(&sink_error);
    // Ingest instant of every reading that caused an alert not yet flushed by the sink, by `seq`.
    let alert_ingest: Arc<Mutex<rustc_hash::FxHashMap<u64, u64>>> = Arc::default();
    // Every worker of this process (not of the cluster) has processed everything; the end-of-run
    // memory sample is taken between the two waits.
    let finished = Arc::new(std::sync::Barrier::new(workers));
    let acked_end_sink = Arc::clone(&acked_at_end);
    let timely_config = match &opts.cluster {
        Some(c) if c.processes > 1 => {
            anyhow::ensure!(
                lines.is_some() || kafka.is_some(),
                "a cluster run (--processes > 1) reads a file or Kafka, not a live source"
            );
            timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: workers,
                    process: c.process,
                    addresses: c.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            }
        }
        _ => timely::Config::process(workers),
    };
    // Only Kafka records can be read twice (see `KafkaSeen`).
    let from_kafka = kafka.is_some();
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let mut input = InputHandleVec::<u64, Record>::new();
        // Records already on their thing's worker (a file's lines are routed before decoding):
        // they skip the exchange. Only the file source sends here; the others close it at once.
        let mut local_input = InputHandleVec::<u64, Record>::new();
        // The engine's output frontier (backpressure), and the sink's: the sink holds each epoch's
        // capability until that epoch's outputs are written and flushed, so every epoch below
        // `acked`'s frontier is acknowledged. Timely's progress tracking shows both frontiers to
        // every worker of every process.
        let probe = ProbeHandle::new();
        let acked = ProbeHandle::new();
        let engine = engines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index % workers)
            .and_then(Option::take)
            .unwrap_or_else(|| Engine::new(Arc::clone(&cfg), rules.clone(), opts.emit_scores));
        let engine = Rc::new(RefCell::new(engine));
        let ckpt = ckpt.clone();
        let histograms = Rc::new(RefCell::new(RunHistograms::new()));
        let my_sink = if index == 0 {
            sink.lock().expect("sink lock").take()
        } else {
            None
        };
        let sink_error = Arc::clone(&sink_error2);
        let feed_error = Arc::clone(&sink_error2);

        worker.dataflow::<u64, _, _>(|scope| {
            let engine = Rc::clone(&engine);
            let latency = Rc::clone(&histograms);
            let sink_histograms = Rc::clone(&histograms);
            let flow = Arc::clone(&opts.flow);
            let acked_end = Arc::clone(&acked_end_sink);
            let alert_ingest_stage = Arc::clone(&alert_ingest);
            let alert_ingest_sink = Arc::clone(&alert_ingest);
            let ckpt = ckpt.clone();
            // Two inputs: records exchanged to their thing's worker, and a file's readings already
            // on it (`local_input`), which take no exchange.
            let local = scope.input_from(&mut local_input);
            let scored = scope
                .input_from(&mut input)
                .binary_frontier(
                    local,
                    Exchange::new(|r: &Record| route(r)),
                    Pipeline,
                    "thing_state",
                    move |_cap, _info| {
                        let metrics = crate::metrics::global();
                        let mut flushed = MetricsFlush::default();
                        let mut stash: BTreeMap<u64, (Capability<u64>, Vec<Record>)> = BTreeMap::new();
                        // The last epoch's record count: a new epoch's vector starts that large, as
                        // epochs are alike (file chunks, Kafka polls), instead of growing by doubling
                        // over its batches and copying its records again at each step.
                        let mut epoch_hint = 0usize;
                        // The last processed epoch's vector, emptied, for the next epoch to fill.
                        let mut spare: Vec<Record> = Vec::new();
                        let mut out = Vec::new();
                        let mut seen = KafkaSeen::default();
                        // The next checkpoint boundary this worker's state has not been written for.
                        let mut ckpt_next = ckpt.as_ref().map(|c| c.writer.interval_ms());
                        // Writes the state for the newest boundary at or below `t` once `t` reaches
                        // the next one: every epoch below it is processed and none from it on.
                        let mut checkpoint = move |t: u64, engine: &Engine| {
                            if let (Some(c), Some(next)) = (ckpt.as_ref(), ckpt_next.as_mut()) {
                                if t >= *next {
                                    let boundary = c.writer.boundary_at_or_below(t);
                                    c.writer.write_engine(boundary, index, engine);
                                    *next = boundary + c.writer.interval_ms();
                                }
                            }
                        };
                        move |(input, frontier), (local, local_frontier), output| {
                            let port = output.output_index();
                            let mut receive = |cap: InputCapability<u64>, data: std::slice::IterMut<'_, Vec<Record>>| {
                                let Some(&time) = cap.least() else { return };
                                let entry = stash.entry(time).or_insert_with(|| {
                                    let cap = cap
                                        .retain_least(port)
                                        .expect("capability for a received time");
                                    let mut records = std::mem::take(&mut spare);
                                    records.reserve(epoch_hint);
                                    (cap, records)
                                });
                                for batch in data {
                                    if entry.1.is_empty() && entry.1.capacity() < batch.capacity() {
                                        std::mem::swap(&mut entry.1, batch);
                                    } else {
                                        entry.1.append(batch);
                                    }
                                }
                            };
                            input.for_each_stamp(&mut receive);
                            local.for_each_stamp(&mut receive);
                            while let Some(first) = stash.first_entry() {
                                if frontier.less_equal(first.key()) || local_frontier.less_equal(first.key()) {
                                    break;
                                }
                                checkpoint(*first.key(), &engine.borrow());
                                let (cap, records) = first.remove();
                                epoch_hint = records.len();
                                // Grouped by thing, in input order within each thing: a thing's state is
                                // then touched once per epoch instead of once per reading (thousands of
                                // things don't fit in cache). Each thing still sees its readings in input
                                // order, and the sink restores the global order by `seq`.
                                let mut records = group_by_thing(records);
                                // After grouping, not on arrival: timely hands over an epoch's
                                // batches in no particular order, but grouping restores each
                                // member's reading order per thing (by `seq`), which `KafkaSeen`
                                // relies on.
                                if from_kafka {
                                    records.retain(|r| !seen.is_duplicate(r));
                                }
                                let mut engine = engine.borrow_mut();
                                let mut latency = latency.borrow_mut();
                                engine.refresh_rules();
                                let _span = tracing::debug_span!("thing_state", worker = index, epoch = cap.time()).entered();
                                let inference = metrics.inference_latency.local();
                                // One clock read per record: each record's processing ends where the
                                // next one's begins.
                                let mut now = clock_ns();
                                let n_records = records.len() as u64;
                                for record in records.drain(..) {
                                    let ingest = match &record {
                                        Record::Point(_, ns) => Some(*ns),
                                        Record::Dead(_) => None,
                                    };
                                    let seq = record.seq();
                                    let before = out.len();
                                    engine.process(record, now, &mut out);
                                    let done = clock_ns();
                                    if let Some(ns) = ingest {
                                        inference.observe((done - now) as f64 * 1e-9);
                                        latency.ingest_to_scored.saturating_record(done.saturating_sub(ns).max(1));
                                        latency.processing.saturating_record((done - now).max(1));
                                        if out[before..].iter().any(|(_, o)| matches!(o, Output::Alert(_))) {
                                            alert_ingest_stage.lock().unwrap_or_else(|e| e.into_inner()).insert(seq, ns);
                                        }
                                    }
                                    now = done;
                                }
                                spare = records;
                                flow.processed.fetch_add(n_records, Ordering::Relaxed);
                                inference.flush();
                                flushed.flush(&mut engine, index);
                                output.session(&cap).give_iterator(out.drain(..));
                            }
                            if let Some(&f) = frontier.frontier().iter().chain(local_frontier.frontier().iter()).min() {
                                checkpoint(f, &engine.borrow());
                            }
                        }
                    },
                );
            let mut my_sink = my_sink;
            let mut sink_healthy = true;
            // Readings (`seq`) whose alerts were written since the last flush started.
            let mut unflushed_alerts: Vec<u64> = Vec::new();
            let sink_scope = scored.scope();
            scored
                .probe_with(&probe)
                .unary_frontier(Exchange::new(|_: &(u64, Output)| 0), "sink", move |_cap, info| {
                    let activator = sink_scope.activator_for(info.address);
                    let mut stash: BTreeMap<u64, (Capability<u64>, Outputs)> = BTreeMap::new();
                    // Capabilities of epochs written since the last flush started.
                    let mut written: Vec<Capability<u64>> = Vec::new();
                    // Epochs written and being flushed: the flush's ticket, the epochs' capabilities
                    // (released once the ticket is durable) and the readings that caused alerts.
                    let mut flushing: VecDeque<(u64, Vec<Capability<u64>>, Vec<u64>)> = VecDeque::new();
                    // After a failed write or flush, the first failed epoch's capability: held until
                    // the input ends, so nothing from it on is acknowledged and the source re-reads
                    // it on the next start.
                    let mut failed: Option<Capability<u64>> = None;
                    move |(input, frontier), output: &mut timely::dataflow::operators::generic::OutputBuilderSession<'_, u64, timely::container::CapacityContainerBuilder<Vec<()>>>| {
                        input.for_each_stamp(|cap, data| {
                            let Some(&time) = cap.least() else { return };
                            let entry = stash.entry(time).or_insert_with(|| {
                                let cap = cap
                                    .retain_least(output.output_index())
                                    .expect("capability for a received time");
                                (cap, Vec::new())
                            });
                            for batch in data {
                                entry.1.append(batch);
                            }
                        });
                        while let Some(first) = stash.first_entry() {
                            if frontier.less_equal(first.key()) {
                                break;
                            }
                            let epoch = *first.key();
                            let (cap, mut outputs) = first.remove();
                            // Stable: outputs of one reading keep the order the engine gave them.
                            outputs.sort_by_key(|(seq, _)| *seq);
                            if let Some(sink) = my_sink.as_mut() {
                                let _span = tracing::debug_span!("sink", epoch).entered();
                                if tracing::enabled!(tracing::Level::DEBUG) {
                                    let alerts = outputs.iter().filter(|(_, o)| matches!(o, Output::Alert(_))).count();
                                    tracing::debug!(outputs = outputs.len(), alerts, "epoch written");
                                }
                                if let Err(e) = sink.write(&outputs) {
                                    sink_healthy = false;
                                    record_sink_error(&sink_error, e);
                                }
                                unflushed_alerts.extend(outputs.iter().filter(|(_, o)| matches!(o, Output::Alert(_))).map(|(seq, _)| *seq));
                            }
                            written.push(cap);
                        }
                        let Some(sink) = my_sink.as_mut() else {
                            // Not the sink's worker: its outputs were exchanged to worker 0.
                            written.clear();
                            return;
                        };
                        let mut durable = Vec::new();
                        if frontier.is_empty() {
                            // The input has ended: wait for everything written.
                            if let Err(e) = sink.flush() {
                                sink_healthy = false;
                                record_sink_error(&sink_error, e);
                            }
                            durable.extend(flushing.drain(..));
                            durable.push((0, std::mem::take(&mut written), std::mem::take(&mut unflushed_alerts)));
                        } else {
                            if !written.is_empty() {
                                match sink.flush_start() {
                                    Ok(ticket) => flushing.push_back((ticket, std::mem::take(&mut written), std::mem::take(&mut unflushed_alerts))),
                                    Err(e) => {
                                        sink_healthy = false;
                                        record_sink_error(&sink_error, e);
                                    }
                                }
                            }
                            if !flushing.is_empty() {
                                match sink.flushed() {
                                    Ok(done) => {
                                        while flushing.front().is_some_and(|(ticket, _, _)| *ticket <= done) {
                                            durable.extend(flushing.pop_front());
                                        }
                                    }
                                    Err(e) => {
                                        sink_healthy = false;
                                        record_sink_error(&sink_error, e);
                                    }
                                }
                            }
                        }
                        if !sink_healthy && failed.is_none() {
                            failed = flushing
                                .iter()
                                .flat_map(|(_, caps, _)| caps)
                                .chain(&written)
                                .chain(durable.iter().flat_map(|(_, caps, _)| caps))
                                .min_by_key(|c| *c.time())
                                .cloned();
                        }
                        if !sink_healthy {
                            // Nothing after the failure is acknowledged before the input ends.
                            durable.extend(flushing.drain(..));
                            durable.push((0, std::mem::take(&mut written), std::mem::take(&mut unflushed_alerts)));
                        }
                        if durable.iter().any(|(_, _, alerts)| !alerts.is_empty()) {
                            let now = clock_ns();
                            let mut ingest = alert_ingest_sink.lock().unwrap_or_else(|e| e.into_inner());
                            let mut h = sink_histograms.borrow_mut();
                            for seq in durable.iter().flat_map(|(_, _, alerts)| alerts) {
                                if let Some(ns) = ingest.remove(seq) {
                                    if sink_healthy {
                                        h.ingest_to_alert.saturating_record(now.saturating_sub(ns).max(1));
                                    }
                                }
                            }
                        }
                        // Durable: these epochs are acknowledged (unless `failed` holds an earlier one).
                        drop(durable);
                        if frontier.is_empty() {
                            failed = None;
                            // Everything was written and flushed: the shutdown checkpoint may complete.
                            if sink_healthy {
                                acked_end.store(u64::MAX, Ordering::SeqCst);
                            }
                        } else if !flushing.is_empty() {
                            // Look again for delivery reports (nothing else may wake this operator).
                            activator.activate_after(Duration::from_micros(200));
                        }
                    }
                })
                .probe_with(&acked);
        });

        match (&lines, &kafka) {
            (Some(data), _) => {
                let ctx = LinesFeed {
                    data: data.as_ref().as_ref(),
                    cfg: &cfg,
                    pace,
                    started,
                    stop: &opts.stop,
                    file_stop: &file_stop,
                    flow: &opts.flow,
                };
                feed_lines(worker, &mut input, &mut local_input, &probe, ctx);
                drop(local_input);
            }
            (None, Some(kcfg)) => {
                drop(local_input);
                // One group member per process, on its first worker: members of one process never
                // take partitions from each other in a rebalance, and each process joins once.
                if index % workers == 0 {
                    let ctx = KafkaFeed {
                        checkpoint: ckpt.as_deref().map(|c| &c.writer),
                        start_positions: &start_positions,
                        cfg: kcfg,
                        decode: &cfg.decode,
                        acked: &acked,
                        resume: &kafka_resume,
                        last_message_ms: &kafka_idle,
                        member: index / workers,
                        members: worker.peers() / workers,
                        stop: &opts.stop,
                        flow: &opts.flow,
                        max_in_flight: opts.max_in_flight,
                        workers,
                        epoch_origin,
                    };
                    if let Err(e) = feed_kafka(worker, &mut input, &probe, ctx) {
                        record_sink_error(&feed_error, e.context("kafka source"));
                        opts.stop.store(true, Ordering::SeqCst);
                    }
                }
            }
            (None, None) => {
                drop(local_input);
                let rx = if index == 0 {
                    live.lock().expect("live lock").take()
                } else {
                    None
                };
                let writer = ckpt.as_deref().map(|c| &c.writer);
                let ctx = LiveFeed {
                    stop: &opts.stop,
                    decode: &cfg.decode,
                    flow: &opts.flow,
                    max_in_flight: opts.max_in_flight,
                    checkpoint: writer,
                    acked: &acked,
                };
                feed_live(worker, &mut input, &probe, rx, ctx);
                if let Some(w) = writer {
                    w.feed_reached(crate::checkpoint::FINAL, index, &BTreeMap::new());
                }
            }
        }
        drop(input);
        while !acked.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        finished.wait();
        let rss_end_bytes = if index % workers == 0 {
            rss_bytes()
        } else {
            None
        };
        finished.wait();
        let engine = engine.borrow();
        // The shutdown checkpoint: everything read is processed (it completes only if the sinks
        // acknowledged everything and every source stopped cleanly).
        if let Some(c) = ckpt.as_deref() {
            c.writer
                .write_engine(crate::checkpoint::FINAL, index, &engine);
        }
        let histograms = histograms.borrow().clone();
        WorkerResult {
            counters: engine.counters.clone(),
            things: engine.things(),
            histograms,
            rss_end_bytes,
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot start {workers} timely workers: {e}"))?;

    let mut report = RunReport::default();
    let mut histograms = RunHistograms::new();
    for result in guards.join() {
        let r = result.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
        add_counters(&mut report.counters, &r.counters);
        report.things += r.things;
        histograms.add(&r.histograms);
        report.rss_end_bytes = report.rss_end_bytes.or(r.rss_end_bytes);
    }
    let latency = &histograms.ingest_to_scored;
    if let Some(e) = sink_error.lock().expect("sink error lock").take() {
        return Err(e);
    }
    if let Some(c) = opts.checkpoint.as_deref() {
        c.writer.complete(acked_at_end.load(Ordering::SeqCst));
        report.checkpoint = Some(c.writer.summary());
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    if !latency.is_empty() {
        report.latency_us = Some(LatencySummary {
            p50_us: latency.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: latency.value_at_quantile(0.99) as f64 / 1e3,
            max_us: latency.max() as f64 / 1e3,
        });
    }
    report.histograms = Some(histograms);
    Ok(report)
}

/// Moves a worker's counters into the process's Prometheus metrics once per epoch, so the per-reading
/// path touches no shared atomics.
#[derive(Default)]
struct MetricsFlush {
    last: Counters,
    things: usize,
}

impl MetricsFlush {
    fn flush(&mut self, engine: &mut Engine, worker: usize) {
        let m = crate::metrics::global();
        let c = &engine.counters;
        let points = c.points - self.last.points;
        let dead: u64 = c.malformed_total() - self.last.malformed_total();
        m.points_ingested.inc_by(points + dead);
        if points > 0 {
            m.points_processed
                .with_label_values(&[worker.to_string()])
                .inc_by(points);
        }
        for (i, reason) in crate::decode::MalformedReason::ALL.iter().enumerate() {
            let n = c.malformed[i] - self.last.malformed[i];
            if n > 0 {
                m.points_malformed
                    .with_label_values(&[reason.as_str()])
                    .inc_by(n);
            }
        }
        let dedup = c.suppressed_dedup - self.last.suppressed_dedup;
        let rate = c.suppressed_rate - self.last.suppressed_rate;
        if dedup > 0 {
            m.alerts_suppressed
                .with_label_values(&["dedup"])
                .inc_by(dedup);
        }
        if rate > 0 {
            m.alerts_suppressed
                .with_label_values(&["rate_limit"])
                .inc_by(rate);
        }
        for (alert_type, severity) in engine.anomaly_kinds.drain(..) {
            m.anomalies_detected
                .with_label_values(&[alert_type.as_str(), severity.as_str()])
                .inc();
        }
        for ns in engine.alert_latencies_ns.drain(..) {
            m.event_to_alert_latency.observe(ns as f64 * 1e-9);
        }
        let things = engine.things();
        m.things_active.add(things as i64 - self.things as i64);
        self.things = things;
        self.last = engine.counters.clone();
    }
}

fn record_sink_error(slot: &Mutex<Option<anyhow::Error>>, e: anyhow::Error) {
    tracing::error!(error = %e, "sink failed");
    let mut slot = slot.lock().expect("sink error lock");
    if slot.is_none() {
        *slot = Some(e);
    }
}

fn add_counters(total: &mut Counters, c: &Counters) {
    total.points += c.points;
    for (t, x) in total.malformed.iter_mut().zip(c.malformed.iter()) {
        *t += x;
    }
    total.anomalies += c.anomalies;
    total.alerts += c.alerts;
    total.suppressed_dedup += c.suppressed_dedup;
    total.suppressed_rate += c.suppressed_rate;
    total.predictions += c.predictions;
    total.rul_skipped += c.rul_skipped;
}

/// The hash that places a thing on a worker (`hash % workers`, as timely's exchange does).
pub fn thing_route(thing_id: &str) -> u64 {
    thing_route_bytes(thing_id.as_bytes())
}

/// [`thing_route`] of a thing id's bytes.
#[inline]
fn thing_route_bytes(thing_id: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(thing_id)
}

/// Routes a record to the worker owning its thing (dead letters spread by position).
fn route(r: &Record) -> u64 {
    match r {
        Record::Point(p, _) => thing_route(&p.thing_id),
        // A Kafka partition's dead letters all go to one worker, which then sees them in each
        // member's offset order (what `KafkaSeen` relies on); other dead letters are spread.
        Record::Dead(d) => match &d.origin {
            Origin::Kafka { partition, .. } => *partition as u64,
            _ => d.seq,
        },
    }
}

/// An epoch's records ordered by `(route, seq)`: grouped by thing, in input order within each thing.
///
/// A counting sort over the distinct routes gives that order in linear time (plus sorting the few
/// hundred things), instead of a comparison sort of every record, and moves each record at most
/// once. Records normally arrive in `seq` order (a worker's own lines of a file chunk, in file
/// order); when they do not (batches from several workers, a chunk's exchanged lines), the counting sort visits them in the order of their
/// `(seq, index)` pairs, sorted on the side, so the records themselves still move once. Small epochs
/// take a plain sort by the same key; every path is stable, so the result is the same either way.
fn group_by_thing(mut records: Vec<Record>) -> Vec<Record> {
    let n = records.len();
    if n < 256 || n > u32::MAX as usize {
        records.sort_by_cached_key(|r| (route(r), r.seq()));
        return records;
    }
    // The records' indices in `seq` order (ties in input order), when that is not their order.
    let by_seq: Option<Vec<u32>> = (!records.is_sorted_by_key(Record::seq)).then(|| {
        let mut pairs: Vec<(u64, u32)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.seq(), i as u32))
            .collect();
        pairs.sort_unstable();
        pairs.into_iter().map(|(_, i)| i).collect()
    });
    let visit = |k: usize| by_seq.as_ref().map_or(k, |o| o[k] as usize);
    // Each record's bucket (its route's index in `keys`, in order of first appearance).
    let mut index = RouteIndex::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut dest: Vec<u32> = vec![0; n];
    for k in 0..n {
        let i = visit(k);
        let b = index.bucket(route(&records[i]));
        if b as usize == counts.len() {
            counts.push(0);
        }
        counts[b as usize] += 1;
        dest[i] = b;
    }
    let keys = index.keys;
    let mut by_key: Vec<u32> = (0..keys.len() as u32).collect();
    by_key.sort_unstable_by_key(|&b| keys[b as usize]);
    // Where each bucket's next record goes.
    let mut next = vec![0u32; keys.len()];
    let mut at = 0u32;
    for &b in &by_key {
        next[b as usize] = at;
        at += counts[b as usize];
    }
    // Each record's bucket becomes its final position, in `seq` order within the bucket.
    for k in 0..n {
        let i = visit(k);
        let b = dest[i] as usize;
        dest[i] = next[b];
        next[b] += 1;
    }
    // The permutation applied in place: every swap puts one record where it belongs (at most n swaps,
    // no second vector of records).
    for i in 0..n {
        loop {
            let d = dest[i] as usize;
            if d == i {
                break;
            }
            records.swap(i, d);
            dest.swap(i, d);
        }
    }
    records
}

/// The distinct routes of an epoch numbered in order of first appearance: open addressing on the
/// route itself (already a hash), cheaper per record than a general hash map.
struct RouteIndex {
    /// `(route, number + 1)`, 0 marking an empty slot; at most half full.
    slots: Vec<(u64, u32)>,
    /// The routes by number.
    keys: Vec<u64>,
}

impl RouteIndex {
    fn new() -> Self {
        RouteIndex {
            slots: vec![(0, 0); 256],
            keys: Vec::new(),
        }
    }

    /// The number of `key`, given the next one if it is new.
    #[inline]
    fn bucket(&mut self, key: u64) -> u32 {
        let mask = self.slots.len() - 1;
        let mut s = key as usize & mask;
        loop {
            let (k, v) = self.slots[s];
            if v == 0 {
                break;
            }
            if k == key {
                return v - 1;
            }
            s = (s + 1) & mask;
        }
        let b = self.keys.len() as u32;
        self.keys.push(key);
        self.slots[s] = (key, b + 1);
        if self.keys.len() * 2 > self.slots.len() {
            self.grow();
        }
        b
    }

    fn grow(&mut self) {
        let mask = self.slots.len() * 2 - 1;
        let mut slots = vec![(0u64, 0u32); mask + 1];
        for (b, &key) in self.keys.iter().enumerate() {
            let mut s = key as usize & mask;
            while slots[s].1 != 0 {
                s = (s + 1) & mask;
            }
            slots[s] = (key, b as u32 + 1);
        }
        self.slots = slots;
    }
}

/// Chunks (epochs) a file source may run ahead of the slowest output before it waits: bounds memory.
/// Every worker reads every chunk, so this bounds the whole process (3 chunks of 16,384 lines).
const MAX_EPOCHS_IN_FLIGHT: u64 = 3;

/// Where a stopped file run ends, shared by the workers: every chunk below `stop_at` is read in full and
/// none from it on, so what a stopped run consumed is a prefix of the file whatever the worker count.
#[derive(Default)]
struct FileStop {
    /// One past the highest chunk any worker has started.
    next: u64,
    /// Set from `next` by the first worker that sees the stop flag.
    stop_at: Option<u64>,
}

impl FileStop {
    /// Whether `chunk` may be read (and if so, records it as started).
    fn admit(&mut self, chunk: u64, stopping: bool) -> bool {
        if stopping && self.stop_at.is_none() {
            self.stop_at = Some(self.next);
        }
        if self.stop_at.is_some_and(|at| chunk >= at) {
            return false;
        }
        self.next = self.next.max(chunk + 1);
        true
    }
}

/// What [`feed_lines`] needs besides the worker.
struct LinesFeed<'a> {
    data: &'a [u8],
    cfg: &'a DataflowConfig,
    /// Lines per second, over the whole file (every worker walks every line).
    pace: Option<f64>,
    started: Instant,
    stop: &'a AtomicBool,
    file_stop: &'a Mutex<FileStop>,
    flow: &'a FlowCounters,
}

/// Feeds a file's lines into the dataflow, chunk k of [`CHUNK_LINES`] lines as epoch k.
///
/// Every worker walks every line and decodes only the lines of the things it owns: it reads the
/// thing id from the raw line ([`line_thing_id`]) and hashes it as the exchange would, and sends the
/// decoded readings on `local`, past the exchange. Why: when chunks were striped over the workers,
/// half of every chunk's readings crossed to the other thread (their memory then freed there, their
/// bytes pulled into the other core's cache); walking the other worker's lines costs a line search,
/// a key search and a hash per line instead, and 2-worker replays ran 15-23 % faster (see
/// docs/BENCHMARKS.md). A line whose thing cannot be read before decoding is decoded by the chunk's
/// owner (chunk modulo workers) and takes the exchange, as do dead letters.
fn feed_lines(
    worker: &mut timely::worker::Worker,
    input: &mut InputHandleVec<u64, Record>,
    local: &mut InputHandleVec<u64, Record>,
    probe: &ProbeHandle<u64>,
    ctx: LinesFeed<'_>,
) {
    let (data, cfg) = (ctx.data, ctx.cfg);
    let (index, peers) = (worker.index(), worker.peers());
    let mut decoder = Decoder::new(&cfg.decode);
    let thing_key = memchr::memmem::Finder::new(THING_KEY);
    // Records for the exchange (dead letters, lines whose thing is not read before decoding) and
    // records of this worker's own things.
    let mut batch: Vec<Record> = Vec::new();
    let mut local_batch: Vec<Record> = Vec::new();
    let mut chunk: u64 = 0;
    let mut line_no: u64 = 0;
    let mut pos = 0usize;
    // The ingest instant of the lines being decoded, and how many more lines it serves.
    let (mut ingest_ns, mut clock_left) = (0, 0);
    while pos < data.len() {
        // Every worker walks every chunk (each decodes its own things' lines), so every worker
        // admits every chunk: a stopped run then ends on the same chunk for all of them.
        let stopping = ctx.stop.load(Ordering::SeqCst);
        let admitted = ctx
            .file_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(chunk, stopping);
        if !admitted {
            tracing::info!(
                worker = index,
                chunk,
                line = line_no,
                "file source stopped at a chunk boundary"
            );
            return;
        }
        // The worker that decodes the chunk's lines whose thing cannot be read before decoding.
        let owner = chunk % peers as u64 == index as u64;
        let mut lines_in_chunk = 0;
        // Paced, a chunk is ~20 ms of lines: a reading is processed when its chunk's epoch closes, so
        // full chunks would hold readings back for CHUNK_LINES / rate seconds (8 s at 2,000/s). Every
        // worker derives the same size from the same rate, so the chunks stay the same everywhere.
        let chunk_lines = ctx.pace.map_or(CHUNK_LINES, paced_chunk_lines);
        input.advance_to(chunk);
        local.advance_to(chunk);
        // The inputs keep the sent batches and hand back empty vectors: growing one again by
        // doubling would copy the chunk's records some 14 times over.
        local_batch.reserve(chunk_lines / peers + chunk_lines / 16);
        let span = tracing::debug_span!("decode", worker = index, chunk).entered();
        while lines_in_chunk < chunk_lines && pos < data.len() {
            let end = line_end(data, pos);
            let line = &data[pos..end];
            pos = end + 1;
            line_no += 1;
            lines_in_chunk += 1;
            if let Some(per_sec) = ctx.pace {
                // Paced: wait (keeping the dataflow moving) until this line is due.
                while line_no as f64 > ctx.started.elapsed().as_secs_f64() * per_sec {
                    worker.step_or_park(Some(Duration::from_millis(1)));
                }
            }
            let thing = if peers > 1 {
                line_thing_id(line, &thing_key)
            } else {
                None
            };
            let decoder_here = match thing {
                Some(id) => thing_route_bytes(id) % peers as u64 == index as u64,
                None => owner,
            };
            if !decoder_here || line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if clock_left == 0 {
                ingest_ns = clock_ns();
                clock_left = if ctx.pace.is_some() {
                    1
                } else {
                    INGEST_CLOCK_LINES
                };
            }
            clock_left -= 1;
            let record = decode_record_at(
                &mut decoder,
                line,
                line_no,
                Origin::Line { line: line_no },
                ingest_ns,
            );
            // A reading whose decoded thing is the one read before decoding (or any reading of a
            // single worker) is already on its worker; the rest (dead letters, lines whose thing
            // was not read, a message naming its thing twice) take the exchange.
            let routed = match (&record, thing) {
                (Record::Point(p, _), Some(id)) => same_bytes(p.thing_id.as_bytes(), id),
                (Record::Point(..), None) => peers == 1,
                (Record::Dead(_), _) => false,
            };
            if routed {
                local_batch.push(record);
            } else {
                batch.push(record);
            }
        }
        drop(span);
        ctx.flow
            .read
            .fetch_add((batch.len() + local_batch.len()) as u64, Ordering::Relaxed);
        if !batch.is_empty() {
            input.send_batch(&mut batch);
            batch.clear();
        }
        if !local_batch.is_empty() {
            local.send_batch(&mut local_batch);
            local_batch.clear();
        }
        let waited_for = chunk.saturating_sub(MAX_EPOCHS_IN_FLIGHT);
        input.advance_to(chunk + 1);
        local.advance_to(chunk + 1);
        while probe.less_than(&waited_for) {
            worker.step();
        }
        worker.step();
        chunk += 1;
    }
}

/// The key [`line_thing_id`] looks for.
const THING_KEY: &[u8] = b"\"thing_id\":\"";

/// The thing id of a usual message read without decoding it: the string after its first
/// `"thing_id":"`, when that string holds no escape. It only picks the worker that decodes the line
/// (the decoded reading is checked against it), so a line it misreads costs an exchange, not a
/// wrong result; anything else (other spacing, `thingId`, EgizCore's nesting) gives None.
#[inline]
fn line_thing_id<'a>(line: &'a [u8], key: &memchr::memmem::Finder<'_>) -> Option<&'a [u8]> {
    let start = if line.get(1..THING_KEY.len() + 1) == Some(THING_KEY) {
        THING_KEY.len() + 1
    } else {
        key.find(line)? + THING_KEY.len()
    };
    let rest = &line[start..];
    let len = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[len] == b'"').then(|| &rest[..len])
}

/// Where the line starting at `pos` ends: its newline, or the end of the data.
#[inline]
fn line_end(data: &[u8], pos: usize) -> usize {
    memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i)
}

/// Lines per chunk of a file read at `per_sec` lines per second: about 20 ms of lines (a stopped paced
/// run ends on a multiple of this).
pub fn paced_chunk_lines(per_sec: f64) -> usize {
    ((per_sec * 0.02).ceil() as usize).clamp(1, CHUNK_LINES)
}

/// Lines of a file (not paced) decoded per read of the ingest clock: they share the instant read
/// before the first of them is decoded (a few tens of microseconds early for the last one), so the
/// clock costs nothing per reading.
const INGEST_CLOCK_LINES: u32 = 64;

/// Decodes one message into a record, ingested now; failures become dead letters that keep the raw
/// bytes.
pub fn decode_record(decoder: &mut Decoder, raw: &[u8], seq: u64, origin: Origin) -> Record {
    decode_record_at(decoder, raw, seq, origin, clock_ns())
}

/// [`decode_record`] with the ingest instant given ([`clock_ns`]).
fn decode_record_at(
    decoder: &mut Decoder,
    raw: &[u8],
    seq: u64,
    origin: Origin,
    ingest_ns: u64,
) -> Record {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    match decoder.decode(raw) {
        Ok(mut p) => {
            p.seq = seq;
            p.origin = origin;
            Record::Point(p, ingest_ns)
        }
        Err(m) => {
            let d = DeadLetter::new(&m, raw, seq, origin);
            tracing::debug!(reason = %d.reason, detail = %d.detail, seq, "malformed input");
            Record::Dead(d)
        }
    }
}

/// What worker 0 of a live run receives from the source's thread.
enum LiveRx {
    Points(Receiver<Point>),
    Messages(Receiver<Vec<u8>>),
}

impl LiveRx {
    /// The next record, if one is waiting; `Err` once the sender has hung up.
    fn try_next(&self, seq: u64, decoder: &mut Decoder) -> Result<Option<Record>, ()> {
        let next = match self {
            LiveRx::Points(rx) => rx.try_recv().map(|mut p| {
                p.seq = seq;
                Record::Point(p, clock_ns())
            }),
            LiveRx::Messages(rx) => rx
                .try_recv()
                .map(|raw| decode_record(decoder, &raw, seq, Origin::None)),
        };
        match next {
            Ok(r) => Ok(Some(r)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(()),
        }
    }
}

/// What one worker's source has handed to the dataflow and not yet seen through the sink, per epoch:
/// the count [`RunOptions::max_in_flight`] bounds.
struct InFlight {
    epochs: VecDeque<(u64, usize)>,
    records: usize,
    limit: usize,
}

impl InFlight {
    fn new(limit: usize) -> Self {
        InFlight {
            epochs: VecDeque::new(),
            records: 0,
            limit: limit.max(1),
        }
    }

    /// `n` records were sent at `epoch`.
    fn sent(&mut self, epoch: u64, n: usize) {
        if n == 0 {
            return;
        }
        match self.epochs.back_mut() {
            Some((e, count)) if *e == epoch => *count += n,
            _ => self.epochs.push_back((epoch, n)),
        }
        self.records += n;
    }

    /// Forgets the epochs the sink has finished (the probe has passed them).
    fn release(&mut self, probe: &ProbeHandle<u64>) {
        while let Some(&(epoch, n)) = self.epochs.front() {
            if probe.less_equal(&epoch) {
                break;
            }
            self.epochs.pop_front();
            self.records -= n;
        }
    }

    /// How many more records may be read now.
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.records)
    }
}

/// Records a live source hands over per step at most.
const LIVE_BATCH: usize = 4096;

/// What [`feed_live`] needs besides the worker.
struct LiveFeed<'a> {
    stop: &'a AtomicBool,
    decode: &'a crate::config::DecodeConfig,
    flow: &'a FlowCounters,
    max_in_flight: usize,
    checkpoint: Option<&'a crate::checkpoint::Checkpointer>,
    /// The sink's output frontier: a checkpoint completes once it passes its boundary.
    acked: &'a ProbeHandle<u64>,
}

fn feed_live(
    worker: &mut timely::worker::Worker,
    input: &mut InputHandleVec<u64, Record>,
    probe: &ProbeHandle<u64>,
    rx: Option<LiveRx>,
    ctx: LiveFeed<'_>,
) {
    let LiveFeed {
        stop,
        decode,
        flow,
        max_in_flight,
        checkpoint,
        acked,
    } = ctx;
    let start = Instant::now();
    let no_offsets = BTreeMap::new();
    let mut seq: u64 = 0;
    let mut batch: Vec<Record> = Vec::new();
    let mut decoder = Decoder::new(decode);
    let mut in_flight = InFlight::new(max_in_flight);
    loop {
        let epoch = start.elapsed().as_millis() as u64;
        if epoch > *input.time() {
            if let Some(c) = checkpoint {
                c.feed_advanced(*input.time(), epoch, worker.index(), &no_offsets);
            }
            input.advance_to(epoch);
        }
        if let Some(c) = checkpoint {
            c.complete(watermark(acked));
        }
        let mut disconnected = false;
        if let Some(rx) = &rx {
            let _span = tracing::debug_span!("decode", worker = 0).entered();
            // Backpressure: read only while the records in flight leave room; the source's bounded
            // channel then fills and blocks (or drops, for a source that cannot wait) its producer.
            in_flight.release(acked);
            let room = in_flight.room().min(LIVE_BATCH);
            while batch.len() < room {
                match rx.try_next(seq + 1, &mut decoder) {
                    Ok(Some(record)) => {
                        seq += 1;
                        batch.push(record);
                    }
                    Ok(None) => break,
                    Err(()) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                flow.read.fetch_add(batch.len() as u64, Ordering::Relaxed);
                in_flight.sent(*input.time(), batch.len());
                input.send_batch(&mut batch);
                batch.clear();
            }
        }
        if disconnected {
            stop.store(true, Ordering::SeqCst);
        }
        if stop.load(Ordering::SeqCst) {
            // What the source already handed over is processed too (an MQTT message in the channel
            // has been acknowledged to the broker): take it without waiting for more. The channel is
            // bounded, so this is too.
            if let (Some(rx), false) = (&rx, disconnected) {
                let _span = tracing::debug_span!("decode", worker = 0).entered();
                while let Ok(Some(record)) = rx.try_next(seq + 1, &mut decoder) {
                    seq += 1;
                    batch.push(record);
                }
                flow.read.fetch_add(batch.len() as u64, Ordering::Relaxed);
                input.send_batch(&mut batch);
                tracing::info!(records = seq, "live source stopped");
            }
            return;
        }
        // Backpressure: don't run more than a few epochs ahead of the sink.
        let behind = epoch.saturating_sub(1_000);
        while probe.less_than(&behind) {
            worker.step();
        }
        step_closed_epochs(worker, acked, *input.time());
        worker.step_or_park(Some(Duration::from_micros(500)));
    }
}

/// What [`feed_kafka`] needs besides the worker.
struct KafkaFeed<'a> {
    cfg: &'a crate::sources::kafka::KafkaSourceConfig,
    decode: &'a crate::config::DecodeConfig,
    /// The sink's output frontier: every epoch below it is acknowledged, cluster-wide.
    acked: &'a ProbeHandle<u64>,
    resume: &'a Arc<crate::sources::kafka::ResumePoints>,
    /// Wall-clock millisecond at which this process's consumer last received a message (idle stop).
    last_message_ms: &'a AtomicU64,
    /// This consumer's index among the group members of the run (= the process), and their count.
    member: usize,
    members: usize,
    stop: &'a AtomicBool,
    flow: &'a FlowCounters,
    max_in_flight: usize,
    /// Where new checkpoints are assembled (single process: the consumer reports the source
    /// positions of all `workers` workers, which read nothing themselves).
    checkpoint: Option<&'a crate::checkpoint::Checkpointer>,
    /// Per partition, where the restored checkpoint's state ends: the consumer starts there.
    start_positions: &'a BTreeMap<(String, i32), i64>,
    /// Workers per process.
    workers: usize,
    /// Subtracted from the wall clock to give epochs: 0 (wall-clock epochs, the same on every
    /// process of a cluster), or the run's start with checkpoints (single process), whose
    /// boundaries are then counted from the start as for live sources.
    epoch_origin: u64,
}

/// Milliseconds since the Unix epoch: the Kafka epoch clock, the same on every process of a
/// cluster (up to clock skew, which only delays acknowledgements), so no process's epochs lag
/// another's by its start time.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records the process's one Kafka consumer as the source of each of its `workers` workers (they
/// read nothing themselves) for every checkpoint boundary crossed from epoch `from` to `to`.
fn feeds_advanced(
    c: &crate::checkpoint::Checkpointer,
    from: u64,
    to: u64,
    workers: usize,
    offsets: &BTreeMap<(String, i32), i64>,
) {
    for w in 0..workers {
        c.feed_advanced(from, to, w, offsets);
    }
}

/// The least epoch not yet acknowledged (`u64::MAX` once everything is).
fn watermark(acked: &ProbeHandle<u64>) -> u64 {
    acked.with_frontier(|f| f.iter().min().copied().unwrap_or(u64::MAX))
}

/// At most this many dataflow steps per turn of a Kafka or live feeding loop (see
/// [`step_closed_epochs`]).
const EPOCH_STEPS: usize = 4;

/// Steps the dataflow while the sink has yet to acknowledge an epoch before `time` (the input's
/// current epoch), at most [`EPOCH_STEPS`] times. A closed epoch takes one step per operator it passes
/// (timely shows an operator its new frontier at the next step): running those steps now, rather than
/// one per turn of the feeding loop, saves a park per operator. Bounded, as other workers' shares may
/// take longer.
fn step_closed_epochs(worker: &mut timely::worker::Worker, acked: &ProbeHandle<u64>, time: u64) {
    for _ in 0..EPOCH_STEPS {
        if !acked.less_than(&time) {
            break;
        }
        worker.step();
    }
}

/// Time until the next wall-clock millisecond (the next Kafka epoch).
fn until_next_ms() -> Duration {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    Duration::from_nanos(u64::from(1_000_000 - ns))
}

/// Milliseconds between two turns of the Kafka feeding loop (normally about one) after which the
/// gap counts as a stall, not as idle time (see [`feed_kafka`]).
const STALL_MS: u64 = 250;

/// A process's one Kafka consumer, on its first worker: epoch = wall-clock millisecond. Offsets
/// read in an epoch are committed once the sink's acknowledged frontier has passed it.
fn feed_kafka(
    worker: &mut timely::worker::Worker,
    input: &mut InputHandleVec<u64, Record>,
    probe: &ProbeHandle<u64>,
    ctx: KafkaFeed<'_>,
) -> anyhow::Result<()> {
    let index = worker.index();
    let mut reader = crate::sources::kafka::KafkaReader::new(
        ctx.cfg,
        ctx.member,
        ctx.members,
        Arc::clone(ctx.resume),
        ctx.start_positions,
    )?;
    let mut decoder = Decoder::new(ctx.decode);
    let mut batch: Vec<Record> = Vec::new();
    let idle_ms = ctx.cfg.stop_after_idle_s.map(|s| (s * 1e3) as u64);
    let mut next_assignment_check = 0;
    // Until the first assignment: when to say (again) that none came. A member that never gets a
    // partition reads nothing, and without this would say nothing either.
    let mut assigned = false;
    let mut next_unassigned_warning = wall_ms() + 10_000;
    let mut in_flight = InFlight::new(ctx.max_in_flight);
    // Start at the current epoch (nothing was sent below it; with wall-clock epochs, a checkpoint
    // must not count every boundary since 1970 as crossed).
    let now = || wall_ms().saturating_sub(ctx.epoch_origin);
    input.advance_to(now());
    let mut last_turn = now();
    loop {
        let epoch = now();
        // A long gap between two turns of this loop means the process did not run (suspended,
        // starved of CPU, or waiting on the dataflow below): it could not read either, so that time
        // is not idleness. Without this, a process resumed after more than `stop_after_idle_s`
        // stopped at its first turn, before the fetcher had delivered the backlog, leaving it unread.
        if epoch.saturating_sub(last_turn) > STALL_MS
            && ctx.last_message_ms.load(Ordering::SeqCst) > 0
        {
            ctx.last_message_ms.fetch_max(epoch, Ordering::SeqCst);
        }
        last_turn = epoch;
        if epoch > *input.time() {
            if let Some(c) = ctx.checkpoint {
                feeds_advanced(c, *input.time(), epoch, ctx.workers, reader.positions());
            }
            input.advance_to(epoch);
        }
        // Backpressure: poll only while the records in flight leave room (librdkafka's own
        // prefetch queue is bounded by `queued.max.messages.kbytes`).
        in_flight.release(ctx.acked);
        let room = in_flight.room().min(4096);
        let n = if room == 0 {
            // Held back by the sink, not idle.
            ctx.last_message_ms.fetch_max(epoch + 1, Ordering::SeqCst);
            0
        } else {
            let _span = tracing::debug_span!("decode", worker = index).entered();
            reader.poll_into(&mut decoder, &mut batch, room, Duration::ZERO)
        };
        if n > 0 {
            // The idle clock only starts with the first message (joining the group can take a
            // session timeout after a crash).
            ctx.last_message_ms.fetch_max(epoch, Ordering::SeqCst);
            ctx.flow
                .read
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            in_flight.sent(*input.time(), batch.len());
            input.send_batch(&mut batch);
            batch.clear();
            reader.seal(*input.time());
        }
        reader.acknowledge(watermark(ctx.acked));
        reader.commit(false);
        if let Some(c) = ctx.checkpoint {
            c.complete(watermark(ctx.acked));
        }
        let mut last = ctx.last_message_ms.load(Ordering::SeqCst);
        // Idle also counts from the first assignment: in a cluster, partitions another member
        // already processed can come to this one with nothing left to read.
        if last == 0 && idle_ms.is_some() && epoch >= next_assignment_check {
            next_assignment_check = epoch + 100;
            if reader.has_assignment() {
                ctx.last_message_ms.fetch_max(epoch, Ordering::SeqCst);
                last = epoch;
            }
        }
        if !assigned {
            let now_ms = wall_ms();
            if n > 0 {
                assigned = true;
            } else if now_ms >= next_unassigned_warning {
                assigned = reader.has_assignment();
                if !assigned {
                    tracing::warn!(
                        group = %ctx.cfg.group_id,
                        member = ctx.member,
                        "kafka source: no partition assigned yet (the group may still be \
                         rebalancing, or has more members than the topics have partitions)"
                    );
                }
                next_unassigned_warning = now_ms + 10_000;
            }
        }
        let idle = idle_ms.is_some_and(|ms| last > 0 && epoch.saturating_sub(last) > ms);
        if idle || ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        // Backpressure: don't run more than a second of epochs ahead of the dataflow.
        let behind = epoch.saturating_sub(1_000);
        while probe.less_than(&behind) && !ctx.stop.load(Ordering::SeqCst) {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        step_closed_epochs(worker, ctx.acked, *input.time());
        if n == 0 {
            // Nothing to read: sleep until the next epoch begins (to close this one) unless messages
            // arrive first (the consumer unparks this thread) or the dataflow has work.
            worker.step_or_park(Some(until_next_ms()));
        } else {
            worker.step();
        }
    }
    // Drain: let the sink acknowledge what was read, then commit it synchronously. Bounded, so a
    // stuck sink cannot hang shutdown (uncommitted offsets are simply re-read next time).
    let end = (*input.time()).max(now()) + 1;
    if let Some(c) = ctx.checkpoint {
        feeds_advanced(c, *input.time(), end, ctx.workers, reader.positions());
    }
    input.advance_to(end);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.all_acknowledged() && Instant::now() < deadline {
        worker.step_or_park(Some(Duration::from_millis(1)));
        reader.acknowledge(watermark(ctx.acked));
        if let Some(c) = ctx.checkpoint {
            c.complete(watermark(ctx.acked));
        }
    }
    reader.commit(true);
    if let Some(c) = ctx.checkpoint {
        if reader.all_acknowledged() {
            for w in 0..ctx.workers {
                c.feed_reached(crate::checkpoint::FINAL, w, reader.positions());
            }
        }
    }
    tracing::info!(
        worker = index,
        received = reader.received,
        committed = reader.commits,
        "kafka source stopped"
    );
    Ok(())
}

/// Per worker, the newest Kafka offset processed of each thing on each partition: a message read
/// again in the same run (a partition that moved between group members in a rebalance is re-read by
/// its new member from the last commit) is dropped instead of being processed twice.
///
/// Why this never drops a message that was not processed: a member reads a partition in offset
/// order from where it started, and the thing's worker looks at its messages of one thing in that
/// order: epochs in time order, and within an epoch by `seq` (a member numbers what it reads in
/// reading order), once [`group_by_thing`] has sorted them. Not in arrival order: timely hands over
/// an epoch's batches sorted by time only, in no fixed order among themselves (losing readings
/// when this was checked on arrival, in the two-process Kafka test on a loaded machine). A member starts at a
/// commit, and everything below a commit was processed. So if offset `o'` of a thing was processed,
/// coming from a member that started at or below `o`, that member delivered the thing's `o` before
/// `o'`; if it started above `o`, `o` was below a commit. Either way `o <= o'` was processed. After
/// a rebalance two members' messages of one partition can arrive interleaved (the old member's still
/// in flight, the new member's re-reads); the newest offset per thing sorts them out.
///
/// Dead letters have no thing: a partition's all go to one worker (see [`route`]) and count as one
/// thing there. Per thing, not per partition, because a worker sees only its own things' offsets,
/// with gaps between them that never fill.
#[derive(Default)]
struct KafkaSeen {
    newest: HashMap<String, rustc_hash::FxHashMap<(i32, Name), i64>>,
}

impl KafkaSeen {
    fn is_duplicate(&mut self, record: &Record) -> bool {
        let (origin, thing) = match record {
            Record::Point(p, _) => (&p.origin, p.thing_id.clone()),
            Record::Dead(d) => (&d.origin, Name::default()),
        };
        let Origin::Kafka {
            topic,
            partition,
            offset,
        } = origin
        else {
            return false;
        };
        let things = match self.newest.get_mut(topic.as_str()) {
            Some(t) => t,
            None => self.newest.entry(topic.to_string()).or_default(),
        };
        let newest = things.entry((*partition, thing)).or_insert(-1);
        if *offset <= *newest {
            tracing::debug!(
                %topic,
                partition,
                offset,
                newest = *newest,
                "re-read message dropped"
            );
            return true;
        }
        *newest = *offset;
        false
    }
}

#[cfg(test)]
mod tests;
