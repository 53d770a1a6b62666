use super::*;
use crate::event::{Alert, FeatureContribution};
use crate::sinks::sqlite::SqliteStore;
use std::collections::BTreeMap;

fn alert(thing: &str, alert_type: &str, ts: i64, severity: Severity) -> Alert {
    let mut families = BTreeMap::new();
    families.insert("voltage".to_string(), 1.0);
    Alert {
        severity,
        source: "rule".to_string(),
        model_version: "oven/online/1".to_string(),
        top_features: vec![FeatureContribution {
            feature: "voltage_a".into(),
            contribution: 1.0,
        }],
        families,
        explanation: "voltage_a high".to_string(),
        ..crate::testkit::alert(thing, alert_type, ts)
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
fn page_links_follow_to_the_end_and_back_keeping_the_filters() {
    let f = Fixture::new();
    let critical: Vec<Alert> = newest_first(fixture())
        .into_iter()
        .filter(|a| a.severity == Severity::Critical)
        .collect();
    assert_eq!(critical.len(), 6);
    // Forward with `next` from the first page, then back with `prev`.
    let mut url = Some("/api/v1/anomalies?severity=critical&limit=4".to_string());
    let mut forward: Vec<Vec<Alert>> = Vec::new();
    let mut last = serde_json::Value::Null;
    while let Some(u) = url {
        let (status, page) = f.json(&u);
        assert_eq!(status, 200, "{u}: {page}");
        assert_eq!(page["total"], 6);
        forward.push(serde_json::from_value(page["items"].clone()).unwrap());
        url = page["next"].as_str().map(str::to_string);
        last = page;
    }
    assert_eq!(forward.concat(), critical);
    assert_eq!(forward.len(), 2);
    assert_eq!(
        last["prev"],
        "/api/v1/anomalies?severity=critical&limit=4&offset=0"
    );
    let (_, first) = f.json(last["prev"].as_str().unwrap());
    assert_eq!(
        serde_json::from_value::<Vec<Alert>>(first["items"].clone()).unwrap(),
        forward[0]
    );
    assert_eq!(first["prev"], serde_json::Value::Null);
    assert_eq!(
        first["next"],
        "/api/v1/anomalies?severity=critical&limit=4&offset=4"
    );
    // Past the end: no next, prev is the last page. Path parameters stay encoded; values are encoded.
    let (_, past) = f.json("/api/v1/anomalies/factory%3Aoven-1?limit=4&offset=40&type=overheat");
    assert_eq!(past["next"], serde_json::Value::Null);
    assert_eq!(
        past["prev"],
        "/api/v1/anomalies/factory%3Aoven-1?type=overheat&limit=4&offset=0"
    );
    let (_, odd) = f.json("/api/v1/anomalies?since=-5&limit=5&offset=3");
    assert_eq!(odd["prev"], "/api/v1/anomalies?since=-5&limit=5&offset=0");
    assert_eq!(odd["next"], "/api/v1/anomalies?since=-5&limit=5&offset=8");
}

#[test]
fn page_links_encode_values_and_stop_at_the_ends() {
    let params = vec![
        ("thing_id".to_string(), "a b&c=d/é".to_string()),
        ("offset".to_string(), "10".to_string()),
    ];
    let l = page_links("/api/v1/feedback", &params, 25, 10, 10);
    assert_eq!(
        l.next.as_deref(),
        Some("/api/v1/feedback?thing_id=a%20b%26c%3Dd%2F%C3%A9&limit=10&offset=20")
    );
    assert_eq!(
        l.prev.as_deref(),
        Some("/api/v1/feedback?thing_id=a%20b%26c%3Dd%2F%C3%A9&limit=10&offset=0")
    );
    assert_eq!(page_links("/x", &[], 20, 10, 10).next, None);
    assert_eq!(page_links("/x", &[], 0, 10, 0), PageLinks::default());
    assert_eq!(
        page_links("/x", &[], 0, 10, 30).prev.as_deref(),
        Some("/x?limit=10&offset=0")
    );
    assert_eq!(
        page_links("/x", &[], u64::MAX, 10, u64::MAX - 5).next,
        None,
        "no overflow"
    );
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

#[test]
fn prediction_routes_validate_parameters_and_default_to_the_fleet_view() {
    let f = Fixture::new();
    for (query, param) in [
        ("latest=yes", "latest"),
        ("maintenance_due=1", "maintenance_due"),
        ("since=500&until=100", "since"),
        ("limit=0", "limit"),
        ("offset=x", "offset"),
        ("severity=warning", "severity"),
        ("latest=true&latest=false", "latest"),
    ] {
        f.bad_request(&format!("/api/v1/predictions?{query}"), param);
        f.bad_request(&format!("/api/v1/predictions/fan-1?{query}"), param);
    }
    f.bad_request("/api/v1/predictions/fan-1?thing_id=fan-2", "thing_id");
    // No prediction stored yet: empty pages, not errors.
    let (status, body) = f.json("/api/v1/predictions");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 0);
    assert_eq!(body["items"], serde_json::json!([]));
    let fleet = parse_prediction_query(&[], None).unwrap();
    assert!(fleet.latest && fleet.thing_id.is_none());
    let one = parse_prediction_query(
        &[("maintenance_due".into(), "true".into())],
        Some("fan-1".into()),
    )
    .unwrap();
    assert!(!one.latest);
    assert_eq!(one.thing_id.as_deref(), Some("fan-1"));
    assert_eq!(one.maintenance_due, Some(true));
}

// ---- feedback, rules, auth, body limit, OpenAPI ----------------------------------------------------

use crate::rules::{RuleSet, RulesHandle};
use crate::sinks::sqlite::{FeedbackCounts, Verdict};

const RULES_A: &str = "rules:
  - name: hot_zone
    type: overheat
    severity: critical
    kind: threshold
    feature: temp_zone_1
    op: '>'
    value: 250
";

const RULES_B: &str = "rules:
  - name: hot_motor
    type: overheat
    severity: warning
    kind: threshold
    feature: temp_motor
    op: '>'
    value: 90
  - name: low_pf
    type: power_factor_low
    severity: info
    kind: threshold
    feature: power_factor
    op: '<'
    value: 0.8
";

/// Line 5 (`severity: fatal`) of the second rule is invalid.
const RULES_BAD: &str = "rules:
  - name: ok_rule
    type: overheat
    severity: warning
    kind: threshold
    feature: temp_motor
    op: '>'
    value: 90
  - name: broken
    type: overheat
    severity: fatal
    kind: threshold
    feature: temp_motor
    op: '>'
    value: 90
";

/// A full-featured server: store with the fixture, rules, and optionally a token.
fn full_fixture(token: Option<&str>) -> (Fixture, RulesHandle) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store.insert(&fixture()).unwrap();
    let rules = RulesHandle::fixed(RuleSet::parse(RULES_A, "rules.yaml").unwrap());
    let (registry, jobs) = registry_fixture(dir.path());
    let state = ApiState::new(ApiState::share(store))
        .with_rules(rules.clone())
        .with_registry(registry)
        .with_training(jobs)
        .with_token(token);
    (Fixture::with_state(state, dir), rules)
}

/// Simulator history of three things (oven-00000, mixer-00001, conveyor-00002).
fn sim_history() -> crate::training::HistorySpec {
    crate::training::HistorySpec::Simulator(crate::training::SimulatorHistory {
        things: 3,
        points: 6_000,
        seed: 3,
        faults_per_1000: 4.0,
    })
}

/// A local registry under `dir` with `oven/v1` registered and active, and a training queue on
/// simulator history.
fn registry_fixture(
    dir: &std::path::Path,
) -> (
    Arc<dyn crate::registry::Registry>,
    crate::training::jobs::TrainJobs,
) {
    use crate::registry::{LocalRegistry, ScopeKind};
    use crate::training::{feature_matrix, train, ActivatePolicy, TrainSpec};
    let registry: Arc<dyn crate::registry::Registry> =
        Arc::new(LocalRegistry::new(dir.join("models")));
    let data = feature_matrix(&sim_history(), "oven", ScopeKind::EquipmentClass).unwrap();
    let mut spec = TrainSpec::new("oven", ScopeKind::EquipmentClass);
    spec.activate = ActivatePolicy::Always;
    train(&spec, data, registry.as_ref(), &mut |_| {}).unwrap();
    let jobs =
        crate::training::jobs::TrainJobs::start(Arc::clone(&registry), sim_history(), 2).unwrap();
    (registry, jobs)
}

struct Resp {
    status: u16,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("application/json"), "{ct}: {}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

impl Fixture {
    /// Any request; `headers` as (name, value) pairs.
    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let uri = format!("{}{path}", self.base);
        // A fresh connection per call: the server may close a kept-alive connection after answering
        // without reading the body (405, 401, 413), and a pooled reuse would then see EOF.
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("connection", "close");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = self.agent.run(req.body(body.to_string()).unwrap()).unwrap();
        let body = resp.body_mut().read_to_string().unwrap();
        Resp {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body,
        }
    }

    fn post_json(&self, path: &str, body: &serde_json::Value, token: Option<&str>) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        self.call("POST", path, &headers, &body.to_string())
    }
}

