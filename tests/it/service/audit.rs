//! Endpoint audit: every route of the OpenAPI document (and of DESIGN.md's REST list) is exercised on a
//! running `egizml demo` with a bearer token configured: success, 401 on every mutating call without
//! the token, 400s naming the parameter or field, pagination (limits, and `next`/`prev` links followed
//! to the end and back), 404s, 405s and 413.
//!
//! The route list is not written here: it comes from the served OpenAPI document, which must equal the
//! router's ([`egizml::api::served_routes`]), and the test fails when a documented operation has no
//! check below.

use super::procs::{free_port, wait_for, KillOnDrop};
use crate::common::bin;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A documented operation: path template and method.
type Operation = (&'static str, &'static str);
/// What the audit asserts about one operation.
type Check = fn(&Api);

const TOKEN: &str = "audit-token-7f3a";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

struct Api {
    base: String,
    agent: ureq::Agent,
}

struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", &self.text[..self.text.len().min(300)])
        })
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text))
            .to_string()
    }
}

impl Api {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> Resp {
        let url = format!("{}{path}", self.base);
        // A fresh connection per call: the server may close a kept-alive connection after answering
        // without reading the body (401, 405, 413).
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("connection", "close");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some((ct, b)) => self.agent.run(
                req.header("content-type", ct)
                    .body(b.as_bytes().to_vec())
                    .unwrap(),
            ),
            None => self.agent.run(req.body(Vec::new()).unwrap()),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        Resp {
            status: resp.status().as_u16(),
            headers,
            text: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }
    fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None, None)
    }
    /// 200 and its JSON.
    fn ok(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.json()
    }
    /// A 400 whose error names `name`.
    fn bad(&self, method: &str, path: &str, body: Option<(&str, &str)>, name: &str) {
        let r = self.call(method, path, Some(TOKEN), body);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text);
        let e = r.error();
        assert!(
            e.contains(name),
            "{method} {path}: `{e}` does not name {name}"
        );
    }
}

/// A documented path with every `{parameter}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "audit-x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The REST routes DESIGN.md lists (`health, anomalies[/{thing_id}], ..., rules (GET/PUT)`), as paths.
fn design_routes() -> Option<Vec<String>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let design = root
        .ancestors()
        .map(|a| a.join("shared/DESIGN.md"))
        .find(|p| p.exists());
    let Some(design) = design else {
        return super::procs::unavailable(
            "shared/DESIGN.md not found beside the repository".into(),
        );
    };
    let text = std::fs::read_to_string(design).unwrap();
    let section = &text[text.find("## REST").expect("DESIGN.md has a REST section")..];
    let body: String = section
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let list = body.split(". ").next().unwrap();
    let mut routes = Vec::new();
    for item in list.split(", ") {
        let name = item.split(" (").next().unwrap().trim();
        match name.split_once('[') {
            Some((base, opt)) => {
                routes.push(format!("/api/v1/{base}"));
                routes.push(format!("/api/v1/{base}{}", opt.trim_end_matches(']')));
            }
            None => routes.push(format!("/api/v1/{name}")),
        }
    }
    Some(routes)
}

