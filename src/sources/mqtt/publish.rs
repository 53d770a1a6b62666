//! A QoS 1 MQTT publisher (used by `egizml loadgen --target mqtt` and the tests): publishes from the
//! caller's thread while a driver thread runs the connection, reconnecting after a broker restart.

use super::config::MqttSourceConfig;
use anyhow::Context;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connected publisher.
pub struct MqttPublisher {
    client: Client,
    driver: Option<JoinHandle<()>>,
    acked: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    /// Messages handed to the client.
    pub sent: u64,
}

impl MqttPublisher {
    /// Connects to `broker` (`host:port`), waiting up to `timeout` for the broker's acknowledgement.
    pub fn connect(broker: &str, client_id: &str, timeout: Duration) -> anyhow::Result<Self> {
        let (host, port) = MqttSourceConfig::new(broker, "#")
            .host_port()
            .map_err(anyhow::Error::msg)?;
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            // Kept across reconnections, so unacknowledged publishes are sent again.
            .set_clean_session(false);
        let (client, mut connection) = Client::new(opts, 1024);
        let acked = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicBool::new(false));
        let (a, d, c) = (
            Arc::clone(&acked),
            Arc::clone(&done),
            Arc::clone(&connected),
        );
        let driver = std::thread::Builder::new()
            .name("mqtt-publisher".into())
            .spawn(move || {
                while !d.load(Ordering::SeqCst) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            c.store(true, Ordering::SeqCst)
                        }
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                            a.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "mqtt publisher: connection lost, retrying");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .context("cannot start the MQTT publisher thread")?;
        let deadline = Instant::now() + timeout;
        while !connected.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                done.store(true, Ordering::SeqCst);
                anyhow::bail!("no MQTT connection to {broker} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(MqttPublisher {
            client,
            driver: Some(driver),
            acked,
            done,
            sent: 0,
        })
    }

    /// Publishes one message at QoS 1 (blocks while the client's queue is full).
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .context("mqtt publish")?;
        self.sent += 1;
        Ok(())
    }

    /// Messages the broker has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits (up to `timeout`) until the broker has acknowledged every message, then disconnects.
    /// Returns the acknowledged count.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        while self.acked() < self.sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let acked = self.acked();
        let _ = self.client.try_disconnect();
        self.done.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
        anyhow::ensure!(
            acked >= self.sent,
            "only {acked} of {} messages acknowledged by the broker within {timeout:?}",
            self.sent
        );
        Ok(acked)
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}
