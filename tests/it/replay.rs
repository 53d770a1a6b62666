//! Replay through the whole dataflow: determinism across worker counts, dead letters, lateness.

use crate::common::*;
use egizml::decode::MalformedReason;

#[test]
fn one_and_many_workers_write_identical_alerts_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = simulate(dir.path(), 40, 40 * 900, 3);
    let mut outputs = Vec::new();
    for workers in [1, 2, 3] {
        let args = replay_args(&input, dir.path(), workers);
        let (summary, _) = run_replay(&args);
        assert_eq!(summary.points, 40 * 900);
        let alerts = std::fs::read(&args.alerts).unwrap();
        let scores = std::fs::read(args.scores.as_ref().unwrap()).unwrap();
        outputs.push((summary.alerts, alerts, scores));
    }
    let (alerts_1, bytes_1, scores_1) = &outputs[0];
    assert!(
        *alerts_1 > 0,
        "the workload has faults, so some alerts are expected"
    );
    assert_eq!(scores_1.iter().filter(|b| **b == b'\n').count(), 40 * 900);
    for (alerts_n, bytes_n, scores_n) in &outputs[1..] {
        assert_eq!(alerts_1, alerts_n);
        assert!(
            bytes_1 == bytes_n,
            "alert files differ between worker counts"
        );
        assert!(
            scores_1 == scores_n,
            "score files differ between worker counts"
        );
    }
}

