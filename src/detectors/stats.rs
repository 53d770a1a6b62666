//! Per-feature statistical detectors: z-score, robust (median/MAD) z, EWMA control chart and IQR fences,
//! all over one [`RollingWindow`].
//!
//! Scale floors: every scale (std, 1.4826*MAD, IQR) is floored at `max(scale, 1e-3*|centre|, 1e-9)`.
//! Industrial sensors are quantised (a temperature reported in 0.1 degree steps, a speed that sits at a
//! set point), so a window can legitimately have zero spread, and the first different value would then
//! score an infinite z. The floor treats a 0.1% relative change as the resolution below which the
//! detectors do not distinguish values: a step from 230.0 V to 230.5 V on a perfectly flat signal scores
//! a large but finite z (~2.2), and the 1e-9 absolute term covers signals centred on zero.

use super::streaming::{StreamingParams, StreamingStats};
use super::window::{OrderStats, RollingWindow};

/// Signed detector statistics for one value of one feature (positive = above normal).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeatureScores {
    /// (x - mean) / std over the window.
    pub z: f64,
    /// (x - median) / (1.4826 * MAD).
    pub robust_z: f64,
    /// EWMA control chart: (ewma_t - mean) / (std * sqrt(alpha / (2 - alpha))).
    pub ewma_z: f64,
    /// Distance outside [Q1, Q3] in IQR units (0 inside).
    pub iqr: f64,
}

/// Consistency constant that makes the MAD estimate the standard deviation of a normal distribution.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// Relative resolution floor for scales (see the module docs).
pub const RELATIVE_SCALE_FLOOR: f64 = 1e-3;

/// Absolute scale floor, for signals centred on zero.
pub const ABSOLUTE_SCALE_FLOOR: f64 = 1e-9;

/// Samples the window must hold before anything is scored (or the capacity, if smaller).
pub const MIN_WARM_SAMPLES: usize = 8;

/// `max(scale, 1e-3*|centre|, 1e-9)`: keeps z-like ratios finite on constant or quantised signals.
pub fn floored_scale(scale: f64, centre: f64) -> f64 {
    let rel = RELATIVE_SCALE_FLOOR * centre.abs();
    // f64::max ignores a NaN operand, so a NaN scale falls back to the floors.
    scale.max(rel).max(ABSOLUTE_SCALE_FLOOR)
}

/// What the four detectors need from a feature's statistics (window or streaming estimates).
#[derive(Clone, Copy, Debug)]
pub struct ScoreInputs {
    pub mean: f64,
    /// Unfloored standard deviation.
    pub std: f64,
    pub median: f64,
    /// Unscaled median absolute deviation.
    pub mad: f64,
    pub q1: f64,
    pub q3: f64,
    /// The EWMA including the reading being scored.
    pub ewma: f64,
    /// `sqrt(alpha / (2 - alpha))` of the EWMA.
    pub ewma_sd_factor: f64,
}

impl ScoreInputs {
    /// The detectors' statistics of `x` (finite) against these estimates, with floored scales.
    pub fn score(&self, x: f64) -> FeatureScores {
        let mean = self.mean;
        let std = floored_scale(self.std, mean);
        let median = self.median;
        let robust_scale = floored_scale(MAD_TO_SIGMA * self.mad, median);
        let (q1, q3) = (self.q1, self.q3);
        let iqr_scale = floored_scale(q3 - q1, median);
        let iqr = if x > q3 {
            (x - q3) / iqr_scale
        } else if x < q1 {
            -(q1 - x) / iqr_scale
        } else {
            0.0
        };
        FeatureScores {
            z: (x - mean) / std,
            robust_z: (x - median) / robust_scale,
            ewma_z: (self.ewma - mean) / (std * self.ewma_sd_factor),
            iqr,
        }
    }
}

/// Rolling window + EWMA state of one feature of one thing.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FeatureStats {
    pub window: RollingWindow,
    alpha: f64,
    /// EWMA of the learned samples; `None` until the first sample.
    ewma: Option<f64>,
    /// `sqrt(alpha / (2 - alpha))`: asymptotic std of the EWMA in units of the signal's std.
    ewma_sd_factor: f64,
}

