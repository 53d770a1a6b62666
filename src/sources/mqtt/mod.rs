//! MQTT source: subscribes to topic filters at QoS 1 and hands every message's payload to the
//! dataflow (`pipeline::Input::Messages`), where it is decoded like a Kafka message or a file line
//! (malformed ones become dead letters and are counted).
//!
//! The client runs on its own thread (rumqttc's blocking client). A lost connection is retried with a
//! doubling delay up to `max_reconnect_delay_ms`; every connection acknowledgement renews the
//! subscriptions, so a broker restarted without its session state still delivers to us.
//!
//! Delivery: the broker's QoS 1 messages are acknowledged once the client has read them, so a message
//! is lost if the service dies between that and its processing; use Kafka where that matters.

pub mod config;
pub mod publish;
#[cfg(test)]
mod tests;

pub use config::MqttSourceConfig;

use anyhow::Context;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, RecvTimeoutError, SubscribeFilter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages buffered between the client thread and the dataflow.
const QUEUE_MESSAGES: usize = 65_536;

/// A running MQTT source.
pub struct MqttSource {
    /// Payloads for `pipeline::Input::Messages`; closes when the source stops.
    pub messages: Receiver<Vec<u8>>,
    pub thread: JoinHandle<()>,
}

/// Starts the client thread. It ends on `stop`, after `stop_after_idle_s`, or when the receiver is
/// dropped.
pub fn start(cfg: &MqttSourceConfig, stop: Arc<AtomicBool>) -> anyhow::Result<MqttSource> {
    let (host, port) = cfg.host_port().map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_session(cfg.clean_session)
        .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
    if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_MESSAGES);
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new()
        .name("mqtt-source".into())
        .spawn(move || {
            let _span = tracing::info_span!("mqtt_source", broker = %cfg.broker).entered();
            run(&cfg, opts, &tx, &stop);
        })
        .context("cannot start the MQTT source thread")?;
    Ok(MqttSource {
        messages: rx,
        thread,
    })
}

fn run(cfg: &MqttSourceConfig, opts: MqttOptions, tx: &SyncSender<Vec<u8>>, stop: &AtomicBool) {
    let (client, mut connection) = Client::new(opts, 64);
    let filters: Vec<SubscribeFilter> = cfg
        .topics
        .iter()
        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
        .collect();
    let idle = cfg.stop_after_idle_s.map(Duration::from_secs_f64);
    let max_delay = Duration::from_millis(cfg.max_reconnect_delay_ms.max(100));
    let mut delay = Duration::from_millis(100);
    let mut last_message: Option<Instant> = None;
    let mut received: u64 = 0;
    let mut connections: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if let (Some(idle), Some(last)) = (idle, last_message) {
            if last.elapsed() > idle {
                tracing::info!(received, "mqtt source idle: stopping");
                break;
            }
        }
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                connections += 1;
                delay = Duration::from_millis(100);
                tracing::info!(
                    session_present = ack.session_present,
                    connections,
                    "mqtt connected"
                );
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(error = %e, "mqtt subscribe request failed");
                }
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                tracing::info!(codes = ?ack.return_codes, "mqtt subscribed");
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                received += 1;
                last_message = Some(Instant::now());
                // Blocks when the dataflow is behind: backpressure reaches the broker through the
                // client's in-flight window.
                if tx.send(p.payload.to_vec()).is_err() {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                crate::metrics::global().sink_error("mqtt_source");
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost");
                sleep_unless_stopped(delay, stop);
                delay = (delay * 2).min(max_delay);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = client.try_disconnect();
    tracing::info!(received, "mqtt source stopped");
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}
