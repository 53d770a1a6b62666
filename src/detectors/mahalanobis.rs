//! Online multivariate model: exponentially weighted mean/covariance per thing, scored by Hotelling T^2.
//!
//! Why this model:
//! - No offline training: each thing learns its own normal operating point from its own stream, so a
//!   new oven is covered after a few dozen readings and no model registry is needed to start.
//! - Deterministic per thing: the state depends only on that thing's readings in event-time order, so the
//!   scores are identical for any worker count or sharding. A streaming forest or any model shared across
//!   things would make results depend on how things interleave on workers.
//! - Cheap: O(d^2) per reading for the update and one triangular solve (T^2 = ||L^-1 d||^2 with L the
//!   Cholesky factor), plus an O(d^3/6) Cholesky refactorisation every few readings; with d ~ 10-20
//!   features that is a few hundred flops. Matrices are stored as packed lower triangles.
//! - Catches correlation breaks: phase currents that move together, or zone temperatures that track each
//!   other, can diverge while every feature stays within its own normal range. Univariate detectors miss
//!   this; T^2 = d^T S^-1 d measures it directly.
//! - Explainable exactly: T^2 = sum_i d_i (S^-1 d)_i, so per-feature contributions add up to the score,
//!   up to rounding (they take the back substitution too, so they are computed only to explain an
//!   alert; a contribution can be negative when a feature moves "with" the pattern and partly explains
//!   another's deviation).
//!
//! Estimation: exponentially weighted with `alpha = 1 - 0.5^(1/half_life)`, but the n-th sample gets
//! weight `max(1/n, alpha)`, so early estimates are plain running averages instead of being dominated by
//! the first reading. The scoring matrix shrinks the covariance towards its diagonal (stabilises the
//! inverse when features are nearly collinear, e.g. three phase voltages) and floors each variance at
//! `(1e-3*|mean_i|)^2 + 1e-12`, the same 0.1% resolution floor as the univariate detectors, so a constant
//! feature neither makes the matrix singular nor yields NaN.
//!
//! Linear algebra is written by hand (Cholesky, triangular solves): it is ~30 lines for a 13x13
//! symmetric positive-definite system, and a linear-algebra crate would be a heavy dependency for that.

use crate::config::ModelConfig;

/// Score of one reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelScore {
    /// Hotelling T^2 (squared Mahalanobis distance).
    pub t2: f64,
    /// Normal-equivalent z of T^2 (Wilson-Hilferty), >= 0.
    pub z: f64,
    /// Signed per-dimension contributions; they sum to T^2 (up to rounding).
    pub contributions: Vec<f64>,
}

/// Relative resolution floor on each standard deviation (see the module docs).
const RELATIVE_SD_FLOOR: f64 = 1e-3;
/// Absolute variance floor, for features centred on zero.
const ABSOLUTE_VAR_FLOOR: f64 = 1e-12;

/// Normal-equivalent z of a chi-squared(k) statistic by the Wilson-Hilferty cube-root transform,
/// clamped at >= 0 (only large distances are anomalous). 0 for `k == 0` or a NaN `t2`.
///
/// `z = ((t2/k)^(1/3) - (1 - 2/(9k))) / sqrt(2/(9k))`; T^2 = k (the chi-squared mean) maps to
/// `sqrt(2/(9k))`, close to 0, and the chi-squared median maps to about 0.
pub fn wilson_hilferty_z(t2: f64, k: usize) -> f64 {
    if k == 0 || t2.is_nan() {
        return 0.0;
    }
    let k = k as f64;
    let v = 2.0 / (9.0 * k);
    let z = ((t2.max(0.0) / k).cbrt() - (1.0 - v)) / v.sqrt();
    z.max(0.0)
}

/// Length of a packed lower triangle of an `n` x `n` matrix.
const fn packed_len(n: usize) -> usize {
    n * (n + 1) / 2
}

/// Index of the diagonal entry `(i, i)` in a packed lower triangle.
const fn diag(i: usize) -> usize {
    i * (i + 1) / 2 + i
}

/// `update` keeps the deviation `x - mean` on the stack for models up to this dimension.
const DEV_ON_STACK: usize = 16;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OnlineMahalanobis {
    dim: usize,
    alpha: f64,
    shrinkage: f64,
    count: u64,
    mean: Vec<f64>,
    /// Weighted covariance, lower triangle packed row by row: entry `(i, j)`, `j <= i`, at
    /// `i(i+1)/2 + j` (the matrix is symmetric).
    cov: Vec<f64>,
    /// Lower Cholesky factor of the scoring matrix, packed like `cov`; valid when `factored`.
    chol: Vec<f64>,
    factored: bool,
}

