use super::*;
use crate::event::{FeatureContribution, Origin};
use std::collections::BTreeMap;

/// An alert as the pipeline would build it (stable id from thing, type and ts).
fn alert(thing: &str, alert_type: &str, ts: i64, severity: Severity) -> Alert {
    let mut families = BTreeMap::new();
    families.insert("temperature".to_string(), 0.75);
    families.insert("current".to_string(), 0.25);
    Alert {
        alert_id: crate::event::alert_id(thing, alert_type, ts),
        thing_id: thing.into(),
        equipment_type: "oven".into(),
        ts,
        severity,
        source: "ensemble".to_string(),
        alert_type: alert_type.to_string(),
        score: 0.5 + (ts % 100) as f64 / 1000.0,
        model_version: "oven/online/1".to_string(),
        top_features: vec![FeatureContribution {
            feature: "temp_zone_1".into(),
            contribution: 0.75,
        }],
        families,
        explanation: format!("{alert_type} on {thing}"),
        input_offsets: Origin::Line { line: ts as u64 },
        label: Some(1),
        detectors: Vec::new(),
    }
}

/// 3 things x 10 readings: ts = 1000 * i (+ thing index), alternating types, severities by i % 3.
fn fixture() -> Vec<Alert> {
    let mut v = Vec::new();
    for (k, thing) in ["oven-1", "oven-2", "mixer-1"].iter().enumerate() {
        for i in 0..10i64 {
            let ty = if i % 2 == 0 {
                "overheat"
            } else {
                "phase_imbalance"
            };
            let sev = [Severity::Info, Severity::Warning, Severity::Critical][(i % 3) as usize];
            v.push(alert(thing, ty, 1000 * i + k as i64, sev));
        }
    }
    v
}

fn store_with_fixture() -> SqliteStore {
    let mut s = SqliteStore::open_in_memory().unwrap();
    assert_eq!(s.insert(&fixture()).unwrap(), 30);
    s
}

fn query(s: &SqliteStore, f: impl FnOnce(&mut AlertQuery)) -> AlertPage {
    let mut q = AlertQuery::default();
    f(&mut q);
    s.query(&q).unwrap()
}

/// The fixture filtered by `keep`, newest first: what every query must return.
fn expected(keep: impl Fn(&Alert) -> bool) -> Vec<Alert> {
    let mut v: Vec<Alert> = fixture().into_iter().filter(|a| keep(a)).collect();
    v.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| a.alert_id.cmp(&b.alert_id)));
    v
}

#[test]
fn default_query_returns_everything_newest_first_and_round_trips() {
    let s = store_with_fixture();
    let page = query(&s, |_| {});
    assert_eq!(page.total, 30);
    assert_eq!(page.limit, DEFAULT_LIMIT);
    assert_eq!(page.offset, 0);
    assert_eq!(page.items, expected(|_| true));
}

#[test]
fn filters_by_thing_time_severity_and_type() {
    let s = store_with_fixture();
    let p = query(&s, |q| q.thing_id = Some("oven-2".into()));
    assert_eq!(p.items, expected(|a| a.thing_id == "oven-2"));
    assert_eq!(p.total, 10);

    // Inclusive bounds: 3001 (oven-2 at i=3) and 6000 (oven-1 at i=6) are both in.
    let p = query(&s, |q| {
        q.since_ms = Some(3001);
        q.until_ms = Some(6000);
    });
    assert_eq!(p.items, expected(|a| (3001..=6000).contains(&a.ts)));
    assert_eq!(p.items.first().map(|a| a.ts), Some(6000));
    assert_eq!(p.items.last().map(|a| a.ts), Some(3001));

    let p = query(&s, |q| q.severity = Some(Severity::Critical));
    assert_eq!(p.items, expected(|a| a.severity == Severity::Critical));
    assert_eq!(p.total, 9);

    let p = query(&s, |q| q.alert_type = Some("phase_imbalance".into()));
    assert_eq!(p.items, expected(|a| a.alert_type == "phase_imbalance"));

    let p = query(&s, |q| {
        q.thing_id = Some("mixer-1".into());
        q.alert_type = Some("overheat".into());
        q.severity = Some(Severity::Info);
        q.since_ms = Some(1);
    });
    let want = expected(|a| {
        a.thing_id == "mixer-1"
            && a.alert_type == "overheat"
            && a.severity == Severity::Info
            && a.ts >= 1
    });
    assert!(!want.is_empty());
    assert_eq!(p.items, want);

    let p = query(&s, |q| q.thing_id = Some("nobody".into()));
    assert_eq!((p.items.len(), p.total), (0, 0));
}