fn fb(thing: &str, alert: &Alert, verdict: &str) -> serde_json::Value {
    serde_json::json!({"thing_id": thing, "alert_id": alert.alert_id, "verdict": verdict})
}

#[test]
fn feedback_is_stored_replaced_counted_and_listed() {
    let (f, _) = full_fixture(None);
    let all = newest_first(fixture());
    let oven: Vec<&Alert> = all
        .iter()
        .filter(|a| a.thing_id == "factory:oven-1")
        .collect();
    let mixer: Vec<&Alert> = all.iter().filter(|a| a.thing_id == "mixer-2").collect();
    let metric = || {
        crate::metrics::global()
            .feedback
            .with_label_values(&["false_positive"])
            .get()
    };
    let before = metric();

    let mut body = fb("factory:oven-1", oven[0], "true_positive");
    body["note"] = "zone 1 heater relay stuck".into();
    let r = f.post_json("/api/v1/feedback", &body, None);
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["outcome"], "created");
    assert_eq!(v["feedback"]["note"], "zone 1 heater relay stuck");
    assert_eq!(v["counts"]["true_positive"], 1);

    // A corrected verdict replaces the first one: counts are per alert.
    let r = f.post_json(
        "/api/v1/feedback",
        &fb("factory:oven-1", oven[0], "false_positive"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "replaced");
    assert_eq!(
        (
            r.json()["counts"]["true_positive"].clone(),
            r.json()["counts"]["false_positive"].clone()
        ),
        (0.into(), 1.into())
    );
    assert!(metric() > before);
    for a in &oven[1..4] {
        let r = f.post_json(
            "/api/v1/feedback",
            &fb("factory:oven-1", a, "true_positive"),
            None,
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = f.post_json(
        "/api/v1/feedback",
        &fb("mixer-2", mixer[0], "true_positive"),
        None,
    );
    assert_eq!(r.status, 201);

    let (status, v) = f.json("/api/v1/feedback");
    assert_eq!(status, 200);
    assert_eq!(v["total"], 5);
    let counts: FeedbackCounts = serde_json::from_value(v["counts"].clone()).unwrap();
    assert_eq!(
        counts,
        FeedbackCounts {
            true_positive: 4,
            false_positive: 1
        }
    );
    assert_eq!(v["precision"], 0.8);
    let (_, v) = f.json("/api/v1/feedback?thing_id=mixer-2");
    assert_eq!(v["total"], 1);
    assert_eq!(v["items"][0]["alert_id"], mixer[0].alert_id.as_str());
    assert_eq!(v["counts"]["true_positive"], 1);
    let (_, v) = f.json("/api/v1/feedback?verdict=false_positive");
    assert_eq!(v["total"], 1);
    assert_eq!(v["items"][0]["verdict"], "false_positive");
    assert_eq!(v["items"][0]["note"], serde_json::Value::Null);

    // Pagination: 5 entries in pages of 2, no duplicates, nothing lost.
    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let (_, v) = f.json(&format!("/api/v1/feedback?limit=2&offset={offset}"));
        assert_eq!(
            (v["total"].as_u64(), v["limit"].as_u64()),
            (Some(5), Some(2))
        );
        for item in v["items"].as_array().unwrap() {
            seen.push(item["alert_id"].as_str().unwrap().to_string());
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    for (query, param) in [
        ("verdict=maybe", "verdict"),
        ("limit=0", "limit"),
        ("offset=x", "offset"),
        ("thing_id=", "thing_id"),
        ("since=1", "since"),
    ] {
        f.bad_request(&format!("/api/v1/feedback?{query}"), param);
    }
}

#[test]
fn feedback_validation_errors_name_the_field_and_store_nothing() {
    let (f, _) = full_fixture(None);
    let a = &fixture()[0];
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            serde_json::json!({"thing_id": "factory:oven-1", "alert_id": a.alert_id}),
            400,
            "verdict",
        ),
        (fb("factory:oven-1", a, "maybe"), 400, "verdict"),
        (
            serde_json::json!({"thing_id": 5, "alert_id": a.alert_id, "verdict": "true_positive"}),
            400,
            "thing_id",
        ),
        (
            serde_json::json!({"thing_id": "factory:oven-1", "alert_id": a.alert_id, "verdict": "true_positive", "sevrity": 1}),
            400,
            "sevrity",
        ),
        (
            serde_json::json!({"thing_id": "", "alert_id": a.alert_id, "verdict": "true_positive"}),
            400,
            "thing_id",
        ),
        (
            serde_json::json!({"thing_id": "factory:oven-1", "alert_id": a.alert_id, "verdict": "true_positive", "note": "x".repeat(5000)}),
            400,
            "note",
        ),
        // The alert exists but belongs to another thing.
        (fb("mixer-2", a, "true_positive"), 400, "thing_id"),
        // Unknown alert.
        (
            serde_json::json!({"thing_id": "factory:oven-1", "alert_id": "nope", "verdict": "true_positive"}),
            404,
            "nope",
        ),
    ];
    for (body, status, needle) in cases {
        let r = f.post_json("/api/v1/feedback", &body, None);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.error().contains(needle), "{body}: {}", r.body);
    }
    let r = f.call(
        "POST",
        "/api/v1/feedback",
        &[("content-type", "application/json")],
        "{\"thing_id\":",
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("invalid JSON"), "{}", r.body);
    let r = f.call(
        "POST",
        "/api/v1/feedback",
        &[("content-type", "text/plain")],
        &fb("factory:oven-1", a, "true_positive").to_string(),
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(r.error().contains("text/plain"));
    let (_, v) = f.json("/api/v1/feedback");
    assert_eq!(v["total"], 0, "nothing was stored: {v}");
}

#[test]
fn rules_get_and_put() {
    let (f, handle) = full_fixture(None);
    let (status, v) = f.json("/api/v1/rules");
    assert_eq!(status, 200);
    assert_eq!(v["rules"], serde_json::json!(["hot_zone"]));
    assert_eq!(v["yaml"], RULES_A);
    assert_eq!(v["source"], "rules.yaml");
    let g0 = v["generation"].as_u64().unwrap();
    let r = f.call(
        "GET",
        "/api/v1/rules",
        &[("accept", "application/yaml")],
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, RULES_A);
    assert!(r.headers["content-type"].to_str().unwrap().contains("yaml"));

    // YAML text body.
    let r = f.call(
        "PUT",
        "/api/v1/rules",
        &[("content-type", "application/yaml")],
        RULES_B,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["rules"], serde_json::json!(["hot_motor", "low_pf"]));
    assert_eq!(v["generation"].as_u64().unwrap(), g0 + 1);
    assert_eq!(v["source"], "<api>");
    assert_eq!(
        handle.current().0.len(),
        2,
        "the live handle has the new rules"
    );

    // JSON body.
    let body = serde_json::json!({ "yaml": RULES_A }).to_string();
    let r = f.call(
        "PUT",
        "/api/v1/rules",
        &[("content-type", "application/json")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["generation"].as_u64().unwrap(), g0 + 2);
    assert_eq!(handle.current().0.rules[0].name, "hot_zone");

    // Invalid rules: 400 naming line and field; nothing changes.
    let r = f.call("PUT", "/api/v1/rules", &[], RULES_BAD);
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["line"], 11, "{v}");
    assert_eq!(v["field"], "rules[1].severity", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("<api>:11:"), "{msg}");
    assert!(msg.contains("fatal"), "{msg}");
    // YAML syntax error: a line, no field.
    let r = f.call("PUT", "/api/v1/rules", &[], "rules:\n  - name: [unclosed\n");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["line"].as_u64().unwrap() >= 2);
    // JSON body with a wrong field.
    let r = f.call(
        "PUT",
        "/api/v1/rules",
        &[("content-type", "application/json")],
        "{\"yml\": \"rules: []\"}",
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("yml"), "{}", r.body);
    let r = f.call("PUT", "/api/v1/rules", &[], "rules: []\n\u{0}\u{ff}");
    assert_eq!(r.status, 400);
    let (_, v) = f.json("/api/v1/rules");
    assert_eq!(v["generation"].as_u64().unwrap(), g0 + 2, "nothing changed");
    assert_eq!(v["yaml"], RULES_A);
    assert_eq!(handle.current().0.rules[0].name, "hot_zone");

    // Without a rules handle the routes say so.
    let f = Fixture::with_state(ApiState::without_store(), tempfile::tempdir().unwrap());
    assert_eq!(f.json("/api/v1/rules").0, 503);
    assert_eq!(f.call("PUT", "/api/v1/rules", &[], RULES_A).status, 503);
}

