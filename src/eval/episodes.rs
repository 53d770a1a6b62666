//! Event-level precision/recall of alerts against labelled fault episodes.
//!
//! Point-level metrics reward a detector for every reading of a long fault; operators care about faults
//! and alerts. Here an episode is detected when at least one alert of its thing falls inside it (or within
//! a grace period after it, since windowed detectors confirm late), and an alert is true when it falls
//! inside (or just after) some episode of its thing.

use crate::event::{Alert, Name};
use rustc_hash::FxHashMap;

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

impl EventMetrics {
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub fn f1(&self) -> f64 {
        let s = self.precision + self.recall;
        if s > 0.0 {
            2.0 * self.precision * self.recall / s
        } else {
            0.0
        }
    }
}

/// Episodes from a stream of (thing_id, ts, label) in any order: per thing, sorted by ts, the maximal runs
/// of label 1 (any label other than 1 ends a run). Sorted by thing_id, then start_ts.
pub fn episodes_from_labels<'a>(
    points: impl IntoIterator<Item = (&'a str, i64, u8)>,
) -> Vec<Episode> {
    let mut by_thing: FxHashMap<&'a str, Vec<(i64, u8)>> = FxHashMap::default();
    for (thing, ts, label) in points {
        by_thing.entry(thing).or_default().push((ts, label));
    }
    let mut things: Vec<_> = by_thing.into_iter().collect();
    things.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (thing, mut readings) in things {
        // Stable sort keeps input order among equal timestamps, so duplicates resolve deterministically.
        readings.sort_by_key(|r| r.0);
        let mut run: Option<(i64, i64)> = None;
        for (ts, label) in readings {
            if label == 1 {
                run = Some(match run {
                    Some((start, _)) => (start, ts),
                    None => (ts, ts),
                });
            } else if let Some((start_ts, end_ts)) = run.take() {
                out.push(Episode {
                    thing_id: Name::new(thing),
                    start_ts,
                    end_ts,
                });
            }
        }
        if let Some((start_ts, end_ts)) = run {
            out.push(Episode {
                thing_id: Name::new(thing),
                start_ts,
                end_ts,
            });
        }
    }
    out
}

/// Episodes of one thing sorted by start, with the running maximum of `end_ts + grace` so that "does any
/// episode starting at or before t reach t" is one binary search.
struct ThingEpisodes {
    starts: Vec<i64>,
    reach: Vec<i64>,
    prefix_max_reach: Vec<i64>,
}

/// An alert counts for an episode of its thing when start_ts <= alert.ts <= end_ts + grace_ms.
pub fn event_metrics(alerts: &[Alert], episodes: &[Episode], grace_ms: i64) -> EventMetrics {
    let mut eps: FxHashMap<&str, Vec<(i64, i64)>> = FxHashMap::default();
    for e in episodes {
        eps.entry(e.thing_id.as_str())
            .or_default()
            .push((e.start_ts, e.end_ts.saturating_add(grace_ms)));
    }
    let eps: FxHashMap<&str, ThingEpisodes> = eps
        .into_iter()
        .map(|(thing, mut v)| {
            v.sort_unstable();
            let mut prefix_max_reach = Vec::with_capacity(v.len());
            let mut m = i64::MIN;
            for &(_, r) in &v {
                m = m.max(r);
                prefix_max_reach.push(m);
            }
            let (starts, reach) = v.into_iter().unzip();
            (
                thing,
                ThingEpisodes {
                    starts,
                    reach,
                    prefix_max_reach,
                },
            )
        })
        .collect();

    let mut alert_ts: FxHashMap<&str, Vec<i64>> = FxHashMap::default();
    let mut true_alerts = 0;
    for a in alerts {
        alert_ts.entry(a.thing_id.as_str()).or_default().push(a.ts);
        if let Some(te) = eps.get(a.thing_id.as_str()) {
            let n = te.starts.partition_point(|&s| s <= a.ts);
            if n > 0 && te.prefix_max_reach[n - 1] >= a.ts {
                true_alerts += 1;
            }
        }
    }
    for v in alert_ts.values_mut() {
        v.sort_unstable();
    }

    let mut detected = 0;
    for (thing, te) in &eps {
        let Some(ts) = alert_ts.get(thing) else {
            continue;
        };
        for (&start, &reach) in te.starts.iter().zip(&te.reach) {
            let i = ts.partition_point(|&t| t < start);
            if i < ts.len() && ts[i] <= reach {
                detected += 1;
            }
        }
    }

    let n_alerts = alerts.len();
    let n_episodes = episodes.len();
    EventMetrics {
        episodes: n_episodes,
        detected,
        alerts: n_alerts,
        true_alerts,
        precision: if n_alerts == 0 {
            1.0
        } else {
            true_alerts as f64 / n_alerts as f64
        },
        recall: if n_episodes == 0 {
            1.0
        } else {
            detected as f64 / n_episodes as f64
        },
    }
}
