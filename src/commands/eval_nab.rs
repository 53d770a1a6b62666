//! `egizml eval nab`: Numenta Anomaly Benchmark scoring of detections (see `eval::nab`).
//!
//! Input, as in the NAB repository: `--data DIR` holds CSV files (`timestamp,value[,...]`), `--labels
//! FILE` is NAB's `combined_labels.json` (`{"dir/file.csv": ["2014-04-10 07:15:00", ...]}`, windows are
//! then derived the Numenta way) or `combined_windows.json` (`{"dir/file.csv": [["start", "end"], ...]}`).
//! A file with an `anomaly_score` column (a NAB results file) is scored as is, detections being scores at
//! or above `--threshold`; a file without one runs through the detection engine (the default dataflow or
//! `--config`, every numeric column a feature, the probationary period as warm-up), and its per-reading
//! `anomaly` flags are the detections.

use super::load_dataflow;
use crate::eval::nab::{
    numenta_probation, numenta_windows, score_numenta, NabScores, RawScore, Window, PROFILES,
};
use crate::eval::skab::parse_datetime;
use crate::event::{Name, Origin, Point};
use crate::pipeline::{Engine, Output, Record};
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `egizml eval nab`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalNabArgs {
    /// Folder of the CSV files named in the labels file.
    #[arg(long)]
    pub data: PathBuf,
    /// NAB labels (`combined_labels.json`) or windows (`combined_windows.json`).
    #[arg(long)]
    pub labels: PathBuf,
    /// Score at or above which an `anomaly_score` is a detection.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Dataflow for files without an `anomaly_score` column (default: the embedded default).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The last stdout line of `eval nab` (a contract, see DESIGN.md).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct NabSummary {
    pub standard: f64,
    pub low_fp: f64,
    pub low_fn: f64,
}

/// One file's outcome.
#[derive(Clone, Debug)]
pub struct NabFileResult {
    pub name: String,
    pub points: usize,
    pub windows: usize,
    pub detections: usize,
    /// Raw sums per profile.
    pub raw: [RawScore; 3],
}

/// Labels of one file: anomaly timestamps or explicit windows.
enum Truth {
    Labels(Vec<i64>),
    Windows(Vec<(i64, i64)>),
}

fn ts_of(v: &serde_json::Value, labels: &Path, key: &str) -> anyhow::Result<i64> {
    let s = v.as_str().with_context(|| {
        format!(
            "{}: {key}: expected a timestamp string, got {v}",
            labels.display()
        )
    })?;
    parse_datetime(s).with_context(|| format!("{}: {key}: bad timestamp {s:?}", labels.display()))
}

fn read_labels(path: &Path) -> anyhow::Result<BTreeMap<String, Truth>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let json: BTreeMap<String, Vec<serde_json::Value>> =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected an object of file -> list of timestamps or [start, end] pairs",
                path.display()
            )
        })?;
    let mut out = BTreeMap::new();
    for (file, items) in json {
        let truth = if items.iter().all(|v| v.is_string()) {
            Truth::Labels(
                items
                    .iter()
                    .map(|v| ts_of(v, path, &file))
                    .collect::<anyhow::Result<_>>()?,
            )
        } else {
            let mut w = Vec::new();
            for v in &items {
                match v.as_array().map(|a| a.as_slice()) {
                    Some([a, b]) => w.push((ts_of(a, path, &file)?, ts_of(b, path, &file)?)),
                    _ => bail!(
                        "{}: {file}: expected timestamps or [start, end] pairs, got {v}",
                        path.display()
                    ),
                }
            }
            Truth::Windows(w)
        };
        out.insert(file, truth);
    }
    Ok(out)
}

/// A NAB CSV: timestamps, numeric columns, and the `anomaly_score` column if any.
struct Series {
    ts: Vec<i64>,
    names: Vec<String>,
    values: Vec<Vec<f64>>,
    scores: Option<Vec<f64>>,
}

fn read_series(path: &Path) -> anyhow::Result<Series> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read"))?;
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.trim_end_matches('\r').split(',').map(str::trim).collect(),
        None => bail!("{file}:1: empty file"),
    };
    let tcol = header
        .iter()
        .position(|c| *c == "timestamp")
        .with_context(|| format!("{file}:1: no `timestamp` column"))?;
    let scol = header.iter().position(|c| *c == "anomaly_score");
    // Result files carry NAB's own label and per-profile columns: not detector inputs.
    let skip = [
        "label",
        "S(t)_standard",
        "S(t)_reward_low_FP_rate",
        "S(t)_reward_low_FN_rate",
    ];
    let vcols: Vec<usize> = (0..header.len())
        .filter(|&c| c != tcol && Some(c) != scol && !skip.contains(&header[c]))
        .collect();
    let mut s = Series {
        ts: Vec::new(),
        names: vcols.iter().map(|&c| header[c].to_string()).collect(),
        values: Vec::new(),
        scores: scol.map(|_| Vec::new()),
    };
    for (i, line) in lines {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != header.len() {
            bail!(
                "{file}:{n}: {} fields, the header has {}",
                f.len(),
                header.len()
            );
        }
        let ts = parse_datetime(f[tcol])
            .with_context(|| format!("{file}:{n}: bad timestamp {:?}", f[tcol]))?;
        if s.ts.last().is_some_and(|&last| ts <= last) {
            bail!(
                "{file}:{n}: timestamp {:?} is not after the previous row's",
                f[tcol]
            );
        }
        let num = |c: usize| -> anyhow::Result<f64> {
            f[c].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| {
                    format!(
                        "{file}:{n}: column `{}`: not a finite number: {:?}",
                        header[c], f[c]
                    )
                })
        };
        s.ts.push(ts);
        if let (Some(c), Some(sc)) = (scol, s.scores.as_mut()) {
            sc.push(num(c)?);
        }
        s.values.push(
            vcols
                .iter()
                .map(|&c| num(c))
                .collect::<anyhow::Result<_>>()?,
        );
    }
    Ok(s)
}

