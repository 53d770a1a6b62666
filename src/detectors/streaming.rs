//! Constant-size per-feature statistics (`detectors.stats.estimator: streaming`): the same four
//! detectors as [`super::stats::FeatureStats`] (z, robust z, EWMA chart, IQR fences) from 32 bytes per
//! feature instead of a rolling window (`window` f64, 480 bytes for 60 readings, and as much again for a
//! sorted copy while scored), for
//! fleets where per-thing memory matters more than the window's exactness.
//!
//! Estimators (`w_n = max(1/n, alpha)` is the weight of the n-th reading, `alpha = 2 / (window + 1)`,
//! the exponential smoothing whose mean age of the data equals that of a `window`-reading window):
//! - mean and variance: exponentially weighted (West's update: `d = x - mean; mean += w d;
//!   var = (1 - w)(var + w d^2)`); the first readings get weight 1/n, so early estimates are plain
//!   running averages instead of being dominated by the first reading (as in the online model);
//! - median, quartiles and MAD: stochastic-approximation (Robbins-Monro) quantile estimators,
//!   `q += g (p - 1[x < q])` with gain `g = w_n * scale / k_p`, where `scale` is the current floored
//!   standard deviation and `k_p` the standard normal density (times sigma) at the quantile (0.399 for
//!   the median, 0.318 for the quartiles, 0.636 for the MAD of a normal variable). With `w_n = 1/n`
//!   this is the asymptotically efficient Robbins-Monro step for a normal signal; with the floor `alpha`
//!   it tracks a drifting level like the window does. Each step is bounded (at most `g`), so a single
//!   spike moves the quantiles by a fraction of a standard deviation whatever its size: they stay robust,
//!   which is why they serve as the robust detectors' centre and scale. MAD is estimated on
//!   `|x - median|` with the median before the reading. `q1 <= median <= q3` is kept after each step;
//! - EWMA chart: the EWMA (`ewma_alpha`) of the readings, as in window mode.
//!
//! Storage is f32. That loses nothing the detectors can see: every scale is floored at 1e-3 of its
//! centre (see [`super::stats::floored_scale`]), while an f32 rounds a value by at most 6e-8 of it, so
//! a rounded centre moves a z-like ratio by under 1e-4. Arithmetic is in f64; an update smaller than half
//! an f32 ulp of the mean is rounded away, a bias of at most `6e-8 |mean| / alpha` (2e-6 of the level
//! for window 60), again far under the floor.
//!
//! Compared with the window: the estimates are smoother (exponential rather than hard forgetting) and
//! the quantiles are approximate (their noise is about that of a `window`-sample quantile, see the
//! tests). Accuracy effects are measured in docs/ACCURACY.md.

use super::stats::{
    floored_scale, FeatureScores, ScoreInputs, MIN_WARM_SAMPLES, RELATIVE_SCALE_FLOOR,
};

/// Standard normal density at the median (times sigma): the median's Robbins-Monro gain is 1/this.
const DENSITY_MEDIAN: f64 = 0.3989422804014327;
/// ... at the quartiles (z = 0.6745).
const DENSITY_QUARTILE: f64 = 0.317776572684107;
/// Density (times sigma) of |X - median| at the MAD of a normal variable: 2 x the quartile density.
const DENSITY_MAD: f64 = 2.0 * DENSITY_QUARTILE;
/// The IQR of a normal variable in sigmas.
const IQR_TO_SIGMA: f64 = 1.3489795003921634;

/// Settings shared by every feature of every thing (derived from the dataflow once).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamingParams {
    /// Floor of the per-reading weight: `2 / (window + 1)`.
    pub alpha: f64,
    /// EWMA chart smoothing (`detectors.ewma_alpha`, clamped like window mode).
    pub ewma_alpha: f64,
    /// `sqrt(ewma_alpha / (2 - ewma_alpha))`.
    pub ewma_sd_factor: f64,
    /// Readings learned before scores are non-zero: min(8, window).
    pub min_samples: u32,
}

impl StreamingParams {
    pub fn new(window: usize, ewma_alpha: f64) -> StreamingParams {
        let window = window.max(1);
        let ewma_alpha = if ewma_alpha.is_finite() {
            ewma_alpha.clamp(1e-6, 1.0)
        } else {
            1.0
        };
        StreamingParams {
            alpha: 2.0 / (window as f64 + 1.0),
            ewma_alpha,
            ewma_sd_factor: (ewma_alpha / (2.0 - ewma_alpha)).sqrt(),
            min_samples: MIN_WARM_SAMPLES.min(window) as u32,
        }
    }
}

