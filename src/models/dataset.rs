//! The feature matrix models are trained on, whatever produced it (JSONL history, SQL feature sets).

use super::ModelError;
use ndarray::{s, Array2, ArrayView2};

/// Named feature columns, one row per sample in time order, and optional anomaly labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub columns: Vec<String>,
    pub x: Array2<f64>,
    /// `true` = anomaly, one per row.
    pub labels: Option<Vec<bool>>,
}

impl Dataset {
    /// Checks shapes and that every value is finite.
    pub fn new(
        columns: Vec<String>,
        x: Array2<f64>,
        labels: Option<Vec<bool>>,
    ) -> Result<Self, ModelError> {
        if columns.len() != x.ncols() {
            return Err(ModelError::Data(format!(
                "{} column names for {} columns",
                columns.len(),
                x.ncols()
            )));
        }
        if let Some(l) = &labels {
            if l.len() != x.nrows() {
                return Err(ModelError::Data(format!(
                    "{} labels for {} rows",
                    l.len(),
                    x.nrows()
                )));
            }
        }
        if let Some((i, _)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::Data(format!(
                "non-finite value at row {} column `{}`",
                i / x.ncols().max(1),
                columns[i % x.ncols().max(1)]
            )));
        }
        Ok(Dataset { columns, x, labels })
    }

    pub fn len(&self) -> usize {
        self.x.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }

    /// Chronological split: the first `train_fraction` of the rows train, the rest validate. History is
    /// a time series, so validating on the later part is what scoring the future will look like.
    pub fn split(&self, train_fraction: f64) -> (Split<'_>, Split<'_>) {
        let cut = ((self.len() as f64) * train_fraction.clamp(0.0, 1.0)).round() as usize;
        let part = |a: usize, b: usize| Split {
            x: self.x.slice(s![a..b, ..]),
            labels: self.labels.as_ref().map(|l| &l[a..b]),
        };
        (part(0, cut), part(cut, self.len()))
    }
}

/// A view of part of a [`Dataset`].
#[derive(Clone, Debug)]
pub struct Split<'a> {
    pub x: ArrayView2<'a, f64>,
    pub labels: Option<&'a [bool]>,
}
