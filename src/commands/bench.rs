//! `egizml bench`: throughput and per-reading latency of the full pipeline on a generated workload.
//!
//! The workload is simulator telemetry serialised to JSONL in memory, so the figure includes decoding,
//! the exchange between workers, every detector and the alert policy, but no disk I/O.

use super::load_dataflow;
use crate::pipeline::{self, Input, Output, OutputSink, RunOptions};
use crate::sources::simulator::{write_jsonl, SimulatorConfig};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `egizml bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Readings in the workload.
    #[arg(long, default_value_t = 1_000_000)]
    pub points: usize,
    /// Things the readings are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub things: usize,
    /// Timely workers (default: the machine's cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Dataflow file (default: the embedded default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replay this JSONL file instead of generating a workload.
    #[arg(long)]
    pub input: Option<PathBuf>,
}

/// The last stdout line of `bench` (a contract, see DESIGN.md).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BenchSummary {
    pub points: u64,
    pub points_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub alerts: u64,
    pub workers: usize,
    pub elapsed_s: f64,
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

pub fn bench(args: &BenchArgs) -> anyhow::Result<BenchSummary> {
    let (cfg, rules) = load_dataflow(args.config.as_deref())?;
    let data: Arc<dyn AsRef<[u8]> + Send + Sync> = match &args.input {
        Some(path) => crate::sources::file::open(path)?,
        None => {
            anyhow::ensure!(args.things > 0, "--things must be at least 1");
            let mut buf = Vec::with_capacity(args.points * 340);
            let sim = SimulatorConfig {
                things: args.things,
                ..SimulatorConfig::default()
            };
            write_jsonl(sim, args.points, &mut buf)?;
            Arc::new(buf)
        }
    };
    let workers = args.workers.unwrap_or_else(super::default_workers);
    let opts = RunOptions {
        workers,
        ..RunOptions::default()
    };
    let report = pipeline::run(cfg, rules, Input::Lines(data), Box::new(Discard), opts)?;
    let latency = report.latency_us.clone().unwrap_or_default();
    let points = report.counters.points;
    Ok(BenchSummary {
        points,
        points_per_sec: points as f64 / report.elapsed_s.max(1e-9),
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        alerts: report.counters.alerts,
        workers,
        elapsed_s: report.elapsed_s,
    })
}
