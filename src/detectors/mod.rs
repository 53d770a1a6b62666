//! Statistical detectors (z-score, robust z, EWMA, IQR) over rolling windows, and the online
//! multivariate model.
//!
//! Per thing and feature, [`stats::FeatureStats`] keeps a [`window::RollingWindow`] plus EWMA state; per
//! thing, [`mahalanobis::OnlineMahalanobis`] keeps a weighted mean/covariance of the feature vector. Both
//! follow the same protocol on the hot path: `score` the reading against the state *before* it (pure),
//! then `update` with it. Neither allocates per reading (use `score_into` for the model).

pub mod mahalanobis;
pub mod regimes;
pub mod sensor_faults;
pub mod stats;
pub mod streaming;
pub mod window;

#[cfg(test)]
mod tests;

/// ln 5 (not in `std::f64::consts`).
const LN_5: f64 = 1.609_437_912_434_100_3;

/// Maps a detector statistic (|z|-like, >= 0) to a score in [0, 1] such that the detector's own
/// threshold maps to exactly 0.8: `1 - 5^(-(s/threshold)^2)`. Monotone, 0 at 0, -> 1 as s grows.
/// Sign-insensitive (uses `|stat|`), so signed z values can be passed directly.
pub fn normalise(stat: f64, threshold: f64) -> f64 {
    let r = stat.abs() / threshold;
    // 5^-(r^2) as exp(-(r^2) ln 5): exp is several times cheaper than powf on the hot path.
    1.0 - (-(r * r) * LN_5).exp()
}
