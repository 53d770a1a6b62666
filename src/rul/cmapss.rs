//! NASA C-MAPSS turbofan data: loader for `train_FDxxx.txt`, `test_FDxxx.txt` and `RUL_FDxxx.txt`, and a
//! converter to the flat JSONL telemetry format so the same cycles can be replayed through the live path.
//!
//! Format (SOURCE.md beside the data): space-separated, no header, 26 numeric columns: unit, cycle,
//! 3 operational settings, 21 sensors.

use super::RulError;
use std::io::Write;
use std::path::Path;

/// Number of operational-setting columns.
pub const SETTINGS: usize = 3;
/// Number of sensor columns.
pub const SENSORS: usize = 21;
/// Columns per row: unit, cycle, settings, sensors.
pub const COLUMNS: usize = 2 + SETTINGS + SENSORS;

/// One row: the state of one engine at one cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Cycle {
    pub cycle: u32,
    pub settings: [f64; SETTINGS],
    pub sensors: [f64; SENSORS],
}

impl Cycle {
    /// The row as named telemetry values (`setting_1..3`, `s1..s21`), the names the live path uses.
    pub fn named_values(&self) -> Vec<(String, f64)> {
        let mut v = Vec::with_capacity(SETTINGS + SENSORS);
        for (i, x) in self.settings.iter().enumerate() {
            v.push((setting_name(i), *x));
        }
        for (i, x) in self.sensors.iter().enumerate() {
            v.push((sensor_name(i), *x));
        }
        v
    }
}

/// `s1`..`s21` for sensor index 0..20.
pub fn sensor_name(i: usize) -> String {
    format!("s{}", i + 1)
}

/// `setting_1`..`setting_3` for setting index 0..2.
pub fn setting_name(i: usize) -> String {
    format!("setting_{}", i + 1)
}

/// One engine's history, cycles in increasing order starting at 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    pub id: u32,
    pub cycles: Vec<Cycle>,
}

impl Unit {
    /// The last cycle number (the failure cycle for a training unit).
    pub fn last_cycle(&self) -> u32 {
        self.cycles.last().map_or(0, |c| c.cycle)
    }
}

/// A loaded subset: training run-to-failure units, truncated test units and the test units' true RUL.
#[derive(Clone, Debug)]
pub struct Subset {
    pub name: String,
    pub train: Vec<Unit>,
    pub test: Vec<Unit>,
    /// True RUL after the last test cycle, one per test unit in unit order.
    pub rul: Vec<f64>,
}

/// Loads `train_<subset>.txt`, `test_<subset>.txt` and `RUL_<subset>.txt` from `dir`.
pub fn load_subset(dir: &Path, subset: &str) -> Result<Subset, RulError> {
    let valid = subset.len() == 5
        && subset.starts_with("FD")
        && subset[2..].bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(RulError::Data(format!(
            "subset {subset:?} is not of the form FD001..FD004"
        )));
    }
    let train = load_units(&dir.join(format!("train_{subset}.txt")))?;
    let test = load_units(&dir.join(format!("test_{subset}.txt")))?;
    let rul_path = dir.join(format!("RUL_{subset}.txt"));
    let rul = load_rul(&rul_path)?;
    if rul.len() != test.len() {
        return Err(RulError::Data(format!(
            "{}: {} RUL values for {} test units",
            rul_path.display(),
            rul.len(),
            test.len()
        )));
    }
    Ok(Subset {
        name: subset.to_string(),
        train,
        test,
        rul,
    })
}

