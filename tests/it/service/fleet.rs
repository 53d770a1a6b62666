//! The fleet and device summaries of a running service agree with the alerts it stored: `egizml demo`
//! on simulated data, kept serving (`--linger`) once its input has ended and everything is drained, so
//! the store and the differential-dataflow summaries can be compared at rest.

use super::procs::{free_port, wait_for, KillOnDrop};
use crate::common::{bin, http_agent, sigterm_and_wait};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

fn get(url: &str) -> (u16, Value) {
    let agent = http_agent(Duration::from_secs(10));
    let mut resp = agent.get(url).call().expect("request");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Every item of a paged route (`limit` 1000, following `offset` until `total`).
fn all_items(base: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, page) = get(&format!(
            "{base}{path}{sep}limit=1000&offset={}",
            items.len()
        ));
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["items"].as_array().unwrap().clone();
        let total = page["total"].as_u64().unwrap() as usize;
        let empty = got.is_empty();
        items.extend(got);
        if items.len() >= total || empty {
            assert_eq!(items.len(), total, "{path}: pages add up to the total");
            return items;
        }
    }
}

/// What the summaries should say about one device, computed from its stored alerts.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    by_type_severity: BTreeMap<(String, String), i64>,
    by_severity: BTreeMap<String, i64>,
    families: BTreeMap<String, i64>,
}

