//! Online multivariate model: exponentially weighted mean/covariance, Hotelling T^2. STUB.

use crate::config::ModelConfig;

/// Score of one reading.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelScore {
    /// Hotelling T^2 (squared Mahalanobis distance).
    pub t2: f64,
    /// Normal-equivalent z of T^2 (Wilson-Hilferty), >= 0.
    pub z: f64,
    /// Signed per-dimension contributions; they sum to T^2.
    pub contributions: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct OnlineMahalanobis {
    dim: usize,
}

impl OnlineMahalanobis {
    pub fn new(dim: usize, _cfg: &ModelConfig) -> Self {
        OnlineMahalanobis { dim }
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Samples learned so far.
    pub fn count(&self) -> u64 {
        todo!()
    }
    /// Scores `x` (len == dim) against the state before it; None until enough samples are learned.
    pub fn score(&self, _x: &[f64]) -> Option<ModelScore> {
        todo!()
    }
    /// Allocation-free `score`: writes into `out`, returns false until warm.
    pub fn score_into(&self, _x: &[f64], _scratch: &mut Vec<f64>, _out: &mut ModelScore) -> bool {
        todo!()
    }
    pub fn update(&mut self, _x: &[f64]) {
        todo!()
    }
}
