//! The [`AlertStore`] contract, one function per behaviour, run against SQLite and a real PostgreSQL.

use super::procs;
use egizml::api::{self, ApiState};
use egizml::event::{alert_id, Alert, FeatureContribution, Origin, Severity};
use egizml::rul::predict::{Factor, Interval, Prediction};
use egizml::sinks::postgres::PostgresStore;
use egizml::sinks::retention::{purge_once, RetentionConfig};
use egizml::sinks::sqlite::{
    AlertQuery, AlertStore, Feedback, FeedbackCounts, FeedbackOutcome, FeedbackQuery, SqliteStore,
    StoreError, Verdict,
};
use egizml::sinks::sqlite::{PredictionPage, PredictionQuery};
use std::collections::BTreeMap;
use std::sync::Arc;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000;

fn alert(thing: &str, alert_type: &str, ts: i64, severity: Severity) -> Alert {
    let mut families = BTreeMap::new();
    families.insert("thermal".to_string(), 0.75);
    families.insert("electrical".to_string(), 0.25);
    Alert {
        alert_id: alert_id(thing, alert_type, ts),
        thing_id: thing.into(),
        equipment_type: "oven".into(),
        ts,
        severity,
        source: "ensemble".to_string(),
        alert_type: alert_type.to_string(),
        // Not representable exactly in decimal: the store must give back the same f64.
        score: 0.1 + 0.2,
        model_version: "oven/online/1".to_string(),
        top_features: vec![FeatureContribution {
            feature: "temp_zone_2".into(),
            contribution: 0.75,
        }],
        families,
        explanation: "temp_zone_2 \"high\" — 262.1 °C".to_string(),
        input_offsets: Origin::Line { line: 7 },
        label: Some(1),
        detectors: Vec::new(),
    }
}

/// 3 things x 8 alerts, one minute apart, types and severities interleaved.
fn fixture() -> Vec<Alert> {
    let mut v = Vec::new();
    for (k, thing) in ["oven-1", "mixer-2", "line:conveyor-3"].iter().enumerate() {
        for i in 0..8i64 {
            let ty = ["overheat", "voltage_anomaly"][(i % 2) as usize];
            let sev = [Severity::Info, Severity::Warning, Severity::Critical][(i % 3) as usize];
            v.push(alert(thing, ty, T0 + i * 60_000 + k as i64, sev));
        }
    }
    v
}

fn newest_first(mut v: Vec<Alert>) -> Vec<Alert> {
    v.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| a.alert_id.cmp(&b.alert_id)));
    v
}

fn all(store: &dyn AlertStore) -> Vec<Alert> {
    store
        .query(&AlertQuery {
            limit: 1000,
            ..AlertQuery::default()
        })
        .unwrap()
        .items
}

fn insert_is_idempotent_and_lossless(s: &mut dyn AlertStore) {
    let alerts = fixture();
    assert_eq!(s.insert(&[]).unwrap(), 0);
    assert_eq!(s.insert(&alerts[..10]).unwrap(), 10);
    // A replay of overlapping alerts stores only the new ones.
    assert_eq!(s.insert(&alerts).unwrap(), alerts.len() - 10);
    assert_eq!(s.insert(&alerts).unwrap(), 0);
    assert_eq!(all(s), newest_first(alerts));
}

