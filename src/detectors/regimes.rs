//! Operating regimes: score a reading against the normal of the production phase it is in.
//!
//! A machine that runs in phases (an oven that loads, bakes and cools; a pump at several set speeds)
//! has one normal per phase. The online model of one thing fitted on all phases at once learns the
//! envelope of every phase, so a reading that is normal for one phase but appears in another (the
//! heater current of the cooling phase while the conveyor runs at baking speed) sits inside that
//! envelope and scores low. With `detectors.regimes`, each thing instead:
//!
//! 1. keeps its first `warmup` learnable readings (the `by` features and the model's features);
//! 2. clusters them by the `by` features, standardised by their warm-up mean and standard deviation,
//!    with k-means (smartcore, k-means++ seeding, best of [`SEEDS`] fixed seeds), `k` given or chosen
//!    in 2..=`max_k` by the mean silhouette; a thing whose best silhouette stays below
//!    `min_silhouette` (no distinct phases) keeps plain scoring;
//! 3. gives each regime its own [`OnlineMahalanobis`] model (replaying the warm-up readings into the
//!    regime they fall in, so the regimes are ready at once) and, with `calibration_quantile`, its own
//!    calibrated T^2 threshold;
//! 4. then assigns each reading to the nearest regime centre and scores it within that regime. The
//!    centres follow their regime (exponentially weighted like the model), and each keeps the spread of
//!    its `by` features, so a reading far from every regime is anomalous too: the distance to the
//!    nearest centre in units of that regime's spread (floored at [`SPREAD_FLOOR`] warm-up standard
//!    deviations), as a chi-squared statistic mapped like the model's T^2. The model score of the
//!    reading is the larger of the two.
//!
//! The first `settle` readings after a change of regime (the transient of a phase change: a
//! temperature that lags its set point) are scored by the thing's all-regime model and not learned
//! by the regime; a reading that keeps changing regime for more than twice `settle` readings (about
//! as far from two regimes) is no transient and is scored in its nearest regime. Everything is deterministic per thing (fixed seeds, event-time order).

