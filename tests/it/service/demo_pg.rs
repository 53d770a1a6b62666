//! `egizml demo` on PostgreSQL: alerts land in the real database, the API serves them and takes
//! authenticated feedback, and SIGTERM drains every in-flight alert into the store before exit.

use super::procs::{self, free_port, wait_for, KillOnDrop};
use crate::common::{http_agent, sigterm_and_wait};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn demo_on_postgres_serves_feedback_and_drains_on_sigterm() {
    let Some(cluster) = procs::pg() else { return };
    let url = cluster.fresh_db("demo");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_egizml"))
        .args([
            "demo",
            "--duration",
            "60",
            "--things",
            "10",
            "--rate",
            "2000",
            "--quiet",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--store", &url])
        .env("EGIZML_API_TOKEN", "t0ken")
        .stdout(Stdio::piped())
        // Inherited rather than piped: an unread pipe could fill up and stall the demo.
        .stderr(Stdio::inherit())
        .spawn()
        .expect("demo starts");
    let mut child = KillOnDrop(child);
    let agent = http_agent(Duration::from_secs(5));

    let first = wait_for(Duration::from_secs(40), || {
        let mut resp = agent
            .get(format!("{base}/api/v1/anomalies?limit=1"))
            .call()
            .ok()?;
        let page: serde_json::Value = resp.body_mut().read_json().ok()?;
        page["items"].get(0).cloned()
    })
    .expect("an anomaly is served from PostgreSQL within 40 s");
    let body = serde_json::json!({
        "thing_id": first["thing_id"], "alert_id": first["alert_id"], "verdict": "false_positive"
    });
    let resp = agent
        .post(format!("{base}/api/v1/feedback"))
        .send_json(&body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = agent
        .post(format!("{base}/api/v1/feedback"))
        .header("authorization", "Bearer t0ken")
        .send_json(&body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    // SIGTERM: the demo stops its source, drains the pipeline into the store and exits 0.
    let exited = sigterm_and_wait(&mut child.0, Duration::from_secs(30), "the demo");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(exited.success(), "{exited:?}: {stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("summary line")).unwrap();
    let alerts = summary["alerts"].as_i64().unwrap();
    assert!(alerts > 0, "{summary}");

    let mut db = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let stored: i64 = db
        .query_one("SELECT COUNT(*) FROM alerts", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, alerts, "every emitted alert is stored: {summary}");
    let verdict: String = db
        .query_one(
            "SELECT verdict FROM feedback WHERE alert_id = $1",
            &[&first["alert_id"].as_str().unwrap()],
        )
        .unwrap()
        .get(0);
    assert_eq!(verdict, "false_positive");
}
