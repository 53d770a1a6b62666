//! `egizml loadgen`: produces labelled simulator telemetry to Kafka or MQTT at a given rate, for
//! load tests and demos of `egizml run`. A progress line goes to stderr every second; the last stdout
//! line is a JSON summary.

use crate::event::Point;
use crate::sources::mqtt::publish::MqttPublisher;
use crate::sources::simulator::{FaultKind, Simulator, SimulatorConfig};
use anyhow::Context;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the telemetry goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Kafka,
    Mqtt,
}

/// Message format (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"thing_id","equipment_type","ts","values":{..},"label"}`.
    Flat,
    /// EgizCore `StateChanged` with the values under `features.<family>.properties`.
    Egizcore,
}

/// Arguments of `egizml loadgen`.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadgenArgs {
    #[arg(long, value_enum)]
    pub target: Target,
    /// Kafka bootstrap servers, or the MQTT broker's `host:port`.
    #[arg(long, visible_alias = "url")]
    pub brokers: String,
    /// Kafka topic (messages keyed by thing_id), or MQTT topic where `{thing_id}` is replaced by the
    /// reading's thing (e.g. `factory/{thing_id}/telemetry`).
    #[arg(long, default_value = "telemetry")]
    pub topic: String,
    /// Simulated things (readings go round-robin over them).
    #[arg(long, default_value_t = 100)]
    pub things: usize,
    /// Readings per second over all things.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to produce for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Expected fault episodes per thing per 1,000 readings.
    #[arg(long, default_value_t = 2.0)]
    pub faults: f64,
    #[arg(long, value_enum, default_value_t = Format::Flat)]
    pub format: Format,
    /// Fault mix: the kinds injected, comma-separated (default: every kind), e.g.
    /// `voltage_spike,phase_imbalance`.
    #[arg(long, value_delimiter = ',')]
    pub fault_kinds: Vec<FaultKind>,
    /// Random seed (the same seed gives the same readings).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What a load run did (the last stdout line).
#[derive(Clone, Debug, Serialize)]
pub struct LoadgenSummary {
    pub target: Target,
    pub format: Format,
    pub things: usize,
    /// Readings handed to the client.
    pub sent: u64,
    /// Readings the broker acknowledged.
    pub acked: u64,
    /// Readings the broker rejected (Kafka delivery failures).
    pub failed: u64,
    /// Fault episodes injected into the readings sent.
    pub episodes: usize,
    pub elapsed_s: f64,
    pub points_per_sec: f64,
}

/// Counts Kafka delivery reports.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl Deliveries {
    fn counts(&self) -> (u64, u64) {
        (
            self.acked.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

enum Client {
    Kafka(ThreadedProducer<Deliveries>),
    Mqtt(MqttPublisher),
}

impl Client {
    fn send(&mut self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        match self {
            Client::Kafka(p) => {
                let mut record = BaseRecord::to(topic).key(key).payload(payload);
                loop {
                    match p.send(record) {
                        Ok(()) => return Ok(()),
                        Err((e, r)) => {
                            anyhow::ensure!(
                                e.rdkafka_error_code()
                                    == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                                "kafka produce: {e}"
                            );
                            record = r;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            }
            Client::Mqtt(p) => p.publish(&topic.replace("{thing_id}", key), payload),
        }
    }

    fn acked(&self) -> (u64, u64) {
        match self {
            Client::Kafka(p) => p.context().counts(),
            Client::Mqtt(p) => (p.acked(), 0),
        }
    }

    /// Waits for outstanding acknowledgements; returns (acked, failed).
    fn finish(self) -> anyhow::Result<(u64, u64)> {
        match self {
            Client::Kafka(p) => {
                p.flush(Duration::from_secs(60))
                    .context("kafka: messages still undelivered after 60 s")?;
                Ok(p.context().counts())
            }
            Client::Mqtt(p) => Ok((p.finish(Duration::from_secs(60))?, 0)),
        }
    }
}

/// One reading as a message.
pub fn encode(p: &Point, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    encode_into(p, format, &mut out);
    out
}

/// Flat-format message, borrowing the reading (no intermediate JSON tree: the generator must keep up
/// with hundreds of thousands of readings per second).
#[derive(Serialize)]
struct FlatMessage<'a> {
    thing_id: &'a str,
    equipment_type: &'a str,
    ts: i64,
    values: Values<'a>,
    label: Option<u8>,
}

/// Values as a JSON object, in the reading's order.
struct Values<'a>(&'a [(crate::event::Name, f64)], Option<&'static str>);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if self.1.is_none_or(|family| family_of(k) == family) {
                m.serialize_entry(k.as_str(), v)?;
            }
        }
        m.end()
    }
}

