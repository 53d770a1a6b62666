//! Prometheus metrics, served as text by the REST API at `/metrics`.
//!
//! One process-wide [`Metrics`] ([`global`]) so that hot-path code increments handles directly instead of
//! threading a registry through the dataflow. Every metric lives in its own [`Registry`] (not the
//! prometheus default one) so tests can build an isolated [`Metrics::new`] without cross-talk.

use crate::decode::MalformedReason;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

/// Per-reading scoring time, seconds: 1 µs .. 100 ms in 1-2.5-5 steps.
pub const INFERENCE_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1,
];

/// Ingest-to-alert processing latency, seconds: 10 µs .. 10 s in 1-2.5-5 steps.
pub const EVENT_TO_ALERT_BUCKETS: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// `reason` values of `egizml_alerts_suppressed_total`.
pub const SUPPRESSED_REASONS: [&str; 2] = ["dedup", "rate_limit"];

/// `result` values of `egizml_rules_reloads_total`.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// `verdict` values of `egizml_feedback_total`.
pub const FEEDBACK_VERDICTS: [&str; 2] = ["true_positive", "false_positive"];

/// Sink names pre-registered so their error counters show as 0 before the first error.
pub const KNOWN_SINKS: [&str; 4] = ["jsonl", "stdout", "sqlite", "dead_letter"];

/// All EgizML metrics and the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    /// Readings that reached the decoder (good or bad).
    pub points_ingested: IntCounter,
    /// Rejected readings by `reason` ([`MalformedReason::as_str`]).
    pub points_malformed: IntCounterVec,
    /// Readings scored, by `worker` index: per-worker throughput.
    pub points_processed: IntCounterVec,
    /// Anomalies found before the alert policy, by `type` and `severity`.
    pub anomalies_detected: IntCounterVec,
    /// Alerts written, by `sink`.
    pub alerts_emitted: IntCounterVec,
    /// Alerts dropped by the policy, by `reason` (`dedup` | `rate_limit`).
    pub alerts_suppressed: IntCounterVec,
    /// Time to score one reading (all detectors and the ensemble), seconds.
    pub inference_latency: Histogram,
    /// Wall time from ingesting a reading to emitting its alert, seconds.
    pub event_to_alert_latency: Histogram,
    /// Things with live state.
    pub things_active: IntGauge,
    /// Rule reloads by `result` (`ok` | `error`).
    pub rules_reloads: IntCounterVec,
    /// Write failures by `sink`.
    pub sink_errors: IntCounterVec,
    /// Dead letters written, by `sink`.
    pub dead_letters: IntCounterVec,
    /// Constant 1 with the crate `version` as label.
    pub build_info: IntGaugeVec,
    /// Time to load (deserialize and validate) a model, seconds.
    pub model_load_time: Histogram,
    /// 1 while the EgizCore WebSocket source is connected, 0 otherwise.
    pub websocket_connection_status: IntGauge,
    /// Kafka consumer lag (high watermark minus committed offset), by `topic` and `partition`.
    pub kafka_consumer_lag: IntGaugeVec,
    /// Operator feedback received, by `verdict` (`true_positive` | `false_positive`).
    pub feedback: IntCounterVec,
    /// Alerts deleted by the retention purge.
    pub alerts_purged: IntCounter,
    /// Alerts published to EgizCore (a 2xx answer to the status PUT).
    pub egizcore_published: IntCounter,
    /// EgizCore status PUTs that failed (transport error or non-2xx), retries included.
    pub egizcore_publish_failures: IntCounter,
    /// Alerts EgizCore did not get, by `reason` (`sinks::egizcore::DROP_REASONS`).
    pub egizcore_dropped: IntCounterVec,
    /// Alerts waiting in the EgizCore sink's queue.
    pub egizcore_queue_depth: IntGauge,
    /// Scheduled retraining jobs, by `scope` and `outcome` (`submitted` | `refused`).
    pub retrain_jobs: IntCounterVec,
    /// When each scheduled scope is next due for retraining, Unix seconds.
    pub retrain_next_due: GaugeVec,
}

