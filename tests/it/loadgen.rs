//! `egizml loadgen` against real brokers: Mosquitto (MQTT, EgizCore format) and tansu (Kafka, flat).

use crate::common::*;
use egizml::config::DecodeConfig;
use egizml::decode::Decoder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

fn loadgen(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(bin())
        .arg("loadgen")
        .args(args)
        .output()
        .expect("egizml loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "loadgen failed\n{stdout}\n{stderr}");
    let summary = serde_json::from_str(stdout.lines().last().expect("summary")).unwrap();
    (summary, stderr)
}

/// Checks every payload decodes to a reading of one of `things` things; returns the thing ids.
fn decode_all(payloads: &[(String, Vec<u8>)]) -> BTreeSet<String> {
    let mut decoder = Decoder::new(&DecodeConfig::default());
    payloads
        .iter()
        .map(|(key, raw)| {
            let p = decoder
                .decode(raw)
                .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(raw)));
            assert!(p.values.len() >= 3, "{p:?}");
            assert!(key.contains(p.thing_id.as_str()), "{key} vs {}", p.thing_id);
            p.thing_id.to_string()
        })
        .collect()
}

#[test]
fn loadgen_publishes_egizcore_telemetry_to_mqtt_at_the_given_rate() {
    if egizml::testkit::mosquitto_binary().is_none() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "mosquitto missing under CI (tests/run.sh installs it)"
        );
        eprintln!("SKIPPED: mosquitto is not installed");
        return;
    }
    let broker = egizml::testkit::Mosquitto::start().unwrap();
    let mut opts = MqttOptions::new("loadgen-reader", "127.0.0.1", broker.port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 64);
    client
        .subscribe("factory/+/telemetry", QoS::AtLeastOnce)
        .unwrap();
    // Subscribed before the load starts.
    loop {
        match conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("subscribing: {other:?}"),
        }
    }
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < 1_000 && Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
                conn.recv_timeout(Duration::from_millis(200))
            {
                got.push((p.topic.clone(), p.payload.to_vec()));
            }
        }
        got
    });
    let (summary, stderr) = loadgen(&[
        "--target",
        "mqtt",
        "--url",
        &broker.address(),
        "--topic",
        "factory/{thing_id}/telemetry",
        "--things",
        "5",
        "--rate",
        "500",
        "--duration",
        "2",
        "--format",
        "egizcore",
    ]);
    assert_eq!(summary["sent"], 1_000, "{summary}");
    assert_eq!(summary["acked"], 1_000, "{summary}");
    assert!(stderr.contains("loadgen: "), "progress line: {stderr}");
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 1_000);
    assert!(got
        .iter()
        .all(|(_, raw)| raw.starts_with(b"{\"event\":\"StateChanged\"")
            || String::from_utf8_lossy(raw).contains("\"StateChanged\"")));
    assert_eq!(decode_all(&got).len(), 5, "5 things");
}

#[test]
fn loadgen_produces_flat_telemetry_to_kafka_keyed_by_thing() {
    let broker = egizml::testkit::Tansu::start().expect("tansu starts");
    broker.create_topic("load", 1).unwrap();
    let (summary, _) = loadgen(&[
        "--target",
        "kafka",
        "--brokers",
        &broker.bootstrap(),
        "--topic",
        "load",
        "--things",
        "4",
        "--rate",
        "1000",
        "--duration",
        "2",
        "--faults",
        "5",
    ]);
    assert_eq!(summary["sent"], 2_000, "{summary}");
    assert_eq!(summary["acked"], 2_000, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "loadgen-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("load", 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 2_000 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or(b"")).to_string();
            got.push((key, m.payload().unwrap_or(b"").to_vec()));
        }
    }
    assert_eq!(got.len(), 2_000);
    assert_eq!(decode_all(&got).len(), 4);
}