#[test]
fn mutating_calls_need_the_bearer_token_when_configured() {
    let (f, handle) = full_fixture(Some("s3cret-token"));
    let a = &fixture()[0];
    let body = fb("factory:oven-1", a, "true_positive");
    for token in [
        None,
        Some("wrong"),
        Some("s3cret-toke"),
        Some("s3cret-token2"),
    ] {
        let r = f.post_json("/api/v1/feedback", &body, token);
        assert_eq!(r.status, 401, "{token:?}: {}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(!r.error().is_empty());
    }
    let r = f.call(
        "PUT",
        "/api/v1/rules",
        &[("authorization", "Basic s3cret-token")],
        RULES_B,
    );
    assert_eq!(r.status, 401);
    let r = f.call("PUT", "/api/v1/rules", &[], RULES_B);
    assert_eq!(r.status, 401);
    assert_eq!(handle.current().0.rules[0].name, "hot_zone", "unchanged");
    // Unknown routes are no way around it either.
    assert_eq!(f.call("DELETE", "/api/v1/anomalies", &[], "").status, 401);
    let (_, v) = f.json("/api/v1/feedback");
    assert_eq!(v["total"], 0);

    // Reads stay open; the right token works.
    assert_eq!(f.json("/api/v1/anomalies").0, 200);
    assert_eq!(f.json("/api/v1/rules").0, 200);
    let r = f.post_json("/api/v1/feedback", &body, Some("s3cret-token"));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = f.call(
        "PUT",
        "/api/v1/rules",
        &[("authorization", "bearer s3cret-token")],
        RULES_B,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(handle.current().0.rules[0].name, "hot_motor");
}

#[test]
fn oversized_bodies_are_413_json_and_change_nothing() {
    let (f, handle) = full_fixture(None);
    let big = format!("{RULES_B}# {}\n", "x".repeat(MAX_BODY_BYTES));
    let r = f.call("PUT", "/api/v1/rules", &[], &big);
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(200)]);
    assert!(r.error().contains("larger than"));
    assert_eq!(handle.current().0.rules[0].name, "hot_zone");
    let mut body = fb("factory:oven-1", &fixture()[0], "true_positive");
    body["note"] = "y".repeat(MAX_BODY_BYTES + 10).into();
    let r = f.post_json("/api/v1/feedback", &body, None);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("larger than"));
}

