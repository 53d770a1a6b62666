//! `egizml run` with an `api` section serves the REST API and /metrics while it runs: a paced file
//! source feeds the pipeline, alerts go to a JSONL sink and to the API's store, and the test reads them
//! back through the API, scrapes /metrics, posts feedback with and without the token, trains a model and
//! stops the service with SIGTERM. A bad `api` section fails at start naming file, line and field.

use super::procs::{free_port, wait_for, KillOnDrop};
use crate::common::{bin, http_agent, sigterm_and_wait, simulate};
use egizml::sinks::sqlite::{AlertQuery, AlertStore, SqliteStore};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN_VAR: &str = "EGIZML_RUN_API_TEST_TOKEN";
const TOKEN: &str = "run-api-token-41";

fn agent() -> ureq::Agent {
    http_agent(Duration::from_secs(10))
}

/// Status and body of a request.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    try_call(agent, method, url, token, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`call`], or the transport error (the server is not up yet).
fn try_call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String), ureq::Error> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("connection", "close")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.unwrap_or("").as_bytes().to_vec();
    let mut resp = agent.run(req.body(body).unwrap())?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string().unwrap_or_default()))
}

fn get_json(agent: &ureq::Agent, url: &str) -> Option<Value> {
    let (status, body) = try_call(agent, "GET", url, None, None).ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// The value of an unlabelled sample in Prometheus text, e.g. `egizml_points_ingested_total`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn alert_ids_in(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|a| a["alert_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn run_serves_the_api_and_metrics_of_the_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = simulate(dir.path(), 10, 200_000, 5);
    let port = free_port();
    let config = dir.path().join("service.yaml");
    // Paced at 5,000 lines/s the file lasts 40 s: the service is still running while it is probed
    // (and a training job runs).
    std::fs::write(
        &config,
        format!(
            "workers: 2\n\
             source:\n  file:\n    path: {input}\n    rate: 5000\n\
             sinks:\n  jsonl:\n    alerts: alerts.jsonl\n\
             api:\n  listen: 127.0.0.1:{port}\n  token_env: {TOKEN_VAR}\n  store: store/alerts.db\n\
             \x20 registry:\n    path: models\n  train_history:\n    file: {input}\n",
            input = input.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .env(TOKEN_VAR, TOKEN)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    let agent = agent();

    let health = wait_for(Duration::from_secs(60), || {
        get_json(&agent, &format!("{base}/health"))
    })
    .expect("/health answers");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["details"]["mode"], "run", "{health}");
    assert_eq!(health["details"]["drained"], false, "{health}");

    // Alerts reach the store and are served.
    let page = wait_for(Duration::from_secs(60), || {
        let p = get_json(&agent, &format!("{base}/api/v1/anomalies?limit=1000"))?;
        (p["total"].as_u64()? >= 3).then_some(p)
    })
    .expect("the API serves stored alerts while the service runs");
    let served: Vec<&Value> = page["items"].as_array().unwrap().iter().collect();
    // The JSONL sink flushes before the store in each epoch: every stored alert is already there.
    let written = alert_ids_in(&dir.path().join("alerts.jsonl"));
    for a in &served {
        assert!(
            written.contains(a["alert_id"].as_str().unwrap()),
            "stored alert not in the JSONL sink: {a}"
        );
    }
    let thing = served[0]["thing_id"].as_str().unwrap().to_string();
    let mine = get_json(&agent, &format!("{base}/api/v1/anomalies/{thing}")).unwrap();
    assert!(mine["total"].as_u64().unwrap() >= 1);
    assert!(mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["thing_id"] == thing.as_str()));

    // The process-wide metrics, as the demo serves them.
    let (status, metrics) = call(&agent, "GET", &format!("{base}/metrics"), None, None);
    assert_eq!(status, 200);
    let ingested = sample(&metrics, "egizml_points_ingested_total").unwrap();
    assert!(ingested > 0.0, "{ingested}");
    assert!(metrics.contains("egizml_alerts_emitted_total{sink=\"sqlite\"}"));
    assert!(metrics.contains("egizml_points_processed_total{worker=\"1\"}"));

    // Summaries, rules and the token.
    let devices = get_json(&agent, &format!("{base}/api/v1/devices")).unwrap();
    assert!(devices["total"].as_u64().unwrap() >= 1, "{devices}");
    let rules = get_json(&agent, &format!("{base}/api/v1/rules")).unwrap();
    assert!(rules["yaml"].as_str().unwrap().contains("severity"));
    let fb = serde_json::json!({"thing_id": thing, "alert_id": served[0]["alert_id"],
        "verdict": "true_positive"})
    .to_string();
    let url = format!("{base}/api/v1/feedback");
    assert_eq!(call(&agent, "POST", &url, None, Some(&fb)).0, 401);
    assert_eq!(call(&agent, "POST", &url, Some("nope"), Some(&fb)).0, 401);
    let (status, body) = call(&agent, "POST", &url, Some(TOKEN), Some(&fb));
    assert_eq!(status, 201, "{body}");

    // A training job on the configured history registers a model.
    let (status, body) = call(
        &agent,
        "POST",
        &format!("{base}/api/v1/train/{thing}"),
        Some(TOKEN),
        Some(r#"{"params":{"n_estimators":10}}"#),
    );
    assert_eq!(status, 202, "{body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    let job_url = format!("{base}{}", job["status_url"].as_str().unwrap());
    let done = wait_for(Duration::from_secs(120), || {
        let j = get_json(&agent, &job_url)?;
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    })
    .expect("the training job ends");
    assert_eq!(done["state"], "succeeded", "{done}");
    let models = get_json(&agent, &format!("{base}/api/v1/models?scope={thing}")).unwrap();
    assert_eq!(models["models"][0]["id"], format!("{thing}/v1"), "{models}");
    assert!(dir.path().join("models").is_dir());

    // SIGTERM: drains, exits 0; the store holds exactly the JSONL sink's alerts.
    let status = sigterm_and_wait(&mut child.0, Duration::from_secs(60), "egizml run");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut text).unwrap();
    let err = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{status}: {err}");
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(summary["points"].as_u64().unwrap() < 200_000, "{summary}");
    let written = alert_ids_in(&dir.path().join("alerts.jsonl"));
    assert_eq!(summary["alerts"].as_u64().unwrap() as usize, written.len());
    let store = SqliteStore::open(dir.path().join("store/alerts.db")).unwrap();
    let stored = store
        .query(&AlertQuery {
            limit: 1000,
            ..AlertQuery::default()
        })
        .unwrap();
    assert_eq!(stored.total as usize, written.len());
    let stored_ids: BTreeSet<String> = stored.items.into_iter().map(|a| a.alert_id).collect();
    assert_eq!(stored_ids, written);
}

/// `egizml run` with `config` as its service config fails; returns its stderr.
fn fails(dir: &Path, config: &str) -> String {
    let path = dir.join("service.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("EGIZML_RUN_API_TEST_UNSET")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{config}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn run_rejects_a_bad_api_section_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let head =
        "source:\n  simulator:\n    things: 2\nsinks:\n  jsonl:\n    alerts: out.jsonl\napi:\n";
    for (api, line, field) in [
        ("  listen: not-an-address\n", 8, "api.listen"),
        ("  listen: 127.0.0.1:8080\n  stroe: x.db\n", 9, "stroe"),
        (
            "  token_env: EGIZML_RUN_API_TEST_UNSET\n",
            8,
            "api.token_env",
        ),
        ("  retention:\n    days: -1\n", 9, "api.retention.days"),
        (
            "  registry:\n    path: m\n  fleet: maybe\n",
            10,
            "api.fleet",
        ),
        ("  store: ''\n", 8, "api.store"),
    ] {
        let err = fails(dir.path(), &format!("{head}{api}"));
        assert!(
            err.contains(&format!("service.yaml:{line}:")),
            "{api}: {err}"
        );
        assert!(err.contains(field), "{api}: {err}");
    }
    // Cross-field mistakes name the file and the fields.
    let err = fails(
        dir.path(),
        &format!("{head}  train_history:\n    file: history.jsonl\n"),
    );
    assert!(
        err.contains("service.yaml") && err.contains("api.registry"),
        "{err}"
    );
    let err = fails(
        dir.path(),
        &format!("{head}  token: a\n  token_env: PATH\n"),
    );
    assert!(
        err.contains("service.yaml") && err.contains("token_env"),
        "{err}"
    );
    // A port in use is an immediate, clear error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = fails(dir.path(), &format!("{head}  listen: 127.0.0.1:{port}\n"));
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// `egizml_kafka_consumer_lag{topic,partition}` of the Prometheus text.
fn lag(text: &str, topic: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("egizml_kafka_consumer_lag{")?;
            let (labels, value) = rest.split_once("} ")?;
            labels
                .contains(&format!("topic=\"{topic}\""))
                .then_some(())?;
            let partition = labels.split("partition=\"").nth(1)?.split('"').next()?;
            Some((partition.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn kafka_consumer_lag_is_exported_per_partition_and_reaches_zero_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = egizml::testkit::Tansu::start().expect("tansu starts");
    let bs = broker.bootstrap();
    broker.create_topic("lagged", 2).unwrap();
    let (input, _) = simulate(dir.path(), 6, 3_000, 9);
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    crate::kafka::produce(&crate::kafka::producer(&bs), "lagged", &lines, 0.0);
    let port = free_port();
    let config = dir.path().join("service.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\n\
             source:\n  kafka:\n    brokers: {bs}\n    topics: [lagged]\n    group_id: egizml-lag\n    commit_interval_ms: 200\n    stop_after_idle_s: 10\n\
             sinks:\n  jsonl:\n    alerts: alerts.jsonl\n\
             api:\n  listen: 127.0.0.1:{port}\n  fleet: false\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let agent = agent();
    // Both partitions are reported, and once everything read is acknowledged and committed the lag is 0.
    let settled = wait_for(Duration::from_secs(90), || {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let (status, text) = try_call(&agent, "GET", &url, None, None).ok()?;
        (status == 200).then_some(())?;
        let l = lag(&text, "lagged");
        (l.len() == 2 && l.iter().all(|(_, v)| *v == 0.0)).then_some(l)
    });
    let log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    let settled =
        settled.unwrap_or_else(|| panic!("lag never settled at 0 on both partitions\n{}", log()));
    assert_eq!(settled[0].0, "0");
    assert_eq!(settled[1].0, "1");
    let status = wait_for(Duration::from_secs(60), || child.0.try_wait().unwrap())
        .expect("the run ends after its idle time");
    assert!(status.success(), "{}", log());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut text).unwrap();
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(summary["points"], 3_000, "{summary}");
}

#[test]
fn run_stores_and_serves_alerts_in_postgresql() {
    let Some(cluster) = super::procs::pg() else {
        return;
    };
    let url = cluster.fresh_db("run_api");
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = simulate(dir.path(), 8, 60_000, 13);
    let port = free_port();
    let config = dir.path().join("service.yaml");
    // Paced at 4,000 lines/s: 15 s, ended early by SIGTERM.
    std::fs::write(
        &config,
        format!(
            "workers: 1\n\
             source:\n  file:\n    path: {input}\n    rate: 4000\n\
             sinks:\n  jsonl:\n    alerts: alerts.jsonl\n\
             api:\n  listen: 127.0.0.1:{port}\n  store: {url}\n  fleet: false\n",
            input = input.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let agent = agent();
    let base = format!("http://127.0.0.1:{port}");
    let page = wait_for(Duration::from_secs(60), || {
        let p = get_json(&agent, &format!("{base}/api/v1/anomalies"))?;
        (p["total"].as_u64()? > 0).then_some(p)
    })
    .expect("alerts are served from PostgreSQL while the service runs");
    let written = alert_ids_in(&dir.path().join("alerts.jsonl"));
    for a in page["items"].as_array().unwrap() {
        assert!(written.contains(a["alert_id"].as_str().unwrap()), "{a}");
    }
    // No summaries configured: their routes say so.
    assert_eq!(
        call(&agent, "GET", &format!("{base}/api/v1/fleet"), None, None).0,
        503
    );
    let status = sigterm_and_wait(&mut child.0, Duration::from_secs(60), "egizml run");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    let written = alert_ids_in(&dir.path().join("alerts.jsonl"));
    let store = egizml::sinks::postgres::PostgresStore::connect(&url).unwrap();
    let stored = store
        .query(&AlertQuery {
            limit: 1000,
            ..AlertQuery::default()
        })
        .unwrap();
    assert_eq!(stored.total as usize, written.len(), "{log}");
    let ids: BTreeSet<String> = stored.items.into_iter().map(|a| a.alert_id).collect();
    assert_eq!(ids, written);
}