fn filters_and_pagination(s: &mut dyn AlertStore) {
    let alerts = fixture();
    s.insert(&alerts).unwrap();
    let sorted = newest_first(alerts);
    let check = |q: AlertQuery, keep: &dyn Fn(&Alert) -> bool| {
        let want: Vec<Alert> = sorted.iter().filter(|a| keep(a)).cloned().collect();
        let page = s.query(&q).unwrap();
        assert_eq!(page.total as usize, want.len(), "{q:?}");
        assert_eq!(page.items, want, "{q:?}");
    };
    check(
        AlertQuery {
            thing_id: Some("line:conveyor-3".into()),
            ..AlertQuery::default()
        },
        &|a| a.thing_id == "line:conveyor-3",
    );
    check(
        AlertQuery {
            since_ms: Some(T0 + 120_000),
            until_ms: Some(T0 + 300_000),
            ..AlertQuery::default()
        },
        &|a| (T0 + 120_000..=T0 + 300_000).contains(&a.ts),
    );
    check(
        AlertQuery {
            severity: Some(Severity::Critical),
            alert_type: Some("voltage_anomaly".into()),
            ..AlertQuery::default()
        },
        &|a| a.severity == Severity::Critical && a.alert_type == "voltage_anomaly",
    );
    check(
        AlertQuery {
            thing_id: Some("nobody".into()),
            ..AlertQuery::default()
        },
        &|_| false,
    );
    // Pages of 7 over 24 alerts: in order, nothing lost or repeated.
    let mut seen = Vec::new();
    for offset in (0..24).step_by(7) {
        let p = s
            .query(&AlertQuery {
                limit: 7,
                offset,
                ..AlertQuery::default()
            })
            .unwrap();
        assert_eq!((p.total, p.limit, p.offset), (24, 7, offset));
        seen.extend(p.items);
    }
    assert_eq!(seen, sorted);
    let p = s
        .query(&AlertQuery {
            limit: 0,
            ..AlertQuery::default()
        })
        .unwrap();
    assert_eq!((p.items.len(), p.total), (0, 24));
    let p = s
        .query(&AlertQuery {
            offset: 100,
            ..AlertQuery::default()
        })
        .unwrap();
    assert_eq!((p.items.len(), p.total), (0, 24));
}

fn feedback_contract(s: &mut dyn AlertStore) {
    let alerts = fixture();
    s.insert(&alerts).unwrap();
    let fb = |a: &Alert, thing: &str, verdict, ts| Feedback {
        alert_id: a.alert_id.clone(),
        thing_id: thing.to_string(),
        verdict,
        note: Some(format!("note on {}", a.alert_id)),
        ts,
    };
    let unknown = Feedback {
        alert_id: "no-such-alert".into(),
        ..fb(&alerts[0], "oven-1", Verdict::TruePositive, T0)
    };
    assert!(matches!(
        s.record_feedback(&unknown),
        Err(StoreError::UnknownAlert { .. })
    ));
    assert!(matches!(
        s.record_feedback(&fb(&alerts[0], "mixer-2", Verdict::TruePositive, T0)),
        Err(StoreError::ThingMismatch { .. })
    ));
    assert_eq!(s.feedback_counts(None).unwrap(), FeedbackCounts::default());

    let first = fb(&alerts[0], "oven-1", Verdict::TruePositive, T0 + 1);
    assert_eq!(s.record_feedback(&first).unwrap(), FeedbackOutcome::Created);
    let corrected = Feedback {
        note: None,
        ..fb(&alerts[0], "oven-1", Verdict::FalsePositive, T0 + 2)
    };
    assert_eq!(
        s.record_feedback(&corrected).unwrap(),
        FeedbackOutcome::Replaced
    );
    for (i, a) in alerts[1..6].iter().enumerate() {
        s.record_feedback(&fb(a, "oven-1", Verdict::TruePositive, T0 + 10 + i as i64))
            .unwrap();
    }
    s.record_feedback(&fb(&alerts[8], "mixer-2", Verdict::FalsePositive, T0 + 20))
        .unwrap();
    assert_eq!(
        s.feedback_counts(None).unwrap(),
        FeedbackCounts {
            true_positive: 5,
            false_positive: 2
        }
    );
    assert_eq!(
        s.feedback_counts(Some("mixer-2")).unwrap(),
        FeedbackCounts {
            true_positive: 0,
            false_positive: 1
        }
    );
    let page = s.feedback(&FeedbackQuery::default()).unwrap();
    assert_eq!(page.total, 7);
    assert_eq!(page.items[0].alert_id, alerts[8].alert_id, "newest first");
    let replaced = page
        .items
        .iter()
        .find(|f| f.alert_id == alerts[0].alert_id)
        .unwrap();
    assert_eq!(replaced, &corrected);
    let page = s
        .feedback(&FeedbackQuery {
            thing_id: Some("oven-1".into()),
            verdict: Some(Verdict::TruePositive),
            limit: 2,
            offset: 4,
        })
        .unwrap();
    assert_eq!((page.total, page.items.len()), (5, 1));
    assert_eq!(page.items[0].alert_id, alerts[1].alert_id, "oldest last");
}

