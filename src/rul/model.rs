//! The RUL model: feature spec + random forest (smartcore) + split-conformal interval + healthy baseline,
//! trained on run-to-failure histories. It is versioned in the model registry beside the anomaly models
//! (`crate::registry::StoredModel::Rul`, model_type `rul`); [`RulModel::save`] also writes the older
//! standalone layout `DIR/<dataset>/rul/<version>/model.json`.

use super::cmapss::{Cycle, Unit};
use super::features::{FeatureBuilder, FeatureSpec};
use super::metrics;
use super::RulError;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;
use std::path::{Path, PathBuf};

type Forest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;
type Ridge =
    smartcore::linear::ridge_regression::RidgeRegression<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// Name of the appended linear health-index feature (see [`RulModel::linear_hi`]).
pub const LINEAR_HI: &str = "linear_hi";

/// Random-forest hyper-parameters (chosen on a validation split of the training units; docs/ACCURACY.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub n_trees: usize,
    /// Maximum tree depth; `None` grows until `min_samples_leaf`.
    pub max_depth: Option<u16>,
    pub min_samples_leaf: usize,
    /// Features tried per split; `None` = a third of them (the usual regression default).
    pub m: Option<usize>,
    /// Fixed seed: the same data and parameters give the same model, bit for bit.
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            n_trees: 100,
            max_depth: None,
            min_samples_leaf: 15,
            m: None,
            seed: 42,
        }
    }
}

/// Everything that shapes training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub spec: FeatureSpec,
    pub forest: ForestParams,
    /// Piecewise-linear target cap (Heimes 2008): RUL above it is trained as the cap.
    pub cap: f64,
    /// Every `holdout_every`-th training unit is held out for validation and conformal calibration.
    pub holdout_every: usize,
    /// Miscoverage of the interval: 0.1 gives a 90 % interval.
    pub alpha: f64,
    /// Dataset or equipment class the model belongs to (registry directory name).
    pub dataset: String,
    /// Predictions averaged per thing (see [`Smoother`]); 1 = none.
    pub smooth: usize,
    /// Append the linear health index (ridge regression on the window features) to the forest inputs.
    pub linear_hi: bool,
}

impl TrainOptions {
    /// The defaults used for C-MAPSS.
    pub fn cmapss(dataset: &str) -> Self {
        TrainOptions {
            spec: FeatureSpec::cmapss_default(),
            forest: ForestParams::default(),
            cap: 125.0,
            holdout_every: 5,
            alpha: 0.1,
            dataset: dataset.to_string(),
            smooth: 1,
            linear_hi: true,
        }
    }
}

/// Upper edges (predicted RUL, cycles) of the bands in which residuals are calibrated separately:
/// errors near failure are much smaller than far from it (Mondrian split-conformal).
pub const BAND_EDGES: [f64; 4] = [25.0, 50.0, 75.0, 100.0];
/// Residual quantiles stored per band (0 %, 1 %, ..., 100 %).
const GRID: usize = 101;

/// Calibrated residual distribution (true capped RUL minus prediction) per predicted-RUL band.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Conformal {
    pub alpha: f64,
    /// Per band: `GRID` quantiles of the residual, ascending.
    pub quantiles: Vec<Vec<f64>>,
    /// Per band: calibration rows.
    pub counts: Vec<usize>,
    /// Per band: (lower, upper) residual offsets of the interval, with the finite-sample correction.
    pub offsets: Vec<(f64, f64)>,
}

fn band(pred: f64) -> usize {
    BAND_EDGES.iter().take_while(|&&e| pred >= e).count()
}

/// The `q`-quantile (0..=1) of sorted values, "higher" rule, so the conformal bound is conservative.
fn quantile_higher(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[k - 1]
}

