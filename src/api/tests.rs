use super::*;
use crate::event::{alert_id, Alert, FeatureContribution, Origin};
use crate::sinks::sqlite::SqliteStore;
use std::collections::BTreeMap;

fn alert(thing: &str, alert_type: &str, ts: i64, severity: Severity) -> Alert {
    let mut families = BTreeMap::new();
    families.insert("voltage".to_string(), 1.0);
    Alert {
        alert_id: alert_id(thing, alert_type, ts),
        thing_id: thing.into(),
        equipment_type: "oven".into(),
        ts,
        severity,
        source: "rule".to_string(),
        alert_type: alert_type.to_string(),
        score: 0.9,
        model_version: "oven/online/1".to_string(),
        top_features: vec![FeatureContribution {
            feature: "voltage_a".into(),
            contribution: 1.0,
        }],
        families,
        explanation: "voltage_a high".to_string(),
        input_offsets: Origin::None,
        label: None,
    }
}

/// Things `factory:oven-1` and `mixer-2`, 6 alerts each at ts 100*i (+1 for the mixer).
fn fixture() -> Vec<Alert> {
    let mut v = Vec::new();
    for (k, thing) in ["factory:oven-1", "mixer-2"].iter().enumerate() {
        for i in 0..6i64 {
            let ty = if i < 3 { "overheat" } else { "voltage_anomaly" };
            let sev = if i % 2 == 0 {
                Severity::Warning
            } else {
                Severity::Critical
            };
            v.push(alert(thing, ty, 100 * i + k as i64, sev));
        }
    }
    v
}

fn newest_first(mut v: Vec<Alert>) -> Vec<Alert> {
    v.sort_by(|a, b| b.ts.cmp(&a.ts).then_with(|| a.alert_id.cmp(&b.alert_id)));
    v
}

struct Fixture {
    server: Option<ApiServer>,
    base: String,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A server whose API reads through its own connection on a file the "pipeline" connection wrote.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store/alerts.db");
        let mut writer = SqliteStore::open(&path).unwrap();
        writer.insert(&fixture()).unwrap();
        let reader = SqliteStore::open(&path).unwrap();
        let state = ApiState::new(ApiState::share(reader))
            .with_health_details(|| serde_json::json!({"workers": 2}));
        Fixture::with_state(state, dir)
    }

    fn with_state(state: ApiState, dir: tempfile::TempDir) -> Fixture {
        let server = spawn("127.0.0.1:0".parse().unwrap(), state).unwrap();
        let base = format!("http://{}", server.local_addr());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Fixture {
            server: Some(server),
            base,
            agent,
            _dir: dir,
        }
    }

    /// Status, content type and body of `GET path`.
    fn get(&self, path: &str) -> (u16, String, String) {
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.body_mut().read_to_string().unwrap();
        (resp.status().as_u16(), ct, body)
    }

    fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, ct, body) = self.get(path);
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        (status, serde_json::from_str(&body).unwrap())
    }

    fn page(&self, path: &str) -> AlertPage {
        let (status, ct, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(ct.starts_with("application/json"));
        serde_json::from_str(&body).unwrap()
    }

    /// Asserts `path` is a 400 whose error message names `param`.
    fn bad_request(&self, path: &str, param: &str) {
        let (status, body) = self.json(path);
        assert_eq!(status, 400, "{path}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(param), "{path}: `{msg}` does not name {param}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().unwrap();
        }
    }
}

#[test]
fn health_on_both_paths() {
    let f = Fixture::new();
    for path in ["/health", "/api/v1/health"] {
        let (status, body) = f.json(path);
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["uptime_s"].as_f64().unwrap() >= 0.0);
        assert_eq!(body["details"]["workers"], 2);
    }
}

#[test]
fn metrics_on_both_paths() {
    let f = Fixture::new();
    crate::metrics::global().points_ingested.inc();
    for path in ["/metrics", "/api/v1/metrics"] {
        let (status, ct, body) = f.get(path);
        assert_eq!(status, 200);
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        assert!(body.contains("# TYPE egizml_points_ingested_total counter"));
        assert!(body.contains("egizml_build_info{version="));
    }
}

#[test]
fn anomalies_unfiltered_and_per_filter() {
    let f = Fixture::new();
    let all = newest_first(fixture());
    let p = f.page("/api/v1/anomalies");
    assert_eq!((p.total, p.limit, p.offset), (12, 100, 0));
    assert_eq!(p.items, all);

    let want = |keep: &dyn Fn(&Alert) -> bool| -> Vec<Alert> {
        all.iter().filter(|a| keep(a)).cloned().collect()
    };
    // `:` percent-encoded, as a client would send it.
    let p = f.page("/api/v1/anomalies?thing_id=factory%3Aoven-1");
    assert_eq!(p.items, want(&|a| a.thing_id == "factory:oven-1"));
    assert_eq!(p.total, 6);
    let p = f.page("/api/v1/anomalies?since=201&until=400");
    assert_eq!(p.items, want(&|a| (201..=400).contains(&a.ts)));
    assert_eq!(p.items.len(), 4);
    let p = f.page("/api/v1/anomalies?since=300");
    assert_eq!(p.items, want(&|a| a.ts >= 300));
    let p = f.page("/api/v1/anomalies?until=100");
    assert_eq!(p.items, want(&|a| a.ts <= 100));
    let p = f.page("/api/v1/anomalies?severity=critical");
    assert_eq!(p.items, want(&|a| a.severity == Severity::Critical));
    let p = f.page("/api/v1/anomalies?type=voltage_anomaly");
    assert_eq!(p.items, want(&|a| a.alert_type == "voltage_anomaly"));
    let p = f.page("/api/v1/anomalies?severity=info");
    assert_eq!((p.items.len(), p.total), (0, 0));
}