fn retention_purge(s: &mut dyn AlertStore) {
    let now = T0 + 100 * DAY;
    let old = alert("oven-1", "overheat", now - 91 * DAY, Severity::Warning);
    let edge = alert("oven-1", "overheat", now - 90 * DAY, Severity::Warning);
    let fresh = alert("oven-1", "overheat", now - DAY, Severity::Warning);
    s.insert(&[old.clone(), edge.clone(), fresh.clone()])
        .unwrap();
    for (a, ts) in [(&old, now - 91 * DAY), (&fresh, now - DAY)] {
        s.record_feedback(&Feedback {
            alert_id: a.alert_id.clone(),
            thing_id: "oven-1".into(),
            verdict: Verdict::TruePositive,
            note: None,
            ts,
        })
        .unwrap();
    }
    let keep_all = RetentionConfig {
        days: 0,
        ..RetentionConfig::default()
    };
    assert_eq!(purge_once(s, &keep_all, now).unwrap(), 0);
    // Default 90 days: the alert exactly 90 days old stays (the cutoff is exclusive).
    assert_eq!(purge_once(s, &RetentionConfig::default(), now).unwrap(), 1);
    assert_eq!(all(s), vec![fresh.clone(), edge]);
    let fb = s.feedback(&FeedbackQuery::default()).unwrap();
    assert_eq!(fb.total, 1);
    assert_eq!(fb.items[0].alert_id, fresh.alert_id);
    assert_eq!(s.purge_older_than(now).unwrap(), 2);
    assert_eq!(all(s), vec![]);
    assert_eq!(s.feedback(&FeedbackQuery::default()).unwrap().total, 0);
}