impl Conformal {
    /// Calibrates from (prediction, truth) pairs of held-out units. A band with too few rows borrows
    /// all rows pooled.
    pub fn calibrate(preds: &[f64], truth: &[f64], alpha: f64) -> Result<Self, RulError> {
        if preds.is_empty() || preds.len() != truth.len() {
            return Err(RulError::Train("no calibration rows".into()));
        }
        let nb = BAND_EDGES.len() + 1;
        let mut by_band: Vec<Vec<f64>> = vec![Vec::new(); nb];
        let mut all: Vec<f64> = Vec::with_capacity(preds.len());
        for (&p, &y) in preds.iter().zip(truth) {
            by_band[band(p)].push(y - p);
            all.push(y - p);
        }
        all.sort_by(f64::total_cmp);
        let mut quantiles = Vec::with_capacity(nb);
        let mut counts = Vec::with_capacity(nb);
        let mut offsets = Vec::with_capacity(nb);
        for mut r in by_band {
            r.sort_by(f64::total_cmp);
            let r = if r.len() >= 30 { r } else { all.clone() };
            let n = r.len() as f64;
            // Split-conformal: the ceil((n+1)(1-a/2))/n empirical quantile on each side.
            let hi = quantile_higher(&r, ((n + 1.0) * (1.0 - alpha / 2.0) / n).min(1.0));
            let lo = -quantile_higher(
                &r.iter().map(|x| -x).rev().collect::<Vec<_>>(),
                ((n + 1.0) * (1.0 - alpha / 2.0) / n).min(1.0),
            );
            offsets.push((lo, hi));
            counts.push(r.len());
            quantiles.push(
                (0..GRID)
                    .map(|i| quantile_higher(&r, i as f64 / (GRID - 1) as f64))
                    .collect(),
            );
        }
        Ok(Conformal {
            alpha,
            quantiles,
            counts,
            offsets,
        })
    }

    /// The interval for a prediction, clipped at 0.
    pub fn interval(&self, pred: f64) -> (f64, f64) {
        let (lo, hi) = self.offsets[band(pred)];
        ((pred + lo).max(0.0), (pred + hi).max(0.0))
    }

    /// P(true RUL <= `horizon` cycles), from the calibrated residual distribution of the prediction's
    /// band (linear interpolation between stored quantiles).
    pub fn prob_within(&self, pred: f64, horizon: f64) -> f64 {
        let q = &self.quantiles[band(pred)];
        let x = horizon - pred; // failure within horizon <=> residual <= horizon - pred
        if x < q[0] {
            return 0.0;
        }
        if x >= q[GRID - 1] {
            return 1.0;
        }
        let i = q.partition_point(|&v| v <= x); // q[i-1] <= x < q[i]
        let (a, b) = (q[i - 1], q[i]);
        let f = if b > a { (x - a) / (b - a) } else { 1.0 };
        ((i - 1) as f64 + f) / (GRID - 1) as f64
    }
}

/// Validation figures measured on the held-out training units.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Validation {
    pub units: usize,
    /// Rows scored: cycles >= 31 with true RUL <= 145 (the test set's ranges).
    pub rows: usize,
    pub rmse: f64,
    /// Interval coverage of the capped truth on those rows.
    pub coverage: f64,
}

/// Model metadata stored beside the model and served by the model registry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMeta {
    pub kind: String,
    pub dataset: String,
    pub version: u32,
    /// Epoch seconds of training.
    pub trained_at: u64,
    pub train_units: usize,
    pub train_samples: usize,
    pub cap: f64,
    pub forest: ForestParams,
    pub validation: Validation,
    /// Test-set metrics, when the model was trained by an evaluation (name -> value).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Top features by forest impurity importance.
    pub top_features: Vec<(String, f64)>,
}

/// A trained RUL model.
#[derive(Serialize, Deserialize)]
pub struct RulModel {
    pub meta: ModelMeta,
    pub spec: FeatureSpec,
    /// Per feature: mean and std over healthy training rows (true RUL >= cap), for contributing factors.
    pub healthy: Vec<(f64, f64)>,
    pub conformal: Conformal,
    /// Predictions averaged per thing by [`Smoother`].
    #[serde(default = "one")]
    pub smooth: usize,
    /// Linear health index: a ridge regression of the capped RUL on all window features, appended to
    /// each row as one more forest input. One low-noise combination of all sensors, which single
    /// trees, splitting on one noisy sensor at a time, cannot form. Absent in older model files.
    #[serde(default)]
    linear_hi: Option<Ridge>,
    forest: Forest,
}

impl std::fmt::Debug for RulModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulModel")
            .field("meta", &self.meta)
            .finish()
    }
}

