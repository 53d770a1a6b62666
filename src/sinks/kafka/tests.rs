//! The sink's acknowledgements against librdkafka's mock cluster (in process; it can delay and
//! fail requests, which a real broker started by a test cannot be made to do on cue).

use super::*;
use rdkafka::mocking::MockCluster;

fn alert_outputs(n: usize) -> Vec<(u64, Output)> {
    (0..n)
        .map(|i| {
            let alert = crate::testkit::alert("oven-1", "test", 1_700_000_000_000 + i as i64);
            (i as u64, Output::Alert(alert))
        })
        .collect()
}

/// Polls `flushed` until it reaches `ticket` (or fails, or 20 s pass).
fn wait_flushed(sink: &mut KafkaSink, ticket: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = sink.flushed()?;
        if done >= ticket || Instant::now() > deadline {
            return Ok(done);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn delivery_reports_in_any_order_acknowledge_only_a_complete_prefix() {
    let mut r = Reported::default();
    r.report(2);
    r.report(1);
    assert_eq!(r.below, 0, "message 0 has no report yet");
    r.report(0);
    assert_eq!(r.below, 3);
    r.report(5);
    r.report(3);
    assert_eq!(r.below, 4);
    r.report(4);
    assert_eq!((r.below, r.after.len()), (6, 0));
    // A report below the prefix (cannot happen twice, but must not move it back).
    r.report(1);
    assert_eq!(r.below, 6);
}

#[test]
fn a_flush_ticket_is_durable_only_after_the_broker_acknowledged_its_messages() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("alerts", 2, 1).expect("topic");
    let cfg = KafkaSinkConfig::new(&cluster.bootstrap_servers(), "alerts");
    let mut sink = KafkaSink::new(&cfg).expect("sink");
    // Warm: metadata and the idempotent producer id, so the slow round trip below is the produce.
    sink.write(&alert_outputs(1)).expect("write");
    let first = sink.flush_start().expect("flush_start");
    assert_eq!(wait_flushed(&mut sink, first).expect("flushed"), first);

    cluster
        .broker_round_trip_time(1, Duration::from_millis(400))
        .expect("rtt");
    sink.write(&alert_outputs(3)).expect("write");
    let ticket = sink.flush_start().expect("flush_start");
    assert_eq!(ticket, first + 3, "a ticket counts the messages sent");
    // Returned at once, before the broker answered.
    let early = sink.flushed().expect("flushed");
    assert!(
        early < ticket,
        "durable before the broker answered: {early}"
    );
    assert_eq!(sink.delivered(), 1);
    assert_eq!(wait_flushed(&mut sink, ticket).expect("flushed"), ticket);
    assert_eq!(sink.delivered(), 4, "durable means delivered");
}

#[test]
fn a_failed_delivery_fails_flushed_once() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("alerts", 1, 1).expect("topic");
    let mut cfg = KafkaSinkConfig::new(&cluster.bootstrap_servers(), "alerts");
    cfg.delivery_timeout_ms = 3_000;
    let mut sink = KafkaSink::new(&cfg).expect("sink");
    sink.write(&alert_outputs(1)).expect("write");
    sink.flush().expect("the broker is up");

    cluster.broker_down(1).expect("broker down");
    sink.write(&alert_outputs(2)).expect("write");
    let ticket = sink.flush_start().expect("flush_start");
    let err = wait_flushed(&mut sink, ticket).expect_err("the messages timed out");
    assert!(
        err.to_string()
            .contains("2 messages could not be delivered"),
        "{err:#}"
    );
    // Reported once: the dataflow holds the first failed epoch from then on.
    assert_eq!(sink.flushed().expect("already reported"), ticket);
}