#[test]
fn openapi_document_lists_exactly_the_served_routes() {
    let (f, _) = full_fixture(None);
    let (status, doc) = f.json("/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    let paths = doc["paths"].as_object().unwrap();
    let served = served_routes();
    let all_methods = ["get", "post", "put", "delete", "patch"];
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in paths {
        for m in all_methods {
            if item.get(m).is_some() {
                documented.push((path.clone(), m.to_uppercase()));
            }
        }
    }
    let mut served_pairs: Vec<(String, String)> = served
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(|m| (p.to_string(), m.to_string())))
        .collect();
    documented.sort();
    served_pairs.sort();
    assert_eq!(documented, served_pairs, "OpenAPI paths vs router");

    // Every documented operation is really served, and the other methods on its path are 405.
    for (path, methods) in &served {
        let concrete = path
            .replace("{thing_id}", "mixer-2")
            .replace("{scope}", "oven")
            .replace("{version}", "v1")
            .replace("{job_id}", "train-1");
        for m in all_methods {
            let upper = m.to_uppercase();
            let r = f.call(
                &upper,
                &concrete,
                &[("content-type", "application/json")],
                "{}",
            );
            if methods.contains(&upper.as_str()) {
                assert!(
                    r.status != 404 && r.status != 405,
                    "{upper} {concrete}: {} {}",
                    r.status,
                    r.body
                );
                assert!(
                    doc["paths"][*path][m]["responses"]
                        .get(r.status.to_string())
                        .is_some(),
                    "{upper} {path}: status {} is not documented",
                    r.status
                );
            } else {
                assert_eq!(r.status, 405, "{upper} {concrete}");
            }
        }
    }
    // Every schema reference resolves.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &piece[..piece.find('"').unwrap()];
        assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
    }
}

