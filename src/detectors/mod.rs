//! Statistical detectors (z-score, robust z, EWMA, IQR) over rolling windows, and the online
//! multivariate model. STUB: owned by the detectors helper.

pub mod mahalanobis;
pub mod stats;
pub mod window;

/// Maps a detector statistic (|z|-like, >= 0) to a score in [0, 1] such that the detector's own
/// threshold maps to exactly 0.8: `1 - 5^(-(s/threshold)^2)`. Monotone, 0 at 0, -> 1 as s grows.
pub fn normalise(stat: f64, threshold: f64) -> f64 {
    let r = stat.abs() / threshold;
    1.0 - 5f64.powf(-(r * r))
}
