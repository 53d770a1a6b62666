//! The [`AlertStore`] contract, one function per behaviour, run against SQLite and a real PostgreSQL.

use super::procs;
use egizml::api::{self, ApiState};
use egizml::event::{alert_id, Alert, FeatureContribution, Origin, Severity};
use egizml::sinks::postgres::PostgresStore;
use egizml::sinks::retention::{purge_once, RetentionConfig};
use egizml::sinks::sqlite::{
    AlertQuery, AlertStore, Feedback, FeedbackCounts, FeedbackOutcome, FeedbackQuery, SqliteStore,
    StoreError, Verdict,
};
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
