//! Per-thing, incremental feature builder for RUL: one call per cycle (reading), O(window) work, and the
//! same code serves batch evaluation, training and the live stream, so they cannot disagree.
//!
//! For each selected sensor: short-window mean, long-window mean, long-window least-squares slope and the
//! drift of the long mean from the thing's own early baseline (the mean of its first `baseline` cycles,
//! which removes unit-to-unit manufacturing offsets). Plus the cycle count. Windows shorter than
//! configured are used as they are while history builds up.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Which inputs and windows the features use. Stored with the model so the live path rebuilds exactly
/// the features the model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Input sensor names, in feature order (e.g. C-MAPSS `s2`, `s3`, ...).
    pub sensors: Vec<String>,
    /// Short rolling window, cycles.
    pub short: usize,
    /// Long rolling window (mean and slope), cycles.
    pub long: usize,
    /// Cycles from the start of a thing's history averaged as its own healthy baseline.
    pub baseline: usize,
}

/// Per-sensor feature kinds, in the order they appear for each sensor.
pub const KINDS: [&str; 4] = ["mean_short", "mean_long", "slope_long", "drift"];

impl FeatureSpec {
    /// The C-MAPSS FD001 default: the 14 informative sensors (s1, s5, s6, s10, s16, s18, s19 are constant
    /// or nearly so in FD001 and carry no degradation signal), windows 5 / 50, baseline 20 cycles
    /// (chosen on the validation split, docs/ACCURACY.md).
    pub fn cmapss_default() -> Self {
        let sensors = [2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21];
        FeatureSpec {
            sensors: sensors.iter().map(|i| format!("s{i}")).collect(),
            short: 5,
            long: 50,
            baseline: 20,
        }
    }

    /// Number of features produced per cycle.
    pub fn len(&self) -> usize {
        self.sensors.len() * KINDS.len() + 1
    }

    /// Always false: there is at least the cycle count.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Feature names, in vector order: `<sensor>_<kind>` then `cycles`.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sensors
            .iter()
            .flat_map(|s| KINDS.iter().map(move |k| format!("{s}_{k}")))
            .collect();
        v.push("cycles".to_string());
        v
    }

    /// Sanity of a spec read from a model file or config.
    pub fn validate(&self) -> Result<(), String> {
        if self.sensors.is_empty() {
            return Err("feature spec has no sensors".into());
        }
        if self.short == 0 || self.long < 2 || self.baseline == 0 {
            return Err(format!(
                "feature windows must be short >= 1, long >= 2, baseline >= 1 (got {}, {}, {})",
                self.short, self.long, self.baseline
            ));
        }
        Ok(())
    }
}

/// Incremental state for one thing.
#[derive(Clone, Debug)]
pub struct FeatureBuilder {
    short: usize,
    long: usize,
    baseline: usize,
    /// Last `long` values per sensor, oldest first.
    windows: Vec<VecDeque<f64>>,
    /// Sum of the first `baseline` values per sensor.
    base_sum: Vec<f64>,
    cycles: usize,
}

impl FeatureBuilder {
    pub fn new(spec: &FeatureSpec) -> Self {
        let n = spec.sensors.len();
        FeatureBuilder {
            short: spec.short,
            long: spec.long,
            baseline: spec.baseline,
            windows: vec![VecDeque::with_capacity(spec.long + 1); n],
            base_sum: vec![0.0; n],
            cycles: 0,
        }
    }

    /// Cycles seen so far.
    pub fn cycles(&self) -> usize {
        self.cycles
    }

    /// Feeds one cycle (`values` in spec sensor order) and writes the features after it into `out`
    /// (cleared first).
    pub fn push(&mut self, values: &[f64], out: &mut Vec<f64>) {
        debug_assert_eq!(values.len(), self.windows.len());
        self.cycles += 1;
        for ((w, b), &v) in self
            .windows
            .iter_mut()
            .zip(self.base_sum.iter_mut())
            .zip(values)
        {
            if w.len() == self.long {
                w.pop_front();
            }
            w.push_back(v);
            if self.cycles <= self.baseline {
                *b += v;
            }
        }
        out.clear();
        let base_n = self.cycles.min(self.baseline) as f64;
        for (w, b) in self.windows.iter().zip(&self.base_sum) {
            let (a, b2) = w.as_slices();
            sensor_features(a, b2, self.short, b / base_n, out);
        }
        out.push(self.cycles as f64);
    }
}

/// Features of one sensor from its window (given as the two halves of the ring buffer, oldest first).
fn sensor_features(a: &[f64], b: &[f64], short: usize, base_mean: f64, out: &mut Vec<f64>) {
    let n = a.len() + b.len();
    let iter = || a.iter().chain(b.iter());
    let mean_long = iter().sum::<f64>() / n as f64;
    let k = short.min(n);
    let mean_short = iter().skip(n - k).sum::<f64>() / k as f64;
    out.push(mean_short);
    out.push(mean_long);
    out.push(slope(iter(), n));
    out.push(mean_long - base_mean);
}

/// Least-squares slope of values against 0..n (per cycle); 0 with fewer than two values.
fn slope<'a>(values: impl Iterator<Item = &'a f64>, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let nf = n as f64;
    let tm = (nf - 1.0) / 2.0;
    let mut sxy = 0.0;
    for (t, &y) in values.enumerate() {
        sxy += (t as f64 - tm) * y;
    }
    // sum (t - tm)(y - ym) = sum (t - tm) y because sum (t - tm) = 0; sum (t - tm)^2 = n(n^2 - 1) / 12.
    sxy / (nf * (nf * nf - 1.0) / 12.0)
}

/// Reference batch computation: the features after the last row of `history` (rows in spec sensor
/// order), computed from scratch. Used to prove the incremental builder equals the batch definition.
pub fn batch_features(spec: &FeatureSpec, history: &[Vec<f64>]) -> Vec<f64> {
    let t = history.len();
    let mut out = Vec::with_capacity(spec.len());
    if t == 0 {
        return out;
    }
    let start = t.saturating_sub(spec.long);
    let base_n = t.min(spec.baseline);
    for j in 0..spec.sensors.len() {
        let window: Vec<f64> = history[start..].iter().map(|r| r[j]).collect();
        let base_mean = history[..base_n].iter().map(|r| r[j]).sum::<f64>() / base_n as f64;
        sensor_features(&window, &[], spec.short, base_mean, &mut out);
    }
    out.push(t as f64);
    out
}
