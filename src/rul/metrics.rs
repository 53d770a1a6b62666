//! RUL metrics: RMSE and the PHM08 challenge score.

/// Root mean squared error; 0 for empty input.
pub fn rmse(pred: &[f64], truth: &[f64]) -> f64 {
    if pred.is_empty() {
        return 0.0;
    }
    let s: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    (s / pred.len() as f64).sqrt()
}

/// PHM08 score: sum of exp(-d/13) - 1 for early predictions (d < 0) and exp(d/10) - 1 for late ones,
/// d = predicted - true. Late predictions cost more. Lower is better.
pub fn phm08(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(p, t)| {
            let d = p - t;
            if d < 0.0 {
                (-d / 13.0).exp() - 1.0
            } else {
                (d / 10.0).exp() - 1.0
            }
        })
        .sum()
}

/// Mean absolute error; 0 for empty input.
pub fn mae(pred: &[f64], truth: &[f64]) -> f64 {
    if pred.is_empty() {
        return 0.0;
    }
    pred.iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / pred.len() as f64
}
