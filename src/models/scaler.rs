//! Standardisation fitted on training data: (x - mean) / std per feature.

use super::ModelError;
use ndarray::{ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Per-feature mean and standard deviation (population). A constant feature gets std 1, so it maps to 0
/// instead of dividing by zero.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl StandardScaler {
    pub fn fit(x: ArrayView2<'_, f64>) -> Result<Self, ModelError> {
        if x.nrows() == 0 || x.ncols() == 0 {
            return Err(ModelError::Data("scaler: no rows or no columns".into()));
        }
        let n = x.nrows() as f64;
        let mean: Vec<f64> = x.mean_axis(Axis(0)).expect("rows > 0").to_vec();
        let mut var = vec![0.0; x.ncols()];
        for row in x.axis_iter(Axis(0)) {
            for ((v, m), r) in var.iter_mut().zip(&mean).zip(row.iter()) {
                let d = r - m;
                *v += d * d;
            }
        }
        let std = var
            .into_iter()
            .map(|v| {
                let s = (v / n).sqrt();
                if s > f64::EPSILON * 16.0 && s.is_finite() {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Ok(StandardScaler { mean, std })
    }

    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Scales one row into `out` (same length).
    pub fn transform_into(&self, row: &[f64], out: &mut [f64]) {
        for (((o, x), m), s) in out.iter_mut().zip(row).zip(&self.mean).zip(&self.std) {
            *o = (x - m) / s;
        }
    }

    pub fn transform_row(&self, row: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; row.len().min(self.mean.len())];
        self.transform_into(row, &mut out);
        out
    }

    pub fn transform(&self, x: ArrayView2<'_, f64>) -> ndarray::Array2<f64> {
        let mut out = x.to_owned();
        for mut row in out.axis_iter_mut(Axis(0)) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}
