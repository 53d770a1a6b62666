//! The Skoltech Anomaly Benchmark (SKAB): file loader and the benchmark's point-wise metrics.
//!
//! Format (SKAB v0.9, `data/<group>/<n>.csv`): `;`-separated, a header row, a `datetime` column
//! (`YYYY-MM-DD hh:mm:ss`, local time of the test bed, ~1 s sampling), eight sensor columns, then
//! `anomaly` and `changepoint` (0/1 as `0.0`/`1.0`; both absent from `anomaly-free.csv`).
//!
//! Protocol (SKAB README and `core/metrics.py`): the first 400 rows of each file train the detector, the
//! rest are the test part; the confusion counts are pooled over the test parts of all files, then
//! `F1 = TP / (TP + (FP + FN)/2)`, `FAR = FP / (FP + TN) * 100`, `MAR = FN / (FN + TP) * 100`.

use super::nab::{changepoints_of, score_skab, NabScores, RawScore, PROFILES};
use crate::config::DataflowConfig;
use crate::decode::timestamp::parse_rfc3339;
use crate::event::{Name, Origin, Point, ScoreLine};
use crate::pipeline::{Engine, Output, Record};
use crate::rules::RulesHandle;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows of each file that train the detector (SKAB's protocol).
pub const TRAIN_ROWS: usize = 400;

/// SKAB's NAB window: 60 s to the right of each changepoint.
pub const NAB_WINDOW_MS: i64 = 60_000;

/// The sensor columns every SKAB file has, in file order.
pub const SENSORS: [&str; 8] = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
];

/// Why a SKAB file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SkabError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{dir}: no SKAB .csv files found{hint}")]
    Empty { dir: String, hint: String },
}

/// One row of a SKAB file.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `datetime` as epoch milliseconds (read as UTC: only differences matter).
    pub ts: i64,
    /// The eight sensors, in [`SENSORS`] order.
    pub values: [f64; 8],
    /// `anomaly` label (None in files without the column).
    pub anomaly: Option<bool>,
    /// `changepoint` label.
    pub changepoint: Option<bool>,
}

/// One loaded file.
#[derive(Clone, Debug)]
pub struct SkabFile {
    /// File name relative to the data folder, e.g. `valve1/3.csv`.
    pub name: String,
    pub rows: Vec<Row>,
}

/// Parses `YYYY-MM-DD hh:mm:ss` (no offset) or any RFC 3339 time into epoch ms.
pub fn parse_datetime(s: &str) -> Option<i64> {
    parse_rfc3339(s).or_else(|| parse_rfc3339(&format!("{s}Z")))
}

/// Parses the text of one SKAB file; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<Row>, SkabError> {
    let bad = |line: usize, message: String| SkabError::Invalid {
        file: file.to_string(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate();
    let header = match lines.next() {
        Some((_, h)) => h.trim_start_matches('\u{feff}').trim_end_matches('\r'),
        None => return Err(bad(1, "empty file: expected a `;`-separated header".into())),
    };
    let cols: Vec<&str> = header.split(';').map(str::trim).collect();
    let find = |name: &str| cols.iter().position(|c| *c == name);
    let dt = find("datetime").ok_or_else(|| {
        bad(
            1,
            format!("no `datetime` column in the header (is the separator `;`?): {header:?}"),
        )
    })?;
    let mut sensor_cols = [0usize; 8];
    for (k, s) in SENSORS.iter().enumerate() {
        sensor_cols[k] = find(s).ok_or_else(|| bad(1, format!("missing column `{s}`")))?;
    }
    let anomaly = find("anomaly");
    let changepoint = find("changepoint");
    let mut rows = Vec::new();
    let mut last_ts = i64::MIN;
    for (i, line) in lines {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(';').collect();
        if f.len() != cols.len() {
            return Err(bad(
                n,
                format!("{} fields, the header has {}", f.len(), cols.len()),
            ));
        }
        let ts = parse_datetime(f[dt].trim()).ok_or_else(|| {
            bad(
                n,
                format!("bad datetime {:?} (expected YYYY-MM-DD hh:mm:ss)", f[dt]),
            )
        })?;
        if ts <= last_ts {
            return Err(bad(
                n,
                format!("datetime {:?} is not after the previous row's", f[dt]),
            ));
        }
        last_ts = ts;
        let num = |c: usize| -> Result<f64, SkabError> {
            let s = f[c].trim();
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    bad(
                        n,
                        format!("column `{}`: not a finite number: {s:?}", cols[c]),
                    )
                })
        };
        let flag = |c: Option<usize>| -> Result<Option<bool>, SkabError> {
            match c {
                None => Ok(None),
                Some(c) => match num(c)? {
                    0.0 => Ok(Some(false)),
                    1.0 => Ok(Some(true)),
                    v => Err(bad(
                        n,
                        format!("column `{}`: expected 0 or 1, got {v}", cols[c]),
                    )),
                },
            }
        };
        let mut values = [0.0; 8];
        for (k, &c) in sensor_cols.iter().enumerate() {
            values[k] = num(c)?;
        }
        rows.push(Row {
            ts,
            values,
            anomaly: flag(anomaly)?,
            changepoint: flag(changepoint)?,
        });
    }
    Ok(rows)
}

