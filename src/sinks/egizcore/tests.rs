use super::config::{encode_path_segment, EgizCoreSinkConfig};
use super::{Admit, AlertQueue, Limiter, StatusBody};
use crate::config::parse_yaml;
use crate::event::{Alert, FeatureContribution, Severity};
use std::time::{Duration, Instant};

fn alert(thing: &str, ts: i64, severity: Severity) -> Alert {
    Alert {
        severity,
        score: 0.86,
        model_version: "oven/online_mahalanobis/1".into(),
        top_features: vec![
            FeatureContribution {
                feature: "current_b".into(),
                contribution: -0.42,
            },
            FeatureContribution {
                feature: "current_imbalance_pct".into(),
                contribution: 0.3,
            },
        ],
        families: [("current".to_string(), 1.0)].into_iter().collect(),
        explanation: "current_b below its rolling mean".into(),
        ..crate::testkit::alert(thing, "phase_imbalance", ts)
    }
}

#[test]
fn body_is_the_documented_status_object() {
    let a = alert("factory:oven-001", 1_769_524_200_000, Severity::Warning);
    let body = serde_json::to_value(StatusBody::of(&a)).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"properties": {
            "anomaly": true,
            "anomaly_score": 0.86,
            "severity": "warning",
            "top_features": [
                {"feature": "current_b", "contribution": -0.42},
                {"feature": "current_imbalance_pct", "contribution": 0.3}
            ],
            "alert_id": a.alert_id,
        }})
    );
}

#[test]
fn thing_ids_are_encoded_as_one_path_segment() {
    let c = EgizCoreSinkConfig::new("http://127.0.0.1:8080/core/");
    assert_eq!(
        c.status_url("factory:oven-001"),
        "http://127.0.0.1:8080/core/api/v1/things/factory:oven-001/features/status"
    );
    assert_eq!(
        encode_path_segment("a/b c?d#%é"),
        "a%2Fb%20c%3Fd%23%25%C3%A9"
    );
}

