//! Kafka sink: alerts keyed by thing_id through an idempotent producer, optional score and
//! dead-letter topics. Every message is numbered as it is sent; `flush_start` returns the count sent
//! so far as its ticket, and `flushed` the count below which the broker has acknowledged every
//! message (from the delivery reports), so the dataflow acknowledges its input without waiting on
//! the broker. `flush` waits for every delivery. A failed delivery fails `flushed`/`flush`: the
//! dataflow then stops acknowledging its input, so nothing is committed past a lost alert.

pub mod config;

pub use config::KafkaSinkConfig;

use crate::pipeline::{Output, OutputSink};
use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delivery outcomes (librdkafka calls back from its polling thread), by message number.
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    reported: Mutex<Reported>,
}

/// Which numbered messages have a delivery report.
#[derive(Default)]
struct Reported {
    /// Every message numbered below this one has a report.
    below: u64,
    /// From `below` on: whether each message has a report (the first never has).
    after: VecDeque<bool>,
}

impl Reported {
    fn report(&mut self, number: u64) {
        let Some(at) = number.checked_sub(self.below) else {
            return;
        };
        let at = at as usize;
        if self.after.len() <= at {
            self.after.resize(at + 1, false);
        }
        self.after[at] = true;
        while self.after.front() == Some(&true) {
            self.after.pop_front();
            self.below += 1;
        }
    }
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, number: usize) {
        // The failure is counted before the report, so `flushed` never passes a failed message
        // without seeing it.
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report(number as u64);
    }
}

/// The Kafka output sink.
pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    sender: Sender,
    /// Failures already reported: a delivery failure is fatal for acknowledgements.
    failed_seen: u64,
    alerts_sent: u64,
    buf: Vec<u8>,
}

/// The producer and the number of the next message it sends.
struct Sender {
    producer: ThreadedProducer<DeliveryCounter>,
    sent: u64,
    delivery_timeout_ms: u64,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaSinkConfig) -> anyhow::Result<KafkaSink> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "none")
            // Short: the sink no longer forces a send at every epoch (it does not flush, it reads
            // the delivery reports), so this is how long an alert may wait for others.
            .set("linger.ms", "1")
            .set("delivery.timeout.ms", cfg.delivery_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                cfg.queue_messages.to_string(),
            );
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let producer: ThreadedProducer<DeliveryCounter> = cc
            .create_with_context(DeliveryCounter::default())
            .context("cannot create the Kafka producer")?;
        let m = crate::metrics::global();
        m.register_sink("kafka");
        Ok(KafkaSink {
            cfg: cfg.clone(),
            sender: Sender {
                producer,
                sent: 0,
                delivery_timeout_ms: cfg.delivery_timeout_ms,
            },
            failed_seen: 0,
            alerts_sent: 0,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Messages the broker has acknowledged.
    pub fn delivered(&self) -> u64 {
        self.sender
            .producer
            .context()
            .delivered
            .load(Ordering::Relaxed)
    }

    /// Fails if a delivery failed since the last check.
    fn check_failures(&mut self) -> anyhow::Result<()> {
        let ctx = self.sender.producer.context();
        let failed = ctx.failed.load(Ordering::SeqCst);
        if failed > self.failed_seen {
            self.failed_seen = failed;
            crate::metrics::global().sink_error("kafka");
            let last = ctx
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            anyhow::bail!("kafka sink: {failed} messages could not be delivered (last: {last})");
        }
        Ok(())
    }
}

impl Sender {
    /// Sends one message; when the producer's queue is full, waits for deliveries (backpressure),
    /// bounded by the delivery timeout.
    fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(self.delivery_timeout_ms);
        let mut record = BaseRecord::with_opaque_to(topic, self.sent as usize)
            .key(key)
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(anyhow::Error::new(e).context(format!("kafka topic {topic}")))
                }
            }
        }
    }
}

impl OutputSink for KafkaSink {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        let m = crate::metrics::global();
        for (_, o) in outputs {
            match o {
                Output::Alert(a) => {
                    self.buf.clear();
                    serde_json::to_writer(&mut self.buf, a)?;
                    self.sender.send(
                        &self.cfg.alerts_topic,
                        a.thing_id.as_bytes(),
                        &self.buf,
                        None,
                    )?;
                    self.alerts_sent += 1;
                    m.alerts_emitted.with_label_values(&["kafka"]).inc();
                }
                Output::Score(s) => {
                    if let Some(topic) = &self.cfg.scores_topic {
                        self.buf.clear();
                        serde_json::to_writer(&mut self.buf, s)?;
                        self.sender
                            .send(topic, s.thing_id.as_bytes(), &self.buf, None)?;
                    }
                }
                Output::Prediction(p) => {
                    if let Some(topic) = &self.cfg.predictions_topic {
                        self.buf.clear();
                        serde_json::to_writer(&mut self.buf, p)?;
                        self.sender
                            .send(topic, p.thing_id.as_bytes(), &self.buf, None)?;
                    }
                }
                Output::Dead(d) => {
                    if let Some(topic) = &self.cfg.dead_letter_topic {
                        let headers = OwnedHeaders::new()
                            .insert(Header {
                                key: "reason",
                                value: Some(d.reason.as_str()),
                            })
                            .insert(Header {
                                key: "detail",
                                value: Some(d.detail.as_str()),
                            });
                        self.sender.send(topic, b"", &d.raw, Some(headers))?;
                        m.dead_letters.with_label_values(&["kafka"]).inc();
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(self.cfg.delivery_timeout_ms + 5_000);
        if let Err(e) = self.sender.producer.flush(timeout) {
            crate::metrics::global().sink_error("kafka");
            return Err(anyhow::Error::new(e).context("kafka sink: flush"));
        }
        self.check_failures()
    }

    fn flush_start(&mut self) -> anyhow::Result<u64> {
        Ok(self.sender.sent)
    }

    fn flushed(&mut self) -> anyhow::Result<u64> {
        // Read before the failures: a message counted here as reported has its failure counted.
        let below = self
            .sender
            .producer
            .context()
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .below;
        self.check_failures()?;
        Ok(below)
    }
}

#[cfg(test)]
mod tests;