impl FeatureStats {
    /// `ewma_alpha` is clamped to [1e-6, 1] (0 would freeze the EWMA and zero its control limits);
    /// a non-finite alpha means 1 (no smoothing).
    pub fn new(window: usize, ewma_alpha: f64) -> Self {
        let alpha = if ewma_alpha.is_finite() {
            ewma_alpha.clamp(1e-6, 1.0)
        } else {
            1.0
        };
        FeatureStats {
            window: RollingWindow::new(window),
            alpha,
            ewma: None,
            ewma_sd_factor: (alpha / (2.0 - alpha)).sqrt(),
        }
    }

    /// Checks that deserialised statistics (a state checkpoint) are consistent.
    pub fn check(&self) -> Result<(), String> {
        self.window.check()
    }

    /// The effective EWMA smoothing factor.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Current EWMA (None before the first sample).
    pub fn ewma(&self) -> Option<f64> {
        self.ewma
    }

    /// Samples needed before [`FeatureStats::score`] returns non-zero values: min(8, capacity).
    pub fn min_samples(&self) -> usize {
        MIN_WARM_SAMPLES.min(self.window.capacity())
    }

    /// True once enough samples are learned for scores to be meaningful.
    pub fn warm(&self) -> bool {
        self.window.len() >= self.min_samples()
    }

    /// Scores `x` against the state *before* `x` (pure). All zeros until [`FeatureStats::warm`], and for
    /// a non-finite `x` (there is no meaningful distance to report; rules see raw values).
    pub fn score(&self, x: f64) -> FeatureScores {
        if !x.is_finite() || !self.warm() {
            return FeatureScores::default();
        }
        self.score_with(x, self.window.order_stats())
    }

    /// [`FeatureStats::score`] for a caller that scores every reading for a while: the window keeps
    /// its sorted copy for the next readings (see `detectors::window`). The same scores.
    pub fn score_cached(&mut self, x: f64) -> FeatureScores {
        if !x.is_finite() || !self.warm() {
            return FeatureScores::default();
        }
        let o = self.window.order_stats_cached();
        self.score_with(x, o)
    }

    fn score_with(&self, x: f64, o: OrderStats) -> FeatureScores {
        let w = &self.window;
        let e = match self.ewma {
            Some(prev) => self.alpha * x + (1.0 - self.alpha) * prev,
            None => x,
        };
        ScoreInputs {
            mean: w.mean(),
            std: w.std(),
            median: o.median,
            mad: o.mad,
            q1: o.q1,
            q3: o.q3,
            ewma: e,
            ewma_sd_factor: self.ewma_sd_factor,
        }
        .score(x)
    }

    /// Heap bytes owned (the window's ring and sorted copy).
    pub fn heap_bytes(&self) -> usize {
        self.window.heap_bytes()
    }

    /// Learns `x` (window push and EWMA step). Non-finite values are ignored.
    pub fn update(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.window.push(x);
        self.ewma = Some(match self.ewma {
            Some(prev) => self.alpha * x + (1.0 - self.alpha) * prev,
            None => x,
        });
    }

    /// Scores `x` against the current state, then learns it.
    pub fn score_and_update(&mut self, x: f64) -> FeatureScores {
        let s = self.score(x);
        self.update(x);
        s
    }
}

/// Which estimator keeps a thing's per-feature statistics (`detectors.stats.estimator`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsEstimator {
    /// A rolling window of the last `window` readings per feature (exact quantiles; `window` f64 per
    /// feature, twice that while a sorted copy is kept, see `detectors::window`).
    #[default]
    Window,
    /// Constant-size estimators (32 bytes per feature, see `detectors::streaming`).
    Streaming,
}

/// A thing's per-feature statistics, one entry per feature slot, in the configured form. Boxed slices
/// (per-thing state, issue 7), serialised like vectors.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum StatsSet {
    Window(Box<[FeatureStats]>),
    Streaming(Box<[StreamingStats]>),
}

/// Everything a [`StatsSet`] needs from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct StatsParams {
    pub estimator: StatsEstimator,
    pub window: usize,
    pub ewma_alpha: f64,
    pub streaming: StreamingParams,
}

