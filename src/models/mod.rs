//! Trained models: feature scaling, Isolation Forest (with exact TreeSHAP), autoencoder.
//!
//! Training follows linfa's shape: hyper-parameters are a plain struct that is checked before fitting
//! ([`Fit::fit`] returns [`ModelError::InvalidParam`] naming the field), the fitted model predicts.
//! Every fitted detector implements [`Model`], the object the registry stores and the dataflow scores with.

pub mod autoencoder;
pub mod dataset;
pub mod iforest;
pub mod metrics;
pub mod scaler;
pub mod treeshap;

#[cfg(test)]
mod tests;

pub use autoencoder::{Autoencoder, AutoencoderParams};
pub use dataset::Dataset;
pub use iforest::{IsolationForest, IsolationForestParams};
pub use metrics::Classification;
pub use scaler::StandardScaler;

use ndarray::{ArrayView2, Axis};

/// Why fitting or using a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid hyper-parameter `{name}`: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("training data: {0}")]
    Data(String),
    #[error("expected {expected} features, got {got}")]
    Dimension { expected: usize, got: usize },
    #[error("model file: {0}")]
    Format(String),
}

impl ModelError {
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        ModelError::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}

/// Fits a model to training rows (samples x features). Implemented by hyper-parameter structs.
pub trait Fit {
    type Model;
    /// Checks the hyper-parameters, then fits.
    fn fit(&self, x: ArrayView2<'_, f64>) -> Result<Self::Model, ModelError>;
}

/// Scores rows with a fitted model.
pub trait Predict {
    /// Anomaly score per row (higher is more anomalous).
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Vec<f64>, ModelError>;
}

impl<M: Model + ?Sized> Predict for M {
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Vec<f64>, ModelError> {
        if x.ncols() != self.n_features() {
            return Err(ModelError::Dimension {
                expected: self.n_features(),
                got: x.ncols(),
            });
        }
        Ok(x.axis_iter(Axis(0))
            .map(|row| match row.as_slice() {
                Some(s) => self.score(s),
                None => self.score(&row.to_vec()),
            })
            .collect())
    }
}

/// A fitted anomaly model as the stream uses it: one row of raw (unscaled) features in, a score out.
/// Implementations are immutable and `Send + Sync`, so an active model can sit behind an `Arc` and be
/// swapped atomically.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Model type as stored in the registry (`isolation_forest`, `autoencoder`).
    fn kind(&self) -> &'static str;
    /// Features the model expects, in order.
    fn n_features(&self) -> usize;
    /// Anomaly score of one row of raw features; higher is more anomalous. Panics never: a row of the
    /// wrong length scores NaN.
    fn score(&self, row: &[f64]) -> f64;
    /// The score above which a row is an anomaly (fitted on training or validation data).
    fn threshold(&self) -> f64;
    /// Signed per-feature contributions to the anomaly: positive pushes toward "anomalous". Same order
    /// as the features; empty when the row has the wrong length.
    fn explain(&self, row: &[f64]) -> Vec<f64>;
    /// How far a score is toward the threshold, for the ensemble: 1 at the threshold, 0 for a score
    /// that says nothing (no evidence), growing beyond 1 above it. The default divides by the
    /// threshold (scores that start at 0, like a reconstruction error).
    fn threshold_ratio(&self, score: f64) -> f64 {
        let t = self.threshold();
        if t > 0.0 && score.is_finite() {
            (score / t).max(0.0)
        } else {
            0.0
        }
    }
    /// Bytes the loaded model holds: its own struct and the capacity of every buffer it owns (the
    /// allocator's per-allocation overhead aside). `egizml bench-models` reports it beside `VmRSS`.
    fn memory_bytes(&self) -> usize;
    /// Whether the row is an anomaly.
    fn is_anomaly(&self, row: &[f64]) -> bool {
        self.score(row) > self.threshold()
    }
}