use super::mahalanobis::{wilson_hilferty_z, OnlineMahalanobis};
use crate::config::ModelConfig;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use smartcore::cluster::kmeans::{KMeans, KMeansParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;

/// The most regimes a thing can have (`k`, `max_k`).
pub const MAX_REGIMES: usize = 16;

/// k-means runs per candidate k (k-means++ seeds 0..SEEDS); the one with the least inertia is kept.
pub const SEEDS: u64 = 3;

/// Floor of a regime's spread per `by` feature, in warm-up standard deviations of that feature across
/// all regimes: a set point that is exactly constant within a regime would otherwise make the smallest
/// deviation "far from every regime".
pub const SPREAD_FLOOR: f64 = 0.05;

/// Warm-up readings per regime below which the regimes are not fitted.
const MIN_READINGS_PER_REGIME: usize = 5;

/// At most this many warm-up readings (evenly spaced) enter the silhouette (O(n^2)).
const SILHOUETTE_SAMPLE: usize = 600;

/// The dataflow's `detectors.regimes` section (operating-mode aware scoring; off when absent).
///
/// ```yaml
/// detectors:
///   regimes:
///     by: [speed_rpm]      # what tells the production phase; empty: all of the model's features
///     k: auto              # or a number of regimes
///     warmup: 600          # readings the regimes are learned from
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegimeConfig {
    /// Features whose values tell the operating regime (exact names, raw or derived: a speed, a set
    /// point, a load). Empty: every feature of the online model. A thing lacking one is scored without
    /// regimes (logged).
    pub by: Vec<String>,
    /// Number of regimes (1..=16; 1 means no regimes), or `auto` (the default): chosen per thing in
    /// 2..=`max_k` by the mean silhouette of its warm-up readings.
    #[serde(deserialize_with = "regime_count", serialize_with = "ser_regime_count")]
    pub k: Option<usize>,
    /// Largest k tried by `auto` (2..=16).
    #[serde(deserialize_with = "max_regimes")]
    pub max_k: usize,
    /// `auto` keeps a single regime (plain scoring) when no k reaches this mean silhouette, [0, 1]: the
    /// thing has no distinct phases.
    #[serde(deserialize_with = "crate::config::unit_f64")]
    pub min_silhouette: f64,
    /// Learnable readings of a thing (counted from its first complete reading) the regimes are learned
    /// from; until then it is scored without regimes. Should span every production phase.
    #[serde(deserialize_with = "crate::config::at_least_one")]
    pub warmup: usize,
    /// Readings after a change of regime that are scored by the thing's all-regime model and not
    /// learned by the regime (the transient of a phase change).
    pub settle: usize,
}

impl Default for RegimeConfig {
    fn default() -> Self {
        RegimeConfig {
            by: Vec::new(),
            k: None,
            max_k: 4,
            min_silhouette: 0.5,
            warmup: 600,
            settle: 5,
        }
    }
}

impl RegimeConfig {
    /// Cross-field checks (the single fields are checked while parsing).
    pub fn validate(&self) -> Result<(), String> {
        let k = self.k.unwrap_or(self.max_k);
        if self.warmup < k * MIN_READINGS_PER_REGIME * 4 {
            return Err(format!(
                "field `detectors.regimes.warmup` must be at least {} for {k} regimes, got {}",
                k * MIN_READINGS_PER_REGIME * 4,
                self.warmup
            ));
        }
        Ok(())
    }
}

fn regime_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        N(i64),
        S(String),
    }
    match Count::deserialize(d)? {
        Count::S(s) if s == "auto" => Ok(None),
        Count::N(n) if (1..=MAX_REGIMES as i64).contains(&n) => Ok(Some(n as usize)),
        Count::N(n) => Err(D::Error::custom(format!(
            "must be `auto` or within 1..={MAX_REGIMES}, got {n}"
        ))),
        Count::S(s) => Err(D::Error::custom(format!(
            "must be `auto` or within 1..={MAX_REGIMES}, got `{s}`"
        ))),
    }
}

fn ser_regime_count<S: serde::Serializer>(k: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
    match k {
        Some(k) => s.serialize_u64(*k as u64),
        None => s.serialize_str("auto"),
    }
}

fn max_regimes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    if (2..=MAX_REGIMES).contains(&v) {
        Ok(v)
    } else {
        Err(D::Error::custom(format!(
            "must be within 2..={MAX_REGIMES}, got {v}"
        )))
    }
}

/// Why a thing keeps plain scoring after its regime warm-up.
#[derive(Clone, Debug, PartialEq)]
pub enum NoRegimes {
    /// Fewer learnable warm-up readings than the regimes need.
    TooFewReadings(usize),
    /// The `by` features did not vary during the warm-up.
    Constant,
    /// `k: 1`.
    OneRegime,
    /// Fewer distinct warm-up readings than the regimes asked for.
    FewDistinct(usize),
    /// `auto`: the best k's mean silhouette stayed below `min_silhouette`.
    NoDistinctPhases { k: usize, silhouette: f64 },
    /// k-means failed (smartcore's error).
    Fit(String),
}

impl std::fmt::Display for NoRegimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRegimes::TooFewReadings(n) => write!(f, "only {n} learnable warm-up readings"),
            NoRegimes::Constant => write!(f, "the regime features did not vary"),
            NoRegimes::OneRegime => write!(f, "k is 1"),
            NoRegimes::FewDistinct(n) => write!(f, "only {n} distinct warm-up readings"),
            NoRegimes::NoDistinctPhases { k, silhouette } => write!(
                f,
                "no distinct phases (best: {k} regimes, silhouette {silhouette:.2})"
            ),
            NoRegimes::Fit(e) => write!(f, "k-means failed: {e}"),
        }
    }
}