/// Detections of a series without scores: the engine's per-reading anomaly flags.
fn detect(series: &Series, name: &str, config: Option<&Path>) -> anyhow::Result<Vec<bool>> {
    let (cfg, rules) = load_dataflow(config)?;
    let mut cfg = (*cfg).clone();
    cfg.warmup = numenta_probation(series.ts.len());
    let mut engine = Engine::new(Arc::new(cfg), rules, true);
    let names: Vec<Name> = series
        .names
        .iter()
        .map(|n| Name::from(n.as_str()))
        .collect();
    let mut flags = vec![false; series.ts.len()];
    let mut out = Vec::new();
    for (i, (ts, vals)) in series.ts.iter().zip(&series.values).enumerate() {
        let p = Point {
            thing_id: Name::from(name),
            equipment_type: Name::from("nab"),
            ts: *ts,
            values: names.iter().cloned().zip(vals.iter().copied()).collect(),
            label: None,
            seq: i as u64,
            origin: Origin::Line { line: i as u64 + 2 },
            learn_only: false,
        };
        out.clear();
        engine.process(Record::Point(p, 0), 0, &mut out);
        for (_, o) in out.drain(..) {
            if let Output::Score(s) = o {
                flags[i] = s.anomaly;
            }
        }
    }
    Ok(flags)
}

/// Index window of a time window: the points with start <= ts <= end (None when it holds no point).
fn index_window(ts: &[i64], start: i64, end: i64) -> Option<Window> {
    let a = ts.partition_point(|&t| t < start);
    let b = ts.partition_point(|&t| t <= end);
    (a < b).then(|| Window {
        start: a,
        end: b - 1,
    })
}

/// Scores every labelled file.
pub fn eval_nab(args: &EvalNabArgs) -> anyhow::Result<(NabSummary, Vec<NabFileResult>)> {
    let labels = read_labels(&args.labels)?;
    if labels.is_empty() {
        bail!("{}: no files labelled", args.labels.display());
    }
    let mut results = Vec::new();
    let mut total = [RawScore::default(); 3];
    for (name, truth) in &labels {
        let path = args.data.join(name);
        let series = read_series(&path)?;
        let n = series.ts.len();
        let detections: Vec<bool> = match &series.scores {
            Some(s) => s.iter().map(|v| *v >= args.threshold).collect(),
            None => detect(&series, name, args.config.as_deref())?,
        };
        let windows = match truth {
            Truth::Labels(times) => {
                let mut idx = Vec::new();
                for &t in times {
                    // A label between readings belongs to the next reading.
                    let i = series.ts.partition_point(|&x| x < t);
                    if i >= n {
                        bail!(
                            "{}: {name}: label after the last reading",
                            args.labels.display()
                        );
                    }
                    idx.push(i);
                }
                numenta_windows(n, &idx)
            }
            Truth::Windows(w) => {
                let mut ws: Vec<Window> = w
                    .iter()
                    .filter_map(|&(a, b)| index_window(&series.ts, a, b))
                    .collect();
                ws.sort_by_key(|w| w.start);
                ws
            }
        };
        let probation = numenta_probation(n);
        let raw = PROFILES.map(|p| score_numenta(&detections, &windows, probation, &p));
        for (t, r) in total.iter_mut().zip(&raw) {
            t.add(r);
        }
        results.push(NabFileResult {
            name: name.clone(),
            points: n,
            windows: windows.len(),
            detections: detections.iter().filter(|d| **d).count(),
            raw,
        });
    }
    let s = NabScores::from_raw(&total);
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    Ok((
        NabSummary {
            standard: r2(s.standard),
            low_fp: r2(s.low_fp),
            low_fn: r2(s.low_fn),
        },
        results,
    ))
}

/// The readable table printed before the summary JSON.
pub fn describe(s: &NabSummary, files: &[NabFileResult]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<40} {:>7} {:>7} {:>9} {:>7} {:>5} {:>10}",
        "file", "points", "windows", "detected", "missed", "FPs", "raw (std)"
    )];
    for f in files {
        let r = &f.raw[0];
        out.push(format!(
            "{:<40} {:>7} {:>7} {:>9} {:>7} {:>5} {:>10.3}",
            f.name, f.points, f.windows, r.detected, r.missed, r.false_positives, r.score
        ));
    }
    out.push(format!(
        "NAB score (Numenta): standard {:.2}, reward low FP {:.2}, reward low FN {:.2}",
        s.standard, s.low_fp, s.low_fn
    ));
    out
}