#[test]
fn pagination_walks_all_matches_once() {
    let s = store_with_fixture();
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let p = query(&s, |q| {
            q.limit = 7;
            q.offset = offset;
        });
        assert_eq!(p.total, 30);
        assert_eq!((p.limit, p.offset), (7, offset));
        if p.items.is_empty() {
            break;
        }
        assert!(p.items.len() <= 7);
        offset += p.items.len() as u64;
        seen.extend(p.items);
    }
    assert_eq!(seen, expected(|_| true));

    let p = query(&s, |q| q.offset = 1_000_000);
    assert_eq!((p.items.len(), p.total), (0, 30));
    let p = query(&s, |q| q.offset = u64::MAX);
    assert_eq!((p.items.len(), p.total), (0, 30));
}

#[test]
fn limit_is_capped_and_zero_counts_only() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    let many: Vec<Alert> = (0..1200)
        .map(|i| alert("oven-1", "overheat", i, Severity::Warning))
        .collect();
    assert_eq!(s.insert(&many).unwrap(), 1200);
    let p = query(&s, |q| q.limit = 5000);
    assert_eq!(p.limit, MAX_LIMIT);
    assert_eq!(p.items.len(), MAX_LIMIT as usize);
    assert_eq!(p.total, 1200);
    let p = query(&s, |q| q.limit = 0);
    assert_eq!((p.items.len(), p.total), (0, 1200));
}

#[test]
fn insert_is_idempotent() {
    let mut s = store_with_fixture();
    assert_eq!(s.insert(&fixture()).unwrap(), 0);
    let extra = alert("oven-9", "overheat", 42, Severity::Critical);
    let mut batch = fixture()[..3].to_vec();
    batch.push(extra.clone());
    batch.push(extra.clone());
    assert_eq!(s.insert(&batch).unwrap(), 1);
    assert_eq!(query(&s, |_| {}).total, 31);
    assert_eq!(s.get(&extra.alert_id).unwrap(), Some(extra));
    assert_eq!(s.get("missing").unwrap(), None);
    assert_eq!(s.insert(&[]).unwrap(), 0);
}

#[test]
fn purge_deletes_strictly_older() {
    let mut s = store_with_fixture();
    let before = expected(|a| a.ts < 5000).len();
    assert_eq!(s.purge_older_than(5000).unwrap(), before);
    let p = query(&s, |_| {});
    assert_eq!(p.items, expected(|a| a.ts >= 5000));
    assert_eq!(s.purge_older_than(5000).unwrap(), 0);
}

#[test]
fn file_store_persists_across_reopen_and_serves_a_second_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/alerts.db");
    {
        let mut w = SqliteStore::open(&path).unwrap();
        assert_eq!(w.path(), Some(path.as_path()));
        assert_eq!(w.insert(&fixture()).unwrap(), 30);
        // A reader on the same file sees committed writes while the writer stays open.
        let r = SqliteStore::open(&path).unwrap();
        assert_eq!(query(&r, |_| {}).total, 30);
        w.insert(&[alert("oven-9", "overheat", 99_999, Severity::Info)])
            .unwrap();
        let p = query(&r, |q| q.limit = 1);
        assert_eq!(p.total, 31);
        assert_eq!(p.items[0].ts, 99_999);
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(query(&s, |_| {}).total, 31);
    assert_eq!(s.insert(&fixture()).unwrap(), 0);
    let mode: String = s
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let version: i64 = s
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SqliteStore::schema_version());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a store with a newer schema"),
    }
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", -1).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::BadSchemaVersion { found: -1, .. })
    ));
}

#[test]
fn unusable_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    // The parent "directory" is a regular file.
    let err = SqliteStore::open(file.join("alerts.db")).err().unwrap();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'z'; 4096]).unwrap();
    assert!(SqliteStore::open(&junk).is_err());
}

#[test]
fn corrupt_body_is_reported() {
    let s = store_with_fixture();
    s.conn
        .execute(
            "UPDATE alerts SET body = 'not json' WHERE thing_id = 'oven-1'",
            [],
        )
        .unwrap();
    let err = s.query(&AlertQuery::default()).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // Other things' alerts stay readable.
    let p = query(&s, |q| q.thing_id = Some("oven-2".into()));
    assert_eq!(p.total, 10);
}
