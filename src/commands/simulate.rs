//! `egizml simulate`: writes labelled simulator telemetry as a JSONL file (flat format).

use crate::sources::simulator::{write_jsonl, FaultEpisode, SimulatorConfig};
use anyhow::Context;
use std::io::BufWriter;
use std::path::PathBuf;

/// Arguments of `egizml simulate`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulateArgs {
    /// Output JSONL file.
    #[arg(long)]
    pub output: PathBuf,
    /// Readings to write in all.
    #[arg(long, default_value_t = 100_000)]
    pub points: usize,
    /// Things (ovens, mixers, conveyors) they are spread over.
    #[arg(long, default_value_t = 100)]
    pub things: usize,
    /// Random seed: the same seed gives the same file.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Expected fault episodes per thing per 1,000 readings.
    #[arg(long, default_value_t = 2.0)]
    pub faults_per_1000: f64,
    /// Also write the injected fault episodes here (JSONL).
    #[arg(long)]
    pub episodes: Option<PathBuf>,
}

impl SimulateArgs {
    pub fn simulator_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            things: self.things,
            seed: self.seed,
            faults_per_1000: self.faults_per_1000,
            ..SimulatorConfig::default()
        }
    }
}

pub fn simulate(args: &SimulateArgs) -> anyhow::Result<Vec<FaultEpisode>> {
    anyhow::ensure!(args.things > 0, "--things must be at least 1");
    let f = std::fs::File::create(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let episodes = write_jsonl(args.simulator_config(), args.points, BufWriter::new(f))
        .with_context(|| format!("{}: write failed", args.output.display()))?;
    if let Some(path) = &args.episodes {
        let mut w = crate::sinks::jsonl::LineWriter::create(path)?;
        for e in &episodes {
            w.write_json(e)?;
        }
        w.flush()?;
    }
    Ok(episodes)
}
