//! Alert policy per thing: dedup, rate limit and burst escalation, all in event time.
//!
//! Event time (not wall-clock time) drives every window here, so replaying a file gives exactly the
//! alerts of the live run.

use crate::config::PolicyConfig;
use crate::event::Name;
use std::collections::VecDeque;

/// Why a candidate alert was not emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppressed {
    /// Same thing and type within the dedup window.
    Dedup,
    /// Another alert of the thing within the rate-limit window.
    RateLimit,
}

impl Suppressed {
    pub fn as_str(&self) -> &'static str {
        match self {
            Suppressed::Dedup => "dedup",
            Suppressed::RateLimit => "rate_limit",
        }
    }
}

/// Policy windows converted to milliseconds once.
#[derive(Clone, Copy, Debug)]
pub struct PolicyWindows {
    pub dedup_ms: i64,
    pub rate_limit_ms: i64,
    pub burst_count: usize,
    pub burst_within_ms: i64,
}

impl From<&PolicyConfig> for PolicyWindows {
    fn from(c: &PolicyConfig) -> Self {
        let ms = |s: f64| (s * 1000.0).round() as i64;
        PolicyWindows {
            dedup_ms: ms(c.dedup_s),
            rate_limit_ms: ms(c.rate_limit_s),
            burst_count: c.burst_count,
            burst_within_ms: ms(c.burst_within_s),
        }
    }
}

/// Policy state of one thing.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PolicyState {
    /// Last emitted event time per alert type (a thing has few types: a Vec beats a map).
    last_by_type: Vec<(Name, i64)>,
    last_any: Option<i64>,
    /// Event times of recent anomalous readings, for burst detection.
    anomalies: VecDeque<i64>,
}

/// `ts` is within `window` of `last` (readings slightly out of order count as within).
fn within(last: i64, ts: i64, window: i64) -> bool {
    ts - last < window
}

impl PolicyState {
    /// True while nothing was recorded (the state of a thing that never had an anomaly or alert).
    pub fn is_fresh(&self) -> bool {
        self.last_by_type.is_empty() && self.last_any.is_none() && self.anomalies.is_empty()
    }

    /// True when nothing recorded here can change the decision on a reading at `oldest` or later:
    /// every dedup, rate-limit and burst window has closed for it. A fresh state then decides exactly
    /// the same, so the caller may drop this one (pass the oldest event time the thing still accepts:
    /// its newest minus the allowed lateness).
    pub fn expired(&self, w: &PolicyWindows, oldest: i64) -> bool {
        let closed = |last: i64, window: i64| oldest.saturating_sub(last) >= window;
        self.last_by_type
            .iter()
            .all(|&(_, t)| closed(t, w.dedup_ms))
            && self.last_any.is_none_or(|t| closed(t, w.rate_limit_ms))
            && self.anomalies.iter().all(|&t| closed(t, w.burst_within_ms))
    }

    /// Heap bytes owned.
    pub fn heap_bytes(&self) -> usize {
        self.last_by_type.capacity() * std::mem::size_of::<(Name, i64)>()
            + self
                .last_by_type
                .iter()
                .map(|(t, _)| {
                    if t.is_heap_allocated() {
                        t.capacity()
                    } else {
                        0
                    }
                })
                .sum::<usize>()
            + self.anomalies.capacity() * std::mem::size_of::<i64>()
    }

    /// Decides whether an alert of `alert_type` at `ts` is emitted; records it when it is.
    /// `bypass_rate_limit` is for escalations (bursts), which must not be hidden by the alert they
    /// escalate.
    pub fn admit(
        &mut self,
        w: &PolicyWindows,
        alert_type: &str,
        ts: i64,
        bypass_rate_limit: bool,
    ) -> Result<(), Suppressed> {
        let slot = self.last_by_type.iter().position(|(t, _)| t == alert_type);
        if let Some(i) = slot {
            if within(self.last_by_type[i].1, ts, w.dedup_ms) {
                return Err(Suppressed::Dedup);
            }
        }
        if !bypass_rate_limit {
            if let Some(last) = self.last_any {
                if within(last, ts, w.rate_limit_ms) {
                    return Err(Suppressed::RateLimit);
                }
            }
        }
        match slot {
            Some(i) => self.last_by_type[i].1 = ts,
            None => {
                // A thing has few alert types: grow one entry at a time, not by doubling.
                self.last_by_type.reserve_exact(1);
                self.last_by_type.push((Name::from(alert_type), ts));
            }
        }
        self.last_any = Some(self.last_any.map_or(ts, |l| l.max(ts)));
        Ok(())
    }