/// Model load time, seconds: 1 ms .. 60 s.
pub const MODEL_LOAD_BUCKETS: &[f64] = &[
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    /// A fresh, independent set of metrics (the process uses [`global`]; tests use their own).
    pub fn new() -> Metrics {
        // The definitions below are constants, so the `expect`s can only fire on a programming error.
        let r = Registry::new();
        let points_ingested = counter(
            &r,
            "egizml_points_ingested_total",
            "Telemetry readings received by the decoder.",
        );
        let points_malformed = counter_vec(
            &r,
            "egizml_points_malformed_total",
            "Telemetry readings rejected, by reason.",
            &["reason"],
        );
        let points_processed = counter_vec(
            &r,
            "egizml_points_processed_total",
            "Telemetry readings scored, by dataflow worker.",
            &["worker"],
        );
        let anomalies_detected = counter_vec(
            &r,
            "egizml_anomalies_detected_total",
            "Anomalies detected before the alert policy, by type and severity.",
            &["type", "severity"],
        );
        let alerts_emitted = counter_vec(
            &r,
            "egizml_alerts_emitted_total",
            "Alerts written, by sink.",
            &["sink"],
        );
        let alerts_suppressed = counter_vec(
            &r,
            "egizml_alerts_suppressed_total",
            "Alerts suppressed by the alert policy, by reason.",
            &["reason"],
        );
        let inference_latency = histogram(
            &r,
            "egizml_inference_latency_seconds",
            "Time to score one reading.",
            INFERENCE_BUCKETS,
        );
        let event_to_alert_latency = histogram(
            &r,
            "egizml_event_to_alert_latency_seconds",
            "Processing latency from ingesting a reading to emitting its alert.",
            EVENT_TO_ALERT_BUCKETS,
        );
        let things_active = IntGauge::new("egizml_things_active", "Things with live state.")
            .expect("valid metric definition");
        r.register(Box::new(things_active.clone()))
            .expect("metric registered once");
        let rules_reloads = counter_vec(
            &r,
            "egizml_rules_reloads_total",
            "Rule reloads, by result.",
            &["result"],
        );
        let sink_errors = counter_vec(
            &r,
            "egizml_sink_errors_total",
            "Sink write failures, by sink.",
            &["sink"],
        );
        let dead_letters = counter_vec(
            &r,
            "egizml_dead_letters_total",
            "Dead letters written, by sink.",
            &["sink"],
        );
        let build_info = IntGaugeVec::new(
            Opts::new("egizml_build_info", "Build information; the value is 1."),
            &["version"],
        )
        .expect("valid metric definition");
        r.register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let model_load_time = histogram(
            &r,
            "egizml_model_load_time_seconds",
            "Time to load a model.",
            MODEL_LOAD_BUCKETS,
        );
        let websocket_connection_status = IntGauge::new(
            "egizml_websocket_connection_status",
            "1 while the EgizCore WebSocket source is connected, else 0.",
        )
        .expect("valid metric definition");
        r.register(Box::new(websocket_connection_status.clone()))
            .expect("metric registered once");
        let kafka_consumer_lag = IntGaugeVec::new(
            Opts::new(
                "egizml_kafka_consumer_lag",
                "Kafka consumer lag in messages, by topic and partition.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric definition");
        r.register(Box::new(kafka_consumer_lag.clone()))
            .expect("metric registered once");
        let feedback = counter_vec(
            &r,
            "egizml_feedback_total",
            "Operator feedback on alerts, by verdict.",
            &["verdict"],
        );
        for verdict in FEEDBACK_VERDICTS {
            feedback.with_label_values(&[verdict]);
        }
        let alerts_purged = counter(
            &r,
            "egizml_alerts_purged_total",
            "Alerts deleted from the store by the retention purge.",
        );

        let egizcore_published = counter(
            &r,
            "egizml_egizcore_published_total",
            "Alerts published to EgizCore (status PUT answered 2xx).",
        );
        let egizcore_publish_failures = counter(
            &r,
            "egizml_egizcore_publish_failures_total",
            "EgizCore status PUTs that failed (transport error or non-2xx), retries included.",
        );
        let egizcore_dropped = counter_vec(
            &r,
            "egizml_egizcore_publish_dropped_total",
            "Alerts not published to EgizCore, by reason.",
            &["reason"],
        );
        for reason in crate::sinks::egizcore::DROP_REASONS {
            egizcore_dropped.with_label_values(&[reason]);
        }
        let egizcore_queue_depth = IntGauge::new(
            "egizml_egizcore_queue_depth",
            "Alerts waiting in the EgizCore sink's queue.",
        )
        .expect("valid metric definition");
        r.register(Box::new(egizcore_queue_depth.clone()))
            .expect("metric registered once");
        let retrain_jobs = counter_vec(
            &r,
            "egizml_retrain_jobs_total",
            "Scheduled retraining jobs, by scope and outcome (submitted, refused).",
            &["scope", "outcome"],
        );
        let retrain_next_due = GaugeVec::new(
            Opts::new(
                "egizml_retrain_next_due_timestamp_seconds",
                "When each scheduled scope is next due for retraining, Unix seconds.",
            ),
            &["scope"],
        )
        .expect("valid metric definition");
        r.register(Box::new(retrain_next_due.clone()))
            .expect("metric registered once");

        // Known label values are created up front so dashboards and alerts see 0 rather than no series.
        for reason in MalformedReason::ALL {
            points_malformed.with_label_values(&[reason.as_str()]);
        }
        for reason in SUPPRESSED_REASONS {
            alerts_suppressed.with_label_values(&[reason]);
        }
        for result in RELOAD_RESULTS {
            rules_reloads.with_label_values(&[result]);
        }
        let m = Metrics {
            registry: r,
            points_ingested,
            points_malformed,
            points_processed,
            anomalies_detected,
            alerts_emitted,
            alerts_suppressed,
            inference_latency,
            event_to_alert_latency,
            things_active,
            rules_reloads,
            sink_errors,
            dead_letters,
            build_info,
            model_load_time,
            websocket_connection_status,
            kafka_consumer_lag,
            feedback,
            alerts_purged,
            egizcore_published,
            egizcore_publish_failures,
            egizcore_dropped,
            egizcore_queue_depth,
            retrain_jobs,
            retrain_next_due,
        };
        for sink in KNOWN_SINKS {
            m.register_sink(sink);
        }
        m
    }

    /// The registry all metrics are registered in (for callers that add their own collectors).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates the per-sink series of `sink` at 0 (call when a sink is configured).
    pub fn register_sink(&self, sink: &str) {
        self.alerts_emitted.with_label_values(&[sink]);
        self.sink_errors.with_label_values(&[sink]);
        self.dead_letters.with_label_values(&[sink]);
    }

    /// Creates the `points_processed` series of workers `0..workers` at 0.
    pub fn register_workers(&self, workers: usize) {
        for w in 0..workers {
            self.points_processed.with_label_values(&[w.to_string()]);
        }
    }

    /// Counts one malformed reading.
    pub fn malformed(&self, reason: MalformedReason) {
        self.points_malformed
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts one suppressed alert; `reason` is `dedup` or `rate_limit`.
    pub fn suppressed(&self, reason: &str) {
        self.alerts_suppressed.with_label_values(&[reason]).inc();
    }

    /// Counts one rule reload.
    pub fn rules_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.rules_reloads.with_label_values(&[result]).inc();
    }

    /// Counts one sink write failure.
    pub fn sink_error(&self, sink: &str) {
        self.sink_errors.with_label_values(&[sink]).inc();
    }

    /// Names of every registered metric family, including labelled families that have no series yet
    /// (which [`Metrics::render`] leaves out). Dashboards and alert rules are checked against this.
    pub fn metric_names(&self) -> std::collections::BTreeSet<String> {
        use prometheus::core::Collector;
        let mut names: std::collections::BTreeSet<String> = self
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let vecs: [&dyn Collector; 10] = [
            &self.points_malformed,
            &self.points_processed,
            &self.anomalies_detected,
            &self.alerts_emitted,
            &self.alerts_suppressed,
            &self.rules_reloads,
            &self.sink_errors,
            &self.dead_letters,
            &self.kafka_consumer_lag,
            &self.egizcore_dropped,
        ];
        for c in vecs {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
        }
        names
    }

    /// All metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec only fails on invalid metric families, which `new` cannot produce; render
        // what was encoded rather than panicking in a request handler.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The process-wide metrics, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests;
