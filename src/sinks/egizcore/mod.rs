//! EgizCore REST sink: each alert becomes `PUT {url}/api/v1/things/{thing_id}/features/status` with
//! `{"properties":{"anomaly":true,"anomaly_score":..,"severity":..,"top_features":[..],"alert_id":..}}`
//! (docs/EGIZCORE.md).
//!
//! The dataflow never waits for EgizCore: [`OutputSink::write`] appends to a bounded [`AlertQueue`]
//! (full: the oldest alert is dropped and counted) and [`OutputSink::flush`] returns at once. One
//! thread drains the queue through a per-thing [`Limiter`] (at most one publish per thing per
//! `min_interval_s`; alerts held back meanwhile are coalesced, keeping the most severe, then the
//! latest) and publishes with retries (exponential backoff with jitter) on transport errors, 408, 429
//! and 5xx. The publish is best effort: Kafka or the store are the durable record of alerts, and
//! every alert EgizCore does not get is counted in `egizml_egizcore_publish_dropped_total{reason}`.

pub mod config;
#[cfg(test)]
mod tests;

pub use config::EgizCoreSinkConfig;

use crate::backoff::{sleep_unless, Backoff};
use crate::event::{Alert, FeatureContribution, Name, Severity};
use crate::pipeline::{Output, OutputSink};
use anyhow::Context;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `reason` values of `egizml_egizcore_publish_dropped_total`.
pub const DROP_REASONS: [&str; 5] = [
    "queue_full",
    "rate_limit",
    "retries_exhausted",
    "rejected",
    "shutdown",
];

/// The PUT body (docs/EGIZCORE.md).
#[derive(Serialize)]
pub struct StatusBody<'a> {
    pub properties: StatusProperties<'a>,
}

#[derive(Serialize)]
pub struct StatusProperties<'a> {
    pub anomaly: bool,
    pub anomaly_score: f64,
    pub severity: Severity,
    pub top_features: &'a [FeatureContribution],
    pub alert_id: &'a str,
}

impl<'a> StatusBody<'a> {
    pub fn of(alert: &'a Alert) -> Self {
        StatusBody {
            properties: StatusProperties {
                anomaly: true,
                anomaly_score: alert.score,
                severity: alert.severity,
                top_features: &alert.top_features,
                alert_id: &alert.alert_id,
            },
        }
    }
}

/// A bounded FIFO of alerts shared by the dataflow (producer) and the publishing thread.
pub struct AlertQueue {
    inner: Mutex<QueueInner>,
    ready: Condvar,
    capacity: usize,
}

struct QueueInner {
    alerts: VecDeque<Alert>,
    /// Set on shutdown: no more pushes; the drain finishes by this instant.
    closing: Option<Instant>,
}