/// The REST API serves whatever store it is given.
fn api_over_store(s: Box<dyn AlertStore>) {
    let mut s = s;
    s.insert(&fixture()).unwrap();
    let shared: egizml::api::SharedStore = Arc::new(std::sync::Mutex::new(s));
    let server = api::spawn("127.0.0.1:0".parse().unwrap(), ApiState::new(shared)).unwrap();
    let base = format!("http://{}", server.local_addr());
    let page: serde_json::Value = ureq::get(format!(
        "{base}/api/v1/anomalies/mixer-2?severity=critical&limit=2"
    ))
    .call()
    .unwrap()
    .body_mut()
    .read_json()
    .unwrap();
    let want: Vec<Alert> = newest_first(fixture())
        .into_iter()
        .filter(|a| a.thing_id == "mixer-2" && a.severity == Severity::Critical)
        .collect();
    assert_eq!(page["total"], want.len());
    let items: Vec<Alert> = serde_json::from_value(page["items"].clone()).unwrap();
    assert_eq!(items, want[..2]);
    let body = serde_json::json!({"thing_id": "mixer-2", "alert_id": want[0].alert_id, "verdict": "true_positive"});
    let resp = ureq::post(format!("{base}/api/v1/feedback"))
        .send_json(&body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    server.shutdown().unwrap();
}

fn prediction(thing: &str, ts: i64, rul: f64) -> Prediction {
    Prediction {
        thing_id: thing.into(),
        equipment_type: "turbofan".into(),
        ts,
        cycles: ((ts - T0) / 3_600_000) as usize,
        // Not representable exactly in decimal: the store must give back the same f64.
        rul: rul + 0.1 + 0.2,
        rul_hours: rul + 0.1 + 0.2,
        interval: Interval {
            lower: rul - 10.0,
            upper: rul + 12.5,
            level: 0.9,
        },
        health_index: rul / 125.0,
        failure_probability_24h: 0.01,
        failure_probability_72h: 0.2,
        degradation_trend: -0.93,
        contributing_factors: vec![Factor {
            feature: "s11".into(),
            z: 2.5,
        }],
        recommended_action: "Plan maintenance at the next scheduled stop; order parts".into(),
        maintenance_due: rul <= 72.0,
        model_version: "FD001/rul/1".into(),
    }
}

/// 3 things x 6 hourly predictions; thing k loses 20 cycles an hour from 150 - 30 k.
fn prediction_fixture() -> Vec<Prediction> {
    let mut v = Vec::new();
    for (k, thing) in ["fan-1", "fan-2", "fan:3"].iter().enumerate() {
        for i in 0..6i64 {
            let rul = 150.0 - 30.0 * k as f64 - 20.0 * i as f64;
            v.push(prediction(thing, T0 + i * 3_600_000, rul.max(0.0)));
        }
    }
    v
}

fn preds(s: &dyn AlertStore, f: impl FnOnce(&mut PredictionQuery)) -> PredictionPage {
    let mut q = PredictionQuery {
        limit: 1000,
        ..PredictionQuery::default()
    };
    f(&mut q);
    s.predictions(&q).unwrap()
}

fn predictions_contract(s: &mut dyn AlertStore) {
    let all_preds = prediction_fixture();
    assert_eq!(s.insert_predictions(&[]).unwrap(), 0);
    assert_eq!(s.insert_predictions(&all_preds[..4]).unwrap(), 4);
    // Replays store only what is new (one prediction per thing and ts).
    assert_eq!(
        s.insert_predictions(&all_preds).unwrap(),
        all_preds.len() - 4
    );
    assert_eq!(s.insert_predictions(&all_preds).unwrap(), 0);
    let mut newest = all_preds.clone();
    newest.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| a.thing_id.cmp(&b.thing_id)));
    let page = preds(s, |_| {});
    assert_eq!(page.total, 18);
    // Lossless: the same f64s and strings come back.
    assert_eq!(page.items, newest);
    // Latest: each thing's newest prediction.
    let latest = preds(s, |q| q.latest = true);
    assert_eq!(latest.total, 3);
    assert!(latest.items.iter().all(|p| p.ts == T0 + 5 * 3_600_000));
    // ... within the time bounds.
    let earlier = preds(s, |q| {
        q.latest = true;
        q.until_ms = Some(T0 + 2 * 3_600_000);
    });
    assert_eq!(earlier.total, 3);
    assert!(earlier.items.iter().all(|p| p.ts == T0 + 2 * 3_600_000));
    // Things whose newest prediction is due: fan-1 ends at 50.3, fan-2 at 20.3, fan:3 at 0.3.
    let due = preds(s, |q| {
        q.latest = true;
        q.maintenance_due = Some(true);
    });
    assert_eq!(due.total, 3);
    let due_at_2 = preds(s, |q| {
        q.latest = true;
        q.until_ms = Some(T0 + 2 * 3_600_000);
        q.maintenance_due = Some(true);
    });
    let things: Vec<&str> = due_at_2.items.iter().map(|p| p.thing_id.as_str()).collect();
    assert_eq!(things, vec!["fan:3"]);
    // One thing's history, paged.
    let one = preds(s, |q| {
        q.thing_id = Some("fan:3".into());
        q.since_ms = Some(T0 + 3_600_000);
        q.limit = 2;
        q.offset = 1;
    });
    assert_eq!(one.total, 5);
    assert_eq!(
        one.items.iter().map(|p| p.ts).collect::<Vec<_>>(),
        vec![T0 + 4 * 3_600_000, T0 + 3 * 3_600_000]
    );
    assert!(preds(s, |q| q.limit = 0).items.is_empty());
    // Retention applies to predictions too.
    s.purge_older_than(T0 + 3 * 3_600_000).unwrap();
    assert_eq!(preds(s, |_| {}).total, 9);
}