    /// Records an anomalous reading; true when it completes a burst (`burst_count` anomalous readings
    /// within `burst_within_ms`). The window then restarts, so a long anomaly yields one burst per
    /// `burst_count` readings (and dedup keeps one alert per dedup window).
    /// Whether an alert at `ts` that does not bypass the rate limit would be suppressed by it (whatever
    /// its type). Lets expensive explanations be skipped for alerts that cannot be emitted.
    pub fn rate_limited(&self, w: &PolicyWindows, ts: i64) -> bool {
        self.last_any
            .is_some_and(|last| within(last, ts, w.rate_limit_ms))
    }

    pub fn record_anomaly(&mut self, w: &PolicyWindows, ts: i64) -> bool {
        self.anomalies.push_back(ts);
        while let Some(&first) = self.anomalies.front() {
            if ts - first >= w.burst_within_ms {
                self.anomalies.pop_front();
            } else {
                break;
            }
        }
        if self.anomalies.len() >= w.burst_count {
            self.anomalies.clear();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> PolicyWindows {
        PolicyWindows::from(&PolicyConfig::default())
    }

    #[test]
    fn dedup_boundary_is_exclusive_at_the_window() {
        let w = windows();
        let mut p = PolicyState::default();
        assert_eq!(p.admit(&w, "overheat", 0, false), Ok(()));
        // Another type inside the rate-limit window is rate limited, not deduplicated.
        assert_eq!(
            p.admit(&w, "other", 59_999, false),
            Err(Suppressed::RateLimit)
        );
        assert_eq!(
            p.admit(&w, "overheat", 299_999, false),
            Err(Suppressed::Dedup)
        );
        assert_eq!(p.admit(&w, "overheat", 300_000, false), Ok(()));
    }

    #[test]
    fn rate_limit_boundary() {
        let w = windows();
        let mut p = PolicyState::default();
        assert_eq!(p.admit(&w, "a", 1_000, false), Ok(()));
        assert_eq!(p.admit(&w, "b", 60_999, false), Err(Suppressed::RateLimit));
        assert_eq!(p.admit(&w, "b", 61_000, false), Ok(()));
        // A suppressed candidate does not extend the windows.
        assert_eq!(p.admit(&w, "c", 121_000, false), Ok(()));
    }

    #[test]
    fn burst_bypasses_rate_limit_but_not_dedup() {
        let w = windows();
        let mut p = PolicyState::default();
        assert_eq!(p.admit(&w, "a", 0, false), Ok(()));
        assert_eq!(p.admit(&w, "burst", 1_000, true), Ok(()));
        assert_eq!(p.admit(&w, "burst", 2_000, true), Err(Suppressed::Dedup));
    }

    #[test]
    fn expired_state_decides_like_a_fresh_one() {
        let w = PolicyWindows {
            dedup_ms: 300_000,
            rate_limit_ms: 60_000,
            burst_count: 3,
            burst_within_ms: 10_000,
        };
        let mut p = PolicyState::default();
        assert!(p.is_fresh() && p.expired(&w, 0));
        assert_eq!(p.admit(&w, "a", 1_000, false), Ok(()));
        assert!(!p.record_anomaly(&w, 1_000));
        assert!(!p.is_fresh());
        // The dedup window of `a` is open until 301,000.
        assert!(!p.expired(&w, 300_999));
        assert!(p.expired(&w, 301_000));
        // From then on it decides every case like a fresh state.
        for (ts, kind) in [(301_000, "a"), (301_500, "b"), (400_000, "a")] {
            let mut fresh = PolicyState::default();
            let mut old = p.clone();
            assert_eq!(
                old.admit(&w, kind, ts, false),
                fresh.admit(&w, kind, ts, false)
            );
            assert_eq!(old.rate_limited(&w, ts + 1), fresh.rate_limited(&w, ts + 1));
            assert_eq!(old.record_anomaly(&w, ts), fresh.record_anomaly(&w, ts));
        }
        assert!(p.heap_bytes() > 0);
    }

    #[test]
    fn burst_needs_count_within_window() {
        let w = PolicyWindows {
            dedup_ms: 300_000,
            rate_limit_ms: 60_000,
            burst_count: 3,
            burst_within_ms: 10_000,
        };
        let mut p = PolicyState::default();
        assert!(!p.record_anomaly(&w, 0));
        assert!(!p.record_anomaly(&w, 5_000));
        // 0 falls out of the window (10 s after it), so only two remain.
        assert!(!p.record_anomaly(&w, 10_000));
        assert!(p.record_anomaly(&w, 12_000));
        // The window restarts after a burst.
        assert!(!p.record_anomaly(&w, 13_000));
    }
}
