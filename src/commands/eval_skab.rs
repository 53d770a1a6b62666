//! `egizml eval skab`: the Skoltech Anomaly Benchmark protocol through the real detection engine.

use super::load_dataflow;
use crate::config::{parse_yaml, DataflowConfig};
use crate::eval::skab::{
    self, SkabReport, LEADERBOARD_CPD, LEADERBOARD_OUTLIER, SKAB_DATAFLOW, TRAIN_ROWS,
};
use crate::rules::{RuleSet, RulesHandle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `egizml eval skab`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalSkabArgs {
    /// SKAB data: the repository root, its `data` folder, or one group folder (e.g. `.../data/valve1`).
    #[arg(long)]
    pub data: PathBuf,
    /// Only this group (`valve1`, `valve2`, `other`); default: every labelled group found.
    #[arg(long)]
    pub subset: Option<String>,
    /// Dataflow file (default: the shipped hydraulic test bed dataflow, `dataflows/skab.yaml`). Its
    /// `warmup` is set to SKAB's 400 training rows.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The last stdout line of `eval skab` (a contract, see DESIGN.md; fields after `nab_standard` extend it).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct SkabSummary {
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub nab_standard: f64,
    pub nab_low_fp: f64,
    pub nab_low_fn: f64,
    pub files: usize,
    pub test_points: u64,
}

/// The dataflow `eval skab` runs: the given file or the embedded shipped one, warm-up = 400 rows.
pub fn skab_dataflow(
    config: Option<&std::path::Path>,
) -> anyhow::Result<(Arc<DataflowConfig>, RulesHandle)> {
    let (cfg, rules) = match config {
        Some(path) => load_dataflow(Some(path))?,
        None => {
            let file = "<embedded dataflows/skab.yaml>";
            let cfg: DataflowConfig = parse_yaml(SKAB_DATAFLOW, file)?;
            cfg.validate(file)?;
            (Arc::new(cfg), RulesHandle::fixed(RuleSet::empty()))
        }
    };
    let mut cfg = (*cfg).clone();
    cfg.warmup = TRAIN_ROWS;
    Ok((Arc::new(cfg), rules))
}

/// Runs the benchmark; returns the summary and the report.
pub fn eval_skab(args: &EvalSkabArgs) -> anyhow::Result<(SkabSummary, SkabReport)> {
    let (cfg, rules) = skab_dataflow(args.config.as_deref())?;
    let paths = skab::find_files(&args.data, args.subset.as_deref())?;
    let base = if args.data.join("data").is_dir() {
        args.data.join("data")
    } else {
        args.data.clone()
    };
    let mut files = Vec::with_capacity(paths.len());
    for p in &paths {
        let name = p
            .strip_prefix(&base)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        files.push(skab::load_file(p, &name)?);
    }
    let report = skab::evaluate(&cfg, &rules, &files)?;
    let c = &report.confusion;
    let summary = SkabSummary {
        f1: round(c.f1(), 4),
        far: round(c.far(), 2),
        mar: round(c.mar(), 2),
        nab_standard: round(report.nab.standard, 2),
        nab_low_fp: round(report.nab.low_fp, 2),
        nab_low_fn: round(report.nab.low_fn, 2),
        files: report.files.len(),
        test_points: c.tp + c.fp + c.tn + c.false_neg,
    };
    Ok((summary, report))
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// The readable table printed before the summary JSON.
pub fn describe(s: &SkabSummary, r: &SkabReport) -> Vec<String> {
    let mut out = vec![
        format!(
            "SKAB: {} files, first {TRAIN_ROWS} rows of each learn-only, {} test points scored",
            s.files, s.test_points
        ),
        format!(
            "{:<16} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7}",
            "file", "TP", "FP", "TN", "FN", "F1", "FAR %", "MAR %"
        ),
    ];
    for f in &r.files {
        let c = &f.confusion;
        out.push(format!(
            "{:<16} {:>6} {:>6} {:>6} {:>6} {:>6.3} {:>7.2} {:>7.2}",
            f.name,
            c.tp,
            c.fp,
            c.tn,
            c.false_neg,
            c.f1(),
            c.far(),
            c.mar()
        ));
    }
    let c = &r.confusion;
    out.push(format!(
        "{:<16} {:>6} {:>6} {:>6} {:>6} {:>6.3} {:>7.2} {:>7.2}",
        "pooled",
        c.tp,
        c.fp,
        c.tn,
        c.false_neg,
        c.f1(),
        c.far(),
        c.mar()
    ));
    out.push(String::new());
    out.push("Outlier detection beside SKAB's published leaderboard (test parts of all 34 files; ours: the files above):".into());
    out.push(format!(
        "{:<22} {:>6} {:>7} {:>7}",
        "algorithm", "F1", "FAR %", "MAR %"
    ));
    out.push(format!(
        "{:<22} {:>6.2} {:>7.2} {:>7.2}",
        "EgizML (this run)", s.f1, s.far, s.mar
    ));
    for (name, f1, far, mar) in LEADERBOARD_OUTLIER {
        out.push(format!("{name:<22} {f1:>6.2} {far:>7.2} {mar:>7.2}"));
    }
    out.push(String::new());
    let raw = &r.nab_raw[0];
    out.push(format!(
        "Changepoints (SKAB NAB, 60 s right windows): {} true, {} detected, {} missed, {} false detections",
        raw.detected + raw.missed,
        raw.detected,
        raw.missed,
        raw.false_positives
    ));
    out.push(format!(
        "{:<22} {:>8} {:>8} {:>8}",
        "algorithm", "standard", "low FP", "low FN"
    ));
    out.push(format!(
        "{:<22} {:>8.2} {:>8.2} {:>8.2}",
        "EgizML (this run)", s.nab_standard, s.nab_low_fp, s.nab_low_fn
    ));
    for (name, a, b, c) in LEADERBOARD_CPD {
        out.push(format!("{name:<22} {a:>8.2} {b:>8.2} {c:>8.2}"));
    }
    out
}