/// The EgizCore feature family of a flat value name.
fn family_of(name: &str) -> &'static str {
    if name.starts_with("voltage") || name.starts_with("current") || name == "power_factor" {
        "electrical"
    } else if name.starts_with("temp") {
        "thermal"
    } else {
        "process"
    }
}

/// EgizCore `StateChanged`: the values under `features.<family>.properties`, with the flat names as
/// leaf names so the default mapping decodes them unchanged.
#[derive(Serialize)]
struct StateChanged<'a> {
    event: &'static str,
    thing_id: &'a str,
    equipment_type: &'a str,
    timestamp: i64,
    features: Families<'a>,
}

struct Families<'a>(&'a [(crate::event::Name, f64)]);

#[derive(Serialize)]
struct Properties<'a> {
    properties: Values<'a>,
}

impl Serialize for Families<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for family in ["electrical", "thermal", "process"] {
            if self.0.iter().any(|(k, _)| family_of(k) == family) {
                m.serialize_entry(
                    family,
                    &Properties {
                        properties: Values(self.0, Some(family)),
                    },
                )?;
            }
        }
        m.end()
    }
}

/// Appends one reading as a message to `out`.
pub fn encode_into(p: &Point, format: Format, out: &mut Vec<u8>) {
    let written = match format {
        Format::Flat => serde_json::to_writer(
            &mut *out,
            &FlatMessage {
                thing_id: &p.thing_id,
                equipment_type: &p.equipment_type,
                ts: p.ts,
                values: Values(&p.values, None),
                label: p.label,
            },
        ),
        Format::Egizcore => serde_json::to_writer(
            &mut *out,
            &StateChanged {
                event: "StateChanged",
                thing_id: &p.thing_id,
                equipment_type: &p.equipment_type,
                timestamp: p.ts,
                features: Families(&p.values),
            },
        ),
    };
    // Plain strings and finite numbers (the simulator's values) always serialise.
    written.expect("JSON of plain values");
}

/// Runs the load until `duration` has passed or `stop` is set.
pub fn loadgen(args: &LoadgenArgs, stop: Arc<AtomicBool>) -> anyhow::Result<LoadgenSummary> {
    anyhow::ensure!(args.things >= 1, "--things must be at least 1");
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be > 0"
    );
    anyhow::ensure!(
        args.duration.is_finite() && args.duration > 0.0,
        "--duration must be > 0"
    );
    let mut client = match args.target {
        Target::Kafka => {
            let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
                .set("bootstrap.servers", &args.brokers)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create_with_context(Deliveries::default())
                .context("cannot create the Kafka producer")?;
            Client::Kafka(producer)
        }
        Target::Mqtt => Client::Mqtt(MqttPublisher::connect(
            &args.brokers,
            &format!("egizml-loadgen-{}", std::process::id()),
            Duration::from_secs(10),
        )?),
    };
    let mut sim = Simulator::new(SimulatorConfig {
        things: args.things,
        seed: args.seed,
        faults_per_1000: args.faults,
        fault_kinds: args.fault_kinds.clone(),
        start_ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64,
        ..SimulatorConfig::default()
    });
    let total = (args.rate * args.duration).round() as u64;
    let t0 = Instant::now();
    let mut sent: u64 = 0;
    let mut last_progress = Instant::now();
    let mut stderr = std::io::stderr();
    let mut buf = Vec::with_capacity(512);
    while sent < total && !stop.load(Ordering::SeqCst) {
        let due = ((t0.elapsed().as_secs_f64() * args.rate) as u64).min(total);
        while sent < due {
            let p = sim.next_point();
            buf.clear();
            encode_into(&p, args.format, &mut buf);
            client.send(&args.topic, &p.thing_id, &buf)?;
            sent += 1;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let (acked, failed) = client.acked();
            let secs = t0.elapsed().as_secs_f64();
            let _ = writeln!(
                stderr,
                "loadgen: {secs:.0}/{:.0} s, sent {sent} ({:.0}/s), acked {acked}, failed {failed}",
                args.duration,
                sent as f64 / secs.max(1e-9)
            );
        }
        if sent < total {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let (acked, failed) = client.finish()?;
    let elapsed_s = t0.elapsed().as_secs_f64();
    let episodes = sim
        .episodes_emitted()
        .into_iter()
        .filter(|e| e.start_ts <= e.end_ts)
        .count();
    Ok(LoadgenSummary {
        target: args.target,
        format: args.format,
        things: args.things,
        sent,
        acked,
        failed,
        episodes,
        elapsed_s,
        points_per_sec: sent as f64 / elapsed_s.max(1e-9),
    })
}
