//! Event-level precision/recall of alerts against labelled fault episodes. STUB: owned by the simulator
//! helper.

use crate::event::{Alert, Name};

/// A contiguous run of label-1 readings of one thing.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    pub thing_id: Name,
    pub start_ts: i64,
    pub end_ts: i64,
}

/// Event-level figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EventMetrics {
    pub episodes: usize,
    pub detected: usize,
    pub alerts: usize,
    pub true_alerts: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Episodes from a stream of (thing_id, ts, label) in any order.
pub fn episodes_from_labels<'a>(
    _points: impl IntoIterator<Item = (&'a str, i64, u8)>,
) -> Vec<Episode> {
    todo!()
}

/// An alert counts for an episode of its thing when start_ts <= alert.ts <= end_ts + grace_ms.
pub fn event_metrics(_alerts: &[Alert], _episodes: &[Episode], _grace_ms: i64) -> EventMetrics {
    todo!()
}