/// Feature rows of units, one per cycle, by the incremental builder (the live code path).
pub fn unit_rows(spec: &FeatureSpec, unit: &Unit) -> Vec<Vec<f64>> {
    let idx = sensor_indices(spec);
    let mut b = FeatureBuilder::new(spec);
    let mut vals = vec![0.0; idx.len()];
    let mut out = Vec::with_capacity(spec.len());
    unit.cycles
        .iter()
        .map(|c| {
            select(c, &idx, &mut vals);
            b.push(&vals, &mut out);
            out.clone()
        })
        .collect()
}

/// Indices into C-MAPSS sensor columns for the spec's `sN` names.
fn sensor_indices(spec: &FeatureSpec) -> Vec<usize> {
    spec.sensors
        .iter()
        .map(|s| {
            s.strip_prefix('s')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=21).contains(n))
                .map(|n| n - 1)
                .expect("C-MAPSS feature specs name sensors s1..s21")
        })
        .collect()
}

fn select(c: &Cycle, idx: &[usize], out: &mut [f64]) {
    for (o, &i) in out.iter_mut().zip(idx) {
        *o = c.sensors[i];
    }
}

fn matrix(rows: &[Vec<f64>]) -> Result<DenseMatrix<f64>, RulError> {
    let ncols = rows.first().map_or(0, Vec::len);
    let values: Vec<f64> = rows.iter().flatten().copied().collect();
    DenseMatrix::new(rows.len(), ncols, values, false).map_err(|e| RulError::Train(e.to_string()))
}

fn fit_ridge(x: &[Vec<f64>], y: &[f64]) -> Result<Ridge, RulError> {
    Ridge::fit(
        &matrix(x)?,
        &y.to_vec(),
        smartcore::linear::ridge_regression::RidgeRegressionParameters::default(),
    )
    .map_err(|e| RulError::Train(format!("linear health index: {e}")))
}

/// `rows` with the linear health index appended to each (unchanged without one).
fn with_hi(ridge: Option<&Ridge>, rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, RulError> {
    let Some(r) = ridge else {
        return Ok(rows.to_vec());
    };
    let hi = r
        .predict(&matrix(rows)?)
        .map_err(|e| RulError::Data(e.to_string()))?;
    Ok(rows
        .iter()
        .zip(hi)
        .map(|(row, h)| {
            let mut v = row.clone();
            v.push(h);
            v
        })
        .collect())
}

fn fit_forest(x: &[Vec<f64>], y: &[f64], p: &ForestParams) -> Result<Forest, RulError> {
    let mut params = RandomForestRegressorParameters::default()
        .with_n_trees(p.n_trees)
        .with_min_samples_leaf(p.min_samples_leaf)
        .with_seed(p.seed);
    if let Some(d) = p.max_depth {
        params = params.with_max_depth(d);
    }
    let m =
        p.m.unwrap_or_else(|| (x.first().map_or(1, Vec::len) / 3).max(1));
    params = params.with_m(m);
    Forest::fit(&matrix(x)?, &y.to_vec(), params).map_err(|e| RulError::Train(e.to_string()))
}

/// Folds of the cross-fitted health index.
const HI_FOLDS: usize = 5;

/// Training rows with the linear health index appended, cross-fitted: each unit's index comes from a
/// ridge fitted on the other folds' units, so the forest learns how far to trust the index on units it
/// was not fitted on (as at prediction time), not its in-sample fit. Returns the augmented rows and the
/// ridge fitted on all rows (the one used for prediction).
fn cross_fitted_hi(
    x: &[Vec<f64>],
    y: &[f64],
    unit_of_row: &[usize],
) -> Result<(Vec<Vec<f64>>, Ridge), RulError> {
    let mut out = x.to_vec();
    for fold in 0..HI_FOLDS {
        let (mut fx, mut fy, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &u) in unit_of_row.iter().enumerate() {
            if u % HI_FOLDS == fold {
                rows.push(i);
            } else {
                fx.push(x[i].clone());
                fy.push(y[i]);
            }
        }
        if rows.is_empty() {
            continue;
        }
        let ridge = fit_ridge(&fx, &fy)?;
        let held: Vec<Vec<f64>> = rows.iter().map(|&i| x[i].clone()).collect();
        let hi = ridge
            .predict(&matrix(&held)?)
            .map_err(|e| RulError::Train(e.to_string()))?;
        for (&i, h) in rows.iter().zip(hi) {
            out[i].push(h);
        }
    }
    Ok((out, fit_ridge(x, y)?))
}

/// The forest (and the linear health index when enabled) on training rows.
fn fit_model(
    x: &[Vec<f64>],
    y: &[f64],
    unit_of_row: &[usize],
    opts: &TrainOptions,
) -> Result<(Forest, Option<Ridge>), RulError> {
    if opts.linear_hi {
        let (xa, ridge) = cross_fitted_hi(x, y, unit_of_row)?;
        Ok((fit_forest(&xa, y, &opts.forest)?, Some(ridge)))
    } else {
        Ok((fit_forest(x, y, &opts.forest)?, None))
    }
}

/// Rows, capped targets, uncapped targets and unit positions of run-to-failure units.
type TrainingSet = (Vec<Vec<f64>>, Vec<f64>, Vec<f64>, Vec<usize>);

/// Rows and capped targets of run-to-failure units.
fn training_set(spec: &FeatureSpec, units: &[&Unit], cap: f64) -> TrainingSet {
    let (mut x, mut y, mut raw, mut unit_of_row) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, u) in units.iter().enumerate() {
        let last = f64::from(u.last_cycle());
        for (row, c) in unit_rows(spec, u).into_iter().zip(&u.cycles) {
            let rul = last - f64::from(c.cycle);
            x.push(row);
            y.push(rul.min(cap));
            raw.push(rul);
            unit_of_row.push(k);
        }
    }
    (x, y, raw, unit_of_row)
}