/// A regime's centre and spread in standardised `by` units, exponentially weighted like the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Spread {
    count: u64,
    mean: Vec<f64>,
    var: Vec<f64>,
}

impl Spread {
    fn update(&mut self, z: &[f64], alpha: f64) {
        self.count += 1;
        let w = (1.0 / self.count as f64).max(alpha);
        for ((m, v), &x) in self.mean.iter_mut().zip(&mut self.var).zip(z) {
            let d = x - *m;
            *m += w * d;
            *v = (1.0 - w) * (*v + w * d * d);
        }
    }

    /// Per-feature terms of the squared standardised distance of `z` from the centre, into `terms`.
    fn terms_into(&self, z: &[f64], terms: &mut Vec<f64>) -> f64 {
        terms.clear();
        terms.extend(self.mean.iter().zip(&self.var).zip(z).map(|((m, v), x)| {
            let sd = v.sqrt().max(SPREAD_FLOOR);
            ((x - m) / sd).powi(2)
        }));
        terms.iter().sum()
    }
}

/// One regime of a thing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Regime {
    /// The online model of the readings in this regime (the thing's model features).
    pub model: OnlineMahalanobis,
    /// Calibrated T^2 threshold (`calibration_quantile`), from the warm-up readings of this regime.
    pub threshold: Option<f64>,
    spread: Spread,
}

/// Where a reading falls: its regime and how far from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assignment {
    /// The nearest regime (0-based, regimes ordered by their centre).
    pub regime: usize,
    /// Readings in this regime before this one since the regime last changed.
    pub since: u64,
    /// Consecutive unsettled readings up to this one (0 when settled by staying in the regime).
    pub unsettled: u64,
    /// Past the `settle` readings: scored and learned by the regime.
    pub settled: bool,
    /// Squared standardised distance from the regime's centre (chi-squared with `by` dims).
    pub distance_t2: f64,
}

/// A thing's fitted regimes and where it currently is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Regimes {
    /// Warm-up mean and (floored) standard deviation of each `by` feature.
    centre: Vec<f64>,
    scale: Vec<f64>,
    pub regimes: Vec<Regime>,
    current: Option<usize>,
    since: u64,
    unsettled: u64,
    settle: u64,
    alpha: f64,
    /// EWMA of the regime model's T^2 since the regime was entered (`detectors.model.smoothing`).
    pub t2_smooth: Option<f64>,
    /// Mean silhouette of the fitted clustering.
    pub silhouette: f64,
}

impl Regimes {
    /// Number of regimes.
    pub fn len(&self) -> usize {
        self.regimes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regimes.is_empty()
    }

    /// Number of `by` features.
    pub fn dims(&self) -> usize {
        self.centre.len()
    }