#[test]
fn every_endpoint_answers_as_documented_with_auth_validation_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let store = dir.path().join("audit.db");
    let child = Command::new(bin())
        .args(["demo", "--duration", "4", "--things", "8", "--rate", "3000"])
        .args(["--faults-per-1000", "8", "--linger", "180", "--quiet"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", store.to_str().unwrap()])
        .arg("--registry")
        .arg(dir.path().join("models"))
        .args(["--train-points", "16000"])
        .env("EGIZML_API_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo starts");
    let _child = KillOnDrop(child);
    let api = Api {
        base: base.clone(),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent(),
    };
    let drained = wait_for(Duration::from_secs(90), || {
        let r = api.agent.get(format!("{base}/health")).call().ok()?;
        let h: Value = serde_json::from_str(&r.into_body().read_to_string().ok()?).ok()?;
        (h["details"]["drained"] == true).then_some(())
    });
    assert!(drained.is_some(), "demo never reported drained");

    // The OpenAPI document lists exactly what the router serves.
    let doc = api.ok("/api/v1/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m.to_lowercase()).is_some() {
                documented.insert((path.clone(), m.to_string()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = egizml::api::served_routes()
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(|m| (p.to_string(), m.to_string())))
        .collect();
    assert_eq!(documented, served, "OpenAPI document vs router");

    // DESIGN.md's routes are served, or named in docs/SERVICE.md as not served yet.
    if let Some(design) = design_routes() {
        let service_md = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/SERVICE.md"),
        )
        .unwrap();
        let not_yet = service_md
            .find("Not served yet")
            .map(|i| &service_md[i..])
            .map(|t| &t[..t.find("\n\n").unwrap_or(t.len())])
            .unwrap_or("");
        // DESIGN.md's model `{id}` is `<scope>/v<N>`: served as `{scope}/{version}`.
        let norm = |p: &str| p.replace("{scope}/{version}", "{id}");
        for route in design {
            let served_here = documented.iter().any(|(p, _)| norm(p) == route);
            let short = route.trim_start_matches("/api/v1/");
            assert!(
                served_here || not_yet.contains(&format!("`{short}`")),
                "DESIGN.md route {route} is neither served nor listed as not served yet"
            );
        }
    }

    // Generic checks on every documented path and operation.
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in &paths {
        let concrete = concrete(path);
        let methods: Vec<&str> = documented
            .iter()
            .filter(|(p, _)| p == *path)
            .map(|(_, m)| m.as_str())
            .collect();
        for m in METHODS {
            let mutating = m != "GET";
            if mutating {
                // Without the token, or with a wrong one: 401 before anything else (even a 405).
                for token in [None, Some("wrong-token")] {
                    let r = api.call(m, &concrete, token, Some(("application/json", "{}")));
                    assert_eq!(r.status, 401, "{m} {concrete} token {token:?}: {}", r.text);
                    assert_eq!(
                        r.headers.get("www-authenticate").map(String::as_str),
                        Some("Bearer")
                    );
                    assert!(!r.error().is_empty());
                }
            }
            if !methods.contains(&m) {
                let r = api.call(m, &concrete, Some(TOKEN), Some(("application/json", "{}")));
                assert_eq!(r.status, 405, "{m} {concrete}: {}", r.text);
                assert!(r.error().contains(m));
            }
        }
        // Paged routes: limit bounds, offset, unknown parameters.
        let op = &doc["paths"][path.as_str()]["get"];
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        if params.contains(&"limit") {
            for bad in ["0", "1001", "ten"] {
                api.bad("GET", &format!("{concrete}?limit={bad}"), None, "limit");
            }
            api.bad("GET", &format!("{concrete}?offset=-1"), None, "offset");
            api.bad(
                "GET",
                &format!("{concrete}?no_such_param=1"),
                None,
                "no_such_param",
            );
        }
    }
    let r = api.get("/api/v1/no-such-route");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/api/v1/no-such-route"));

    // Per-operation checks; every documented operation must have one.
    let checks: Vec<(Operation, Check)> = vec![
        (("/health", "GET"), health),
        (("/api/v1/health", "GET"), health),
        (("/metrics", "GET"), metrics),
        (("/api/v1/metrics", "GET"), metrics),
        (("/api/v1/openapi.json", "GET"), |api| {
            assert!(api.ok("/api/v1/openapi.json")["paths"].is_object())
        }),
        (("/api/v1/anomalies", "GET"), anomalies),
        (("/api/v1/anomalies/{thing_id}", "GET"), thing_anomalies),
        (("/api/v1/feedback", "POST"), feedback_post),
        (("/api/v1/feedback", "GET"), feedback_get),
        (("/api/v1/rules", "GET"), rules_get),
        (("/api/v1/rules", "PUT"), rules_put),
        (("/api/v1/predictions", "GET"), predictions),
        (("/api/v1/predictions/{thing_id}", "GET"), predictions),
        (("/api/v1/train/{thing_id}", "POST"), train_post),
        (("/api/v1/train/jobs/{job_id}", "GET"), train_job),
        (("/api/v1/models", "GET"), models_list),
        (("/api/v1/models/{scope}", "GET"), model_active),
        (("/api/v1/models/{scope}/{version}", "GET"), model_version),
        (
            ("/api/v1/models/{scope}/{version}/metrics", "GET"),
            model_metrics,
        ),
        (
            ("/api/v1/models/{scope}/{version}/activate", "POST"),
            model_activate,
        ),
        (("/api/v1/models/{scope}/rollback", "POST"), model_rollback),
        (("/api/v1/devices", "GET"), devices),
        (("/api/v1/devices/{thing_id}", "GET"), devices),
        (("/api/v1/fleet", "GET"), fleet),
    ];
    let checked: BTreeSet<(String, String)> = checks
        .iter()
        .map(|((p, m), _)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(
        checked, documented,
        "operations without an audit check (or stale checks)"
    );
    for ((path, method), check) in &checks {
        eprintln!("audit: {method} {path}");
        check(&api);
    }
}

fn health(api: &Api) {
    for p in ["/health", "/api/v1/health"] {
        let h = api.ok(p);
        assert_eq!(h["status"], "ok");
        assert!(h["version"].is_string() && h["uptime_s"].is_number());
    }
}

fn metrics(api: &Api) {
    for p in ["/metrics", "/api/v1/metrics"] {
        let r = api.get(p);
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"].starts_with("text/plain"));
        assert!(r.text.contains("egizml_points_ingested_total"), "{p}");
    }
}

/// Every item of a paged list, following the `next` links from `path` (with `limit=7`) to the end and
/// back with `prev`: the pages add up to `total` and the way back meets the same pages.
fn follow(api: &Api, path: &str, items: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut url = Some(format!("{path}{sep}limit=7"));
    let mut pages: Vec<(String, Value)> = Vec::new();
    while let Some(u) = url {
        let page = api.ok(&u);
        assert_eq!(page["limit"], 7, "{u}");
        let n = page[items].as_array().unwrap().len();
        assert!(n <= 7, "{u}");
        if let Some((_, prev)) = pages.last() {
            assert_eq!(page["total"], prev["total"], "{u}: total changed");
            assert_eq!(
                page["offset"].as_u64().unwrap(),
                prev["offset"].as_u64().unwrap() + 7,
                "{u}"
            );
            assert!(n > 0, "{u}: a `next` link led to an empty page");
        } else {
            assert_eq!(page["prev"], Value::Null, "{u}: first page has no prev");
        }
        // The link keeps the path and every filter.
        if let Some(next) = page["next"].as_str() {
            let base = path.split('?').next().unwrap();
            assert!(next.starts_with(&format!("{base}?")), "{next}");
            for filter in path
                .split('?')
                .nth(1)
                .into_iter()
                .flat_map(|q| q.split('&'))
            {
                assert!(next.contains(filter), "{next} lost {filter}");
            }
        }
        url = page["next"].as_str().map(str::to_string);
        pages.push((u, page));
    }
    let total = pages[0].1["total"].as_u64().unwrap() as usize;
    let all: Vec<Value> = pages
        .iter()
        .flat_map(|(_, p)| p[items].as_array().unwrap().clone())
        .collect();
    assert_eq!(all.len(), total, "{path}: pages add up to the total");
    // Back to the start with `prev`.
    let mut back = pages.len() - 1;
    let mut url = pages[back].1["prev"].as_str().map(str::to_string);
    while let Some(u) = url {
        back -= 1;
        let page = api.ok(&u);
        assert_eq!(
            page[items], pages[back].1[items],
            "{u}: prev gives the same page"
        );
        url = page["prev"].as_str().map(str::to_string);
    }
    assert_eq!(back, 0, "{path}: prev links lead back to the first page");
    all
}

/// Every stored alert, following the pages.
fn all_alerts(api: &Api, path: &str) -> Vec<Value> {
    follow(api, path, "items")
}

fn anomalies(api: &Api) {
    let all = all_alerts(api, "/api/v1/anomalies");
    assert!(
        all.len() >= 3,
        "too few alerts for the audit: {}",
        all.len()
    );
    let ids: BTreeSet<&str> = all
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), all.len(), "pages overlap");
    let ts: Vec<i64> = all.iter().map(|a| a["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Default page size and a page past the end.
    let first = api.ok("/api/v1/anomalies");
    assert_eq!(first["limit"], 100);
    assert_eq!(first["prev"], Value::Null);
    let past = api.ok(&format!("/api/v1/anomalies?offset={}", all.len()));
    assert_eq!(past["items"], Value::Array(vec![]));
    assert_eq!(past["total"].as_u64().unwrap() as usize, all.len());
    assert_eq!(past["next"], Value::Null);
    let last = api.ok(past["prev"]
        .as_str()
        .expect("a page past the end links back"));
    assert!(!last["items"].as_array().unwrap().is_empty());
    // Filters.
    let sev = all[0]["severity"].as_str().unwrap();
    let by_sev = all_alerts(api, &format!("/api/v1/anomalies?severity={sev}"));
    assert_eq!(
        by_sev.len(),
        all.iter().filter(|a| a["severity"] == sev).count()
    );
    let kind = all[0]["type"].as_str().unwrap();
    let by_type = all_alerts(api, &format!("/api/v1/anomalies?type={kind}"));
    assert_eq!(
        by_type.len(),
        all.iter().filter(|a| a["type"] == kind).count()
    );
    let (lo, hi) = (ts[ts.len() - 1], ts[ts.len() / 2]);
    let window = all_alerts(api, &format!("/api/v1/anomalies?since={lo}&until={hi}"));
    assert_eq!(
        window.len(),
        ts.iter().filter(|t| (lo..=hi).contains(*t)).count()
    );
    api.bad("GET", "/api/v1/anomalies?severity=loud", None, "severity");
    api.bad("GET", "/api/v1/anomalies?since=yesterday", None, "since");
    api.bad(
        "GET",
        &format!("/api/v1/anomalies?since={hi}&until={lo}"),
        None,
        "since",
    );
    api.bad("GET", "/api/v1/anomalies?limit=5&limit=6", None, "limit");
}

fn thing_anomalies(api: &Api) {
    let all = all_alerts(api, "/api/v1/anomalies");
    let thing = all[0]["thing_id"].as_str().unwrap();
    let mine = all_alerts(api, &format!("/api/v1/anomalies/{thing}"));
    assert_eq!(
        mine.len(),
        all.iter().filter(|a| a["thing_id"] == thing).count()
    );
    assert!(mine.iter().all(|a| a["thing_id"] == thing));
    let none = api.ok("/api/v1/anomalies/no-such-thing");
    assert_eq!(none["total"], 0);
    api.bad(
        "GET",
        &format!("/api/v1/anomalies/{thing}?thing_id=x"),
        None,
        "thing_id",
    );
}

fn feedback_post(api: &Api) {
    let all = all_alerts(api, "/api/v1/anomalies");
    let a = &all[0];
    let body = |verdict: &str| {
        serde_json::json!({"thing_id": a["thing_id"], "alert_id": a["alert_id"], "verdict": verdict,
            "note": "audit"})
        .to_string()
    };
    let json = "application/json";
    let r = api.call(
        "POST",
        "/api/v1/feedback",
        None,
        Some((json, &body("true_positive"))),
    );
    assert_eq!(r.status, 401, "{}", r.text);
    let r = api.call(
        "POST",
        "/api/v1/feedback",
        Some(TOKEN),
        Some((json, &body("true_positive"))),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api.call(
        "POST",
        "/api/v1/feedback",
        Some(TOKEN),
        Some((json, &body("false_positive"))),
    );
    assert_eq!(r.status, 200, "replacing a verdict: {}", r.text);
    // Validation: each names the field; an unknown alert is 404; another thing's alert is 400.
    api.bad(
        "POST",
        "/api/v1/feedback",
        Some((json, &body("maybe"))),
        "verdict",
    );
    let missing = serde_json::json!({"thing_id": a["thing_id"], "alert_id": a["alert_id"]});
    api.bad(
        "POST",
        "/api/v1/feedback",
        Some((json, &missing.to_string())),
        "verdict",
    );
    let empty =
        serde_json::json!({"thing_id": "", "alert_id": a["alert_id"], "verdict": "true_positive"});
    api.bad(
        "POST",
        "/api/v1/feedback",
        Some((json, &empty.to_string())),
        "thing_id",
    );
    let other = all
        .iter()
        .find(|b| b["thing_id"] != a["thing_id"])
        .expect("alerts of two things");
    let wrong = serde_json::json!({"thing_id": other["thing_id"], "alert_id": a["alert_id"],
        "verdict": "true_positive"});
    api.bad(
        "POST",
        "/api/v1/feedback",
        Some((json, &wrong.to_string())),
        "thing_id",
    );
    let unknown = serde_json::json!({"thing_id": a["thing_id"], "alert_id": "no-such-alert",
        "verdict": "true_positive"});
    let r = api.call(
        "POST",
        "/api/v1/feedback",
        Some(TOKEN),
        Some((json, &unknown.to_string())),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    // Too large: 413 (just over the limit, so the server has read nearly all of it when it answers and
    // closes the connection; a far larger body would meet a closed socket mid-write).
    let big = serde_json::json!({"thing_id": a["thing_id"], "alert_id": a["alert_id"],
        "verdict": "true_positive", "note": "x".repeat(1024 * 1024)})
    .to_string();
    let r = api.call("POST", "/api/v1/feedback", Some(TOKEN), Some((json, &big)));
    assert_eq!(r.status, 413, "{}", &r.text[..r.text.len().min(200)]);
    assert!(!r.error().is_empty());
    // Exactly one verdict is stored for the alert: the replacement.
    let list = api.ok(&format!(
        "/api/v1/feedback?thing_id={}",
        a["thing_id"].as_str().unwrap()
    ));
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["verdict"], "false_positive", "{list}");
}

fn feedback_get(api: &Api) {
    let list = api.ok("/api/v1/feedback?limit=1");
    assert_eq!(list["total"], 1, "{list}");
    assert!(list["items"].as_array().unwrap().len() <= 1);
    assert_eq!((&list["next"], &list["prev"]), (&Value::Null, &Value::Null));
    // Verdicts on more alerts than a page holds, paged with the links.
    let alerts = all_alerts(api, "/api/v1/anomalies");
    let judged: Vec<&Value> = alerts.iter().take(16).collect();
    assert!(
        judged.len() > 7,
        "too few alerts to page feedback: {}",
        judged.len()
    );
    for a in &judged {
        let body = serde_json::json!({"thing_id": a["thing_id"], "alert_id": a["alert_id"],
            "verdict": "true_positive"})
        .to_string();
        let r = api.call(
            "POST",
            "/api/v1/feedback",
            Some(TOKEN),
            Some(("application/json", &body)),
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
    }
    let listed = follow(api, "/api/v1/feedback?verdict=true_positive", "items");
    let ids: BTreeSet<&str> = listed
        .iter()
        .map(|f| f["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), judged.len(), "{listed:?}");
    assert!(judged
        .iter()
        .all(|a| ids.contains(a["alert_id"].as_str().unwrap())));
    api.bad("GET", "/api/v1/feedback?verdict=maybe", None, "verdict");
}

fn rules_get(api: &Api) {
    let rules = api.ok("/api/v1/rules");
    assert!(
        rules["yaml"].as_str().unwrap().contains("severity"),
        "{rules}"
    );
    assert!(rules["generation"].is_number());
}

fn rules_put(api: &Api) {
    let before = api.ok("/api/v1/rules");
    let yaml = before["yaml"].as_str().unwrap().to_string();
    let r = api.call(
        "PUT",
        "/api/v1/rules",
        None,
        Some(("application/yaml", &yaml)),
    );
    assert_eq!(r.status, 401);
    // A bad value: 400 naming the field, line and column; nothing changes.
    let broken = yaml.replacen("severity: warning", "severity: loud", 1);
    assert_ne!(broken, yaml, "the rules have a warning rule to break");
    let r = api.call(
        "PUT",
        "/api/v1/rules",
        Some(TOKEN),
        Some(("application/yaml", &broken)),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let e = r.json();
    assert!(e["field"].as_str().unwrap().contains("severity"), "{e}");
    assert!(
        e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().is_some(),
        "{e}"
    );
    assert_eq!(api.ok("/api/v1/rules")["generation"], before["generation"]);
    // The same text as JSON is accepted and bumps the generation.
    let body = serde_json::json!({ "yaml": yaml }).to_string();
    let r = api.call(
        "PUT",
        "/api/v1/rules",
        Some(TOKEN),
        Some(("application/json", &body)),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let after = api.ok("/api/v1/rules");
    assert!(
        after["generation"].as_u64() > before["generation"].as_u64(),
        "{after}"
    );
    let big = format!("{yaml}# {}\n", "x".repeat(1024 * 1024));
    let r = api.call(
        "PUT",
        "/api/v1/rules",
        Some(TOKEN),
        Some(("application/yaml", &big)),
    );
    assert_eq!(r.status, 413);
}

fn predictions(api: &Api) {
    // The demo's default dataflow has no RUL section: empty pages, still validated.
    let all = api.ok("/api/v1/predictions");
    assert!(all["items"].is_array() && all["total"].is_number(), "{all}");
    assert_eq!((&all["next"], &all["prev"]), (&Value::Null, &Value::Null));
    let later = api.ok("/api/v1/predictions?latest=false&offset=5");
    assert_eq!(
        later["prev"], "/api/v1/predictions?latest=false&limit=100&offset=0",
        "{later}"
    );
    let one = api.ok("/api/v1/predictions/some-thing?latest=false");
    assert!(one["items"].is_array(), "{one}");
    api.bad("GET", "/api/v1/predictions?latest=maybe", None, "latest");
    api.bad(
        "GET",
        "/api/v1/predictions?maintenance_due=2",
        None,
        "maintenance_due",
    );
    api.bad("GET", "/api/v1/predictions/x?thing_id=y", None, "thing_id");
}

fn devices(api: &Api) {
    let page = api.ok("/api/v1/devices?limit=3");
    let total = page["total"].as_u64().unwrap();
    assert_eq!(total, 8, "one summary per simulated thing: {page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let next = api.ok("/api/v1/devices?limit=3&offset=3");
    assert!(next["items"][0]["thing_id"].as_str() > page["items"][2]["thing_id"].as_str());
    assert_eq!(page["next"], "/api/v1/devices?limit=3&offset=3");
    let listed = follow(api, "/api/v1/devices", "items");
    assert_eq!(listed.len(), 8);
    let thing = page["items"][0]["thing_id"].as_str().unwrap();
    assert_eq!(
        api.ok(&format!("/api/v1/devices/{thing}")),
        page["items"][0]
    );
    let r = api.get("/api/v1/devices/no-such-thing");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("no-such-thing"));
}

fn fleet(api: &Api) {
    let f = api.ok("/api/v1/fleet?limit=2&offset=1");
    assert_eq!(f["ranking"].as_array().unwrap().len(), 2, "{f}");
    assert_eq!(f["ranking"][0]["rank"], 2);
    assert_eq!(f["devices"], 8);
    assert_eq!(f["total"], 8);
    assert_eq!(f["prev"], "/api/v1/fleet?limit=2&offset=0");
    assert_eq!(f["next"], "/api/v1/fleet?limit=2&offset=3");
    let ranking = follow(api, "/api/v1/fleet", "ranking");
    let ranks: Vec<u64> = ranking
        .iter()
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, (1..=8).collect::<Vec<u64>>());
    let stored = api.ok("/api/v1/anomalies?limit=1")["total"].clone();
    assert_eq!(f["alerts_total"], stored);
}

/// The thing the audit trains a model for: the first device.
fn trained_thing(api: &Api) -> String {
    api.ok("/api/v1/devices?limit=1")["items"][0]["thing_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn train_post(api: &Api) {
    let thing = trained_thing(api);
    let path = format!("/api/v1/train/{thing}");
    let json = "application/json";
    api.bad(
        "POST",
        &path,
        Some((json, r#"{"params":{"contamination":2.0}}"#)),
        "contamination",
    );
    api.bad("POST", &path, Some((json, r#"{"model":"svm"}"#)), "model");
    let body = r#"{"params":{"n_estimators":10},"activate":"always"}"#;
    let r = api.call("POST", &path, None, Some((json, body)));
    assert_eq!(r.status, 401);
    let r = api.call("POST", &path, Some(TOKEN), Some((json, body)));
    assert_eq!(r.status, 202, "{}", r.text);
    let job = r.json();
    let url = job["status_url"].as_str().unwrap().to_string();
    let done = wait_for(Duration::from_secs(120), || {
        let j = api.ok(&url);
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    })
    .expect("the training job finishes");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["report"]["model"]["id"],
        format!("{thing}/v1"),
        "{done}"
    );
}

fn train_job(api: &Api) {
    let job = api.ok("/api/v1/train/jobs/train-1");
    assert_eq!(job["state"], "succeeded", "{job}");
    let r = api.get("/api/v1/train/jobs/train-99");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("train-99"));
}

fn models_list(api: &Api) {
    let thing = trained_thing(api);
    let list = api.ok("/api/v1/models");
    assert_eq!(list["models"].as_array().unwrap().len(), 1, "{list}");
    let mine = api.ok(&format!("/api/v1/models?scope={thing}"));
    assert_eq!(mine["models"][0]["id"], format!("{thing}/v1"));
    assert_eq!(
        api.ok("/api/v1/models?scope=nothing-here")["models"],
        Value::Array(vec![])
    );
    api.bad("GET", "/api/v1/models?sort=id", None, "sort");
}

fn model_active(api: &Api) {
    let thing = trained_thing(api);
    let active = api.ok(&format!("/api/v1/models/{thing}"));
    assert_eq!(active["id"], format!("{thing}/v1"));
    assert_eq!(active["active"], true);
    assert_eq!(api.get("/api/v1/models/no-such-scope").status, 404);
}

fn model_version(api: &Api) {
    let thing = trained_thing(api);
    let v1 = api.ok(&format!("/api/v1/models/{thing}/v1"));
    assert_eq!(v1["id"], format!("{thing}/v1"));
    assert_eq!(api.get(&format!("/api/v1/models/{thing}/v9")).status, 404);
    api.bad(
        "GET",
        &format!("/api/v1/models/{thing}/vx"),
        None,
        "model id",
    );
}

fn model_metrics(api: &Api) {
    let thing = trained_thing(api);
    let m = api.ok(&format!("/api/v1/models/{thing}/v1/metrics"));
    assert_eq!(m["id"], format!("{thing}/v1"));
    assert!(m["metrics"]["f1"].is_number(), "{m}");
}

fn model_activate(api: &Api) {
    let thing = trained_thing(api);
    let json = Some(("application/json", "{}"));
    let path = format!("/api/v1/models/{thing}/v1/activate");
    assert_eq!(api.call("POST", &path, None, json).status, 401);
    let r = api.call("POST", &path, Some(TOKEN), json);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["active"], true);
    let r = api.call(
        "POST",
        &format!("/api/v1/models/{thing}/v9/activate"),
        Some(TOKEN),
        json,
    );
    assert_eq!(r.status, 404, "{}", r.text);
}

fn model_rollback(api: &Api) {
    let thing = trained_thing(api);
    let json = Some(("application/json", "{}"));
    let path = format!("/api/v1/models/{thing}/rollback");
    assert_eq!(api.call("POST", &path, None, json).status, 401);
    // One version only: nothing to roll back to.
    let r = api.call("POST", &path, Some(TOKEN), json);
    assert_eq!(r.status, 409, "{}", r.text);
    let r = api.call(
        "POST",
        "/api/v1/models/no-such-scope/rollback",
        Some(TOKEN),
        json,
    );
    assert_eq!(r.status, 404, "{}", r.text);
}