#[test]
fn verdict_round_trip() {
    for v in Verdict::ALL {
        assert_eq!(v.as_str().parse::<Verdict>().unwrap(), v);
        assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
    }
}

impl Fixture {
    /// Polls a training job until it has finished (bounded: fails after 120 s).
    fn wait_job(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, job) = self.json(&format!("/api/v1/train/jobs/{id}"));
            assert_eq!(status, 200, "{job}");
            if job["state"] == "succeeded" || job["state"] == "failed" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn models_are_listed_shown_activated_and_rolled_back() {
    let (f, _) = full_fixture(Some("s3cret"));
    let (status, list) = f.json("/api/v1/models");
    assert_eq!(status, 200);
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["id"], "oven/v1");
    assert_eq!(models[0]["active"], true);
    assert_eq!(models[0]["model_type"], "isolation_forest");

    let (status, v1) = f.json("/api/v1/models/oven/v1");
    assert_eq!(status, 200);
    assert_eq!(v1, models[0]);
    // `<scope>` alone is the active version; the id URL-encoded as one segment works too.
    assert_eq!(f.json("/api/v1/models/oven").1, v1);
    assert_eq!(f.json("/api/v1/models/oven%2Fv1").1, v1);
    let (status, m) = f.json("/api/v1/models/oven/1/metrics");
    assert_eq!(status, 200);
    assert_eq!(m["id"], "oven/v1");
    assert_eq!(m["metrics"], v1["metrics"]);
    assert!(m["metrics"]["f1"].is_number());