impl RulModel {
    /// Trains on run-to-failure units: fits on all but every `holdout_every`-th unit, validates and
    /// calibrates the interval on the held-out ones, then refits on all units with the same
    /// parameters (the calibration offsets come from the smaller model, so they are slightly
    /// conservative for the final one).
    pub fn train(units: &[Unit], opts: &TrainOptions) -> Result<RulModel, RulError> {
        opts.spec.validate().map_err(RulError::Train)?;
        if opts.holdout_every < 2 || units.len() < opts.holdout_every {
            return Err(RulError::Train(format!(
                "need at least {} training units and holdout_every >= 2",
                opts.holdout_every.max(2)
            )));
        }
        let (mut fit_units, mut cal_units) = (Vec::new(), Vec::new());
        for (i, u) in units.iter().enumerate() {
            if (i + 1) % opts.holdout_every == 0 {
                cal_units.push(u);
            } else {
                fit_units.push(u);
            }
        }
        let (x, y, _, groups) = training_set(&opts.spec, &fit_units, opts.cap);
        let (forest, ridge) = fit_model(&x, &y, &groups, opts)?;
        let (cx, cy, craw, _) = training_set(&opts.spec, &cal_units, opts.cap);
        let raw = forest
            .predict(&matrix(&with_hi(ridge.as_ref(), &cx)?)?)
            .map_err(|e| RulError::Train(e.to_string()))?;
        // Smooth per unit, as the live path does, so the residuals calibrated are the ones served.
        let mut cp = Vec::with_capacity(raw.len());
        let mut at = 0;
        for u in &cal_units {
            let n = u.cycles.len();
            let clamped: Vec<f64> = raw[at..at + n]
                .iter()
                .map(|v| v.clamp(0.0, opts.cap))
                .collect();
            cp.extend(smooth_series(&clamped, opts.smooth, opts.cap));
            at += n;
        }
        let conformal = Conformal::calibrate(&cp, &cy, opts.alpha)?;
        let validation = validate(&cx, &cp, &cy, &craw, &conformal, cal_units.len());

        let all: Vec<&Unit> = units.iter().collect();
        let (x, y, raw, groups) = training_set(&opts.spec, &all, opts.cap);
        let (forest, linear_hi) = fit_model(&x, &y, &groups, opts)?;
        let healthy = healthy_stats(&x, &raw, opts.cap, opts.spec.len());
        let mut names = opts.spec.names();
        if linear_hi.is_some() {
            names.push(LINEAR_HI.to_string());
        }
        let mut top: Vec<(String, f64)> = forest
            .compute_feature_importances()
            .map(|imp| names.iter().cloned().zip(imp).collect())
            .unwrap_or_default();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(10);
        let trained_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(RulModel {
            meta: ModelMeta {
                kind: "rul_random_forest".into(),
                dataset: opts.dataset.clone(),
                version: 0,
                trained_at,
                train_units: units.len(),
                train_samples: x.len(),
                cap: opts.cap,
                forest: opts.forest.clone(),
                validation,
                metrics: serde_json::Map::new(),
                top_features: top,
            },
            spec: opts.spec.clone(),
            smooth: opts.smooth.max(1),
            healthy,
            conformal,
            linear_hi,
            forest,
        })
    }