/// Constant-size statistics of one feature of one thing (see the module docs). 32 bytes, no heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamingStats {
    /// Readings learned (saturating).
    n: u32,
    mean: f32,
    var: f32,
    ewma: f32,
    q1: f32,
    median: f32,
    q3: f32,
    mad: f32,
}

impl StreamingStats {
    /// Checks that deserialised statistics (a state checkpoint) are usable.
    pub fn check(&self) -> Result<(), String> {
        let all = [
            self.mean,
            self.var,
            self.ewma,
            self.q1,
            self.median,
            self.q3,
            self.mad,
        ];
        if all.iter().all(|v| v.is_finite()) && self.var >= 0.0 && self.mad >= 0.0 {
            Ok(())
        } else {
            Err("streaming statistics with a non-finite or negative value".into())
        }
    }

    pub fn count(&self) -> u32 {
        self.n
    }

    /// True once enough readings are learned for scores to be meaningful.
    pub fn warm(&self, p: &StreamingParams) -> bool {
        self.n >= p.min_samples
    }

    /// Weighted mean; NaN before the first reading.
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            f64::from(self.mean)
        }
    }

    /// Weighted standard deviation; NaN before the first reading.
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            f64::from(self.var).sqrt()
        }
    }

    /// Estimated median, quartiles (`q` = 0.25, 0.5, 0.75) and MAD; NaN before the first reading.
    pub fn median(&self) -> f64 {
        self.or_nan(self.median)
    }
    pub fn q1(&self) -> f64 {
        self.or_nan(self.q1)
    }
    pub fn q3(&self) -> f64 {
        self.or_nan(self.q3)
    }
    pub fn mad(&self) -> f64 {
        self.or_nan(self.mad)
    }

    fn or_nan(&self, v: f32) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            f64::from(v)
        }
    }

    /// Scores `x` against the state before it (pure); all zeros until warm and for a non-finite `x`.
    pub fn score(&self, x: f64, p: &StreamingParams) -> FeatureScores {
        if !x.is_finite() || !self.warm(p) {
            return FeatureScores::default();
        }
        let prev = f64::from(self.ewma);
        ScoreInputs {
            mean: self.mean(),
            std: self.std(),
            median: self.median(),
            mad: self.mad(),
            q1: self.q1(),
            q3: self.q3(),
            ewma: p.ewma_alpha * x + (1.0 - p.ewma_alpha) * prev,
            ewma_sd_factor: p.ewma_sd_factor,
        }
        .score(x)
    }

    /// Learns `x`. Non-finite values are ignored.
    pub fn update(&mut self, x: f64, p: &StreamingParams) {
        if !x.is_finite() {
            return;
        }
        // Values beyond f32's range would become infinite: such a sensor value is not a measurement
        // a floored f32 scale can represent; it is scored (above) but not learned.
        if x.abs() > f64::from(f32::MAX) / 4.0 {
            return;
        }
        self.n = self.n.saturating_add(1);
        if self.n == 1 {
            let v = x as f32;
            *self = StreamingStats {
                n: 1,
                mean: v,
                var: 0.0,
                ewma: v,
                q1: v,
                median: v,
                q3: v,
                mad: 0.0,
            };
            return;
        }
        let w = (1.0 / f64::from(self.n)).max(p.alpha);
        let mean = f64::from(self.mean);
        let d = x - mean;
        let new_mean = mean + w * d;
        let var = (1.0 - w) * (f64::from(self.var) + w * d * d);
        let e = p.ewma_alpha * x + (1.0 - p.ewma_alpha) * f64::from(self.ewma);
        // The quantiles step by a fraction of the spread. The spread used is the largest of three
        // estimates of sigma: the standard deviation widened by the gap between mean and median (after
        // a level change the mean moves first, and the gap pulls the quantiles after it within a few
        // dozen readings), the MAD's and the IQR's (an inflated MAD or IQR shrinks back at a rate
        // proportional to itself). Zero spread (a constant signal so far) falls back to the resolution
        // floor, so a level change is still followed.
        let gap = new_mean - f64::from(self.median);
        let scale = (var + gap * gap)
            .sqrt()
            .max(super::stats::MAD_TO_SIGMA * f64::from(self.mad))
            .max(f64::from(self.q3 - self.q1) / IQR_TO_SIGMA);
        let scale = floored_scale(scale, new_mean).max(RELATIVE_SCALE_FLOOR * x.abs());
        let step = |q: f32, prob: f64, density: f64, sample: f64| -> f64 {
            let q = f64::from(q);
            if sample == q {
                // A tie (a quantised or constant signal) moves nothing: stepping up on every repeated
                // value would make a constant signal's quantiles oscillate around it.
                return q;
            }
            let below = if sample < q { 1.0 } else { 0.0 };
            q + w * scale / density * (prob - below)
        };
        let median_before = f64::from(self.median);
        let median = step(self.median, 0.5, DENSITY_MEDIAN, x);
        let q1 = step(self.q1, 0.25, DENSITY_QUARTILE, x).min(median);
        let q3 = step(self.q3, 0.75, DENSITY_QUARTILE, x).max(median);
        let mad = step(self.mad, 0.5, DENSITY_MAD, (x - median_before).abs()).max(0.0);
        self.mean = new_mean as f32;
        self.var = var.max(0.0) as f32;
        self.ewma = e as f32;
        self.median = median as f32;
        self.q1 = q1 as f32;
        self.q3 = q3 as f32;
        self.mad = mad as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::normalise;

    /// Deterministic uniform samples in (0, 1) (splitmix64).
    fn uniforms(seed: u64) -> impl Iterator<Item = f64> {
        let mut s = seed;
        std::iter::from_fn(move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            Some(((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64)
        })
    }

    /// Deterministic standard normal samples (Box-Muller).
    fn normals(seed: u64) -> impl Iterator<Item = f64> {
        let mut u = uniforms(seed);
        std::iter::from_fn(move || {
            let (u1, u2) = (u.next()?, u.next()?);
            Some((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
        })
    }

    #[test]
    fn is_32_bytes_without_heap() {
        assert_eq!(std::mem::size_of::<StreamingStats>(), 32);
    }

    #[test]
    fn quantiles_converge_on_a_normal_distribution() {
        // N(230, 2^2): median 230, quartiles 230 -/+ 0.6745 * 2, MAD 0.6745 * 2, std 2.
        let (mu, sigma) = (230.0, 2.0);
        for (window, tol) in [(2000usize, 0.05), (60, 0.35)] {
            let p = StreamingParams::new(window, 0.3);
            let mut s = StreamingStats::default();
            // Average the estimates over the second half, as a caller sees them over time.
            let (mut acc, mut k) = ([0.0f64; 5], 0.0);
            for (i, z) in normals(7).take(40_000).enumerate() {
                s.update(mu + sigma * z, &p);
                if i >= 20_000 {
                    for (a, v) in acc
                        .iter_mut()
                        .zip([s.median(), s.q1(), s.q3(), s.mad(), s.std()])
                    {
                        *a += v;
                    }
                    k += 1.0;
                }
            }
            let [med, q1, q3, mad, std] = acc.map(|a| a / k);
            let qz = 0.6744897501960817 * sigma;
            let within = |got: f64, want: f64| (got - want).abs() < tol * sigma;
            assert!(within(med, mu), "window {window}: median {med}");
            assert!(within(q1, mu - qz), "window {window}: q1 {q1}");
            assert!(within(q3, mu + qz), "window {window}: q3 {q3}");
            assert!(within(mad, qz), "window {window}: mad {mad}");
            assert!(within(std, sigma), "window {window}: std {std}");
            // Not just on average: the last estimate of the long memory is close too.
            if window == 2000 {
                assert!((s.median() - mu).abs() < 0.15 * sigma, "{}", s.median());
            }
        }
    }

    #[test]
    fn quantiles_converge_on_a_skewed_distribution() {
        // Exponential(1) (as -ln U): median ln 2, quartiles ln(4/3) and ln 4.
        let p = StreamingParams::new(5000, 0.3);
        let mut s = StreamingStats::default();
        for u in uniforms(3).take(100_000) {
            s.update(-u.ln(), &p);
        }
        assert!(
            (s.median() - 2f64.ln()).abs() < 0.05,
            "median {}",
            s.median()
        );
        assert!((s.q1() - (4.0f64 / 3.0).ln()).abs() < 0.05, "q1 {}", s.q1());
        assert!((s.q3() - 4f64.ln()).abs() < 0.1, "q3 {}", s.q3());
    }

    fn score_total(s: &StreamingStats, x: f64, p: &StreamingParams) -> (FeatureScores, f64) {
        let fs = s.score(x, p);
        // The engine's thresholds (dataflows/default.yaml).
        let best = [
            normalise(fs.z, 4.0),
            normalise(fs.robust_z, 5.0),
            normalise(fs.ewma_z, 4.0),
            normalise(fs.iqr, 3.0),
        ];
        (fs, best.into_iter().sum::<f64>() / 4.0)
    }

    #[test]
    fn detects_a_spike_and_stays_robust_to_it() {
        let p = StreamingParams::new(60, 0.3);
        let mut s = StreamingStats::default();
        let mut noise = normals(11);
        for _ in 0..500 {
            s.update(50.0 + 0.5 * noise.next().unwrap(), &p);
        }
        // Normal readings score low.
        let (_, normal) = score_total(&s, 50.3, &p);
        assert!(normal < 0.2, "{normal}");
        // A spike of 10 sigma: every detector sees it.
        let (fs, spike) = score_total(&s, 55.0, &p);
        assert!(fs.z > 6.0 && fs.robust_z > 6.0 && fs.iqr > 3.0, "{fs:?}");
        assert!(spike > 0.8, "{spike}");
        let (med, mad) = (s.median(), s.mad());
        s.update(55.0, &p);
        // One spike moves the robust estimates by a bounded step (a fraction of sigma).
        assert!((s.median() - med).abs() < 0.1, "{} -> {}", med, s.median());
        assert!((s.mad() - mad).abs() < 0.1, "{} -> {}", mad, s.mad());
        // ... so the next normal reading is normal again.
        let (_, after) = score_total(&s, 50.1, &p);
        assert!(after < 0.4, "{after}");
    }

    #[test]
    fn detects_a_step_then_adapts_to_the_new_level() {
        let p = StreamingParams::new(60, 0.3);
        let mut s = StreamingStats::default();
        let mut noise = normals(5);
        for _ in 0..500 {
            s.update(20.0 + 0.2 * noise.next().unwrap(), &p);
        }
        // A step of 3 sigma, sustained: the EWMA chart accumulates it within a few readings.
        let mut scores = Vec::new();
        let mut ewma_z = Vec::new();
        for _ in 0..600 {
            let x = 20.6 + 0.2 * noise.next().unwrap();
            let (fs, total) = score_total(&s, x, &p);
            scores.push(total);
            ewma_z.push(fs.ewma_z);
            s.update(x, &p);
        }
        let at = scores.iter().position(|&t| t >= 0.5);
        assert!(
            at.is_some_and(|i| i < 5),
            "detected at {at:?}: {:?}",
            &scores[..10]
        );
        assert!(ewma_z[..5].iter().any(|&z| z > 4.0), "{:?}", &ewma_z[..5]);
        // The new level becomes normal: late readings score like normal ones again.
        let late = scores[500..].iter().sum::<f64>() / 100.0;
        assert!(late < 0.2, "{late}");
        assert!((s.median() - 20.6).abs() < 0.1, "{}", s.median());
        assert!((s.mean() - 20.6).abs() < 0.1, "{}", s.mean());
    }

    #[test]
    fn constant_and_hostile_input_stays_finite() {
        let p = StreamingParams::new(60, 0.3);
        let mut s = StreamingStats::default();
        assert!(s.mean().is_nan() && s.median().is_nan());
        assert_eq!(s.score(1.0, &p), FeatureScores::default());
        for _ in 0..100 {
            s.update(230.0, &p);
        }
        assert_eq!((s.median(), s.mad(), s.std()), (230.0, 0.0, 0.0));
        // A step on a flat signal scores large but finite (the scale floor).
        let fs = s.score(230.5, &p);
        assert!(fs.z.is_finite() && fs.z > 2.0, "{fs:?}");
        for v in [f64::NAN, f64::INFINITY, 1e300, -1e300] {
            s.update(v, &p);
            let fs = s.score(v, &p);
            if v.is_finite() {
                assert!(fs.z.is_finite() && fs.z.abs() > 1e6, "{fs:?}");
            } else {
                assert_eq!(fs, FeatureScores::default());
            }
        }
        assert_eq!(s.count(), 100);
        s.check().unwrap();
        // A level change on a flat signal is followed.
        for _ in 0..400 {
            s.update(240.0, &p);
        }
        assert!((s.median() - 240.0).abs() < 0.5, "{}", s.median());
    }
}