#[test]
fn device_and_fleet_summaries_agree_with_the_stored_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let store = dir.path().join("fleet.db");
    let child = Command::new(bin())
        .args([
            "demo",
            "--duration",
            "6",
            "--things",
            "12",
            "--rate",
            "3000",
        ])
        .args(["--faults-per-1000", "8", "--linger", "120", "--quiet"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", store.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let mut child = KillOnDrop(child);

    // Wait until the input has ended and everything is stored and summarised.
    let drained = wait_for(Duration::from_secs(90), || {
        let agent = http_agent(Duration::from_secs(2));
        let body = agent
            .get(&format!("{base}/health"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let h: Value = serde_json::from_str(&body).ok()?;
        (h["details"]["drained"] == true).then_some(())
    });
    assert!(drained.is_some(), "demo never reported drained");

    // Expected summaries, recomputed from the stored alerts.
    let alerts = all_items(&base, "/api/v1/anomalies");
    assert!(!alerts.is_empty(), "the demo stored no alert");
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for a in &alerts {
        let e = expected
            .entry(a["thing_id"].as_str().unwrap().to_string())
            .or_default();
        let (t, s) = (
            a["type"].as_str().unwrap().to_string(),
            a["severity"].as_str().unwrap().to_string(),
        );
        *e.by_type_severity.entry((t, s.clone())).or_default() += 1;
        *e.by_severity.entry(s).or_default() += 1;
        let alert: egizml::event::Alert = serde_json::from_value(a.clone()).unwrap();
        *e.families
            .entry(egizml::fleet::dominant_family(&alert))
            .or_default() += 1;
    }

    // Every device: counts by type/severity and by severity, and the dominant families.
    let devices = all_items(&base, "/api/v1/devices");
    let ids: Vec<&str> = devices
        .iter()
        .map(|d| d["thing_id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "devices are listed by thing id");
    for thing in expected.keys() {
        assert!(
            ids.contains(&thing.as_str()),
            "{thing} has alerts but no summary"
        );
    }
    for d in &devices {
        let thing = d["thing_id"].as_str().unwrap();
        // Every simulated thing was scored, alerts or not.
        assert!(d["scores_count"].as_i64().unwrap() > 0, "{d}");
        let mean = d["score_mean"].as_f64().unwrap();
        let p95 = d["score_p95"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&mean) && (0.0..=1.0).contains(&p95),
            "{d}"
        );
        let e = expected.remove(thing).unwrap_or_default();
        let got_ts: BTreeMap<(String, String), i64> = d["alert_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    (
                        c["type"].as_str().unwrap().to_string(),
                        c["severity"].as_str().unwrap().to_string(),
                    ),
                    c["count"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got_ts, e.by_type_severity,
            "{thing}: alerts by type and severity"
        );
        let got_sev: BTreeMap<String, i64> =
            serde_json::from_value(d["alerts_by_severity"].clone()).unwrap();
        assert_eq!(got_sev, e.by_severity, "{thing}: alerts by severity");
        let total: i64 = e.by_severity.values().sum();
        assert_eq!(d["alerts_total"].as_i64().unwrap(), total, "{thing}");
        // The listed families are the most frequent ones with their counts (ties in any order).
        let listed = d["dominant_families"].as_array().unwrap();
        assert_eq!(listed.len(), e.families.len().min(3), "{thing}: {d}");
        let mut counts: Vec<i64> = e.families.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        for (f, want) in listed.iter().zip(&counts) {
            let name = f["family"].as_str().unwrap();
            assert_eq!(f["count"].as_i64().unwrap(), *want, "{thing}: {d}");
            assert_eq!(e.families.get(name), Some(want), "{thing}: family {name}");
        }
        let sev = |s: &str| e.by_severity.get(s).copied().unwrap_or(0) as f64;
        let risk = 3.0 * sev("critical") + sev("warning") + 0.25 * sev("info") + p95;
        assert!(
            (d["risk"].as_f64().unwrap() - risk).abs() < 1e-9,
            "{thing}: {d}"
        );

        let (status, one) = get(&format!("{base}/api/v1/devices/{thing}"));
        assert_eq!(status, 200);
        assert_eq!(&one, d, "{thing}: the device route equals its list entry");
    }
    assert!(
        expected.is_empty(),
        "alerts of things without a summary: {expected:?}"
    );

    let (status, body) = get(&format!("{base}/api/v1/devices/no-such-thing"));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no-such-thing"));

    // The fleet: totals equal the store's, and the ranking covers every device, worst first.
    let (status, fleet) = get(&format!("{base}/api/v1/fleet?limit=1000"));
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(
        fleet["alerts_total"].as_u64().unwrap() as usize,
        alerts.len()
    );
    assert_eq!(fleet["devices"].as_u64().unwrap() as usize, devices.len());
    let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_severity: BTreeMap<String, i64> = BTreeMap::new();
    for a in &alerts {
        *by_type
            .entry(a["type"].as_str().unwrap().into())
            .or_default() += 1;
        *by_severity
            .entry(a["severity"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(
        serde_json::from_value::<BTreeMap<String, i64>>(fleet["alerts_by_type"].clone()).unwrap(),
        by_type
    );
    assert_eq!(
        serde_json::from_value::<BTreeMap<String, i64>>(fleet["alerts_by_severity"].clone())
            .unwrap(),
        by_severity
    );
    let scores: i64 = devices
        .iter()
        .map(|d| d["scores_count"].as_i64().unwrap())
        .sum();
    assert_eq!(fleet["scores_count"].as_i64().unwrap(), scores);
    let risk: BTreeMap<&str, f64> = devices
        .iter()
        .map(|d| (d["thing_id"].as_str().unwrap(), d["risk"].as_f64().unwrap()))
        .collect();
    let ranking = fleet["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), devices.len());
    for (i, r) in ranking.iter().enumerate() {
        assert_eq!(r["rank"].as_u64().unwrap() as usize, i + 1);
        let thing = r["thing_id"].as_str().unwrap();
        assert_eq!(r["risk"].as_f64().unwrap(), risk[thing], "{thing}");
    }
    for pair in ranking.windows(2) {
        let (a, b) = (
            pair[0]["risk"].as_f64().unwrap(),
            pair[1]["risk"].as_f64().unwrap(),
        );
        assert!(
            a > b || (a == b && pair[0]["thing_id"].as_str() < pair[1]["thing_id"].as_str()),
            "ranking worst first, ties by thing id: {pair:?}"
        );
    }
    let (_, top) = get(&format!("{base}/api/v1/fleet?limit=2&offset=1"));
    assert_eq!(top["ranking"].as_array().unwrap()[..], ranking[1..3]);

    // SIGTERM ends the linger; the demo exits 0 with the stored count in its summary.
    let status = sigterm_and_wait(&mut child.0, Duration::from_secs(30), "the demo");
    assert!(status.success(), "demo exit status {status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["alerts"].as_u64().unwrap() as usize,
        alerts.len(),
        "{summary}"
    );
}