/// The prediction routes serve whatever store they are given.
fn api_predictions_over_store(s: Box<dyn AlertStore>) {
    let mut s = s;
    s.insert_predictions(&prediction_fixture()).unwrap();
    let shared: egizml::api::SharedStore = Arc::new(std::sync::Mutex::new(s));
    let server = api::spawn("127.0.0.1:0".parse().unwrap(), ApiState::new(shared)).unwrap();
    let base = format!("http://{}", server.local_addr());
    let get = |path: &str| -> PredictionPage {
        ureq::get(format!("{base}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let fleet = get("/api/v1/predictions");
    assert_eq!(fleet.total, 3);
    assert!(fleet.items.iter().all(|p| p.ts == T0 + 5 * 3_600_000));
    let history = get("/api/v1/predictions/fan:3?limit=2");
    assert_eq!(history.total, 6);
    let mut want: Vec<Prediction> = prediction_fixture()
        .into_iter()
        .filter(|p| p.thing_id == "fan:3")
        .collect();
    want.reverse();
    assert_eq!(history.items, want[..2]);
    let current = get("/api/v1/predictions/fan-1?latest=true");
    assert_eq!(current.items.len(), 1);
    assert_eq!(current.items[0].rul, 50.0 + 0.1 + 0.2);
    let bad = ureq::get(format!("{base}/api/v1/predictions?latest=maybe")).call();
    match bad {
        Err(ureq::Error::StatusCode(400)) => {}
        other => panic!("expected 400, got {other:?}"),
    }
    server.shutdown().unwrap();
}

/// Runs each contract function against a fresh store of one backend.
macro_rules! contract {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn insert_is_idempotent_and_lossless() {
                if let Some((mut s, _keep)) = $open("insert") {
                    super::insert_is_idempotent_and_lossless(&mut *s);
                }
            }

            #[test]
            fn filters_and_pagination() {
                if let Some((mut s, _keep)) = $open("filters") {
                    super::filters_and_pagination(&mut *s);
                }
            }

            #[test]
            fn feedback_contract() {
                if let Some((mut s, _keep)) = $open("feedback") {
                    super::feedback_contract(&mut *s);
                }
            }

            #[test]
            fn retention_purge() {
                if let Some((mut s, _keep)) = $open("retention") {
                    super::retention_purge(&mut *s);
                }
            }

            #[test]
            fn predictions_contract() {
                if let Some((mut s, _keep)) = $open("predictions") {
                    super::predictions_contract(&mut *s);
                }
            }

            #[test]
            fn api_predictions_over_store() {
                if let Some((s, _keep)) = $open("api_predictions") {
                    super::api_predictions_over_store(s);
                }
            }

            #[test]
            fn api_over_store() {
                if let Some((s, _keep)) = $open("api") {
                    super::api_over_store(s);
                }
            }
        }
    };
}

/// What keeps a store's backing alive for the test's duration.
type Keep = Box<dyn std::any::Any>;

fn open_sqlite(_name: &str) -> Option<(Box<dyn AlertStore>, Keep)> {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("alerts.db")).unwrap();
    Some((Box::new(s), Box::new(dir)))
}

fn open_postgres(name: &str) -> Option<(Box<dyn AlertStore>, Keep)> {
    let cluster = procs::pg()?;
    let url = cluster.fresh_db(name);
    let s = PostgresStore::connect(&url).unwrap();
    Some((Box::new(s), Box::new(cluster)))
}

contract!(sqlite, open_sqlite);
contract!(postgres, open_postgres);

#[test]
fn postgres_migrations_are_recorded_and_idempotent() {
    let Some(cluster) = procs::pg() else { return };
    let url = cluster.fresh_db("migrations");
    let mut first = PostgresStore::connect(&url).unwrap();
    assert_eq!(
        first.applied_version().unwrap(),
        PostgresStore::schema_version()
    );
    first.insert(&fixture()).unwrap();
    // Reconnecting (a restart, or a second replica) applies nothing twice and keeps the data.
    let second = PostgresStore::connect(&url).unwrap();
    assert_eq!(
        second.applied_version().unwrap(),
        PostgresStore::schema_version()
    );
    assert_eq!(all(&second).len(), 24);
    let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=PostgresStore::schema_version() as i32).collect::<Vec<_>>()
    );
    // A database from a newer build is refused rather than misread.
    c.execute("INSERT INTO schema_migrations (version) VALUES (99)", &[])
        .unwrap();
    let err = PostgresStore::connect(&url).err().unwrap().to_string();
    assert!(err.contains("newer"), "{err}");
}

#[test]
fn postgres_connection_errors_are_clear_and_redacted() {
    let port = procs::free_port();
    let err = PostgresStore::connect(&format!(
        "postgresql://egizml:hunter2@127.0.0.1:{port}/egizml?connect_timeout=5"
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = PostgresStore::connect("postgresql://[broken")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("invalid connection string"), "{err}");
}