    // Training through the API: a bearer token is needed, then the job registers oven/v2 and
    // activates it.
    let body = serde_json::json!({"scope_kind": "equipment_class", "activate": "always",
        "params": {"n_estimators": 20}});
    let r = f.post_json("/api/v1/train/oven", &body, None);
    assert_eq!(r.status, 401);
    let r = f.post_json("/api/v1/train/oven", &body, Some("s3cret"));
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.json();
    assert_eq!(job["state"], "queued");
    let id = job["job_id"].as_str().unwrap().to_string();
    assert_eq!(job["status_url"], format!("/api/v1/train/jobs/{id}"));
    let done = f.wait_job(&id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["report"]["model"]["id"], "oven/v2");
    assert_eq!(
        done["report"]["model"]["hyper_parameters"]["n_estimators"],
        20
    );
    assert_eq!(f.json("/api/v1/models/oven").1["id"], "oven/v2");

    // Activate and roll back need the token too.
    let r = f.post_json(
        "/api/v1/models/oven/v1/activate",
        &serde_json::json!({}),
        None,
    );
    assert_eq!(r.status, 401);
    let r = f.post_json(
        "/api/v1/models/oven/v1/activate",
        &serde_json::json!({}),
        Some("s3cret"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["active"], true);
    assert_eq!(f.json("/api/v1/models/oven").1["id"], "oven/v1");
    let r = f.post_json(
        "/api/v1/models/oven/rollback",
        &serde_json::json!({}),
        Some("s3cret"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], "oven/v2");
    let (_, list) = f.json("/api/v1/models?scope=oven");
    let active: Vec<bool> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["active"].as_bool().unwrap())
        .collect();
    assert_eq!(active, [false, true]);
}

/// RUL models share the registry: listed, shown, activated like anomaly models; their scope takes no
/// anomaly training job.
#[test]
fn rul_models_are_served_by_the_models_routes() {
    use crate::registry::{LocalRegistry, NewModel, Registry, ScopeKind, StoredModel};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("alerts.db")).unwrap();
    let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::new(dir.path().join("models")));
    let model = Arc::new(crate::rul::tests::small_model());
    for rmse in [14.5, 13.5] {
        registry
            .register(NewModel {
                scope: "turbofan".into(),
                scope_kind: ScopeKind::EquipmentClass,
                equipment_type: Some("turbofan".into()),
                trained_at: "2026-12-05T00:00:00Z".into(),
                samples: model.meta.train_samples,
                features: model.input_names(),
                metrics: [("rmse".to_string(), rmse)].into_iter().collect(),
                sql_hash: None,
                model: StoredModel::Rul(Arc::clone(&model)),
            })
            .unwrap();
    }
    let jobs =
        crate::training::jobs::TrainJobs::start(Arc::clone(&registry), sim_history(), 1).unwrap();
    let state = ApiState::new(ApiState::share(store))
        .with_registry(registry)
        .with_training(jobs);
    let f = Fixture::with_state(state, dir);

    let (status, list) = f.json("/api/v1/models?scope=turbofan");
    assert_eq!(status, 200);
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert!(models.iter().all(|m| m["model_type"] == "rul"));
    assert_eq!(models[1]["id"], "turbofan/v2");
    assert_eq!(models[1]["hyper_parameters"]["forest"]["n_trees"], 5);
    let (status, m) = f.json("/api/v1/models/turbofan/v2/metrics");
    assert_eq!(status, 200);
    assert_eq!(m["model_type"], "rul");
    assert_eq!(m["metrics"]["rmse"], 13.5);
    let r = f.post_json(
        "/api/v1/models/turbofan/v2/activate",
        &serde_json::json!({}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.json("/api/v1/models/turbofan").1["id"], "turbofan/v2");

    let r = f.post_json("/api/v1/train/turbofan", &serde_json::json!({}), None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json()["error"],
        "scope `turbofan` holds rul models; register anomaly models under another scope"
    );
}

