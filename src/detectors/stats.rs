//! Per-feature statistical detectors. STUB.

use super::window::RollingWindow;

/// Signed detector statistics for one value of one feature (positive = above normal).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeatureScores {
    /// (x - mean) / std over the window.
    pub z: f64,
    /// (x - median) / (1.4826 * MAD).
    pub robust_z: f64,
    /// EWMA control chart: (ewma_t - mean) / (std * sqrt(alpha / (2 - alpha))).
    pub ewma_z: f64,
    /// Distance outside [Q1, Q3] in IQR units (0 inside).
    pub iqr: f64,
}

/// Rolling window + EWMA state of one feature of one thing.
#[derive(Clone, Debug)]
pub struct FeatureStats {
    pub window: RollingWindow,
}

impl FeatureStats {
    pub fn new(window: usize, _ewma_alpha: f64) -> Self {
        FeatureStats {
            window: RollingWindow::new(window),
        }
    }
    /// Scores `x` against the state *before* `x` (all zeros until at least 2 samples are known).
    pub fn score(&self, _x: f64) -> FeatureScores {
        todo!()
    }
    /// Learns `x`.
    pub fn update(&mut self, _x: f64) {
        todo!()
    }
}
