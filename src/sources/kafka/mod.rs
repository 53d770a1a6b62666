//! Kafka source: one consumer per process (on its first timely worker; the records are exchanged by
//! thing to every worker), all processes in one consumer group, with offsets committed only after
//! the sinks have acknowledged every output the offsets caused.
//!
//! The dataflow side lives in `pipeline::feed_kafka`; this module owns the consumer, decoding and the
//! offset bookkeeping:
//! - each poll's messages are decoded into [`Record`]s tagged with `Origin::Kafka`, and the next offset of
//!   every partition read is remembered under the epoch the records were sent in;
//! - once the sink's acknowledged watermark passes an epoch, its offsets become committable, and they are
//!   committed every `commit_interval_ms` and at the end of the run;
//! - with `warm_start_messages`, a partition's first message after a (re)start makes the consumer seek
//!   back that many messages so per-thing state is rebuilt; the outputs of those re-read messages are
//!   dropped by [`SkipReplayed`] (they were acknowledged before the restart, or their offsets would not
//!   have been committed).
//! - with a state checkpoint (see `crate::checkpoint`), a partition's first message makes the consumer
//!   seek to the checkpoint's offset instead: back, re-reading for state only up to the committed
//!   offset (outputs dropped as above), or forward past messages whose state the checkpoint holds and
//!   whose outputs were acknowledged before it completed. The reader's [`KafkaReader::positions`]
//!   (next offset after every message handed to the dataflow) are what the next checkpoint records.

pub mod config;

pub use config::KafkaSourceConfig;

use crate::decode::Decoder;
use crate::event::{Name, Origin};
use crate::pipeline::{decode_record, Output, OutputSink, Record};
use anyhow::Context;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

type Partition = (String, i32);

/// Per partition, the first offset this process read after its warm-start re-read: outputs caused by
/// earlier offsets were already acknowledged in a previous run.
#[derive(Default, Debug)]
pub struct ResumePoints {
    points: RwLock<HashMap<Partition, i64>>,
}

impl ResumePoints {
    fn set(&self, p: Partition, offset: i64) {
        self.points.write().expect("resume lock").insert(p, offset);
    }

    /// Whether the message at `origin` was re-read only to rebuild state.
    pub fn is_replayed(&self, origin: &Origin) -> bool {
        let Origin::Kafka {
            topic,
            partition,
            offset,
        } = origin
        else {
            return false;
        };
        let points = self.points.read().expect("resume lock");
        if points.is_empty() {
            return false;
        }
        // A process holds a few partitions: a scan finds this one's entry without building an owned
        // key (a String) for every alert checked.
        points.iter().any(|((t, p), &resume)| {
            t.as_str() == topic.as_str() && p == partition && *offset < resume
        })
    }
}

/// Drops outputs caused by warm-start re-reads, then passes the rest to the inner sink.
pub struct SkipReplayed {
    pub resume: Arc<ResumePoints>,
    pub inner: Box<dyn OutputSink>,
    kept: Vec<(u64, Output)>,
}

impl SkipReplayed {
    pub fn new(resume: Arc<ResumePoints>, inner: Box<dyn OutputSink>) -> Self {
        SkipReplayed {
            resume,
            inner,
            kept: Vec::new(),
        }
    }
}

impl OutputSink for SkipReplayed {
    fn write(&mut self, outputs: &[(u64, Output)]) -> anyhow::Result<()> {
        self.kept.clear();
        for (seq, o) in outputs {
            let replayed = match o {
                Output::Alert(a) => self.resume.is_replayed(&a.input_offsets),
                Output::Dead(d) => self.resume.is_replayed(&d.origin),
                // Score lines carry no origin: re-emitted (at-least-once).
                Output::Score(_) => false,
                // Warm-start re-reads are learn-only: they never emit predictions.
                Output::Prediction(_) => false,
            };
            if !replayed {
                self.kept.push((*seq, o.clone()));
            }
        }
        if self.kept.is_empty() {
            return Ok(());
        }
        self.inner.write(&self.kept)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.inner.flush()
    }

