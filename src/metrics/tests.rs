use super::*;

const NAMES: [&str; 13] = [
    "egizml_points_ingested_total",
    "egizml_points_malformed_total",
    "egizml_points_processed_total",
    "egizml_anomalies_detected_total",
    "egizml_alerts_emitted_total",
    "egizml_alerts_suppressed_total",
    "egizml_inference_latency_seconds",
    "egizml_event_to_alert_latency_seconds",
    "egizml_things_active",
    "egizml_rules_reloads_total",
    "egizml_sink_errors_total",
    "egizml_dead_letters_total",
    "egizml_build_info",
];

/// The value of the sample line `series` (name plus labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn render_contains_every_metric() {
    let m = Metrics::new();
    // Label-less vec metrics only render once a series exists; touch the ones without pre-created values.
    m.points_processed.with_label_values(&["0"]).inc();
    m.anomalies_detected
        .with_label_values(&["overheat", "warning"])
        .inc();
    let text = m.render();
    for name in NAMES {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
}

#[test]
fn known_labels_are_zero_before_use() {
    let text = Metrics::new().render();
    for reason in MalformedReason::ALL {
        let series = format!(
            "egizml_points_malformed_total{{reason=\"{}\"}}",
            reason.as_str()
        );
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    for reason in SUPPRESSED_REASONS {
        let series = format!("egizml_alerts_suppressed_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    for result in RELOAD_RESULTS {
        let series = format!("egizml_rules_reloads_total{{result=\"{result}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(
        sample(&text, "egizml_sink_errors_total{sink=\"sqlite\"}"),
        Some(0.0)
    );
    let build = format!(
        "egizml_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &build), Some(1.0));
}

#[test]
fn counters_and_histograms_record() {
    let m = Metrics::new();
    m.points_ingested.inc_by(5);
    m.malformed(MalformedReason::BadJson);
    m.malformed(MalformedReason::BadJson);
    m.suppressed("rate_limit");
    m.rules_reload(false);
    m.sink_error("jsonl");
    m.things_active.set(7);
    m.register_workers(2);
    m.points_processed.with_label_values(&["1"]).inc_by(3);
    m.inference_latency.observe(3e-6);
    m.event_to_alert_latency.observe(0.2);
    let text = m.render();
    assert_eq!(sample(&text, "egizml_points_ingested_total"), Some(5.0));
    assert_eq!(
        sample(&text, "egizml_points_malformed_total{reason=\"bad_json\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "egizml_points_malformed_total{reason=\"late\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "egizml_alerts_suppressed_total{reason=\"rate_limit\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "egizml_rules_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "egizml_sink_errors_total{sink=\"jsonl\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "egizml_things_active"), Some(7.0));
    assert_eq!(
        sample(&text, "egizml_points_processed_total{worker=\"0\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "egizml_points_processed_total{worker=\"1\"}"),
        Some(3.0)
    );
    // 3 µs falls in the 5 µs bucket but not the 2.5 µs one.
    assert_eq!(
        sample(
            &text,
            "egizml_inference_latency_seconds_bucket{le=\"0.0000025\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "egizml_inference_latency_seconds_bucket{le=\"0.000005\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "egizml_event_to_alert_latency_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "egizml_event_to_alert_latency_seconds_bucket{le=\"0.1\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "egizml_event_to_alert_latency_seconds_bucket{le=\"0.25\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn buckets_are_increasing_and_span_the_ranges() {
    for (buckets, lo, hi) in [
        (INFERENCE_BUCKETS, 1e-6, 0.1),
        (EVENT_TO_ALERT_BUCKETS, 1e-5, 10.0),
    ] {
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(buckets.first(), Some(&lo));
        assert_eq!(buckets.last(), Some(&hi));
    }
}

#[test]
fn global_is_a_singleton() {
    assert!(std::ptr::eq(global(), global()));
    assert!(global().render().contains("egizml_build_info"));
}
