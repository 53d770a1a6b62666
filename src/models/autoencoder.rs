//! A small dense autoencoder (default 10-5-2-5-10: the input width, then `hidden`, then the input width
//! again) trained with Adam on the mean squared reconstruction error of standardised features. The
//! anomaly score of a row is its mean squared error; the threshold is the 95th percentile of the
//! validation errors; a feature's attribution is its own squared error.
//!
//! On ndarray (matrixmultiply) rather than candle or burn: a network this size needs one matrix
//! product per layer, and those frameworks would add hundreds of crates to a 2-core build.

use super::scaler::StandardScaler;
use super::{Fit, Model, ModelError};
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Hyper-parameters of [`Autoencoder`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoencoderParams {
    /// Widths of the hidden layers, encoder to decoder (the input width comes from the data).
    pub hidden: Vec<usize>,
    /// Passes over the training rows.
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam step size.
    pub learning_rate: f64,
    /// Share of the rows (the last ones) kept out of training to set the threshold.
    pub validation_fraction: f64,
    /// Quantile of the validation errors used as the threshold.
    pub threshold_quantile: f64,
    pub seed: u64,
}

impl Default for AutoencoderParams {
    fn default() -> Self {
        AutoencoderParams {
            hidden: vec![5, 2, 5],
            epochs: 30,
            batch_size: 64,
            learning_rate: 1e-3,
            validation_fraction: 0.2,
            threshold_quantile: 0.95,
            seed: 42,
        }
    }
}

impl AutoencoderParams {
    pub fn check(&self) -> Result<(), ModelError> {
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(ModelError::param(
                "hidden",
                "needs at least one layer, all widths > 0",
            ));
        }
        if self.epochs == 0 {
            return Err(ModelError::param("epochs", "must be > 0"));
        }
        if self.batch_size == 0 {
            return Err(ModelError::param("batch_size", "must be > 0"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(ModelError::param("learning_rate", "must be > 0"));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(ModelError::param(
                "validation_fraction",
                "must be in (0, 1)",
            ));
        }
        if !(self.threshold_quantile > 0.0 && self.threshold_quantile < 1.0) {
            return Err(ModelError::param("threshold_quantile", "must be in (0, 1)"));
        }
        Ok(())
    }
}

/// One dense layer: `out = act(in . w + b)`, `w` stored row-major (inputs x outputs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub w: Vec<f64>,
    pub b: Vec<f64>,
}

/// A fitted autoencoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Autoencoder {
    pub params: AutoencoderParams,
    pub scaler: StandardScaler,
    /// Hidden layers use tanh, the output layer is linear.
    pub layers: Vec<Layer>,
    pub threshold: f64,
    /// Mean training loss of the last epoch.
    pub final_loss: f64,
}

struct Net {
    w: Vec<Array2<f64>>,
    b: Vec<Array1<f64>>,
}

impl Net {
    /// Activations of every layer, input first.
    fn forward(&self, x: &Array2<f64>) -> Vec<Array2<f64>> {
        let mut acts = vec![x.clone()];
        let last = self.w.len() - 1;
        for (l, (w, b)) in self.w.iter().zip(&self.b).enumerate() {
            let mut z = acts[l].dot(w) + b;
            if l < last {
                z.mapv_inplace(f64::tanh);
            }
            acts.push(z);
        }
        acts
    }
}

struct Adam {
    m: Vec<Array2<f64>>,
    v: Vec<Array2<f64>>,
    mb: Vec<Array1<f64>>,
    vb: Vec<Array1<f64>>,
    t: i32,
}

impl Fit for AutoencoderParams {
    type Model = Autoencoder;