impl AlertQueue {
    pub fn new(capacity: usize) -> AlertQueue {
        AlertQueue {
            inner: Mutex::new(QueueInner {
                alerts: VecDeque::with_capacity(capacity.min(1024)),
                closing: None,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        // A panic while holding the lock cannot leave the deque inconsistent; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `alert`; never blocks. Returns the oldest alert when it had to make room for this one.
    pub fn push(&self, alert: Alert) -> Option<Alert> {
        let mut q = self.lock();
        let evicted = if q.alerts.len() >= self.capacity {
            q.alerts.pop_front()
        } else {
            None
        };
        q.alerts.push_back(alert);
        drop(q);
        self.ready.notify_one();
        evicted
    }

    /// The oldest alert, waiting up to `timeout` for one.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<Alert> {
        let q = self.lock();
        let (mut q, _) = self
            .ready
            .wait_timeout_while(q, timeout, |q| q.alerts.is_empty() && q.closing.is_none())
            .unwrap_or_else(|e| e.into_inner());
        q.alerts.pop_front()
    }

    pub fn len(&self) -> usize {
        self.lock().alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts the shutdown: the drain must end by `deadline`.
    pub fn close(&self, deadline: Instant) {
        self.lock().closing = Some(deadline);
        self.ready.notify_all();
    }

    /// The shutdown deadline, once closing.
    pub fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Takes every queued alert (shutdown).
    fn drain_all(&self) -> Vec<Alert> {
        self.lock().alerts.drain(..).collect()
    }
}

/// What [`Limiter::admit`] decided.
#[derive(Debug)]
pub enum Admit {
    /// Publish now.
    Publish(Alert),
    /// Held until the thing's interval is up.
    Held,
    /// Held, and this previously held (or the offered) alert lost to the other one and is dropped.
    Replaced(Alert),
}

/// At most one publish per thing per interval; alerts in between wait as the thing's single pending
/// alert (the most severe wins, the later one among equals).
pub struct Limiter {
    interval: Duration,
    next_allowed: FxHashMap<Name, Instant>,
    pending: FxHashMap<Name, Alert>,
}

impl Limiter {
    pub fn new(interval: Duration) -> Limiter {
        Limiter {
            interval,
            next_allowed: FxHashMap::default(),
            pending: FxHashMap::default(),
        }
    }

    /// Offers an alert at `now`.
    pub fn admit(&mut self, alert: Alert, now: Instant) -> Admit {
        let free = self
            .next_allowed
            .get(&alert.thing_id)
            .is_none_or(|t| now >= *t);
        if free && !self.pending.contains_key(&alert.thing_id) {
            return Admit::Publish(alert);
        }
        match self.pending.remove(&alert.thing_id) {
            None => {
                self.pending.insert(alert.thing_id.clone(), alert);
                Admit::Held
            }
            Some(old) => {
                let (keep, lose) = if alert.severity >= old.severity {
                    (alert, old)
                } else {
                    (old, alert)
                };
                self.pending.insert(keep.thing_id.clone(), keep);
                Admit::Replaced(lose)
            }
        }
    }

    /// Records a finished publish for `thing` at `now` (success or not): its next one waits.
    pub fn published(&mut self, thing: &Name, now: Instant) {
        if !self.interval.is_zero() {
            self.next_allowed.insert(thing.clone(), now + self.interval);
        }
    }

    /// Pending alerts whose interval is up at `now`, oldest due first; forgets expired entries.
    pub fn due(&mut self, now: Instant) -> Vec<Alert> {
        let mut ready: Vec<(Instant, Name)> = self
            .pending
            .keys()
            .filter_map(|thing| {
                let at = self.next_allowed.get(thing).copied().unwrap_or(now);
                (at <= now).then(|| (at, thing.clone()))
            })
            .collect();
        ready.sort();
        let out = ready
            .into_iter()
            .filter_map(|(_, thing)| self.pending.remove(&thing))
            .collect();
        // Keep the map to the things that are still waiting.
        self.next_allowed
            .retain(|thing, at| *at > now || self.pending.contains_key(thing));
        out
    }

    /// When the next pending alert becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .keys()
            .filter_map(|t| self.next_allowed.get(t))
            .min()
            .copied()
    }

    /// Alerts still held back.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes every held-back alert (shutdown).
    fn take_pending(&mut self) -> Vec<Alert> {
        self.pending.drain().map(|(_, a)| a).collect()
    }
}

/// The EgizCore output sink.
pub struct EgizCoreSink {
    queue: Arc<AlertQueue>,
    shutdown_timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl EgizCoreSink {
    /// Starts the publishing thread. Config errors (token) fail here; EgizCore itself is not
    /// contacted until the first alert.
    pub fn new(cfg: &EgizCoreSinkConfig) -> anyhow::Result<EgizCoreSink> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let token = cfg.bearer_token().map_err(anyhow::Error::msg)?;
        let m = crate::metrics::global();
        m.register_sink("egizcore");
        let queue = Arc::new(AlertQueue::new(cfg.queue_capacity));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
            .http_status_as_error(false)
            .build()
            .into();
        let publisher = Publisher {
            cfg: cfg.clone(),
            agent,
            auth: token.map(|t| format!("Bearer {t}")),
            queue: Arc::clone(&queue),
            limiter: Limiter::new(Duration::from_secs_f64(cfg.min_interval_s)),
        };
        let thread = std::thread::Builder::new()
            .name("egizcore-sink".into())
            .spawn(move || {
                let _span =
                    tracing::info_span!("egizcore_sink", url = %publisher.cfg.base()).entered();
                publisher.run();
            })
            .context("cannot start the EgizCore sink thread")?;
        Ok(EgizCoreSink {
            queue,
            shutdown_timeout: Duration::from_secs_f64(cfg.shutdown_timeout_s),
            thread: Some(thread),
        })
    }
}

impl OutputSink for EgizCoreSink {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        let m = crate::metrics::global();
        for (_, o) in outputs {
            if let Output::Alert(a) = o {
                if let Some(old) = self.queue.push(a.clone()) {
                    m.egizcore_dropped.with_label_values(&["queue_full"]).inc();
                    tracing::warn!(alert_id = %old.alert_id, thing_id = %old.thing_id,
                        "egizcore queue full: oldest alert dropped");
                }
                m.egizcore_queue_depth.set(self.queue.len() as i64);
            }
        }
        Ok(())
    }

    /// Never waits for EgizCore (the publishing thread works on its own).
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Drop for EgizCoreSink {
    /// Lets the thread publish what is queued for up to `shutdown_timeout_s`, then joins it.
    fn drop(&mut self) {
        self.queue.close(Instant::now() + self.shutdown_timeout);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A summary of the sink's counters (the `egizcore` object of `egizml run`'s last line).
pub fn summary() -> serde_json::Value {
    let m = crate::metrics::global();
    let dropped: serde_json::Map<String, serde_json::Value> = DROP_REASONS
        .iter()
        .map(|&r| {
            (
                r.to_string(),
                m.egizcore_dropped.with_label_values(&[r]).get().into(),
            )
        })
        .collect();
    serde_json::json!({
        "published": m.egizcore_published.get(),
        "failed_attempts": m.egizcore_publish_failures.get(),
        "dropped": dropped,
    })
}

/// How one PUT went.
enum Attempt {
    Ok,
    /// Worth retrying (transport error, 408, 429, 5xx).
    Retry(String),
    /// EgizCore refused it (other 4xx, 3xx): retrying would not help.
    Rejected(String),
}

struct Publisher {
    cfg: EgizCoreSinkConfig,
    agent: ureq::Agent,
    auth: Option<String>,
    queue: Arc<AlertQueue>,
    limiter: Limiter,
}

impl Publisher {
    fn run(mut self) {
        let m = crate::metrics::global();
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.queue.closing() {
                if self.queue.is_empty() && self.limiter.pending() == 0 {
                    break;
                }
                if now >= deadline {
                    let left = self.queue.drain_all().len() + self.limiter.take_pending().len();
                    m.egizcore_dropped
                        .with_label_values(&["shutdown"])
                        .inc_by(left as u64);
                    if left > 0 {
                        tracing::warn!(
                            alerts = left,
                            "egizcore sink: shutdown timeout, alerts not published"
                        );
                    }
                    break;
                }
            }
            for alert in self.limiter.due(now) {
                self.publish(&alert);
            }
            // Wait for a new alert, the next held-back one, or (when closing) the deadline.
            let mut wait = Duration::from_millis(200);
            if let Some(at) = self.limiter.next_due() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            if let Some(alert) = self.queue.pop_timeout(wait) {
                m.egizcore_queue_depth.set(self.queue.len() as i64);
                match self.limiter.admit(alert, Instant::now()) {
                    Admit::Publish(a) => self.publish(&a),
                    Admit::Held => {}
                    Admit::Replaced(lost) => {
                        m.egizcore_dropped.with_label_values(&["rate_limit"]).inc();
                        tracing::debug!(alert_id = %lost.alert_id, thing_id = %lost.thing_id,
                            "egizcore: alert coalesced by the per-thing rate limit");
                    }
                }
            } else if self.queue.closing().is_some() && self.limiter.pending() > 0 {
                // Nothing new will come; only held-back alerts remain: wait for them (bounded by
                // the deadline) without spinning.
                let until = self
                    .limiter
                    .next_due()
                    .into_iter()
                    .chain(self.queue.closing())
                    .min()
                    .unwrap_or_else(Instant::now);
                std::thread::sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200)),
                );
            }
        }
        m.egizcore_queue_depth.set(0);
        tracing::info!(
            published = m.egizcore_published.get(),
            failed_attempts = m.egizcore_publish_failures.get(),
            "egizcore sink stopped"
        );
    }

