//! Retention of the anomaly store: alerts (and feedback) older than the retention period are purged by a
//! background thread at a fixed interval.

use super::sqlite::{AlertStore, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MS_PER_DAY: i64 = 86_400_000;

/// How long the store keeps alerts and how often it is purged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Alerts whose event time is older than this many days are deleted, with feedback received
    /// before then. 0 keeps everything.
    pub days: u32,
    /// Seconds between purges (the first runs at start).
    pub interval_s: f64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            days: 90,
            interval_s: 3600.0,
        }
    }
}

impl RetentionConfig {
    /// The purge cutoff (epoch ms) at `now_ms`, `None` when retention is unlimited.
    pub fn cutoff(&self, now_ms: i64) -> Option<i64> {
        (self.days > 0).then(|| now_ms.saturating_sub(i64::from(self.days) * MS_PER_DAY))
    }
}

/// Purges `store` once at `now_ms`; returns the number of alerts deleted.
pub fn purge_once(
    store: &mut dyn AlertStore,
    cfg: &RetentionConfig,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let Some(cutoff) = cfg.cutoff(now_ms) else {
        return Ok(0);
    };
    let n = store.purge_older_than(cutoff)?;
    crate::metrics::global().alerts_purged.inc_by(n as u64);
    Ok(n)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The background purge thread; dropping it (or [`Purger::stop`]) stops it promptly.
pub struct Purger {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Purger {
    /// Starts purging `store` now and then every `cfg.interval_s` seconds. Failures are logged and
    /// counted as `sink_errors{sink="retention"}`; the next interval tries again.
    pub fn spawn(
        store: Arc<Mutex<dyn AlertStore>>,
        cfg: RetentionConfig,
    ) -> std::io::Result<Purger> {
        let (tx, rx) = channel::<()>();
        let interval = if cfg.interval_s.is_finite() && cfg.interval_s > 0.0 {
            Duration::from_secs_f64(cfg.interval_s.max(0.01))
        } else {
            Duration::from_secs(3600)
        };
        let thread = std::thread::Builder::new()
            .name("egizml-retention".into())
            .spawn(move || loop {
                let result = {
                    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                    purge_once(&mut *s, &cfg, now_ms())
                };
                match result {
                    Ok(n) if n > 0 => {
                        tracing::info!(alerts = n, days = cfg.days, "retention purge")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        crate::metrics::global().sink_error("retention");
                        tracing::error!(error = %e, "retention purge failed");
                    }
                }
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            })?;
        Ok(Purger {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for a purge in progress to finish.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_days_before_now_and_zero_days_keeps_everything() {
        let cfg = RetentionConfig::default();
        assert_eq!(cfg.days, 90);
        assert_eq!(cfg.cutoff(100 * MS_PER_DAY), Some(10 * MS_PER_DAY));
        let keep = RetentionConfig {
            days: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(keep.cutoff(100 * MS_PER_DAY), None);
        let cfg: RetentionConfig = serde_norway::from_str("days: 7").unwrap();
        assert_eq!((cfg.days, cfg.interval_s), (7, 3600.0));
        assert!(serde_norway::from_str::<RetentionConfig>("dayz: 7").is_err());
    }

    #[test]
    fn purger_thread_purges_at_start_and_stops_promptly() {
        use crate::event::Alert;
        use crate::sinks::sqlite::{AlertQuery, SqliteStore};
        let alert = |ts: i64| Alert {
            source: "rule".into(),
            score: 0.5,
            model_version: "m".into(),
            ..crate::testkit::alert("oven-1", "overheat", ts)
        };
        let now = now_ms();
        let mut store = SqliteStore::open_in_memory().unwrap();
        store
            .insert(&[alert(now - 100 * MS_PER_DAY), alert(now - MS_PER_DAY)])
            .unwrap();
        let shared: Arc<Mutex<dyn AlertStore>> = Arc::new(Mutex::new(store));
        let purged_before = crate::metrics::global().alerts_purged.get();
        // A long interval: only the purge at start can have run when the test looks.
        let purger = Purger::spawn(
            shared.clone(),
            RetentionConfig {
                days: 90,
                interval_s: 3600.0,
            },
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        let remaining = loop {
            let total = shared
                .lock()
                .unwrap()
                .query(&AlertQuery::default())
                .unwrap()
                .total;
            if total == 1 || t0.elapsed() > Duration::from_secs(10) {
                break total;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(remaining, 1);
        assert!(crate::metrics::global().alerts_purged.get() > purged_before);
        // Stopping interrupts the hour-long wait.
        purger.stop();
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
}
