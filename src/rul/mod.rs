//! Predictive maintenance: remaining useful life (RUL) and failure probability per thing.
//!
//! - [`cmapss`]: NASA C-MAPSS loader and JSONL converter.
//! - [`features`]: the per-thing incremental feature builder (one code path for training, evaluation
//!   and the live stream).
//! - [`model`]: random forest (smartcore) on capped RUL, split-conformal interval, versioned save/load.
//! - [`predict`]: turning a point prediction into a [`predict::Prediction`] (interval, failure
//!   probabilities, trend, contributing factors, recommended action) and the live [`predict::RulTracker`].
//! - [`metrics`]: RMSE and the PHM08 score.

pub mod cmapss;
pub mod features;
pub mod metrics;
pub mod model;
pub mod predict;

#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

/// Errors of the RUL module.
#[derive(Debug, thiserror::Error)]
pub enum RulError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0}")]
    Data(String),
    #[error("training failed: {0}")]
    Train(String),
}