    /// Smoothed predictions at every cycle of a unit, computed as the live path does (features cycle
    /// by cycle, then [`Smoother`]).
    pub fn unit_predictions(&self, unit: &Unit) -> Result<Vec<f64>, RulError> {
        let raw = self.predict_rows(&unit_rows(&self.spec, unit))?;
        Ok(smooth_series(&raw, self.smooth, self.meta.cap))
    }

    /// A smoother matching this model.
    pub fn smoother(&self) -> Smoother {
        Smoother::new(self.smooth, self.meta.cap)
    }

    /// Raw forest predictions (cycles, within [0, cap]) for feature rows.
    pub fn predict_rows(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>, RulError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(r) = rows.iter().find(|r| r.len() != self.spec.len()) {
            return Err(RulError::Data(format!(
                "feature row has {} values, the model expects {}",
                r.len(),
                self.spec.len()
            )));
        }
        let p = self
            .forest
            .predict(&matrix(&with_hi(self.linear_hi.as_ref(), rows)?)?)
            .map_err(|e| RulError::Data(e.to_string()))?;
        Ok(p.into_iter().map(|v| v.clamp(0.0, self.meta.cap)).collect())
    }

    /// The `models/<dataset>/rul/<version>/` directory for `version` under `root`.
    pub fn dir(root: &Path, dataset: &str, version: u32) -> PathBuf {
        root.join(dataset).join("rul").join(version.to_string())
    }

    /// Saves as the next version under `root` (`models/` by convention); returns the model file path.
    pub fn save(&mut self, root: &Path) -> Result<PathBuf, RulError> {
        let base = root.join(&self.meta.dataset).join("rul");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RulError::Io { path, source }
        };
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        let mut next = 1;
        for e in std::fs::read_dir(&base).map_err(io(&base))?.flatten() {
            if let Some(v) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                next = next.max(v + 1);
            }
        }
        self.meta.version = next;
        let dir = base.join(next.to_string());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let meta_path = dir.join("meta.json");
        let meta =
            serde_json::to_vec_pretty(&self.meta).map_err(|e| RulError::Data(e.to_string()))?;
        std::fs::write(&meta_path, meta).map_err(io(&meta_path))?;
        let path = dir.join("model.json");
        let body = serde_json::to_vec(self).map_err(|e| RulError::Data(e.to_string()))?;
        std::fs::write(&path, body).map_err(io(&path))?;
        Ok(path)
    }

    /// Loads a model file written by [`RulModel::save`].
    pub fn load(path: &Path) -> Result<RulModel, RulError> {
        let started = std::time::Instant::now();
        let text = std::fs::read(path).map_err(|source| RulError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let m: RulModel = serde_json::from_slice(&text).map_err(|e| RulError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            msg: e.to_string(),
        })?;
        m.check().map_err(|msg| RulError::Parse {
            path: path.to_path_buf(),
            line: 0,
            msg,
        })?;
        crate::metrics::global()
            .model_load_time
            .observe(started.elapsed().as_secs_f64());
        Ok(m)
    }

    /// Checks a loaded model's internal consistency (its feature spec, baseline and interval bands).
    pub fn check(&self) -> Result<(), String> {
        self.spec.validate()?;
        let quantiles_ok = self.conformal.quantiles.len() == BAND_EDGES.len() + 1
            && self.conformal.quantiles.iter().all(|q| q.len() == GRID);
        if self.healthy.len() != self.spec.len()
            || self.conformal.offsets.len() != BAND_EDGES.len() + 1
            || !quantiles_ok
        {
            return Err("model file is inconsistent with its feature spec".into());
        }
        if !(self.meta.cap.is_finite() && self.meta.cap > 0.0) {
            return Err(format!("cap must be > 0, got {}", self.meta.cap));
        }
        Ok(())
    }

    /// Whether the linear health index is one of the forest's inputs.
    pub fn has_linear_hi(&self) -> bool {
        self.linear_hi.is_some()
    }

    /// Names of the forest's inputs, in order: the window features, then `linear_hi` when present.
    pub fn input_names(&self) -> Vec<String> {
        let mut names = self.spec.names();
        if self.has_linear_hi() {
            names.push(LINEAR_HI.to_string());
        }
        names
    }

    /// What shaped this model, as the registry's `hyper_parameters` show it.
    pub fn hyper_parameters(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.meta.kind,
            "forest": self.meta.forest,
            "cap": self.meta.cap,
            "alpha": self.conformal.alpha,
            "smooth": self.smooth,
            "linear_hi": self.has_linear_hi(),
            "sensors": self.spec.sensors,
            "short_window": self.spec.short,
            "long_window": self.spec.long,
            "baseline": self.spec.baseline,
        })
    }
}