    /// The centre of regime `r` in the `by` features' own units.
    pub fn centre_of(&self, r: usize) -> impl Iterator<Item = f64> + '_ {
        self.regimes[r]
            .spread
            .mean
            .iter()
            .zip(self.centre.iter().zip(&self.scale))
            .map(|(z, (c, s))| c + z * s)
    }

    /// Standardises the raw `by` values into `z`.
    pub fn scale_into(&self, by: &[f64], z: &mut Vec<f64>) {
        z.clear();
        z.extend(
            by.iter()
                .zip(self.centre.iter().zip(&self.scale))
                .map(|(x, (c, s))| (x - c) / s),
        );
    }

    /// Assigns the standardised reading `z` to the nearest regime centre; `terms` receives the per-
    /// feature terms of its distance from it. Pure: the thing's position moves in [`Regimes::observe`].
    pub fn assign(&self, z: &[f64], terms: &mut Vec<f64>) -> Assignment {
        let mut best = (0, f64::INFINITY);
        for (r, reg) in self.regimes.iter().enumerate() {
            let d: f64 = reg
                .spread
                .mean
                .iter()
                .zip(z)
                .map(|(m, x)| (x - m).powi(2))
                .sum();
            if d < best.1 {
                best = (r, d);
            }
        }
        let regime = best.0;
        let since = match self.current {
            Some(c) if c == regime => self.since + 1,
            _ => 0,
        };
        let distance_t2 = self.regimes[regime].spread.terms_into(z, terms);
        // A reading that keeps changing regime (equally far from two of them) for longer than any
        // transient is not a transient: it is scored in the regime it is nearest to.
        let unsettled = if since >= self.settle {
            0
        } else {
            self.unsettled + 1
        };
        Assignment {
            regime,
            since,
            unsettled,
            settled: since >= self.settle || unsettled > 2 * self.settle,
            distance_t2,
        }
    }

    /// Normal-equivalent z of the reading's distance from its regime (Wilson-Hilferty, like T^2).
    pub fn distance_z(&self, a: &Assignment) -> f64 {
        wilson_hilferty_z(a.distance_t2, self.dims())
    }

    /// Moves the thing to `a`'s regime; when `learn` (and settled), the regime learns the model
    /// vector `x` and the standardised `by` values `z`. `t2_smoothed` is the regime model's smoothed
    /// T^2 of this reading, if it scored it.
    pub fn observe(
        &mut self,
        a: &Assignment,
        z: &[f64],
        x: &[f64],
        learn: bool,
        t2_smoothed: Option<f64>,
    ) {
        self.current = Some(a.regime);
        self.since = a.since;
        self.unsettled = a.unsettled;
        if !a.settled {
            self.t2_smooth = None;
        } else if let Some(v) = t2_smoothed {
            self.t2_smooth = Some(v);
        }
        if learn && a.settled {
            let reg = &mut self.regimes[a.regime];
            reg.model.update(x);
            reg.spread.update(z, self.alpha);
        }
    }
}