#[test]
fn config_defaults_validation_and_unknown_fields() {
    let c: EgizCoreSinkConfig = parse_yaml("url: http://127.0.0.1:8080\n", "s.yaml").unwrap();
    c.validate().unwrap();
    assert_eq!(c.min_interval_s, 60.0);
    assert_eq!(c.max_retries, 5);
    assert_eq!(c.queue_capacity, 10_000);
    for (field, yaml, why) in [
        ("url", "url: ws://h:1\n", "must start with http://"),
        ("url", "url: https://h\n", "not supported"),
        ("url", "url: http://\n", "needs a host"),
        (
            "queue_capacity",
            "url: http://h\nqueue_capacity: 0\n",
            ">= 1",
        ),
        (
            "min_interval_s",
            "url: http://h\nmin_interval_s: -1\n",
            ">= 0",
        ),
        (
            "retry_max_ms",
            "url: http://h\nretry_base_ms: 500\nretry_max_ms: 100\n",
            "retry_base_ms",
        ),
    ] {
        let c: EgizCoreSinkConfig = parse_yaml(yaml, "s.yaml").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.starts_with(&format!("egizcore.{field}")), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let err = parse_yaml::<EgizCoreSinkConfig>("url: http://h\nretries: 3\n", "s.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("s.yaml:2:"), "{err}");
    assert!(err.contains("retries"), "{err}");
}

#[test]
fn full_queue_drops_the_oldest_and_keeps_order() {
    let q = AlertQueue::new(3);
    for ts in 0..3 {
        assert!(q.push(alert("t", ts, Severity::Warning)).is_none());
    }
    let evicted = q
        .push(alert("t", 3, Severity::Warning))
        .expect("full: evicts");
    assert_eq!(evicted.ts, 0, "the oldest goes");
    let evicted = q
        .push(alert("t", 4, Severity::Warning))
        .expect("full: evicts");
    assert_eq!(evicted.ts, 1);
    assert_eq!(q.len(), 3);
    let out: Vec<i64> = std::iter::from_fn(|| q.pop_timeout(Duration::ZERO))
        .map(|a| a.ts)
        .collect();
    assert_eq!(out, [2, 3, 4], "FIFO of the newest three");
    assert!(q.is_empty());
}

#[test]
fn queue_wakes_a_waiting_consumer_and_close_ends_the_wait() {
    let q = std::sync::Arc::new(AlertQueue::new(8));
    let q2 = std::sync::Arc::clone(&q);
    let consumer = std::thread::spawn(move || q2.pop_timeout(Duration::from_secs(600)));
    q.push(alert("t", 7, Severity::Critical));
    assert_eq!(consumer.join().unwrap().map(|a| a.ts), Some(7));

    let q2 = std::sync::Arc::clone(&q);
    let consumer = std::thread::spawn(move || q2.pop_timeout(Duration::from_secs(600)));
    q.close(Instant::now());
    assert!(consumer.join().unwrap().is_none(), "close wakes it empty");
    assert!(q.closing().is_some());
}

#[test]
fn limiter_allows_one_publish_per_thing_per_interval() {
    let t0 = Instant::now();
    let sec = Duration::from_secs(1);
    let mut l = Limiter::new(Duration::from_secs(60));
    let Admit::Publish(a) = l.admit(alert("a", 1, Severity::Warning), t0) else {
        panic!("first alert of a thing goes at once")
    };
    l.published(&a.thing_id, t0);
    // Another thing is independent.
    assert!(matches!(
        l.admit(alert("b", 1, Severity::Info), t0 + sec),
        Admit::Publish(_)
    ));
    l.published(&"b".into(), t0 + sec);
    // Within the minute: held, then coalesced.
    assert!(matches!(
        l.admit(alert("a", 2, Severity::Warning), t0 + 10 * sec),
        Admit::Held
    ));
    let Admit::Replaced(lost) = l.admit(alert("a", 3, Severity::Critical), t0 + 20 * sec) else {
        panic!("second held alert replaces the first")
    };
    assert_eq!(lost.ts, 2, "more severe wins");
    let Admit::Replaced(lost) = l.admit(alert("a", 4, Severity::Warning), t0 + 30 * sec) else {
        panic!("coalesced")
    };
    assert_eq!(
        lost.ts, 4,
        "a less severe newcomer loses to the held critical"
    );
    let Admit::Replaced(lost) = l.admit(alert("a", 5, Severity::Critical), t0 + 40 * sec) else {
        panic!("coalesced")
    };
    assert_eq!(lost.ts, 3, "the later one wins among equals");
    assert_eq!(l.pending(), 1);
    assert_eq!(l.next_due(), Some(t0 + 60 * sec));
    assert!(
        l.due(t0 + 59 * sec).is_empty(),
        "not before the minute is up"
    );
    let due = l.due(t0 + 60 * sec);
    assert_eq!(due.iter().map(|a| a.ts).collect::<Vec<_>>(), [5]);
    l.published(&"a".into(), t0 + 60 * sec);
    assert_eq!(l.pending(), 0);
    // Next minute: held again until t0 + 120 s.
    assert!(matches!(
        l.admit(alert("a", 6, Severity::Info), t0 + 61 * sec),
        Admit::Held
    ));
    assert_eq!(l.next_due(), Some(t0 + 120 * sec));
    // After a quiet minute the thing publishes at once.
    let mut l = Limiter::new(Duration::from_secs(60));
    l.published(&"c".into(), t0);
    assert!(l.due(t0 + 61 * sec).is_empty());
    assert!(matches!(
        l.admit(alert("c", 9, Severity::Info), t0 + 61 * sec),
        Admit::Publish(_)
    ));
}

#[test]
fn zero_interval_disables_the_limit() {
    let t0 = Instant::now();
    let mut l = Limiter::new(Duration::ZERO);
    for ts in 0..5 {
        let Admit::Publish(a) = l.admit(alert("a", ts, Severity::Warning), t0) else {
            panic!("no limit")
        };
        l.published(&a.thing_id, t0);
    }
    assert_eq!(l.pending(), 0);
}

#[test]
fn egizcore_metrics_are_exported_at_zero() {
    let text = crate::metrics::Metrics::new().render();
    let lines: Vec<&str> = text.lines().collect();
    for reason in super::DROP_REASONS {
        let series = format!("egizml_egizcore_publish_dropped_total{{reason=\"{reason}\"}} 0");
        assert!(lines.contains(&series.as_str()), "{series} in\n{text}");
    }
    for series in [
        "egizml_egizcore_published_total 0",
        "egizml_egizcore_publish_failures_total 0",
        "egizml_egizcore_queue_depth 0",
        "egizml_websocket_connection_status 0",
    ] {
        assert!(lines.contains(&series), "{series} in\n{text}");
    }
}
