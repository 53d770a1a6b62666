//! Point-wise classification metrics of a detector against labels.

use serde::{Deserialize, Serialize};

/// Confusion counts and the derived precision, recall and F1 (0 when undefined).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Classification {
    /// Compares predictions with labels (`true` = anomaly); extra items of the longer side are ignored.
    pub fn of(predicted: &[bool], labels: &[bool]) -> Self {
        let mut c = Classification::default();
        for (&p, &l) in predicted.iter().zip(labels) {
            match (p, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        c.precision = ratio(c.tp, c.tp + c.fp);
        c.recall = ratio(c.tp, c.tp + c.fn_);
        c.f1 = if c.precision + c.recall > 0.0 {
            2.0 * c.precision * c.recall / (c.precision + c.recall)
        } else {
            0.0
        };
        c
    }
}