    /// Publishes one alert with retries; counts the outcome.
    fn publish(&mut self, alert: &Alert) {
        let m = crate::metrics::global();
        let url = self.cfg.status_url(&alert.thing_id);
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.retry_base_ms),
            Duration::from_millis(self.cfg.retry_max_ms),
        );
        let mut attempts = 0u32;
        let outcome = loop {
            attempts += 1;
            match self.put(&url, alert) {
                Attempt::Ok => break Ok(()),
                Attempt::Rejected(why) => {
                    m.egizcore_publish_failures.inc();
                    break Err(("rejected", why));
                }
                Attempt::Retry(why) => {
                    m.egizcore_publish_failures.inc();
                    if attempts > self.cfg.max_retries {
                        break Err(("retries_exhausted", why));
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(alert_id = %alert.alert_id, error = %why, attempt = attempts,
                        retry_in_ms = delay.as_millis() as u64, "egizcore publish failed, retrying");
                    let queue = &self.queue;
                    let past_deadline = || queue.closing().is_some_and(|d| Instant::now() >= d);
                    if !sleep_unless(delay, past_deadline) {
                        break Err(("shutdown", why));
                    }
                }
            }
        };
        self.limiter.published(&alert.thing_id, Instant::now());
        match outcome {
            Ok(()) => {
                m.egizcore_published.inc();
                m.alerts_emitted.with_label_values(&["egizcore"]).inc();
                tracing::debug!(alert_id = %alert.alert_id, attempts, "egizcore status published");
            }
            Err((reason, why)) => {
                m.egizcore_dropped.with_label_values(&[reason]).inc();
                m.sink_error("egizcore");
                tracing::error!(alert_id = %alert.alert_id, thing_id = %alert.thing_id, attempts,
                    reason, error = %why, "egizcore publish gave up");
            }
        }
    }

    fn put(&self, url: &str, alert: &Alert) -> Attempt {
        let mut req = self
            .agent
            .put(url)
            .header("Content-Type", "application/json");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth);
        }
        match req.send_json(StatusBody::of(alert)) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                // Read the (small) body so the connection can be reused; keep it for the log.
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default();
                let why = || {
                    format!(
                        "HTTP {status}: {}",
                        body.chars().take(200).collect::<String>()
                    )
                };
                match status {
                    200..=299 => Attempt::Ok,
                    408 | 429 | 500..=599 => Attempt::Retry(why()),
                    _ => Attempt::Rejected(why()),
                }
            }
            Err(e) => Attempt::Retry(e.to_string()),
        }
    }
}