#[test]
fn model_and_training_errors_are_clear() {
    let (f, _) = full_fixture(None);
    let cases = [
        ("/api/v1/models/oven/v9", 404, "no version 9 of `oven`"),
        ("/api/v1/models/pump", 404, "no models for `pump`"),
        ("/api/v1/models/oven/vx", 400, "invalid model id"),
        ("/api/v1/models?sort=id", 400, "unknown parameter `sort`"),
        (
            "/api/v1/train/jobs/train-99",
            404,
            "no training job `train-99`",
        ),
    ];
    for (path, status, msg) in cases {
        let (s, body) = f.json(path);
        assert_eq!(s, status, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(msg),
            "{path}: {body}"
        );
    }
    let r = f.post_json(
        "/api/v1/models/mixer/rollback",
        &serde_json::json!({}),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = f.post_json("/api/v1/models/oven/rollback", &serde_json::json!({}), None);
    assert_eq!(r.status, 409, "{}", r.body);
    // Hyper-parameters and fields are checked before anything is queued.
    for (body, field) in [
        (
            serde_json::json!({"params": {"contamination": 2.0}}),
            "contamination",
        ),
        (serde_json::json!({"params": {"depth": 3}}), "depth"),
        (serde_json::json!({"model": "svm"}), "model"),
        (serde_json::json!({"train_fraction": 1.5}), "train_fraction"),
        (serde_json::json!({"epochs": 3}), "epochs"),
    ] {
        let r = f.post_json("/api/v1/train/oven-00000", &body, None);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().contains(field), "{body}: {}", r.body);
    }
    // A scope without history fails as a job, with the reason.
    let r = f.post_json("/api/v1/train/pump-7", &serde_json::json!({}), None);
    assert_eq!(r.status, 202);
    let job = f.wait_job(r.json()["job_id"].as_str().unwrap());
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("no readings for thing `pump-7`"),
        "{job}"
    );
    // Without a registry the routes answer 503.
    let bare = Fixture::new();
    assert_eq!(bare.json("/api/v1/models").0, 503);
    let r = bare.post_json("/api/v1/train/oven-00000", &serde_json::json!({}), None);
    assert_eq!(r.status, 503);
}