impl OnlineMahalanobis {
    /// Creates an empty model over `dim` features. Out-of-range configuration values are clamped
    /// (`shrinkage` to [0, 1]; a non-positive or non-finite `half_life` means plain averaging).
    pub fn new(dim: usize, cfg: &ModelConfig) -> Self {
        let alpha = if cfg.half_life.is_finite() && cfg.half_life > 0.0 {
            1.0 - 0.5f64.powf(1.0 / cfg.half_life)
        } else {
            0.0
        };
        let shrinkage = if cfg.shrinkage.is_nan() {
            0.0
        } else {
            cfg.shrinkage.clamp(0.0, 1.0)
        };
        OnlineMahalanobis {
            dim,
            alpha,
            shrinkage,
            count: 0,
            mean: vec![0.0; dim],
            cov: vec![0.0; packed_len(dim)],
            chol: vec![0.0; packed_len(dim)],
            factored: false,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Heap bytes owned (mean, covariance, Cholesky factor; by capacity).
    pub fn heap_bytes(&self) -> usize {
        (self.mean.capacity() + self.cov.capacity() + self.chol.capacity())
            * std::mem::size_of::<f64>()
    }

    /// Checks that a deserialised model (a state checkpoint) has consistent dimensions.
    pub fn check(&self) -> Result<(), String> {
        let d = self.dim;
        if self.mean.len() != d
            || self.cov.len() != packed_len(d)
            || self.chol.len() != packed_len(d)
        {
            return Err(format!(
                "online model of dimension {d} with inconsistent matrices"
            ));
        }
        Ok(())
    }

    /// Samples learned so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Samples needed before scoring: max(2*dim, 16).
    pub fn min_samples(&self) -> u64 {
        (2 * self.dim as u64).max(16)
    }

    /// True once [`OnlineMahalanobis::score`] returns scores.
    pub fn warm(&self) -> bool {
        self.dim > 0 && self.count >= self.min_samples() && self.factored
    }

    /// The exponential-forgetting factor `1 - 0.5^(1/half_life)`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Current weighted mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Entry `(i, j)` of the current weighted covariance (before shrinkage and floors).
    ///
    /// # Panics
    /// If `i` or `j` is not below [`OnlineMahalanobis::dim`].
    pub fn covariance(&self, i: usize, j: usize) -> f64 {
        assert!(
            i < self.dim && j < self.dim,
            "covariance index out of range"
        );
        let (i, j) = if j > i { (j, i) } else { (i, j) };
        self.cov[i * (i + 1) / 2 + j]
    }

    /// Scores `x` (len == dim) against the state before it; None until enough samples are learned, or
    /// when `x` has the wrong length or a non-finite entry.
    pub fn score(&self, x: &[f64]) -> Option<ModelScore> {
        let mut scratch = Vec::new();
        let mut out = ModelScore::default();
        if self.score_into(x, &mut scratch, &mut out) {
            Some(out)
        } else {
            None
        }
    }

    /// Allocation-free form of [`OnlineMahalanobis::score`] (once `scratch` and `out.contributions` have
    /// grown to size): writes the score into `out` and returns true, or returns false (leaving `out`
    /// unspecified) where `score` would return None. On the hot path, [`OnlineMahalanobis::t2`] gives
    /// the T^2 alone (half the work) and [`OnlineMahalanobis::contributions_into`] the rest when needed.
    pub fn score_into(&self, x: &[f64], scratch: &mut Vec<f64>, out: &mut ModelScore) -> bool {
        let Some(t2) = self.t2(x, scratch) else {
            return false;
        };
        if !self.contributions_into(x, scratch, &mut out.contributions) {
            return false;
        }
        out.t2 = t2;
        out.z = self.z(t2);
        true
    }

    /// Hotelling T^2 of `x` (len == dim) against the state before it: `||L^-1 (x - mean)||^2`, one
    /// forward solve. None where [`OnlineMahalanobis::score`] returns None. `scratch` is resized to
    /// `dim` (no allocation once grown).
    pub fn t2(&self, x: &[f64], scratch: &mut Vec<f64>) -> Option<f64> {
        if !self.warm() || x.len() != self.dim {
            return None;
        }
        scratch.clear();
        scratch.resize(self.dim, 0.0);
        let t2 = self.forward(x, scratch);
        // A non-finite entry of `x` makes T^2 NaN or infinite, so `x` is checked only then (a finite
        // `x` far enough out can overflow T^2 too: that is a score).
        if !t2.is_finite() && !x.iter().all(|v| v.is_finite()) {
            return None;
        }
        Some(t2)
    }

    /// Normal-equivalent z of a T^2 of this model: Wilson-Hilferty of T^2 deflated by the
    /// [small-sample factor](OnlineMahalanobis::small_sample_factor).
    pub fn z(&self, t2: f64) -> f64 {
        wilson_hilferty_z(t2 / self.small_sample_factor(), self.dim)
    }

    /// The signed per-dimension contributions `(x - mean)_i (S^-1 (x - mean))_i` of `x` into `out`
    /// (they sum to its T^2, up to rounding); false (leaving `out` unspecified) where
    /// [`OnlineMahalanobis::score`] returns None. The forward and the back substitution: twice the work
    /// of [`OnlineMahalanobis::t2`], so it is computed for explanations only.
    pub fn contributions_into(
        &self,
        x: &[f64],
        scratch: &mut Vec<f64>,
        out: &mut Vec<f64>,
    ) -> bool {
        let n = self.dim;
        if !self.warm() || x.len() != n || !x.iter().all(|v| v.is_finite()) {
            return false;
        }
        scratch.clear();
        scratch.resize(n, 0.0);
        self.forward(x, scratch);
        // L^T u = y in place, walking column i of L (row i of L^T) down the packed rows below it.
        let l = &self.chol[..packed_len(n)];
        let u = &mut scratch[..n];
        for i in (0..n).rev() {
            let (head, tail) = u.split_at_mut(i + 1);
            let mut s = head[i];
            let mut row = diag(i) + 1;
            for (k, &uk) in (i + 1..n).zip(&*tail) {
                s -= l[row + i] * uk;
                row += k + 1;
            }
            head[i] = s / l[diag(i)];
        }
        out.clear();
        out.extend(
            x.iter()
                .zip(&self.mean)
                .zip(u.iter())
                .map(|((&x, &m), &u)| (x - m) * u),
        );
        true
    }

    /// Solves `L y = x - mean` into `y` (len == dim) and returns `||y||^2`, the T^2.
    fn forward(&self, x: &[f64], y: &mut [f64]) -> f64 {
        let n = self.dim;
        let l = &self.chol[..packed_len(n)];
        let mut t2 = 0.0;
        let mut start = 0;
        for (i, (&xi, &mi)) in x[..n].iter().zip(&self.mean[..n]).enumerate() {
            let row = &l[start..=start + i];
            let (done, rest) = y.split_at_mut(i);
            let s: f64 = row[..i].iter().zip(&*done).map(|(a, b)| a * b).sum();
            let yi = ((xi - mi) - s) / row[i];
            rest[0] = yi;
            t2 += yi * yi;
            start += i + 1;
        }
        t2
    }

    /// Hotelling's correction for a covariance estimated from few samples: a new observation's T^2
    /// follows k(n+1)(n-1)/(n(n-k)) F(k, n-k), which is ~chi^2_k inflated by (n+1)(n-1)/(n(n-k)). Without
    /// it a freshly warmed model over-alerts. n is the effective sample size of the EW estimate.
    pub fn small_sample_factor(&self) -> f64 {
        let effective = (2.0 - self.alpha) / self.alpha;
        let n = (self.count as f64).min(effective);
        let k = self.dim as f64;
        if n > k + 1.0 {
            (n + 1.0) * (n - 1.0) / (n * (n - k))
        } else {
            1.0
        }
    }

    /// The `q`-quantile of the T^2 (EWMA-smoothed with `smoothing`, in the order given) of `rows` under
    /// this model, floored at 1e-9 (a perfectly constant warm-up would otherwise flag every reading),
    /// and the last smoothed value. None when the model cannot score yet or no row is scorable.
    pub fn calibrated_threshold<'a>(
        &self,
        rows: impl Iterator<Item = &'a [f64]>,
        q: f64,
        smoothing: f64,
    ) -> Option<(f64, f64)> {
        if self.dim == 0 || !self.warm() {
            return None;
        }
        let mut scratch = Vec::new();
        let mut smooth: Option<f64> = None;
        let mut seen = Vec::new();
        for x in rows {
            if let Some(t2) = self.t2(x, &mut scratch) {
                let v = smooth.map_or(t2, |p| smoothing * t2 + (1.0 - smoothing) * p);
                smooth = Some(v);
                seen.push(v);
            }
        }
        let last = smooth?;
        seen.sort_unstable_by(f64::total_cmp);
        let h = (seen.len() - 1) as f64 * q.clamp(0.0, 1.0);
        let lo = h.floor() as usize;
        let hi = (lo + 1).min(seen.len() - 1);
        let thr = seen[lo] + (h - lo as f64) * (seen[hi] - seen[lo]);
        Some((thr.max(1e-9), last))
    }

    /// Learns `x`. Ignored when `x` has the wrong length or a non-finite entry (one NaN would otherwise
    /// poison the mean and covariance for good).
    pub fn update(&mut self, x: &[f64]) {
        let n = self.dim;
        if n == 0 || x.len() != n || !x.iter().all(|v| v.is_finite()) {
            return;
        }
        self.count += 1;
        let w = (1.0 / self.count as f64).max(self.alpha);
        let keep = 1.0 - w;
        let mut stack = [0.0; DEV_ON_STACK];
        let mut heap = Vec::new();
        let dev: &mut [f64] = if n <= DEV_ON_STACK {
            &mut stack[..n]
        } else {
            heap.resize(n, 0.0);
            &mut heap
        };
        // One pass: the mean and then the covariance's packed row i, which needs the deviations of
        // features 0..=i only. Each row's entries are independent lanes, so the compiler vectorises
        // them; the upper triangle is never stored.
        let cov = &mut self.cov[..packed_len(n)];
        let mut start = 0;
        for (i, (&xi, mean)) in x.iter().zip(&mut self.mean[..n]).enumerate() {
            let d = xi - *mean;
            dev[i] = d;
            *mean += w * d;
            let wdi = w * d;
            let row = &mut cov[start..=start + i];
            for (c, &dj) in row.iter_mut().zip(&dev[..=i]) {
                *c = keep * (*c + wdi * dj);
            }
            start += i + 1;
        }
        // Factorising before the model can score would be wasted work. Once the estimate has settled
        // (each reading moves it by ~alpha), refactoring every REFACTOR_EVERY readings changes scores by
        // well under a percent and saves most of the O(d^3) cost; the schedule depends only on the
        // count, so results stay deterministic.
        let warm_at = self.min_samples();
        if self.count >= warm_at
            && (self.count < 4 * warm_at || self.count % REFACTOR_EVERY == 0 || !self.factored)
        {
            self.refactor();
        }
    }

    /// Builds the scoring matrix `(1-shrinkage)*C + shrinkage*diag(C)` with floored diagonal (plus
    /// `ridge` on the diagonal) into `chol`, and factorises it in place.
    fn factor_with_ridge(&mut self, ridge: f64) -> bool {
        let n = self.dim;
        let off = 1.0 - self.shrinkage;
        let len = packed_len(n);
        let (l, c) = (&mut self.chol[..len], &self.cov[..len]);
        for (l, &c) in l.iter_mut().zip(c) {
            *l = off * c;
        }
        for (i, &mean) in self.mean[..n].iter().enumerate() {
            let floor = (RELATIVE_SD_FLOOR * mean).powi(2) + ABSOLUTE_VAR_FLOOR;
            l[diag(i)] = c[diag(i)].max(floor) + ridge;
        }
        cholesky_packed(l, n)
    }

    fn refactor(&mut self) {
        let n = self.dim;
        if self.factor_with_ridge(0.0) {
            self.factored = true;
            return;
        }
        // Nearly collinear features (little shrinkage): add a growing ridge relative to the mean variance.
        let mean_var = (0..n).map(|i| self.cov[diag(i)]).sum::<f64>() / n as f64;
        let mut ridge = 1e-9 * mean_var.max(ABSOLUTE_VAR_FLOOR);
        for _ in 0..8 {
            if self.factor_with_ridge(ridge) {
                self.factored = true;
                return;
            }
            ridge *= 100.0;
        }
        // Last resort: the floored diagonal alone, which is always positive definite.
        let shrinkage = std::mem::replace(&mut self.shrinkage, 1.0);
        self.factored = self.factor_with_ridge(0.0);
        self.shrinkage = shrinkage;
    }
}

/// Readings between refactorisations of a settled model (see `update`).
const REFACTOR_EVERY: u64 = 8;

/// In-place Cholesky factorisation `A = L L^T` of a symmetric matrix whose lower triangle is in `a`
/// (packed row by row, see `OnlineMahalanobis::cov`); it becomes L. False if `a` is not (numerically)
/// positive definite.
fn cholesky_packed(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let rj = j * (j + 1) / 2;
        let ajj = a[rj + j];
        let s = ajj - a[rj..rj + j].iter().map(|v| v * v).sum::<f64>();
        // A pivot that lost all but ~1e-13 of its diagonal means the matrix is singular to working
        // precision; accepting it would give a meaningless, huge inverse.
        if !s.is_finite() || s <= 1e-13 * ajj {
            return false;
        }
        let ljj = s.sqrt();
        a[rj + j] = ljj;
        // Rows below j follow row j directly in the packed layout.
        let (upper, lower) = a.split_at_mut(rj + j + 1);
        let row_j = &upper[rj..rj + j];
        let mut start = 0;
        for i in j + 1..n {
            let row_i = &mut lower[start..=start + j];
            let dot: f64 = row_i[..j].iter().zip(row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / ljj;
            start += i + 1;
        }
    }
    true
}