/// Loads one file.
pub fn load_file(path: &Path, name: &str) -> Result<SkabFile, SkabError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SkabError::Io {
        file: file.clone(),
        source,
    })?;
    Ok(SkabFile {
        name: name.to_string(),
        rows: parse(&text, &file)?,
    })
}

/// Labelled files under `data_dir` (SKAB's repository root, its `data` folder, or one group folder):
/// with `subset` (e.g. `valve1`) only that group. Files are ordered by group, then numerically.
/// `anomaly-free.csv` has no labels and is skipped.
pub fn find_files(data_dir: &Path, subset: Option<&str>) -> Result<Vec<PathBuf>, SkabError> {
    let io = |source| SkabError::Io {
        file: data_dir.display().to_string(),
        source,
    };
    let base = if data_dir.join("data").is_dir() {
        data_dir.join("data")
    } else {
        data_dir.to_path_buf()
    };
    let mut groups: Vec<PathBuf> = match subset {
        Some(s) => vec![base.join(s)],
        None if has_csv(&base) => vec![base.clone()],
        None => {
            let mut g: Vec<PathBuf> = std::fs::read_dir(&base)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "anomaly-free"))
                .collect();
            g.sort();
            g
        }
    };
    groups.retain(|g| g.is_dir());
    let mut out = Vec::new();
    for g in groups {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&g)
            .map_err(|source| SkabError::Io {
                file: g.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "csv")
                    && p.file_name().is_some_and(|n| n != "anomaly-free.csv")
            })
            .collect();
        files.sort_by_key(|p| {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
            let num = stem.as_deref().and_then(|s| s.parse::<u64>().ok());
            (num.unwrap_or(u64::MAX), stem)
        });
        out.extend(files);
    }
    if out.is_empty() {
        let hint = match subset {
            Some(s) => format!(" for subset `{s}` (expected {}/{s}/*.csv)", base.display()),
            None => String::new(),
        };
        return Err(SkabError::Empty {
            dir: data_dir.display().to_string(),
            hint,
        });
    }
    Ok(out)
}

fn has_csv(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut it| {
        it.any(|e| {
            e.ok()
                .is_some_and(|e| e.path().extension().is_some_and(|x| x == "csv"))
        })
    })
}

/// Point-wise confusion counts, pooled over files by adding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub false_neg: u64,
}

impl Confusion {
    /// Counts one (label, prediction) pair.
    pub fn count(&mut self, label: bool, predicted: bool) {
        match (label, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.false_neg += 1,
        }
    }

    pub fn add(&mut self, o: &Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.tn += o.tn;
        self.false_neg += o.false_neg;
    }

    /// SKAB's F1: `TP / (TP + (FP + FN)/2)` (0 when there is nothing to count).
    pub fn f1(&self) -> f64 {
        let d = self.tp as f64 + (self.fp + self.false_neg) as f64 / 2.0;
        if d > 0.0 {
            self.tp as f64 / d
        } else {
            0.0
        }
    }

    /// False alarm rate, %: `FP / (FP + TN) * 100`.
    pub fn far(&self) -> f64 {
        pct(self.fp, self.fp + self.tn)
    }

