//! Kafka sink: alerts keyed by thing_id through an idempotent producer, optional score and
//! dead-letter topics. `flush` returns only once the broker has acknowledged every message written
//! so far, or fails (then the dataflow stops acknowledging its input, so nothing is committed past a
//! lost alert).

pub mod config;

pub use config::KafkaSinkConfig;

use crate::pipeline::{Output, OutputSink};
use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts delivery outcomes (librdkafka calls back from its polling thread).
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().expect("error lock") = Some(e.to_string());
            }
        }
    }
}

/// The Kafka output sink.
pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    producer: ThreadedProducer<DeliveryCounter>,
    /// Failures already reported: a delivery failure is fatal for acknowledgements.
    failed_seen: u64,
    alerts_sent: u64,
    buf: Vec<u8>,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaSinkConfig) -> anyhow::Result<KafkaSink> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "none")
            .set("linger.ms", "5")
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
            producer,
            failed_seen: 0,
            alerts_sent: 0,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Messages the broker has acknowledged.
    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }

    /// Sends one message; when the producer's queue is full, waits for deliveries (backpressure),
    /// bounded by the delivery timeout.
    fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.delivery_timeout_ms);
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
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
                    self.send(
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
                        self.send(topic, s.thing_id.as_bytes(), &self.buf, None)?;
                    }
                }
                Output::Prediction(p) => {
                    if let Some(topic) = &self.cfg.predictions_topic {
                        self.buf.clear();
                        serde_json::to_writer(&mut self.buf, p)?;
                        self.send(topic, p.thing_id.as_bytes(), &self.buf, None)?;
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
                        self.send(topic, b"", &d.raw, Some(headers))?;
                        m.dead_letters.with_label_values(&["kafka"]).inc();
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(self.cfg.delivery_timeout_ms + 5_000);
        if let Err(e) = self.producer.flush(timeout) {
            crate::metrics::global().sink_error("kafka");
            return Err(anyhow::Error::new(e).context("kafka sink: flush"));
        }
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > self.failed_seen {
            self.failed_seen = failed;
            crate::metrics::global().sink_error("kafka");
            let last = self
                .producer
                .context()
                .last_error
                .lock()
                .expect("error lock")
                .clone()
                .unwrap_or_default();
            anyhow::bail!("kafka sink: {failed} messages could not be delivered (last: {last})");
        }
        Ok(())
    }
}