impl StatsParams {
    pub fn new(estimator: StatsEstimator, window: usize, ewma_alpha: f64) -> StatsParams {
        StatsParams {
            estimator,
            window,
            ewma_alpha,
            streaming: StreamingParams::new(window, ewma_alpha),
        }
    }
}

impl StatsSet {
    /// Empty statistics of the configured form.
    pub fn new(p: &StatsParams) -> StatsSet {
        match p.estimator {
            StatsEstimator::Window => StatsSet::Window(Box::default()),
            StatsEstimator::Streaming => StatsSet::Streaming(Box::default()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            StatsSet::Window(v) => v.len(),
            StatsSet::Streaming(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn estimator(&self) -> StatsEstimator {
        match self {
            StatsSet::Window(_) => StatsEstimator::Window,
            StatsSet::Streaming(_) => StatsEstimator::Streaming,
        }
    }

    /// Reorders the entries to a new feature layout: entry `i` becomes the old entry `from[i]`, or
    /// fresh statistics where `from[i]` is None. Sized exactly.
    pub fn relayout(&mut self, from: &[Option<usize>], p: &StatsParams) {
        fn pick<T>(old: Box<[T]>, from: &[Option<usize>], fresh: impl Fn() -> T) -> Box<[T]> {
            let mut old: Vec<Option<T>> = old.into_vec().into_iter().map(Some).collect();
            let mut out = Vec::with_capacity(from.len());
            for f in from {
                out.push(
                    f.and_then(|i| old.get_mut(i)?.take())
                        .unwrap_or_else(&fresh),
                );
            }
            out.into_boxed_slice()
        }
        *self = match std::mem::replace(self, StatsSet::new(p)) {
            StatsSet::Window(v) => {
                StatsSet::Window(pick(v, from, || FeatureStats::new(p.window, p.ewma_alpha)))
            }
            StatsSet::Streaming(v) => StatsSet::Streaming(pick(v, from, StreamingStats::default)),
        };
    }

    /// Scores `x` for feature `i` against the state before it (see [`FeatureStats::score_cached`]).
    pub fn score(&mut self, i: usize, x: f64, p: &StatsParams) -> FeatureScores {
        match self {
            StatsSet::Window(v) => v[i].score_cached(x),
            StatsSet::Streaming(v) => v[i].score(x, &p.streaming),
        }
    }

    /// Learns `x` for feature `i`.
    pub fn update(&mut self, i: usize, x: f64, p: &StatsParams) {
        match self {
            StatsSet::Window(v) => v[i].update(x),
            StatsSet::Streaming(v) => v[i].update(x, &p.streaming),
        }
    }

    /// Feature `i`'s mean (the window's, or the weighted one); NaN before its first reading.
    pub fn mean(&self, i: usize) -> f64 {
        match self {
            StatsSet::Window(v) => v[i].window.mean(),
            StatsSet::Streaming(v) => v[i].mean(),
        }
    }

    /// Starts every cache miss of the statistics at once (see [`RollingWindow::touch`]).
    pub fn touch(&self) -> f64 {
        match self {
            StatsSet::Window(v) => v.iter().map(|s| s.window.touch()).sum(),
            StatsSet::Streaming(_) => 0.0,
        }
    }

    /// Checks deserialised statistics (a state checkpoint) against the configured form.
    pub fn check(&self, p: &StatsParams) -> Result<(), String> {
        if self.estimator() != p.estimator {
            return Err(format!(
                "{:?} statistics, the dataflow keeps {:?} statistics",
                self.estimator(),
                p.estimator
            ));
        }
        match self {
            StatsSet::Window(v) => v.iter().try_for_each(|s| s.check()),
            StatsSet::Streaming(v) => v.iter().try_for_each(|s| s.check()),
        }
    }

    /// Heap bytes owned: the entries (by capacity) and what they own.
    pub fn heap_bytes(&self) -> usize {
        match self {
            StatsSet::Window(v) => {
                std::mem::size_of_val(&**v) + v.iter().map(FeatureStats::heap_bytes).sum::<usize>()
            }
            StatsSet::Streaming(v) => std::mem::size_of_val(&**v),
        }
    }
}