    /// Missed alarm rate, %: `FN / (FN + TP) * 100`.
    pub fn mar(&self) -> f64 {
        pct(self.false_neg, self.false_neg + self.tp)
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// SKAB's published test-set leaderboard for the outlier task (README at commit b2c0d46, 34 files):
/// (algorithm, F1, FAR %, MAR %).
pub const LEADERBOARD_OUTLIER: [(&str, f64, f64, f64); 10] = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T-squared", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("MSCRED", 0.36, 49.94, 69.88),
    ("Isolation forest", 0.29, 2.56, 82.89),
];

/// SKAB's published changepoint leaderboard (NAB, 60 s right windows): (algorithm, standard, low FP,
/// low FN).
pub const LEADERBOARD_CPD: [(&str, f64, f64, f64); 11] = [
    ("MSCRED", 32.42, 16.53, 40.28),
    ("Isolation forest", 26.16, 19.5, 30.82),
    ("T-squared+Q (PCA)", 25.35, 14.51, 31.33),
    ("Conv-AE", 23.61, 21.54, 27.55),
    ("LSTM-AE", 23.51, 20.11, 25.91),
    ("T-squared", 19.54, 10.2, 24.31),
    ("MSET", 13.84, 10.22, 17.37),
    ("Vanilla AE", 11.41, 6.53, 13.91),
    ("Vanilla LSTM", 11.31, -3.8, 17.25),
    ("ArimaFD", -0.09, -0.17, -0.06),
    ("Null", 0.0, 0.0, 0.0),
];

/// The hydraulic test bed's shipped dataflow (`dataflows/skab.yaml`), embedded.
pub const SKAB_DATAFLOW: &str = include_str!("../../dataflows/skab.yaml");

/// Per-point outcome of running one file through the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct FileResult {
    pub name: String,
    /// Test-part timestamps (rows from [`TRAIN_ROWS`] on).
    pub ts: Vec<i64>,
    pub labels: Vec<bool>,
    pub changepoints: Vec<bool>,
    pub predicted: Vec<bool>,
    pub scores: Vec<f64>,
    pub confusion: Confusion,
}

/// Turns a file's rows into telemetry points of one thing (the file), in row order.
pub fn points(file: &SkabFile) -> Vec<Point> {
    let names: Vec<Name> = SENSORS.iter().map(|s| Name::from(*s)).collect();
    file.rows
        .iter()
        .enumerate()
        .map(|(i, r)| Point {
            thing_id: Name::from(file.name.as_str()),
            equipment_type: Name::from("hydraulic_test_bed"),
            ts: r.ts,
            values: names.iter().cloned().zip(r.values).collect(),
            label: r.anomaly.map(u8::from),
            seq: i as u64,
            origin: Origin::Line { line: i as u64 + 2 },
            learn_only: false,
        })
        .collect()
}

/// Runs one labelled file through the detection engine (the per-thing code the stream runs) with the
/// first `cfg.warmup` rows learn-only, and scores the rows from [`TRAIN_ROWS`] on.
pub fn run_file(
    cfg: &Arc<DataflowConfig>,
    rules: &RulesHandle,
    file: &SkabFile,
) -> Result<FileResult, SkabError> {
    if file.rows.len() <= TRAIN_ROWS {
        return Err(SkabError::Invalid {
            file: file.name.clone(),
            line: file.rows.len() + 1,
            message: format!(
                "{} rows: nothing to test after the {TRAIN_ROWS} training rows",
                file.rows.len()
            ),
        });
    }
    if let Some(i) = file.rows.iter().position(|r| r.anomaly.is_none()) {
        return Err(SkabError::Invalid {
            file: file.name.clone(),
            line: i + 2,
            message: "no `anomaly` label: not a labelled SKAB file".into(),
        });
    }
    let mut engine = Engine::new(Arc::clone(cfg), rules.clone(), true);
    let mut out = Vec::new();
    // The score line of each row; a row without one (dead-lettered) counts as "not anomalous".
    let mut by_row: Vec<Option<ScoreLine>> = vec![None; file.rows.len()];
    for p in points(file) {
        let seq = p.seq as usize;
        out.clear();
        engine.process(Record::Point(p, 0), 0, &mut out);
        for (_, o) in out.drain(..) {
            if let Output::Score(s) = o {
                by_row[seq] = Some(s);
            }
        }
    }
    let mut r = FileResult {
        name: file.name.clone(),
        ts: Vec::new(),
        labels: Vec::new(),
        changepoints: Vec::new(),
        predicted: Vec::new(),
        scores: Vec::new(),
        confusion: Confusion::default(),
    };
    for (row, s) in file.rows.iter().zip(&by_row).skip(TRAIN_ROWS) {
        let label = row.anomaly == Some(true);
        let predicted = s.as_ref().is_some_and(|s| s.anomaly);
        r.ts.push(row.ts);
        r.labels.push(label);
        r.changepoints.push(row.changepoint == Some(true));
        r.predicted.push(predicted);
        r.scores.push(s.as_ref().map_or(0.0, |s| s.score));
        r.confusion.count(label, predicted);
    }
    Ok(r)
}

/// The benchmark's figures over a set of files.
#[derive(Clone, Debug, PartialEq)]
pub struct SkabReport {
    pub files: Vec<FileResult>,
    pub confusion: Confusion,
    /// SKAB-variant NAB over the test parts (predicted changepoints = flips of the prediction).
    pub nab: NabScores,
    pub nab_raw: [RawScore; 3],
}