#[test]
fn every_malformed_message_is_dead_lettered_with_its_reason_and_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let good = |i: i64| flat("oven-1", T0 + i * 1000, &oven(i));
    let mut lines: Vec<Vec<u8>> = (0..5).map(|i| good(i).into_bytes()).collect();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad_json", b"{\"thing_id\": \"oven-1\", ".to_vec()),
        ("bad_json", vec![0xff, 0xfe, b'{', b'}']),
        ("missing_thing_id", br#"{"ts":1767225600000,"values":{"voltage_a":230}}"#.to_vec()),
        ("missing_timestamp", br#"{"thing_id":"oven-2","values":{"voltage_a":230}}"#.to_vec()),
        ("bad_timestamp", br#"{"thing_id":"oven-2","ts":"yesterday","values":{"voltage_a":230}}"#.to_vec()),
        // Epoch seconds instead of milliseconds: 1970 in ms.
        ("absurd_timestamp", br#"{"thing_id":"oven-2","ts":1767225600,"values":{"voltage_a":230}}"#.to_vec()),
        ("non_numeric_value", br#"{"thing_id":"oven-2","ts":1767225600000,"values":{"voltage_a":"high"}}"#.to_vec()),
        ("non_finite_value", br#"{"thing_id":"oven-2","ts":1767225600000,"values":{"voltage_a":"NaN"}}"#.to_vec()),
        ("non_finite_value", br#"{"thing_id":"oven-2","ts":1767225600000,"values":{"voltage_a":1e999}}"#.to_vec()),
        ("no_values", br#"{"thing_id":"oven-2","ts":1767225600000,"values":{}}"#.to_vec()),
        ("bad_label", br#"{"thing_id":"oven-2","ts":1767225600000,"values":{"voltage_a":230},"label":7}"#.to_vec()),
        ("unsupported_event", br#"{"event":"ThingDeleted","thing_id":"oven-2","timestamp":"2026-01-27T14:30:00Z"}"#.to_vec()),
        ("oversize", format!(r#"{{"thing_id":"oven-2","ts":1767225600000,"values":{{"voltage_a":230}},"pad":"{}"}}"#, "x".repeat(70_000)).into_bytes()),
        // Same thing and event time as an accepted reading.
        ("duplicate_timestamp", good(4).into_bytes()),
        // Far behind the thing's newest reading (lateness bound 10 s).
        ("late", flat("oven-1", T0 - 60_000, &oven(99)).into_bytes()),
    ];
    for (_, raw) in &bad {
        lines.push(raw.clone());
    }
    let input = dir.path().join("mixed.jsonl");
    let mut bytes = Vec::new();
    for l in &lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    std::fs::write(&input, bytes).unwrap();

    let args = replay_args(&input, dir.path(), 2);
    let (summary, report) = run_replay(&args);
    assert_eq!(summary.points, 5);
    assert_eq!(summary.malformed, bad.len() as u64);
    let dead = read_json_lines(args.dead_letters.as_ref().unwrap());
    assert_eq!(dead.len(), bad.len());
    for (i, ((reason, raw), d)) in bad.iter().zip(&dead).enumerate() {
        assert_eq!(d["reason"], *reason, "dead letter {i}: {d}");
        assert_eq!(
            d["origin"]["line"],
            6 + i as u64,
            "line number of dead letter {i}"
        );
        assert!(!d["detail"].as_str().unwrap().is_empty());
        // The raw bytes are kept exactly (base64 when they are not UTF-8); the pipeline's own
        // rejections (late, duplicate) carry the decoded reading.
        if *reason == "late" || *reason == "duplicate_timestamp" {
            assert!(d["raw"].as_str().unwrap().contains("oven-1"));
        } else if let Ok(text) = std::str::from_utf8(raw) {
            assert_eq!(d["raw"], text);
        } else {
            assert!(d["raw_base64"].is_string());
        }
    }
    // Counted per reason.
    for reason in MalformedReason::ALL {
        let expected = bad.iter().filter(|(r, _)| *r == reason.as_str()).count() as u64;
        let i = MalformedReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap();
        assert_eq!(
            report.counters.malformed[i],
            expected,
            "{}",
            reason.as_str()
        );
    }
}

#[test]
fn out_of_order_readings_within_the_lateness_bound_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..100)
        .map(|i| flat("oven-1", T0 + i * 1000, &oven(i)))
        .collect();
    // 5 s behind the newest reading: inside the default 10 s bound.
    lines.push(flat("oven-1", T0 + 94_500, &oven(200)));
    lines.push(flat("oven-1", T0 + 100_000, &oven(201)));
    let input = dir.path().join("ooo.jsonl");
    write_lines(&input, &lines);
    let args = replay_args(&input, dir.path(), 1);
    let (summary, _) = run_replay(&args);
    assert_eq!(summary.points, 102);
    assert_eq!(summary.malformed, 0);
    let scores = read_json_lines(args.scores.as_ref().unwrap());
    assert_eq!(scores.len(), 102);
    assert_eq!(scores[100]["ts"], T0 + 94_500);
}

#[test]
fn a_rule_alerts_on_the_first_reading_without_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut hot = oven(0);
    hot[0].1 = 262.0;
    let input = dir.path().join("spike.jsonl");
    write_lines(&input, &[flat("oven-7", T0, &hot)]);
    let args = replay_args(&input, dir.path(), 1);
    run_replay(&args);
    let alerts = read_json_lines(&args.alerts);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["source"], "rule");
    assert_eq!(a["type"], "voltage_out_of_range");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["ts"], T0);
    assert_eq!(a["top_features"][0]["feature"], "voltage_a");
    assert!(a["top_features"][0]["contribution"].as_f64().unwrap() > 0.0);
    assert_eq!(a["families"]["voltage"], 1.0);
    assert!(a["explanation"].as_str().unwrap().contains("262"));
    assert_eq!(a["input_offsets"]["line"], 1);
    assert_eq!(a["alert_id"].as_str().unwrap().len(), 32);
}

#[test]
fn egizcore_state_changed_messages_replay_like_flat_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for i in 0..80i64 {
        let v = oven(i);
        let ts = egizml::decode::timestamp::format_rfc3339(T0 + i * 1000);
        let msg = serde_json::json!({
            "event": "StateChanged", "thing_id": "factory:oven-001", "equipment_type": "oven", "timestamp": ts,
            "features": {
                "electrical": {"properties": {
                    "voltage": {"a": v[0].1, "b": v[1].1, "c": v[2].1},
                    "current": {"a": v[3].1, "b": v[4].1, "c": if i == 79 { 9.0 } else { v[5].1 }},
                    "power_factor": v[6].1}},
                "thermal": {"properties": {"temperature_zones": [v[7].1, v[8].1, v[9].1]}}
            }
        });
        lines.push(msg.to_string());
    }
    let input = dir.path().join("egizcore.jsonl");
    write_lines(&input, &lines);
    let args = replay_args(&input, dir.path(), 2);
    let (summary, _) = run_replay(&args);
    assert_eq!(summary.points, 80);
    assert_eq!(summary.malformed, 0);
    // The last reading drops current_c by 40%: the phase-imbalance rule needs 3 readings, but the
    // ensemble (after the 60-reading warm-up) sees it at once.
    let alerts = read_json_lines(&args.alerts);
    assert!(!alerts.is_empty());
    let last = alerts.last().unwrap();
    assert_eq!(last["thing_id"], "factory:oven-001");
    assert_eq!(last["ts"], T0 + 79_000);
    let features: Vec<&str> = last["top_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert!(
        features.iter().any(|f| f.starts_with("current")),
        "{features:?}"
    );
}