fn read(path: &Path) -> Result<String, RulError> {
    std::fs::read_to_string(path).map_err(|source| RulError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a train or test file.
pub fn load_units(path: &Path) -> Result<Vec<Unit>, RulError> {
    parse_units(&read(path)?, path)
}

/// Parses train/test text; `path` only names the source in errors. Units must be contiguous, numbered
/// 1, 2, ... and their cycles must be 1, 2, ... with no gap.
pub fn parse_units(text: &str, path: &Path) -> Result<Vec<Unit>, RulError> {
    let err = |line: usize, msg: String| RulError::Parse {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let mut units: Vec<Unit> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut vals = [0f64; COLUMNS];
        let mut n = 0;
        for tok in raw.split_ascii_whitespace() {
            if n == COLUMNS {
                return Err(err(line, format!("more than {COLUMNS} columns")));
            }
            let v: f64 = tok
                .parse()
                .map_err(|_| err(line, format!("column {}: {tok:?} is not a number", n + 1)))?;
            if !v.is_finite() {
                return Err(err(
                    line,
                    format!("column {}: {tok:?} is not finite", n + 1),
                ));
            }
            vals[n] = v;
            n += 1;
        }
        if n != COLUMNS {
            return Err(err(line, format!("{n} columns, expected {COLUMNS}")));
        }
        let as_index = |v: f64, what: &str| -> Result<u32, RulError> {
            if v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
                Ok(v as u32)
            } else {
                Err(err(line, format!("{what} {v} is not a positive integer")))
            }
        };
        let unit = as_index(vals[0], "unit")?;
        let cycle = as_index(vals[1], "cycle")?;
        let row = Cycle {
            cycle,
            settings: vals[2..2 + SETTINGS].try_into().expect("3 settings"),
            sensors: vals[2 + SETTINGS..].try_into().expect("21 sensors"),
        };
        match units.last_mut() {
            Some(u) if u.id == unit => {
                if cycle != u.last_cycle() + 1 {
                    return Err(err(
                        line,
                        format!(
                            "unit {unit}: cycle {cycle} follows cycle {}",
                            u.last_cycle()
                        ),
                    ));
                }
                u.cycles.push(row);
            }
            last => {
                let expected = last.map_or(1, |u| u.id + 1);
                if unit != expected {
                    return Err(err(
                        line,
                        format!("unit {unit} where unit {expected} was expected"),
                    ));
                }
                if cycle != 1 {
                    return Err(err(
                        line,
                        format!("unit {unit} starts at cycle {cycle}, not 1"),
                    ));
                }
                units.push(Unit {
                    id: unit,
                    cycles: vec![row],
                });
            }
        }
    }
    if units.is_empty() {
        return Err(RulError::Data(format!("{}: no rows", path.display())));
    }
    Ok(units)
}

/// Reads an `RUL_FDxxx.txt` file: one non-negative integer per line.
pub fn load_rul(path: &Path) -> Result<Vec<f64>, RulError> {
    parse_rul(&read(path)?, path)
}

/// Parses RUL text; `path` only names the source in errors.
pub fn parse_rul(text: &str, path: &Path) -> Result<Vec<f64>, RulError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        let v: f64 = t
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| RulError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                msg: format!("{t:?} is not a non-negative number"),
            })?;
        out.push(v);
    }
    if out.is_empty() {
        return Err(RulError::Data(format!("{}: no RUL values", path.display())));
    }
    Ok(out)
}

/// Thing id used for a C-MAPSS unit in the live path: `<subset>-<split>-<unit, 3 digits>`.
pub fn thing_id(subset: &str, split: &str, unit: u32) -> String {
    format!("{}-{split}-{unit:03}", subset.to_ascii_lowercase())
}

/// Writes units as flat JSONL telemetry (DESIGN.md's flat format), one line per cycle, units interleaved
/// cycle by cycle as a fleet would report. `ts` = `t0_ms + cycle * ms_per_cycle`. Returns lines written.
pub fn write_jsonl(
    units: &[Unit],
    subset: &str,
    split: &str,
    t0_ms: i64,
    ms_per_cycle: i64,
    out: &mut dyn Write,
) -> std::io::Result<usize> {
    let max_len = units.iter().map(|u| u.cycles.len()).max().unwrap_or(0);
    let mut n = 0;
    for k in 0..max_len {
        for u in units {
            let Some(c) = u.cycles.get(k) else { continue };
            let values: serde_json::Map<String, serde_json::Value> = c
                .named_values()
                .into_iter()
                .map(|(name, v)| (name, serde_json::json!(v)))
                .collect();
            let line = serde_json::json!({
                "thing_id": thing_id(subset, split, u.id),
                "equipment_type": "turbofan",
                "ts": t0_ms + i64::from(c.cycle) * ms_per_cycle,
                "values": values,
            });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            n += 1;
        }
    }
    Ok(n)
}