fn one() -> usize {
    1
}

/// Per-thing smoothing of successive predictions: the RUL now is estimated by each of the last `k`
/// predictions minus the cycles elapsed since it, averaged. Degradation is one cycle per cycle, so
/// this averages out the forest's cycle-to-cycle noise without lag.
#[derive(Clone, Debug)]
pub struct Smoother {
    k: usize,
    cap: f64,
    recent: std::collections::VecDeque<f64>,
}

impl Smoother {
    pub fn new(k: usize, cap: f64) -> Self {
        Smoother {
            k: k.max(1),
            cap,
            recent: std::collections::VecDeque::with_capacity(k.max(1)),
        }
    }

    /// Adds the raw prediction of the newest cycle; returns the smoothed RUL.
    pub fn push(&mut self, raw: f64) -> f64 {
        if self.recent.len() == self.k {
            self.recent.pop_front();
        }
        self.recent.push_back(raw);
        let n = self.recent.len();
        let sum: f64 = self
            .recent
            .iter()
            .enumerate()
            .map(|(i, r)| r - (n - 1 - i) as f64)
            .sum();
        (sum / n as f64).clamp(0.0, self.cap)
    }
}

/// Smoothed predictions of a unit's successive raw predictions.
pub fn smooth_series(raw: &[f64], k: usize, cap: f64) -> Vec<f64> {
    let mut s = Smoother::new(k, cap);
    raw.iter().map(|&r| s.push(r)).collect()
}

fn validate(
    x: &[Vec<f64>],
    pred: &[f64],
    capped: &[f64],
    raw: &[f64],
    conformal: &Conformal,
    units: usize,
) -> Validation {
    let (mut p, mut t, mut covered) = (Vec::new(), Vec::new(), 0usize);
    for i in 0..x.len() {
        let cycles = *x[i].last().unwrap_or(&0.0);
        if cycles >= 31.0 && raw[i] <= 145.0 {
            p.push(pred[i]);
            t.push(raw[i]);
            let (lo, hi) = conformal.interval(pred[i]);
            if capped[i] >= lo && capped[i] <= hi {
                covered += 1;
            }
        }
    }
    Validation {
        units,
        rows: p.len(),
        rmse: metrics::rmse(&p, &t),
        coverage: if p.is_empty() {
            0.0
        } else {
            covered as f64 / p.len() as f64
        },
    }
}

fn healthy_stats(x: &[Vec<f64>], raw: &[f64], cap: f64, n: usize) -> Vec<(f64, f64)> {
    let rows: Vec<&Vec<f64>> = x
        .iter()
        .zip(raw)
        .filter(|(_, r)| **r >= cap)
        .map(|(r, _)| r)
        .collect();
    (0..n)
        .map(|j| {
            let k = rows.len().max(1) as f64;
            let mean = rows.iter().map(|r| r[j]).sum::<f64>() / k;
            let var = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / k;
            (mean, var.sqrt())
        })
        .collect()
}