/// Runs every file and pools the figures.
pub fn evaluate(
    cfg: &Arc<DataflowConfig>,
    rules: &RulesHandle,
    files: &[SkabFile],
) -> Result<SkabReport, SkabError> {
    let mut results = Vec::with_capacity(files.len());
    let mut confusion = Confusion::default();
    let mut raw = [RawScore::default(); 3];
    for f in files {
        let r = run_file(cfg, rules, f)?;
        confusion.add(&r.confusion);
        let detected = changepoints_of(&r.predicted);
        let cps: Vec<i64> =
            r.ts.iter()
                .zip(&r.changepoints)
                .filter(|(_, c)| **c)
                .map(|(t, _)| *t)
                .collect();
        for (acc, p) in raw.iter_mut().zip(PROFILES.iter()) {
            acc.add(&score_skab(&r.ts, &detected, &cps, NAB_WINDOW_MS, p));
        }
        results.push(r);
    }
    Ok(SkabReport {
        files: results,
        confusion,
        nab: NabScores::from_raw(&raw),
        nab_raw: raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint";

    #[test]
    fn parses_rows_and_labels() {
        let text = format!(
            "{HEAD}\n2020-03-09 10:14:33;0.02;0.04;1.3;0.05;79.3;26.0;233.0;32.0;0.0;0.0\n2020-03-09 10:14:35;0.02;0.04;1.3;0.05;79.3;26.0;233.0;31.0;1.0;1.0\n"
        );
        let rows = parse(&text, "x.csv").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].ts - rows[0].ts, 2000);
        assert_eq!(rows[0].values[7], 32.0);
        assert_eq!(rows[1].anomaly, Some(true));
        assert_eq!(rows[1].changepoint, Some(true));
        assert_eq!(rows[0].ts, parse_rfc3339("2020-03-09T10:14:33Z").unwrap());
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let e = |t: &str| parse(t, "f.csv").unwrap_err().to_string();
        assert!(e("").contains("f.csv:1: empty file"));
        let comma = HEAD.replace(';', ",");
        assert!(
            e(&comma).contains("f.csv:1: no `datetime` column"),
            "{}",
            e(&comma)
        );
        let missing = HEAD.replace("Pressure;", "");
        assert!(e(&missing).contains("missing column `Pressure`"));
        let short = format!("{HEAD}\n2020-03-09 10:14:33;0.02\n");
        assert!(e(&short).contains("f.csv:2: 2 fields, the header has 11"));
        let bad_num =
            format!("{HEAD}\n2020-03-09 10:14:33;x;0.04;1.3;0.05;79.3;26.0;233.0;32.0;0.0;0.0\n");
        assert!(e(&bad_num).contains("f.csv:2: column `Accelerometer1RMS`: not a finite number"));
        let bad_dt = format!(
            "{HEAD}\n2020-13-09 10:14:33;0.02;0.04;1.3;0.05;79.3;26.0;233.0;32.0;0.0;0.0\n"
        );
        assert!(e(&bad_dt).contains("f.csv:2: bad datetime"));
        let bad_label = format!(
            "{HEAD}\n2020-03-09 10:14:33;0.02;0.04;1.3;0.05;79.3;26.0;233.0;32.0;0.5;0.0\n"
        );
        assert!(e(&bad_label).contains("column `anomaly`: expected 0 or 1"));
        let row = "0.02;0.04;1.3;0.05;79.3;26.0;233.0;32.0;0.0;0.0";
        let backwards = format!("{HEAD}\n2020-03-09 10:14:33;{row}\n2020-03-09 10:14:33;{row}\n");
        assert!(e(&backwards).contains("f.csv:3: datetime"));
    }

    #[test]
    fn missing_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_files(dir.path(), Some("valve1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no SKAB .csv files found for subset `valve1`"),
            "{e}"
        );
    }

    #[test]
    fn pointwise_metrics_by_hand() {
        let mut c = Confusion::default();
        // labels 1 1 1 1 0 0 0 0 0 0, predictions 1 1 1 0 1 0 0 0 0 0
        let labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
        let preds = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0];
        for (l, p) in labels.iter().zip(preds) {
            c.count(*l == 1, p == 1);
        }
        assert_eq!((c.tp, c.fp, c.tn, c.false_neg), (3, 1, 5, 1));
        assert!((c.f1() - 0.75).abs() < 1e-12); // 3 / (3 + 1)
        assert!((c.far() - 100.0 / 6.0).abs() < 1e-12);
        assert!((c.mar() - 25.0).abs() < 1e-12);
        // Pooling adds counts (not averages of per-file F1).
        let mut d = Confusion {
            tp: 0,
            fp: 0,
            tn: 10,
            false_neg: 4,
        };
        d.add(&c);
        assert!((d.f1() - 0.5).abs() < 1e-12); // 3 / (3 + (1 + 5)/2)
        assert_eq!(Confusion::default().f1(), 0.0);
        assert_eq!(Confusion::default().far(), 0.0);
    }
}
