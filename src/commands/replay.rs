//! `egizml replay`: deterministic replay of a JSONL file through the full pipeline.

use super::load_dataflow;
use crate::decode::MalformedReason;
use crate::pipeline::{self, Input, RunOptions, RunReport};
use crate::sinks::jsonl::JsonlSink;
use crate::sources::file;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `egizml replay`.
#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// JSONL telemetry, flat or EgizCore format (one message per line).
    #[arg(long)]
    pub input: PathBuf,
    /// Where alerts go, one JSON object per line (`-` for stdout).
    #[arg(long)]
    pub alerts: PathBuf,
    /// Optional per-reading score lines.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// RUL predictions, one JSON object per line (needs a dataflow with a `rul` section).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Dead letters (malformed or late input with its raw bytes); default: next to the alerts file,
    /// `<alerts>.dead.jsonl`, created only when there is one.
    #[arg(long)]
    pub dead_letters: Option<PathBuf>,
    /// Timely workers (default: the machine's cores). Results do not depend on it.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Dataflow file (default: the embedded default dataflow and rules).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Learn-only readings per thing before scoring (overrides the dataflow's `warmup`).
    #[arg(long)]
    pub warmup: Option<usize>,
}

/// The last stdout line of `replay` (a contract, see DESIGN.md).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ReplaySummary {
    pub points: u64,
    pub alerts: u64,
    pub malformed: u64,
    /// RUL predictions emitted (0 without a `rul` section).
    #[serde(default)]
    pub predictions: u64,
    pub elapsed_s: f64,
    pub points_per_sec: f64,
}

pub fn default_dead_letters(alerts: &Path) -> PathBuf {
    if alerts.as_os_str() == "-" {
        return PathBuf::from("dead-letters.jsonl");
    }
    let stem = alerts
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "alerts".into());
    alerts.with_file_name(format!("{stem}.dead.jsonl"))
}

/// Runs a replay; returns the summary and the full report.
pub fn replay(args: &ReplayArgs) -> anyhow::Result<(ReplaySummary, RunReport)> {
    let (cfg, rules) = load_dataflow(args.config.as_deref())?;
    let mut cfg = (*cfg).clone();
    if let Some(w) = args.warmup {
        cfg.warmup = w;
    }
    let data = file::open(&args.input)?;
    let dead = args
        .dead_letters
        .clone()
        .unwrap_or_else(|| default_dead_letters(&args.alerts));
    let mut sink = JsonlSink::create(&args.alerts, args.scores.as_deref(), &dead)?;
    if let Some(path) = &args.predictions {
        anyhow::ensure!(
            cfg.rul.is_some(),
            "--predictions needs a dataflow with a `rul` section (--config)"
        );
        sink = sink.with_predictions(path)?;
    }
    let opts = RunOptions {
        workers: args.workers.unwrap_or_else(super::default_workers),
        emit_scores: args.scores.is_some(),
        ..RunOptions::default()
    };
    let report = pipeline::run(
        Arc::new(cfg),
        rules,
        Input::Lines(data),
        Box::new(sink),
        opts,
    )?;
    let c = &report.counters;
    let summary = ReplaySummary {
        points: c.points,
        alerts: c.alerts,
        malformed: c.malformed_total(),
        predictions: c.predictions,
        elapsed_s: report.elapsed_s,
        points_per_sec: if report.elapsed_s > 0.0 {
            c.points as f64 / report.elapsed_s
        } else {
            0.0
        },
    };
    Ok((summary, report))
}

/// Human-readable lines printed before the summary JSON.
pub fn describe(summary: &ReplaySummary, report: &RunReport) -> Vec<String> {
    let c = &report.counters;
    let mut lines = vec![format!(
        "replayed {} readings of {} things in {:.3} s ({:.0} readings/s): {} anomalous readings, {} alerts ({} deduplicated, {} rate limited)",
        summary.points,
        report.things,
        summary.elapsed_s,
        summary.points_per_sec,
        c.anomalies,
        c.alerts,
        c.suppressed_dedup,
        c.suppressed_rate
    )];
    if c.predictions > 0 || c.rul_skipped > 0 {
        lines.push(format!(
            "{} RUL predictions; {} readings lacked a model sensor",
            c.predictions, c.rul_skipped
        ));
    }
    if summary.malformed > 0 {
        let by_reason: Vec<String> = MalformedReason::ALL
            .iter()
            .zip(c.malformed.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        lines.push(format!(
            "dead-lettered {} messages: {}",
            summary.malformed,
            by_reason.join(", ")
        ));
    }
    lines
}