    fn fit(&self, x: ArrayView2<'_, f64>) -> Result<Autoencoder, ModelError> {
        self.check()?;
        let (n, d) = x.dim();
        let n_val = ((n as f64) * self.validation_fraction).round() as usize;
        if d == 0 || n_val == 0 || n - n_val < 2 {
            return Err(ModelError::Data(format!(
                "autoencoder needs rows for training and validation, got {n} x {d}"
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Data("non-finite value in training data".into()));
        }
        let _span = tracing::info_span!("train_autoencoder", rows = n, features = d).entered();
        let train = x.slice(s![..n - n_val, ..]);
        let val = x.slice(s![n - n_val.., ..]);
        let scaler = StandardScaler::fit(train)?;
        let xs = scaler.transform(train);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let widths: Vec<usize> = std::iter::once(d)
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(d))
            .collect();
        let mut net = Net {
            w: Vec::new(),
            b: Vec::new(),
        };
        for pair in widths.windows(2) {
            // Glorot uniform initialisation.
            let limit = (6.0 / (pair[0] + pair[1]) as f64).sqrt();
            net.w.push(Array2::from_shape_fn((pair[0], pair[1]), |_| {
                rng.random_range(-limit..limit)
            }));
            net.b.push(Array1::zeros(pair[1]));
        }
        let mut adam = Adam {
            m: net.w.iter().map(|w| Array2::zeros(w.raw_dim())).collect(),
            v: net.w.iter().map(|w| Array2::zeros(w.raw_dim())).collect(),
            mb: net.b.iter().map(|b| Array1::zeros(b.raw_dim())).collect(),
            vb: net.b.iter().map(|b| Array1::zeros(b.raw_dim())).collect(),
            t: 0,
        };
        let mut order: Vec<usize> = (0..xs.nrows()).collect();
        let mut final_loss = f64::NAN;
        for _ in 0..self.epochs {
            order.shuffle(&mut rng);
            let mut loss_sum = 0.0;
            for batch in order.chunks(self.batch_size) {
                let xb = xs.select(Axis(0), batch);
                loss_sum += self.step(&mut net, &mut adam, &xb) * batch.len() as f64;
            }
            final_loss = loss_sum / xs.nrows() as f64;
        }
        let layers = net
            .w
            .iter()
            .zip(&net.b)
            .map(|(w, b)| Layer {
                inputs: w.nrows(),
                outputs: w.ncols(),
                w: w.iter().copied().collect(),
                b: b.to_vec(),
            })
            .collect();
        let mut model = Autoencoder {
            params: self.clone(),
            scaler,
            layers,
            threshold: f64::INFINITY,
            final_loss,
        };
        let mut errors: Vec<f64> = val
            .axis_iter(Axis(0))
            .map(|row| model.score(&row.to_vec()))
            .collect();
        errors.sort_by(f64::total_cmp);
        let pos = self.threshold_quantile * (errors.len() - 1) as f64;
        let (lo, hi) = (
            pos.floor() as usize,
            (pos.ceil() as usize).min(errors.len() - 1),
        );
        model.threshold = errors[lo] + (errors[hi] - errors[lo]) * (pos - lo as f64);
        Ok(model)
    }
}

impl AutoencoderParams {
    /// One Adam step on a batch; returns the batch's mean squared error.
    fn step(&self, net: &mut Net, adam: &mut Adam, xb: &Array2<f64>) -> f64 {
        let acts = net.forward(xb);
        let out = acts.last().expect("at least one layer");
        let diff = out - xb;
        let loss = diff.mapv(|v| v * v).mean().unwrap_or(0.0);
        let mut delta = diff * (2.0 / xb.len() as f64);
        let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        adam.t += 1;
        let c1 = 1.0 - b1.powi(adam.t);
        let c2 = 1.0 - b2.powi(adam.t);
        let lr = self.learning_rate;
        for l in (0..net.w.len()).rev() {
            let gw = acts[l].t().dot(&delta);
            let gb = delta.sum_axis(Axis(0));
            if l > 0 {
                // tanh'(z) = 1 - tanh(z)^2, and acts[l] is tanh(z) of the layer below.
                delta = delta.dot(&net.w[l].t()) * acts[l].mapv(|a| 1.0 - a * a);
            }
            adam.m[l].zip_mut_with(&gw, |m, g| *m = b1 * *m + (1.0 - b1) * g);
            adam.v[l].zip_mut_with(&gw, |v, g| *v = b2 * *v + (1.0 - b2) * g * g);
            adam.mb[l].zip_mut_with(&gb, |m, g| *m = b1 * *m + (1.0 - b1) * g);
            adam.vb[l].zip_mut_with(&gb, |v, g| *v = b2 * *v + (1.0 - b2) * g * g);
            ndarray::Zip::from(&mut net.w[l])
                .and(&adam.m[l])
                .and(&adam.v[l])
                .for_each(|w, m, v| *w -= lr * (m / c1) / ((v / c2).sqrt() + eps));
            ndarray::Zip::from(&mut net.b[l])
                .and(&adam.mb[l])
                .and(&adam.vb[l])
                .for_each(|b, m, v| *b -= lr * (m / c1) / ((v / c2).sqrt() + eps));
        }
        loss
    }
}

impl Autoencoder {
    /// The reconstruction of one row, in standardised units, and the standardised row.
    fn reconstruct(&self, row: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let input = self.scaler.transform_row(row);
        let mut a = input.clone();
        let last = self.layers.len() - 1;
        for (l, layer) in self.layers.iter().enumerate() {
            let mut z = layer.b.clone();
            for (i, ai) in a.iter().enumerate() {
                let w = &layer.w[i * layer.outputs..(i + 1) * layer.outputs];
                for (zj, wij) in z.iter_mut().zip(w) {
                    *zj += ai * wij;
                }
            }
            if l < last {
                z.iter_mut().for_each(|v| *v = v.tanh());
            }
            a = z;
        }
        (a, input)
    }