/// Fits a thing's regimes on its warm-up readings: `by_rows` (row-major, `d` `by` features per row)
/// and `x_rows` (the model's `dim` features per row, same rows), in event-time order.
pub fn fit(
    by_rows: &[f64],
    d: usize,
    x_rows: &[f64],
    dim: usize,
    cfg: &RegimeConfig,
    model: &ModelConfig,
) -> Result<Regimes, NoRegimes> {
    let n = by_rows.len().checked_div(d).unwrap_or(0);
    if cfg.k == Some(1) {
        return Err(NoRegimes::OneRegime);
    }
    if n < 2 * MIN_READINGS_PER_REGIME {
        return Err(NoRegimes::TooFewReadings(n));
    }
    let mut centre = vec![0.0; d];
    for row in by_rows.chunks_exact(d) {
        for (c, x) in centre.iter_mut().zip(row) {
            *c += x / n as f64;
        }
    }
    let mut var = vec![0.0; d];
    for row in by_rows.chunks_exact(d) {
        for ((v, x), c) in var.iter_mut().zip(row).zip(&centre) {
            *v += (x - c).powi(2) / n as f64;
        }
    }
    let floors: Vec<f64> = centre
        .iter()
        .map(|c| super::stats::floored_scale(0.0, *c))
        .collect();
    if var.iter().zip(&floors).all(|(v, f)| v.sqrt() <= *f) {
        return Err(NoRegimes::Constant);
    }
    let scale: Vec<f64> = var
        .iter()
        .zip(&floors)
        .map(|(v, f)| v.sqrt().max(*f))
        .collect();
    let z: Vec<f64> = by_rows
        .chunks_exact(d)
        .flat_map(|row| {
            row.iter()
                .zip(centre.iter().zip(&scale))
                .map(|(x, (c, s))| (x - c) / s)
        })
        .collect();
    let candidates: Vec<usize> = match cfg.k {
        Some(k) => vec![k],
        None => (2..=cfg.max_k).collect(),
    };
    let distinct = distinct_rows(&z, d, cfg.k.unwrap_or(cfg.max_k));
    let mut best: Option<(Vec<usize>, usize, f64)> = None;
    for &k in &candidates {
        if k > distinct || n < k * MIN_READINGS_PER_REGIME {
            continue;
        }
        let labels = kmeans(&z, d, k)?;
        let k_found = labels.iter().max().map_or(0, |m| m + 1);
        if k_found < 2 {
            continue;
        }
        let s = silhouette(&z, d, &labels, k_found);
        if best.as_ref().is_none_or(|b| s > b.2) {
            best = Some((labels, k_found, s));
        }
    }
    let Some((labels, k, sil)) = best else {
        return Err(NoRegimes::FewDistinct(distinct));
    };
    if cfg.k.is_none() && sil < cfg.min_silhouette {
        return Err(NoRegimes::NoDistinctPhases { k, silhouette: sil });
    }
    // Regime centres and spreads from the clusters, ordered by centre (first `by` feature first) so
    // regime ids mean the same thing on every thing of a class.
    let mut spreads: Vec<Spread> = (0..k)
        .map(|_| Spread {
            count: 0,
            mean: vec![0.0; d],
            var: vec![0.0; d],
        })
        .collect();
    for (row, &l) in z.chunks_exact(d).zip(&labels) {
        let s = &mut spreads[l];
        s.count += 1;
        for (m, x) in s.mean.iter_mut().zip(row) {
            *m += x;
        }
    }
    for s in &mut spreads {
        let c = s.count.max(1) as f64;
        s.mean.iter_mut().for_each(|m| *m /= c);
    }
    for (row, &l) in z.chunks_exact(d).zip(&labels) {
        let s = &mut spreads[l];
        for ((v, x), m) in s.var.iter_mut().zip(row).zip(&s.mean) {
            *v += (x - m).powi(2);
        }
    }
    for s in &mut spreads {
        let c = s.count.max(1) as f64;
        s.var.iter_mut().for_each(|v| *v /= c);
    }
    spreads.sort_by(|a, b| {
        a.mean
            .iter()
            .zip(&b.mean)
            .map(|(x, y)| x.total_cmp(y))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let probe = OnlineMahalanobis::new(dim, model);
    let mut regimes = Regimes {
        centre,
        scale,
        regimes: spreads
            .into_iter()
            .map(|spread| Regime {
                model: OnlineMahalanobis::new(dim, model),
                threshold: None,
                spread,
            })
            .collect(),
        current: None,
        since: 0,
        unsettled: 0,
        settle: cfg.settle as u64,
        alpha: probe.alpha(),
        t2_smooth: None,
        silhouette: sil,
    };
    // Replay the warm-up through the regimes as the stream will see it (assignment, settling), so
    // each regime's model is fitted on its own readings; the centres are already the clusters'.
    let mut terms = Vec::new();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, (zr, xr)) in z.chunks_exact(d).zip(x_rows.chunks_exact(dim)).enumerate() {
        let a = regimes.assign(zr, &mut terms);
        regimes.current = Some(a.regime);
        regimes.since = a.since;
        regimes.unsettled = a.unsettled;
        if a.settled {
            regimes.regimes[a.regime].model.update(xr);
            members[a.regime].push(i);
        }
    }
    if let Some(q) = model.calibration_quantile {
        for (reg, rows) in regimes.regimes.iter_mut().zip(&members) {
            let rows = rows.iter().map(|&i| &x_rows[i * dim..(i + 1) * dim]);
            reg.threshold = reg
                .model
                .calibrated_threshold(rows, q, model.smoothing)
                .map(|(thr, _)| thr);
        }
    }
    regimes.t2_smooth = None;
    Ok(regimes)
}

/// Distinct rows of `z` (bitwise), counted up to `cap + 1`.
fn distinct_rows(z: &[f64], d: usize, cap: usize) -> usize {
    let mut seen: Vec<&[f64]> = Vec::new();
    for row in z.chunks_exact(d) {
        if !seen
            .iter()
            .any(|s| s.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits()))
        {
            seen.push(row);
            if seen.len() > cap {
                break;
            }
        }
    }
    seen.len()
}

