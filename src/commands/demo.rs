//! `egizml demo`: the embedded default end to end. The simulator feeds the full pipeline, alerts go to
//! the SQLite store and stdout, and the REST API with /metrics runs on 127.0.0.1:8080. No external
//! service is needed.

use super::load_dataflow;
use super::serve::{self, ServeOptions};
use crate::pipeline::{self, Input, RunOptions};
use crate::sinks::retention::RetentionConfig;
use crate::sources::simulator::{Simulator, SimulatorConfig};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `egizml demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C / SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Simulated things.
    #[arg(long, default_value_t = 20)]
    pub things: usize,
    /// Readings per second over all things. Each thing reports every simulated second, so the demo
    /// runs `rate / things` times faster than real time to show faults within seconds.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Expected fault episodes per thing per 1,000 readings.
    #[arg(long, default_value_t = 3.0)]
    pub faults_per_1000: f64,
    /// Simulator seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Address of the REST API and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Anomaly store: an SQLite file, or a `postgresql://` URL.
    #[arg(long, default_value = "egizml-data/demo.db")]
    pub store: String,
    /// Timely workers (default: the machine's cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Dataflow file (default: the embedded default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Don't print each alert.
    #[arg(long)]
    pub quiet: bool,
    /// Model registry served by `/api/v1/models` and filled by `POST /api/v1/train/{thing}`: a directory,
    /// or an MLflow tracking server `http://HOST:PORT`.
    #[arg(long, default_value = "egizml-data/models")]
    pub registry: PathBuf,
    /// Simulator readings (same things and seed as the live run) that API training jobs learn from.
    #[arg(long, default_value_t = 100_000)]
    pub train_points: usize,
    /// Once the input has ended and every alert is stored and summarised, keep serving the API this
    /// many seconds (or until Ctrl-C / SIGTERM), so the final state can be inspected. `/health`
    /// reports `details.drained: true` from then on.
    #[arg(long, default_value_t = 0.0)]
    pub linger: f64,
}

/// The last stdout line of `demo`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DemoSummary {
    pub points: u64,
    pub alerts: u64,
    pub malformed: u64,
    pub elapsed_s: f64,
    pub points_per_sec: f64,
}

pub fn demo(args: &DemoArgs) -> anyhow::Result<DemoSummary> {
    anyhow::ensure!(args.things > 0, "--things must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be > 0");
    anyhow::ensure!(
        args.linger.is_finite() && args.linger >= 0.0,
        "--linger must be a non-negative number of seconds"
    );
    let (cfg, rules) = load_dataflow(args.config.as_deref())?;
    let workers = args.workers.unwrap_or_else(super::default_workers);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let opts = ServeOptions {
        listen: args.listen,
        // Mutating API calls (feedback, rules, models, training) need this bearer token when it is set.
        token: std::env::var("EGIZML_API_TOKEN").ok(),
        store: Some(args.store.clone()),
        write_store: true,
        retention: RetentionConfig::default(),
        registry: Some(crate::registry::RegistryConfig::from_arg(&args.registry)?),
        train_history: Some(crate::training::HistorySpec::Simulator(
            crate::training::SimulatorHistory {
                things: args.things,
                points: args.train_points,
                seed: args.seed,
                faults_per_1000: args.faults_per_1000,
            },
        )),
        fleet: true,
        retrain: None,
        mode: "demo",
    };
    let (service, sink) = serve::start(opts, rules.clone(), Arc::clone(&stop))?;
    let sink = sink.console(args.quiet)?;
    crate::metrics::global().register_workers(workers);
    println!(
        "egizml demo: {} simulated things at {:.0} readings/s; REST on http://{}/api/v1/anomalies, metrics on http://{}/metrics, store {}",
        args.things,
        args.rate,
        service.local_addr(),
        service.local_addr(),
        args.store
    );
    super::stop_on_signal(Arc::clone(&stop));

    // The simulator runs on its own thread at the requested rate; event time starts now.
    let (tx, rx) = sync_channel(65_536);
    let sim_cfg = SimulatorConfig {
        things: args.things,
        seed: args.seed,
        faults_per_1000: args.faults_per_1000,
        start_ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64,
        ..SimulatorConfig::default()
    };
    let rate = args.rate;
    let duration = args.duration.map(Duration::from_secs_f64);
    let stop_sim = Arc::clone(&stop);
    let producer = std::thread::spawn(move || {
        let mut sim = Simulator::new(sim_cfg);
        let t0 = Instant::now();
        let mut sent: u64 = 0;
        while !stop_sim.load(Ordering::SeqCst) && duration.is_none_or(|d| t0.elapsed() < d) {
            let due = (t0.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                if tx.send(sim.next_point()).is_err() {
                    return;
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Dropping the sender ends the run once the pipeline has drained.
    });

    let opts = RunOptions {
        workers,
        // Per-reading scores feed the device summaries (score mean and p95), aggregated per flush.
        emit_scores: true,
        stop: Arc::new(AtomicBool::new(false)),
        cluster: None,
        ..RunOptions::default()
    };
    let report = pipeline::run(cfg, rules, Input::Live(rx), Box::new(sink), opts)?;
    let _ = producer.join();
    // The sink's last flush committed the last epoch; wait until the summaries have absorbed it.
    service.drained();
    let linger_until = Instant::now() + Duration::from_secs_f64(args.linger);
    while Instant::now() < linger_until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    service.shutdown()?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let c = &report.counters;
    Ok(DemoSummary {
        points: c.points,
        alerts: c.alerts,
        malformed: c.malformed_total(),
        elapsed_s,
        points_per_sec: c.points as f64 / elapsed_s.max(1e-9),
    })
}
