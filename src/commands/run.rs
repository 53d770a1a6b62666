//! `egizml run --config FILE`: the service. A service config (see `configs/service.yaml`) names the
//! dataflow file, one source (kafka, mqtt, egizcore, file or simulator) and one or more sinks (kafka,
//! egizcore, jsonl, sqlite); the run lasts until SIGTERM / Ctrl-C, the end of a file, or a Kafka source's idle time.

use crate::config::{load_yaml, ConfigError};
use crate::pipeline::{self, Input, Output, OutputSink, RunOptions, RunReport};
use crate::sinks::egizcore::{EgizCoreSink, EgizCoreSinkConfig};
use crate::sinks::jsonl::LineWriter;
use crate::sinks::kafka::{KafkaSink, KafkaSinkConfig};
use crate::sinks::sqlite::{AlertStore, SqliteStore};
use crate::sources::egizcore::EgizCoreSourceConfig;
use crate::sources::kafka::KafkaSourceConfig;
use crate::sources::mqtt::MqttSourceConfig;
use crate::sources::simulator::{Simulator, SimulatorConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `egizml run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Service config (YAML), e.g. configs/service.yaml.
    #[arg(long)]
    pub config: PathBuf,
    /// Timely workers (overrides the config); in a cluster, workers per process.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Run as one of this many processes (a timely cluster, docs/CLUSTER.md); every process gets the
    /// same config and workers.
    #[arg(long, default_value_t = 1, requires = "hostfile")]
    pub processes: usize,
    /// This process's index, 0..processes (process 0 writes the sinks).
    #[arg(long, default_value_t = 0)]
    pub process_id: usize,
    /// One `host:port` per line, process 0 first: where each process listens for the others.
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
}

impl RunArgs {
    /// The cluster this process belongs to (`None` for a single process).
    pub fn cluster(&self) -> anyhow::Result<Option<pipeline::ClusterConfig>> {
        if self.processes <= 1 && self.process_id == 0 {
            return Ok(None);
        }
        let hostfile = self
            .hostfile
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--processes needs --hostfile"))?;
        pipeline::ClusterConfig::from_hostfile(hostfile, self.processes, self.process_id).map(Some)
    }
}

/// The service config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Dataflow file (relative to this file); unset: the embedded default.
    #[serde(default)]
    pub dataflow: Option<PathBuf>,
    /// Timely workers (default: the machine's cores).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Emit a score line per reading (for sinks with a score output).
    #[serde(default)]
    pub scores: bool,
    /// Where telemetry comes from: exactly one entry.
    pub source: SourceConfig,
    /// Where outputs go: at least one entry.
    pub sinks: SinksConfig,
    /// The REST API and `/metrics` (unset: not served), see [`super::serve::ApiConfig`].
    #[serde(default)]
    pub api: Option<super::serve::ApiConfig>,
    /// Scheduled retraining (unset: none), see [`crate::training::schedule`]. Needs `api.registry`
    /// and `api.train_history`; its jobs share the API's one training worker.
    #[serde(default)]
    pub retrain: Option<crate::training::schedule::RetrainConfig>,
    /// Per-thing state checkpoints, restored on start (live and Kafka sources; unset: none), see
    /// docs/CHECKPOINTS.md.
    #[serde(default)]
    pub checkpoint: Option<crate::checkpoint::CheckpointConfig>,
}

/// Exactly one of these is set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kafka: Option<KafkaSourceConfig>,
    pub file: Option<FileSourceConfig>,
    pub simulator: Option<SimulatorSourceConfig>,
    /// MQTT topic filters (QoS 1), see `sources::mqtt`.
    pub mqtt: Option<MqttSourceConfig>,
    /// EgizCore's WebSocket state stream (docs/EGIZCORE.md), see `sources::egizcore`.
    #[serde(default)]
    pub egizcore: Option<EgizCoreSourceConfig>,
}

/// Replay a JSONL file (flat or EgizCore lines).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Path, relative to the service config's folder.
    pub path: PathBuf,
    /// Readings (lines) per second; unset: as fast as the pipeline goes.
    #[serde(default)]
    pub rate: Option<f64>,
}

/// The built-in simulator, paced in real time.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSourceConfig {
    #[serde(default = "default_things")]
    pub things: usize,
    /// Readings per second over all things.
    #[serde(default = "default_rate")]
    pub rate: f64,
    #[serde(default)]
    pub seed: u64,
    /// Expected fault episodes per thing per 1,000 readings.
    #[serde(default = "default_faults")]
    pub faults_per_1000: f64,
    /// Stop after this many readings (default: run until stopped).
    #[serde(default)]
    pub points: Option<u64>,
}

fn default_things() -> usize {
    20
}
fn default_rate() -> f64 {
    100.0
}
fn default_faults() -> f64 {
    3.0
}

/// Any combination; at least one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    pub kafka: Option<KafkaSinkConfig>,
    pub jsonl: Option<JsonlSinkConfig>,
    pub sqlite: Option<SqliteSinkConfig>,
    /// Alerts as EgizCore thing status (REST PUT, docs/EGIZCORE.md), see `sinks::egizcore`.
    #[serde(default)]
    pub egizcore: Option<EgizCoreSinkConfig>,
}

/// Alerts as JSON lines (`-` = stdout).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    pub alerts: PathBuf,
    /// Per-reading score lines (needs `scores: true`), e.g. to watch a model swap take effect.
    #[serde(default)]
    pub scores: Option<PathBuf>,
}

/// The SQLite anomaly store (what the REST API serves).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    pub path: PathBuf,
}

impl ServiceConfig {
    /// Loads, validates and resolves relative paths against the file's folder.
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        let mut cfg: ServiceConfig = load_yaml(path)?;
        let file = path.display().to_string();
        let semantic = |message: String| ConfigError::Semantic {
            file: file.clone(),
            message,
        };
        let s = &cfg.source;
        let n = [
            s.kafka.is_some(),
            s.file.is_some(),
            s.simulator.is_some(),
            s.mqtt.is_some(),
            s.egizcore.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            return Err(semantic(format!(
                "source: set exactly one of kafka, file, simulator, mqtt, egizcore (found {n})"
            )));
        }
        if let Some(k) = &s.kafka {
            k.validate().map_err(|m| semantic(format!("source.{m}")))?;
        }
        if let Some(m) = &s.mqtt {
            m.validate().map_err(|m| semantic(format!("source.{m}")))?;
        }
        if let Some(e) = &s.egizcore {
            e.validate().map_err(|m| semantic(format!("source.{m}")))?;
        }
        if let Some(rate) = s.file.as_ref().and_then(|f| f.rate) {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(semantic(format!(
                    "source.file.rate: must be > 0 readings per second, got {rate}"
                )));
            }
        }
        if let Some(sim) = &s.simulator {
            if sim.things == 0 || !(sim.rate.is_finite() && sim.rate > 0.0) {
                return Err(semantic(
                    "source.simulator: things must be >= 1 and rate > 0".into(),
                ));
            }
        }
        let k = &cfg.sinks;
        let api_store = cfg.api.as_ref().is_some_and(|a| a.store.is_some());
        if k.kafka.is_none()
            && k.jsonl.is_none()
            && k.sqlite.is_none()
            && k.egizcore.is_none()
            && !api_store
        {
            return Err(semantic(
                "sinks: configure at least one of kafka, jsonl, sqlite, egizcore (or api.store)"
                    .into(),
            ));
        }
        if let Some(e) = &k.egizcore {
            e.validate().map_err(|m| semantic(format!("sinks.{m}")))?;
        }
        if let Some(kafka) = &k.kafka {
            kafka
                .validate()
                .map_err(|m| semantic(format!("sinks.{m}")))?;
        }
        if cfg.workers == Some(0) {
            return Err(semantic("workers: must be >= 1".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = cfg.dataflow.as_mut() {
            resolve(d);
        }
        if let Some(c) = cfg.checkpoint.as_mut() {
            if cfg.source.file.is_some() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                return Err(crate::config::field_error(
                    &file,
                    &text,
                    &["checkpoint"],
                    "field `checkpoint`: state checkpoints need a live source (kafka, mqtt, egizcore, simulator); a file is replayed from its start on every run".into(),
                ));
            }
            resolve(&mut c.dir);
        }
        if let Some(f) = cfg.source.file.as_mut() {
            resolve(&mut f.path);
        }
        if let Some(j) = cfg.sinks.jsonl.as_mut() {
            resolve(&mut j.alerts);
            if let Some(scores) = j.scores.as_mut() {
                resolve(scores);
            }
        }
        if let Some(s) = cfg.sinks.sqlite.as_mut() {
            resolve(&mut s.path);
        }
        if let Some(api) = cfg.api.as_mut() {
            let sqlite = cfg.sinks.sqlite.as_ref().map(|s| s.path.as_path());
            super::serve::check_config(api, path, sqlite)?;
        }
        if let Some(r) = &cfg.retrain {
            r.check().map_err(semantic)?;
            let api = cfg.api.as_ref();
            if api.is_none_or(|a| a.registry.is_none() || a.train_history.is_none()) {
                return Err(semantic(
                    "retrain: needs api.registry (where versions go) and api.train_history (what they learn from)"
                        .into(),
                ));
            }
        }
        Ok(cfg)
    }
}

/// Writes every output to each configured sink; a flush succeeds only when all sinks' do.
#[derive(Default)]
pub struct FanOut {
    pub sinks: Vec<Box<dyn OutputSink>>,
    /// Flushes started and not yet durable: this fan-out's ticket and each sink's.
    flushing: std::collections::VecDeque<(u64, Vec<u64>)>,
    /// The last ticket handed out, and the newest durable one.
    issued: u64,
    durable: u64,
}

impl FanOut {
    pub fn new(sinks: Vec<Box<dyn OutputSink>>) -> FanOut {
        FanOut {
            sinks,
            ..FanOut::default()
        }
    }
}

impl OutputSink for FanOut {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        for s in &mut self.sinks {
            s.write(outputs)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        for s in &mut self.sinks {
            s.flush()?;
        }
        self.flushing.clear();
        self.durable = self.issued;
        Ok(())
    }
    fn flush_start(&mut self) -> anyhow::Result<u64> {
        let tickets = self
            .sinks
            .iter_mut()
            .map(|s| s.flush_start())
            .collect::<anyhow::Result<Vec<u64>>>()?;
        self.issued += 1;
        self.flushing.push_back((self.issued, tickets));
        Ok(self.issued)
    }
    fn flushed(&mut self) -> anyhow::Result<u64> {
        if self.flushing.is_empty() {
            return Ok(self.durable);
        }
        let done = self
            .sinks
            .iter_mut()
            .map(|s| s.flushed())
            .collect::<anyhow::Result<Vec<u64>>>()?;
        while let Some((ticket, tickets)) = self.flushing.front() {
            if tickets.iter().zip(&done).any(|(t, d)| t > d) {
                break;
            }
            self.durable = *ticket;
            self.flushing.pop_front();
        }
        Ok(self.durable)
    }
}

/// Alerts (and optionally score lines) as JSON lines.
struct JsonlAlerts(LineWriter, Option<LineWriter>);

impl OutputSink for JsonlAlerts {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        for (_, o) in outputs {
            match (o, self.1.as_mut()) {
                (Output::Alert(a), _) => self.0.write_json(a)?,
                (Output::Score(s), Some(scores)) => scores.write_json(s)?,
                _ => {}
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.0.flush()?;
        match self.1.as_mut() {
            Some(scores) => scores.flush(),
            None => Ok(()),
        }
    }
}

/// Alerts and RUL predictions into the SQLite store.
struct SqliteAlerts {
    store: SqliteStore,
    batch: Vec<crate::event::Alert>,
    predictions: Vec<crate::rul::predict::Prediction>,
}

impl OutputSink for SqliteAlerts {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        for (_, o) in outputs {
            match o {
                Output::Alert(a) => self.batch.push(a.clone()),
                Output::Prediction(p) => self.predictions.push((**p).clone()),
                Output::Score(_) | Output::Dead(_) => {}
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.batch.is_empty() {
            self.store.insert(&self.batch)?;
            crate::metrics::global()
                .alerts_emitted
                .with_label_values(&["sqlite"])
                .inc_by(self.batch.len() as u64);
            self.batch.clear();
        }
        if !self.predictions.is_empty() {
            self.store.insert_predictions(&self.predictions)?;
            self.predictions.clear();
        }
        Ok(())
    }
}

/// Builds the configured sinks.
pub fn build_sinks(cfg: &SinksConfig) -> anyhow::Result<FanOut> {
    let mut sinks: Vec<Box<dyn OutputSink>> = Vec::new();
    if let Some(k) = &cfg.kafka {
        sinks.push(Box::new(KafkaSink::new(k)?));
    }
    if let Some(j) = &cfg.jsonl {
        let scores = j.scores.as_deref().map(LineWriter::create).transpose()?;
        sinks.push(Box::new(JsonlAlerts(
            LineWriter::create(&j.alerts)?,
            scores,
        )));
    }
    if let Some(s) = &cfg.sqlite {
        crate::metrics::global().register_sink("sqlite");
        sinks.push(Box::new(SqliteAlerts {
            store: SqliteStore::open(&s.path)?,
            batch: Vec::new(),
            predictions: Vec::new(),
        }));
    }
    if let Some(e) = &cfg.egizcore {
        sinks.push(Box::new(EgizCoreSink::new(e)?));
    }
    Ok(FanOut::new(sinks))
}

/// Runs the service described by `cfg` until its source ends or `stop` is set.
pub fn run_service(
    cfg: &ServiceConfig,
    workers: Option<usize>,
    cluster: Option<pipeline::ClusterConfig>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<RunReport> {
    let (dataflow, rules) = super::load_dataflow(cfg.dataflow.as_deref())?;
    let workers = workers
        .or(cfg.workers)
        .unwrap_or_else(super::default_workers);
    crate::metrics::global().register_workers(workers);
    let multi = cluster.as_ref().is_some_and(|c| c.processes > 1);
    if multi && cfg.source.kafka.is_none() && cfg.source.file.is_none() {
        anyhow::bail!(
            "a cluster run (--processes > 1) needs a kafka or file source: a live source would be read by every process"
        );
    }
    // Every output reaches worker 0 of process 0: only that process writes the sinks and serves
    // the API; the others write nothing themselves.
    let writes = cluster.as_ref().is_none_or(|c| c.process == 0);
    let mut sink = if writes {
        build_sinks(&cfg.sinks)?
    } else {
        FanOut::default()
    };
    let service = if writes {
        super::serve::attach(cfg, &rules, &stop, &mut sink)?
    } else {
        None
    };
    if multi && cfg.checkpoint.is_some() {
        anyhow::bail!(
            "checkpoint: not supported in a cluster run (--processes > 1) yet; remove the checkpoint section or run one process"
        );
    }
    let checkpoint = match &cfg.checkpoint {
        Some(c) => Some(Arc::new(crate::checkpoint::Checkpointing::open(
            c, &dataflow, workers,
        )?)),
        None => None,
    };
    let opts = RunOptions {
        workers,
        emit_scores: cfg.scores || service.as_ref().is_some_and(|s| s.wants_scores()),
        stop: Arc::clone(&stop),
        cluster,
        checkpoint,
        ..RunOptions::default()
    };
    let mut producer = None;
    let input = if let Some(m) = &cfg.source.mqtt {
        let source = crate::sources::mqtt::start(m, Arc::clone(&stop))?;
        producer = Some(source.thread);
        Input::Messages(source.messages)
    } else if let Some(e) = &cfg.source.egizcore {
        let source = crate::sources::egizcore::start(e, Arc::clone(&stop))?;
        producer = Some(source.thread);
        Input::Messages(source.messages)
    } else if let Some(k) = &cfg.source.kafka {
        Input::Kafka(k.clone())
    } else if let Some(f) = &cfg.source.file {
        let data = crate::sources::file::open(&f.path)?;
        match f.rate {
            Some(rate) => Input::PacedLines(data, rate),
            None => Input::Lines(data),
        }
    } else if let Some(sim) = &cfg.source.simulator {
        let (tx, rx) = std::sync::mpsc::sync_channel(65_536);
        let sim_cfg = SimulatorConfig {
            things: sim.things,
            seed: sim.seed,
            faults_per_1000: sim.faults_per_1000,
            start_ts: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64,
            ..SimulatorConfig::default()
        };
        let (rate, limit, stop_sim) = (sim.rate, sim.points, Arc::clone(&stop));
        producer = Some(std::thread::spawn(move || {
            let mut sim = Simulator::new(sim_cfg);
            let t0 = Instant::now();
            let mut sent: u64 = 0;
            while !stop_sim.load(Ordering::SeqCst) && limit.is_none_or(|l| sent < l) {
                let due =
                    ((t0.elapsed().as_secs_f64() * rate) as u64).min(limit.unwrap_or(u64::MAX));
                while sent < due {
                    if tx.send(sim.next_point()).is_err() {
                        return;
                    }
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
        Input::Live(rx)
    } else {
        anyhow::bail!("no source configured");
    };
    // On an error the service is dropped, which stops it too.
    let report = pipeline::run(dataflow, rules, input, Box::new(sink), opts)?;
    if let Some(p) = producer {
        let _ = p.join();
    }
    if let Some(s) = service {
        s.drained();
        s.shutdown()?;
    }
    Ok(report)
}

/// `egizml run`: loads the config, runs until stopped, returns the summary printed as the last line.
pub fn run(args: &RunArgs) -> anyhow::Result<serde_json::Value> {
    let cfg = ServiceConfig::load(&args.config)?;
    let cluster = args.cluster()?;
    let stop = Arc::new(AtomicBool::new(false));
    super::stop_on_signal(Arc::clone(&stop));
    let report = run_service(&cfg, args.workers, cluster, stop)?;
    let c = &report.counters;
    let mut summary = serde_json::json!({
        "points": c.points,
        "alerts": c.alerts,
        "malformed": c.malformed_total(),
        "elapsed_s": report.elapsed_s,
        "points_per_sec": c.points as f64 / report.elapsed_s.max(1e-9),
    });
    if cfg.sinks.egizcore.is_some() {
        summary["egizcore"] = crate::sinks::egizcore::summary();
    }
    if let Some(c) = &report.checkpoint {
        summary["checkpoint"] = serde_json::to_value(c)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ServiceConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.yaml");
        std::fs::write(&path, text).unwrap();
        ServiceConfig::load(&path).map_err(|e| e.to_string())
    }

    const BASE: &str = "source:\n  simulator: {}\nsinks:\n  jsonl:\n    alerts: a.jsonl\n";

    #[test]
    fn retrain_needs_the_apis_registry_and_history() {
        let e = load(&format!("{BASE}retrain:\n  scopes: [oven]\n")).unwrap_err();
        assert!(
            e.contains("svc.yaml") && e.contains("retrain: needs api.registry"),
            "{e}"
        );
        let e = load(&format!(
            "{BASE}api:\n  registry: {{path: m}}\nretrain:\n  scopes: [oven]\n"
        ))
        .unwrap_err();
        assert!(e.contains("api.train_history"), "{e}");
        let ok = load(&format!(
            "{BASE}api:\n  registry: {{path: m}}\n  train_history: {{file: h.jsonl}}\nretrain:\n  every: 1d\n  scopes: [oven]\n"
        ))
        .unwrap();
        assert_eq!(ok.retrain.unwrap().every, Duration::from_secs(86_400));
        let e = load(&format!(
            "{BASE}api:\n  registry: {{path: m}}\n  train_history: {{file: h.jsonl}}\nretrain:\n  scopes: [oven]\n  params: {{max_samples: 0}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("retrain.params"), "{e}");
    }

    /// Acknowledges its flushes when told to (like a Kafka producer's delivery reports).
    struct Deferred {
        started: u64,
        durable: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl OutputSink for Deferred {
        fn write(&mut self, _: &[(u64, Output)]) -> anyhow::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> anyhow::Result<()> {
            self.durable
                .store(self.started, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn flush_start(&mut self) -> anyhow::Result<u64> {
            self.started += 1;
            Ok(self.started)
        }
        fn flushed(&mut self) -> anyhow::Result<u64> {
            Ok(self.durable.load(std::sync::atomic::Ordering::SeqCst))
        }
    }

    /// Flushes at once (the trait's defaults).
    struct Immediate;

    impl OutputSink for Immediate {
        fn write(&mut self, _: &[(u64, Output)]) -> anyhow::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_fan_out_flush_is_durable_once_every_sink_has_acknowledged_it() {
        use std::sync::atomic::Ordering;
        let (a, b) = (std::sync::Arc::default(), std::sync::Arc::default());
        let mut fan = FanOut::new(vec![
            Box::new(Deferred {
                started: 0,
                durable: std::sync::Arc::clone(&a),
            }),
            Box::new(Immediate),
            Box::new(Deferred {
                started: 10,
                durable: std::sync::Arc::clone(&b),
            }),
        ]);
        let first = fan.flush_start().unwrap();
        let second = fan.flush_start().unwrap();
        assert!(first < second);
        assert_eq!(fan.flushed().unwrap(), 0, "nothing acknowledged yet");
        a.store(2, Ordering::SeqCst);
        b.store(11, Ordering::SeqCst);
        assert_eq!(fan.flushed().unwrap(), first, "b has only the first");
        b.store(12, Ordering::SeqCst);
        assert_eq!(fan.flushed().unwrap(), second);
        let third = fan.flush_start().unwrap();
        assert_eq!(fan.flushed().unwrap(), second);
        fan.flush().unwrap();
        assert_eq!(fan.flushed().unwrap(), third, "flush waits for everything");
    }
}