#[test]
fn training_queue_is_bounded() {
    use crate::registry::LocalRegistry;
    use crate::training::jobs::{JobState, SubmitError, TrainJobs};
    use crate::training::TrainSpec;
    let dir = tempfile::tempdir().unwrap();
    let registry: Arc<dyn crate::registry::Registry> = Arc::new(LocalRegistry::new(dir.path()));
    // The history is a named pipe: the first job blocks reading it until the test writes.
    let fifo = dir.path().join("history.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let jobs = TrainJobs::start(
        registry,
        crate::training::HistorySpec::File(fifo.clone()),
        1,
    )
    .unwrap();
    let spec = TrainSpec::new("oven", crate::registry::ScopeKind::EquipmentClass);
    let first = jobs.submit(spec.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs.status(&first.job_id).unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "the worker never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // One running, one waiting (capacity 1), the rest refused.
    let second = jobs.submit(spec.clone()).unwrap();
    assert_eq!(second.state, JobState::Queued);
    for _ in 0..2 {
        assert!(matches!(
            jobs.submit(spec.clone()),
            Err(SubmitError::QueueFull(1))
        ));
    }
    // An empty history, one job at a time (a writer pairs with whichever reader has the pipe open):
    // both jobs fail with the reason, and the queue drains.
    for id in [&first.job_id, &second.job_id] {
        while jobs.status(id).unwrap().state == JobState::Queued {
            assert!(Instant::now() < deadline, "job {id} never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        while jobs.status(id).unwrap().state == JobState::Running {
            assert!(Instant::now() < deadline, "job {id} never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = jobs.status(id).unwrap();
        assert_eq!(s.state, JobState::Failed);
        assert!(s
            .error
            .unwrap()
            .contains("no readings for equipment class `oven`"));
    }
    assert!(jobs.status("train-x").is_none());
}

#[test]
fn fleet_and_device_routes_serve_the_summaries_with_pagination() {
    let fleet = crate::fleet::Fleet::start().unwrap();
    let alerts = fixture();
    for a in &alerts {
        fleet.alert(a, 1);
    }
    fleet.scores("mixer-2", &[0.1, 0.2, 0.3, 0.9]);
    let snap = fleet.sync();
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::with_state(ApiState::without_store().with_fleet(fleet.clone()), dir);

    // The list equals the snapshot, paged by thing id.
    let (status, all) = f.json("/api/v1/devices");
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 2);
    assert_eq!(
        all["items"],
        serde_json::to_value(snap.devices()).unwrap(),
        "devices list"
    );
    let (_, second) = f.json("/api/v1/devices?limit=1&offset=1");
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["thing_id"], all["items"][1]["thing_id"]);
    assert_eq!(
        f.json("/api/v1/devices?offset=5").1["items"],
        serde_json::json!([])
    );

    let (status, mixer) = f.json("/api/v1/devices/mixer-2");
    assert_eq!(status, 200);
    assert_eq!(
        mixer,
        serde_json::to_value(snap.device("mixer-2").unwrap()).unwrap()
    );
    assert_eq!(mixer["alerts_total"], 6);
    assert_eq!(mixer["scores_count"], 4);
    assert_eq!(mixer["dominant_families"][0]["family"], "voltage");
    let (status, oven) = f.json("/api/v1/devices/factory%3Aoven-1");
    assert_eq!(status, 200);
    assert_eq!(oven["thing_id"], "factory:oven-1");
    let (status, body) = f.json("/api/v1/devices/nope");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));

    assert_eq!(all["next"], serde_json::Value::Null);
    let (_, first) = f.json("/api/v1/devices?limit=1");
    assert_eq!(first["next"], "/api/v1/devices?limit=1&offset=1");
    assert_eq!(first["prev"], serde_json::Value::Null);
    let (_, next) = f.json(first["next"].as_str().unwrap());
    assert_eq!(next["items"], second["items"]);
    assert_eq!(next["next"], serde_json::Value::Null);
    assert_eq!(next["prev"], "/api/v1/devices?limit=1&offset=0");

    let (status, mut summary) = f.json("/api/v1/fleet");
    assert_eq!(status, 200);
    assert_eq!(
        (&summary["total"], &summary["limit"], &summary["offset"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(100),
            &serde_json::json!(0)
        )
    );
    assert_eq!(summary["next"], serde_json::Value::Null);
    assert_eq!(summary["prev"], serde_json::Value::Null);
    for paging in ["total", "limit", "offset", "next", "prev"] {
        summary.as_object_mut().unwrap().remove(paging);
    }
    assert_eq!(summary, serde_json::to_value(snap.fleet()).unwrap());
    assert_eq!(summary["alerts_total"], alerts.len());
    let (_, top) = f.json("/api/v1/fleet?limit=1");
    assert_eq!(top["ranking"].as_array().unwrap().len(), 1);
    assert_eq!(top["ranking"][0], summary["ranking"][0]);
    assert_eq!(top["next"], "/api/v1/fleet?limit=1&offset=1");
    let (_, bottom) = f.json(top["next"].as_str().unwrap());
    assert_eq!(bottom["ranking"][0], summary["ranking"][1]);
    assert_eq!(bottom["next"], serde_json::Value::Null);
    f.bad_request("/api/v1/fleet?limit=1&limit=2", "limit");

    f.bad_request("/api/v1/devices?limit=0", "limit");
    f.bad_request("/api/v1/devices?offset=-1", "offset");
    f.bad_request("/api/v1/fleet?since=1", "since");

    // Without summaries the routes say so.
    let none = Fixture::with_state(ApiState::without_store(), tempfile::tempdir().unwrap());
    assert_eq!(none.json("/api/v1/fleet").0, 503);
    assert_eq!(none.json("/api/v1/devices").0, 503);
    assert_eq!(none.json("/api/v1/devices/mixer-2").0, 503);
    fleet.close();
}