#[test]
fn anomalies_of_one_thing_with_filters() {
    let f = Fixture::new();
    let all = newest_first(fixture());
    let p = f.page("/api/v1/anomalies/mixer-2");
    assert_eq!(
        p.items,
        all.iter()
            .filter(|a| a.thing_id == "mixer-2")
            .cloned()
            .collect::<Vec<_>>()
    );
    let p = f.page("/api/v1/anomalies/factory%3Aoven-1?type=overheat&severity=warning");
    let want: Vec<Alert> = all
        .iter()
        .filter(|a| {
            a.thing_id == "factory:oven-1"
                && a.alert_type == "overheat"
                && a.severity == Severity::Warning
        })
        .cloned()
        .collect();
    assert_eq!(want.len(), 2);
    assert_eq!(p.items, want);
    let p = f.page("/api/v1/anomalies/unknown-thing");
    assert_eq!((p.items.len(), p.total), (0, 0));
    f.bad_request("/api/v1/anomalies/mixer-2?thing_id=x", "thing_id");
}

#[test]
fn pagination() {
    let f = Fixture::new();
    let all = newest_first(fixture());
    let mut seen = Vec::new();
    for offset in (0..12).step_by(5) {
        let p = f.page(&format!("/api/v1/anomalies?limit=5&offset={offset}"));
        assert_eq!((p.total, p.limit, p.offset), (12, 5, offset as u64));
        seen.extend(p.items);
    }
    assert_eq!(seen, all);
    let p = f.page("/api/v1/anomalies?limit=1000&offset=12");
    assert_eq!((p.items.len(), p.total), (0, 12));
}

#[test]
fn bad_parameters_are_400_naming_the_parameter() {
    let f = Fixture::new();
    for (query, param) in [
        ("since=yesterday", "since"),
        ("until=1.5", "until"),
        ("since=", "since"),
        ("since=500&until=100", "since"),
        ("severity=fatal", "severity"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-3", "limit"),
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        ("thing_id=", "thing_id"),
        ("type=", "type"),
        ("limit=5&limit=6", "limit"),
        ("sevrity=warning", "sevrity"),
    ] {
        f.bad_request(&format!("/api/v1/anomalies?{query}"), param);
        f.bad_request(&format!("/api/v1/anomalies/mixer-2?{query}"), param);
    }
}

#[test]
fn unknown_paths_and_methods_are_json_errors() {
    let f = Fixture::new();
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v2/anomalies",
        "/api/v1/anomalies/a/b",
    ] {
        let (status, body) = f.json(path);
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].as_str().unwrap().contains(path), "{body}");
    }
    let mut resp = f
        .agent
        .post(format!("{}/api/v1/anomalies", f.base))
        .send("")
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let body: serde_json::Value = resp.body_mut().read_json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("POST"));
}

#[test]
fn store_errors_are_500_and_missing_store_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.db");
    let mut writer = SqliteStore::open(&path).unwrap();
    writer.insert(&fixture()).unwrap();
    // Damage what the API will decode.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE alerts SET body = '{' WHERE thing_id = 'mixer-2'",
        [],
    )
    .unwrap();
    drop(conn);
    let reader = SqliteStore::open(&path).unwrap();
    let f = Fixture::with_state(ApiState::new(ApiState::share(reader)), dir);
    let (status, body) = f.json("/api/v1/anomalies/mixer-2");
    assert_eq!(status, 500);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not a valid alert"));
    assert_eq!(f.page("/api/v1/anomalies/factory%3Aoven-1").total, 6);

    let f = Fixture::with_state(ApiState::without_store(), tempfile::tempdir().unwrap());
    let (status, body) = f.json("/api/v1/anomalies");
    assert_eq!(status, 503);
    assert!(body["error"].is_string());
    assert_eq!(f.json("/health").0, 200);
}

#[test]
fn busy_port_is_an_immediate_error_and_shutdown_frees_it() {
    let f = Fixture::new();
    let addr = f.server.as_ref().unwrap().local_addr();
    let err = spawn(addr, ApiState::without_store()).err().unwrap();
    assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
    drop(f);
    // Graceful shutdown released the port.
    let again = spawn(addr, ApiState::without_store()).unwrap();
    assert_eq!(again.local_addr(), addr);
    again.shutdown().unwrap();
}

#[test]
fn parse_query_defaults() {
    let q = parse_query(&[], Some("oven-1".into())).unwrap();
    assert_eq!(q.thing_id.as_deref(), Some("oven-1"));
    assert_eq!(q.limit, crate::sinks::sqlite::DEFAULT_LIMIT);
    assert_eq!(
        (q.offset, q.since_ms, q.until_ms, q.severity),
        (0, None, None, None)
    );
}