    /// Squared reconstruction error per feature (standardised units).
    pub fn feature_errors(&self, row: &[f64]) -> Vec<f64> {
        if row.len() != self.scaler.n_features() {
            return Vec::new();
        }
        let (out, input) = self.reconstruct(row);
        out.iter()
            .zip(&input)
            .map(|(o, i)| (o - i) * (o - i))
            .collect()
    }

    /// Checks the layer shapes of a loaded model.
    pub fn validate(&self) -> Result<(), ModelError> {
        let d = self.scaler.n_features();
        let mut width = d;
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs != width || l.w.len() != l.inputs * l.outputs || l.b.len() != l.outputs {
                return Err(ModelError::Format(format!(
                    "autoencoder layer {i}: bad shape"
                )));
            }
            width = l.outputs;
        }
        if self.layers.is_empty() || width != d || self.scaler.std.len() != d {
            return Err(ModelError::Format(
                "autoencoder: output width differs from input".into(),
            ));
        }
        Ok(())
    }
}

impl Model for Autoencoder {
    fn kind(&self) -> &'static str {
        "autoencoder"
    }
    fn n_features(&self) -> usize {
        self.scaler.n_features()
    }
    /// Mean squared reconstruction error in standardised units.
    fn score(&self, row: &[f64]) -> f64 {
        let e = self.feature_errors(row);
        if e.is_empty() {
            return f64::NAN;
        }
        e.iter().sum::<f64>() / e.len() as f64
    }
    fn threshold(&self) -> f64 {
        self.threshold
    }
    fn explain(&self, row: &[f64]) -> Vec<f64> {
        self.feature_errors(row)
    }
    fn memory_bytes(&self) -> usize {
        let f64s = |v: &Vec<f64>| v.capacity() * std::mem::size_of::<f64>();
        std::mem::size_of::<Self>()
            + self.params.hidden.capacity() * std::mem::size_of::<usize>()
            + f64s(&self.scaler.mean)
            + f64s(&self.scaler.std)
            + self.layers.capacity() * std::mem::size_of::<Layer>()
            + self
                .layers
                .iter()
                .map(|l| f64s(&l.w) + f64s(&l.b))
                .sum::<usize>()
    }
}