    fn flush_start(&mut self) -> anyhow::Result<u64> {
        self.inner.flush_start()
    }

    fn flushed(&mut self) -> anyhow::Result<u64> {
        self.inner.flushed()
    }
}

/// How often librdkafka reports statistics, from which `egizml_kafka_consumer_lag` is set (a
/// `statistics.interval.ms` in the source's `properties` overrides it).
pub const STATS_INTERVAL_MS: &str = "1000";

/// The consumers' context: sets `egizml_kafka_consumer_lag{topic,partition}` from librdkafka's
/// statistics: per partition this consumer owns, the high watermark minus the committed offset (the
/// acknowledged offsets; see the module notes), i.e. the messages not yet safely processed.
pub struct LagContext;

impl ClientContext for LagContext {
    /// librdkafka's own log lines (connection errors, and with a `debug` property such as
    /// `cgrp,fetch` the group protocol and fetches) as `tracing` events of target `librdkafka`.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let lag = &crate::metrics::global().kafka_consumer_lag;
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition; a negative lag is "not known yet"
                // (nothing committed or no watermark); a revoked partition is its new owner's to report.
                if *id >= 0 && p.desired && p.consumer_lag >= 0 {
                    lag.with_label_values(&[topic.as_str(), &id.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// The most verbose librdkafka level the `tracing` filter lets through for target `librdkafka`
/// (librdkafka drops more verbose lines itself; rdkafka would take it from the `log` crate, unused).
fn librdkafka_log_level() -> RDKafkaLogLevel {
    use tracing::Level;
    if tracing::enabled!(target: "librdkafka", Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

enum WarmStart {
    /// Seeked back: drop messages at or after `resume` until the re-read range starts arriving.
    Seeking {
        resume: i64,
    },
    /// Seeked forward to a checkpoint's offset: drop messages before it.
    Skipping {
        start: i64,
    },
    Done,
}

/// The consumer's `fetch.wait.max.ms` unless `properties` sets it: how long the broker may hold a
/// fetch. Kafka answers a fetch as soon as data arrives, but tansu (the broker the tests use) holds it
/// for the whole wait, which then adds to every message's latency: with librdkafka's 500 ms, event to
/// alert was ~390 ms p50 at 5,000 readings/s; with 1 ms, 6.9 ms (docs/BENCHMARKS.md). The cost is up to
/// a thousand empty fetches a second per broker while a topic is idle.
pub const DEFAULT_FETCH_WAIT_MS: &str = "1";

/// One process's consumer (the group member) and its offset bookkeeping.
pub struct KafkaReader {
    cfg: KafkaSourceConfig,
    consumer: BaseConsumer<LagContext>,
    worker: u64,
    peers: u64,
    count: u64,
    /// Next offset per partition read in the current (not yet sealed) epoch.
    current: BTreeMap<Partition, i64>,
    /// Sealed epochs and the next offsets they read, oldest first.
    pending: VecDeque<(u64, BTreeMap<Partition, i64>)>,
    /// Acknowledged next offsets not yet committed.
    committable: BTreeMap<Partition, i64>,
    last_commit: Instant,
    warm: HashMap<Partition, WarmStart>,
    floor: HashMap<Partition, i64>,
    resume: Arc<ResumePoints>,
    /// Per partition, where a restored checkpoint's state ends (the first message seeks there).
    start_at: BTreeMap<Partition, i64>,
    /// Per partition, the next offset after the last message handed to the dataflow (re-reads
    /// included), starting from `start_at`.
    positions: BTreeMap<Partition, i64>,
    /// The last message's partition (see [`KafkaReader::poll_into`]).
    last_part: Option<Partition>,
    /// Messages received in total.
    pub received: u64,
    /// Offsets committed (partitions x commits), for tests and metrics.
    pub commits: u64,
}

impl KafkaReader {
    /// Creates the consumer and subscribes it to the topics: `member` of `members` (the process
    /// index and count) makes the client id and the records' `seq` unique across the run. Create it
    /// on the thread that polls it: that thread is unparked whenever messages arrive.
    pub fn new(
        cfg: &KafkaSourceConfig,
        member: usize,
        members: usize,
        resume: Arc<ResumePoints>,
        start_at: &BTreeMap<Partition, i64>,
    ) -> anyhow::Result<KafkaReader> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("client.id", format!("egizml-{member}"))
            // Static membership: a restarted process takes its killed predecessor's place (and
            // partitions) at once, instead of waiting for the broker to evict a member that never
            // left (tansu never does: the restarted one joined as a follower and got no partition).
            .set("group.instance.id", format!("{}-{member}", cfg.group_id))
            // We commit ourselves, only acknowledged offsets.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &cfg.auto_offset_reset)
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Also the rebalance timeout: how long the coordinator waits for the members it knows to
            // rejoin. A restarted process replaces a killed one that never left the group; with
            // librdkafka's 5 minutes it would wait that long for its partitions. The feeding loop
            // polls every millisecond or so, far more often.
            .set("max.poll.interval.ms", "30000")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS)
            .set("statistics.interval.ms", STATS_INTERVAL_MS);
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        cc.set_log_level(librdkafka_log_level());
        let mut consumer: BaseConsumer<LagContext> = cc
            .create_with_context(LagContext)
            .context("cannot create the Kafka consumer")?;
        // Wake the feeding thread (a timely worker, parked between turns) as soon as messages
        // arrive, instead of at the end of its park: the park otherwise adds up to its length to
        // every message's latency. An unpark before the park makes the park return at once, so no
        // wake-up is lost.
        let feeder = std::thread::current();
        consumer.set_nonempty_callback(move || feeder.unpark());
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .with_context(|| format!("cannot subscribe to {}", cfg.topics.join(",")))?;
        Ok(KafkaReader {
            cfg: cfg.clone(),
            consumer,
            worker: member as u64,
            peers: members.max(1) as u64,
            count: 0,
            current: BTreeMap::new(),
            pending: VecDeque::new(),
            committable: BTreeMap::new(),
            last_commit: Instant::now(),
            warm: HashMap::new(),
            floor: HashMap::new(),
            resume,
            start_at: start_at.clone(),
            positions: start_at.clone(),
            last_part: None,
            received: 0,
            commits: 0,
        })
    }

    /// Polls up to `max` messages (waiting at most `wait` for the first), decoding them into `out`.
    /// Returns how many messages were received.
    pub fn poll_into(
        &mut self,
        decoder: &mut Decoder,
        out: &mut Vec<Record>,
        max: usize,
        wait: Duration,
    ) -> usize {
        let mut n = 0;
        let mut timeout = wait;
        while n < max {
            let Some(res) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let msg = match res {
                Ok(m) => m,
                Err(e) => {
                    // librdkafka reconnects by itself; the error is only worth a log line.
                    tracing::warn!(error = %e, "kafka consumer");
                    crate::metrics::global().sink_error("kafka_source");
                    break;
                }
            };
            // Consecutive messages mostly come from one partition: reuse its key rather than
            // allocate one per message.
            if !matches!(&self.last_part, Some((t, p)) if *p == msg.partition() && t == msg.topic())
            {
                self.last_part = Some((msg.topic().to_string(), msg.partition()));
            }
            let part = self.last_part.as_ref().expect("set above");
            let offset = msg.offset();
            let admitted = admit(
                &self.consumer,
                &self.cfg,
                &mut self.warm,
                &mut self.floor,
                &self.resume,
                self.start_at.get(part).copied(),
                part,
                offset,
            );
            if !admitted {
                continue;
            }
            if !self.positions.contains_key(part) {
                tracing::debug!(topic = %part.0, partition = part.1, offset, "kafka partition: first message");
                self.positions.insert(part.clone(), offset);
            }
            let pos = self.positions.get_mut(part).expect("inserted above");
            if *pos != offset {
                // Not where this consumer's last message of the partition left off: it was
                // (re)assigned the partition and starts at the group's committed offset.
                tracing::debug!(topic = %part.0, partition = part.1, from = *pos, to = offset, "kafka partition position moved");
            }
            *pos = (*pos).max(offset + 1);
            n += 1;
            self.received += 1;
            self.count += 1;
            let seq = self.count * self.peers + self.worker;
            let origin = Origin::Kafka {
                topic: Name::from(part.0.as_str()),
                partition: part.1,
                offset,
            };
            let replayed = self.resume.is_replayed(&origin);
            let mut record = decode_record(decoder, msg.payload().unwrap_or(b""), seq, origin);
            if let Record::Point(p, _) = &mut record {
                // Re-read for state only: the engine learns from it without alerting, so its alert
                // policy (dedup, rate limit) stays as it was when these readings were first processed.
                p.learn_only = replayed;
            }
            // A malformed message re-read for state was dead-lettered when first read.
            if !(replayed && matches!(record, Record::Dead(_))) {
                out.push(record);
            }
            if self.floor.get(part).is_none_or(|&f| offset + 1 > f) {
                match self.current.get_mut(part) {
                    Some(next) => *next = (*next).max(offset + 1),
                    None => {
                        self.current.insert(part.clone(), offset + 1);
                    }
                }
            }
        }
        n
    }

    /// Per partition, the next offset after the last message handed to the dataflow (what a
    /// checkpoint of the state records).
    pub fn positions(&self) -> &BTreeMap<Partition, i64> {
        &self.positions
    }

    /// Seals the offsets read so far under `epoch` (the epoch their records were sent in).
    pub fn seal(&mut self, epoch: u64) {
        if self.current.is_empty() {
            return;
        }
        let cur = std::mem::take(&mut self.current);
        match self.pending.back_mut() {
            Some((e, offsets)) if *e == epoch => {
                for (p, o) in cur {
                    let x = offsets.entry(p).or_insert(0);
                    *x = (*x).max(o);
                }
            }
            _ => self.pending.push_back((epoch, cur)),
        }
    }

    /// Marks every epoch below `watermark` acknowledged by the sinks.
    pub fn acknowledge(&mut self, watermark: u64) {
        while let Some((epoch, _)) = self.pending.front() {
            if *epoch >= watermark {
                break;
            }
            let (_, offsets) = self.pending.pop_front().expect("front");
            for (p, o) in offsets {
                let x = self.committable.entry(p).or_insert(0);
                *x = (*x).max(o);
            }
        }
    }

    /// Whether the group has assigned this consumer any partition.
    pub fn has_assignment(&self) -> bool {
        self.consumer.assignment().is_ok_and(|tpl| tpl.count() > 0)
    }

    /// Whether every sealed epoch has been acknowledged.
    pub fn all_acknowledged(&self) -> bool {
        self.pending.is_empty() && self.current.is_empty()
    }

    /// Commits acknowledged offsets if the interval has passed (or `force`, synchronously).
    pub fn commit(&mut self, force: bool) {
        if self.committable.is_empty()
            || (!force
                && self.last_commit.elapsed() < Duration::from_millis(self.cfg.commit_interval_ms))
        {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(self.committable.len());
        for ((topic, partition), offset) in &self.committable {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %e, "kafka offset");
            }
        }
        let mode = if force {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.commits += self.committable.len() as u64;
                tracing::debug!(offsets = ?self.committable, "committed");
                self.committable.clear();
            }
            // Kept for the next attempt; a lost commit only means re-reading (at-least-once).
            Err(e) => tracing::warn!(error = %e, "kafka commit failed"),
        }
        self.last_commit = Instant::now();
    }
}

/// Warm start: decides whether a message is processed, seeking (to the checkpoint's offset `start`,
/// or back `warm_start_messages`) on a partition's first one.
#[allow(clippy::too_many_arguments)]
fn admit(
    consumer: &BaseConsumer<LagContext>,
    cfg: &KafkaSourceConfig,
    warm: &mut HashMap<Partition, WarmStart>,
    floor: &mut HashMap<Partition, i64>,
    resume: &ResumePoints,
    start: Option<i64>,
    part: &Partition,
    offset: i64,
) -> bool {
    match warm.get(part) {
        Some(WarmStart::Done) => true,
        Some(WarmStart::Skipping { start }) => {
            if offset >= *start {
                warm.insert(part.clone(), WarmStart::Done);
                true
            } else {
                false
            }
        }
        Some(WarmStart::Seeking { resume }) => {
            if offset < *resume {
                warm.insert(part.clone(), WarmStart::Done);
                true
            } else {
                false
            }
        }
        None => {
            warm.insert(part.clone(), WarmStart::Done);
            // Offsets before the first one read were committed: never commit below it.
            floor.insert(part.clone(), offset);
            if let Some(start) = start.filter(|&s| s != offset) {
                return seek_to_checkpoint(consumer, warm, floor, resume, part, offset, start);
            }
            if start.is_some() {
                return true;
            }
            let back = cfg.warm_start_messages;
            if back == 0 || offset == 0 {
                return true;
            }
            let low = consumer
                .fetch_watermarks(&part.0, part.1, Duration::from_secs(5))
                .map(|(low, _)| low)
                .unwrap_or(offset);
            let start = (offset - back).max(low);
            if start >= offset {
                return true;
            }
            match consumer.seek(
                &part.0,
                part.1,
                Offset::Offset(start),
                Duration::from_secs(5),
            ) {
                Ok(()) => {
                    tracing::info!(topic = %part.0, partition = part.1, from = start, resume = offset, "warm start: re-reading for state");
                    resume.set(part.clone(), offset);
                    warm.insert(part.clone(), WarmStart::Seeking { resume: offset });
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "warm start seek failed; starting cold");
                    true
                }
            }
        }
    }
}

/// A partition's first message is at `offset` (its committed position) and the restored state ends
/// at `start`: seek there. Back: the messages up to `offset` are re-read for state only (their
/// outputs were acknowledged before). Forward: the checkpoint holds the state of the messages up to
/// `start`, whose outputs were acknowledged before it completed (the commit lagged behind).
fn seek_to_checkpoint(
    consumer: &BaseConsumer<LagContext>,
    warm: &mut HashMap<Partition, WarmStart>,
    floor: &mut HashMap<Partition, i64>,
    resume: &ResumePoints,
    part: &Partition,
    offset: i64,
    start: i64,
) -> bool {
    let timeout = Duration::from_secs(5);
    if let Err(e) = consumer.seek(&part.0, part.1, Offset::Offset(start), timeout) {
        tracing::warn!(error = %e, topic = %part.0, partition = part.1, checkpoint = start, committed = offset, "cannot seek to the checkpoint's offset; reading on from the committed one");
        return true;
    }
    tracing::info!(topic = %part.0, partition = part.1, checkpoint = start, committed = offset, "seeking to the checkpoint's offset");
    if start < offset {
        resume.set(part.clone(), offset);
        warm.insert(part.clone(), WarmStart::Seeking { resume: offset });
    } else {
        floor.insert(part.clone(), start);
        warm.insert(part.clone(), WarmStart::Skipping { start });
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> Origin {
        Origin::Kafka {
            topic: Name::from(topic),
            partition,
            offset,
        }
    }

    #[test]
    fn only_offsets_below_their_partitions_resume_point_are_replayed() {
        let resume = ResumePoints::default();
        assert!(
            !resume.is_replayed(&at("t", 0, 0)),
            "nothing is replayed before a warm start"
        );
        resume.set(("t".to_string(), 0), 10);
        resume.set(("t".to_string(), 1), 3);
        assert!(resume.is_replayed(&at("t", 0, 9)));
        assert!(
            !resume.is_replayed(&at("t", 0, 10)),
            "the resume offset itself is new"
        );
        assert!(resume.is_replayed(&at("t", 1, 2)));
        assert!(
            !resume.is_replayed(&at("t", 1, 5)),
            "each partition has its own point"
        );
        assert!(
            !resume.is_replayed(&at("t", 2, 0)),
            "a partition without a point"
        );
        assert!(!resume.is_replayed(&at("u", 0, 0)), "another topic");
        assert!(
            !resume.is_replayed(&Origin::Line { line: 1 }),
            "not from Kafka"
        );
    }
}