/// k-means labels of the standardised rows (best of [`SEEDS`] seeded runs by inertia), relabelled so
/// that only non-empty clusters are numbered (0..k').
fn kmeans(z: &[f64], d: usize, k: usize) -> Result<Vec<usize>, NoRegimes> {
    let n = z.len() / d;
    let x = DenseMatrix::new(n, d, z.to_vec(), false).map_err(|e| NoRegimes::Fit(e.to_string()))?;
    let mut best: Option<(Vec<usize>, f64)> = None;
    for seed in 0..SEEDS {
        let mut params = KMeansParameters::default().with_k(k).with_max_iter(100);
        params.seed = Some(seed);
        let fitted: KMeans<f64, usize, DenseMatrix<f64>, Vec<usize>> =
            KMeans::fit(&x, params).map_err(|e| NoRegimes::Fit(e.to_string()))?;
        let labels = fitted
            .predict(&x)
            .map_err(|e| NoRegimes::Fit(e.to_string()))?;
        let labels = compact(labels, k);
        let inertia = inertia(z, d, &labels);
        if best.as_ref().is_none_or(|b| inertia < b.1) {
            best = Some((labels, inertia));
        }
    }
    Ok(best.map(|b| b.0).unwrap_or_default())
}

/// Renumbers labels so the non-empty clusters are 0..k' in order of first appearance.
fn compact(labels: Vec<usize>, k: usize) -> Vec<usize> {
    let mut map = vec![usize::MAX; k.max(1)];
    let mut next = 0;
    labels
        .into_iter()
        .map(|l| {
            let l = l.min(k.saturating_sub(1));
            if map[l] == usize::MAX {
                map[l] = next;
                next += 1;
            }
            map[l]
        })
        .collect()
}

/// Sum of squared distances of the rows to their cluster's mean.
fn inertia(z: &[f64], d: usize, labels: &[usize]) -> f64 {
    let k = labels.iter().max().map_or(0, |m| m + 1);
    let mut sum = vec![0.0; k * d];
    let mut count = vec![0usize; k];
    for (row, &l) in z.chunks_exact(d).zip(labels) {
        count[l] += 1;
        for (s, x) in sum[l * d..(l + 1) * d].iter_mut().zip(row) {
            *s += x;
        }
    }
    z.chunks_exact(d)
        .zip(labels)
        .map(|(row, &l)| {
            row.iter()
                .zip(&sum[l * d..(l + 1) * d])
                .map(|(x, s)| (x - s / count[l] as f64).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// Mean silhouette of the clustering (on at most [`SILHOUETTE_SAMPLE`] evenly spaced rows; a row
/// alone in its cluster scores 0).
pub fn silhouette(z: &[f64], d: usize, labels: &[usize], k: usize) -> f64 {
    let n = labels.len();
    let step = n.div_ceil(SILHOUETTE_SAMPLE).max(1);
    let idx: Vec<usize> = (0..n).step_by(step).collect();
    let row = |i: usize| &z[i * d..(i + 1) * d];
    let mut total = 0.0;
    let mut sums = vec![0.0; k];
    let mut counts = vec![0usize; k];
    for &i in &idx {
        sums.iter_mut().for_each(|s| *s = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        for &j in &idx {
            if i != j {
                let dist = row(i)
                    .iter()
                    .zip(row(j))
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                sums[labels[j]] += dist;
                counts[labels[j]] += 1;
            }
        }
        let own = labels[i];
        if counts[own] == 0 {
            continue;
        }
        let a = sums[own] / counts[own] as f64;
        let b = (0..k)
            .filter(|&c| c != own && counts[c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() && a.max(b) > 0.0 {
            total += (b - a) / a.max(b);
        }
    }
    total / idx.len() as f64
}
