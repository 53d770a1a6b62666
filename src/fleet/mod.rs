//! Fleet and device summaries kept incrementally with differential dataflow.
//!
//! Two input collections feed one differential dataflow running on its own thread (so the detection
//! workers never wait for it):
//! - alerts, one record `(thing, type, severity, dominant family)` per alert; retracting an alert (a
//!   false positive, an alert aged out by retention) is the same record with diff `-1`;
//! - scores, as per-epoch per-thing aggregates: the caller hands over one slice of scores per thing and
//!   epoch, which enters as `(thing, score quantum)` records with their multiplicity, so the cost grows with
//!   the distinct quanta of an epoch, not with the readings.
//!
//! The dataflow arranges both by thing and keeps per-device alert counts by type and severity, counts
//! per dominant family, and the score count, mean and p95 (nearest rank over scores quantised to
//! [`SCORE_QUANTUM`]). Each committed epoch's output changes are applied to a [`FleetSnapshot`] shared
//! with the REST API (`/api/v1/devices`, `/api/v1/fleet`).

use crate::event::{Alert, Severity};
use differential_dataflow::input::Input;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

/// Scores are kept in steps of this size (the mean and p95 are exact over the quantised scores).
pub const SCORE_QUANTUM: f64 = 1e-4;

/// How many dominant families a device summary lists.
pub const TOP_FAMILIES: usize = 3;

/// An alert as the summaries see it.
type AlertKey = (String, String, u8, String);

/// One epoch's changes.
#[derive(Default)]
struct Batch {
    alerts: Vec<(AlertKey, isize)>,
    scores: Vec<((String, u32), isize)>,
}

/// Output changes of the dataflow, applied to the snapshot once an epoch is complete.
enum Change {
    Count((String, (String, u8)), isize),
    Family((String, String), isize),
    Scores(String, (i64, i64, u32)),
}

/// Per-device state mirrored from the dataflow's output.
#[derive(Clone, Debug, Default)]
struct DeviceState {
    counts: BTreeMap<(String, u8), i64>,
    families: BTreeMap<String, i64>,
    /// Score count, sum of quanta, p95 quantum.
    scores: Option<(i64, i64, u32)>,
}

/// Alerts of one type and severity on a device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertCount {
    #[serde(rename = "type")]
    pub alert_type: String,
    pub severity: String,
    pub count: i64,
}

/// How many of a device's alerts a sensor family dominated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyCount {
    pub family: String,
    pub count: i64,
}

/// One device's summary (`GET /api/v1/devices/{thing_id}`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceSummary {
    pub thing_id: String,
    pub alerts_total: i64,
    /// Alerts by severity (`info`, `warning`, `critical`).
    pub alerts_by_severity: BTreeMap<String, i64>,
    /// Alerts by type and severity, most frequent first.
    pub alert_counts: Vec<AlertCount>,
    /// Scores seen (readings scored).
    pub scores_count: i64,
    pub score_mean: Option<f64>,
    pub score_p95: Option<f64>,
    /// The families that dominated most of the device's alerts, most frequent first.
    pub dominant_families: Vec<FamilyCount>,
    /// Ranking key, higher is worse: `3·critical + warning + 0.25·info + p95 score`.
    pub risk: f64,
}

/// Fleet totals and the health ranking (`GET /api/v1/fleet`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetSummary {
    /// Epochs the summaries have absorbed.
    pub epoch: u64,
    pub devices: usize,
    pub alerts_total: i64,
    pub alerts_by_severity: BTreeMap<String, i64>,
    pub alerts_by_type: BTreeMap<String, i64>,
    pub scores_count: i64,
    pub score_mean: Option<f64>,
    /// Devices worst first: `(thing_id, risk)`.
    pub ranking: Vec<RankedDevice>,
}

/// A device's place in the fleet health ranking.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankedDevice {
    pub rank: usize,
    pub thing_id: String,
    pub risk: f64,
    pub alerts_total: i64,
    pub score_p95: Option<f64>,
}

/// The summaries as of the last completed epoch.
#[derive(Clone, Debug, Default)]
pub struct FleetSnapshot {
    epoch: u64,
    devices: HashMap<String, DeviceState>,
}

fn severity_code(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

fn severity_name(code: u8) -> &'static str {
    match code {
        0 => "info",
        1 => "warning",
        _ => "critical",
    }
}

/// The quantum a score falls in (scores are normalised to [0, 1]; out-of-range ones are clamped).
pub fn quantise(score: f64) -> u32 {
    let s = if score.is_finite() {
        score.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (s / SCORE_QUANTUM).round() as u32
}

/// The alert's dominant family: the largest share, ties to the first name; `unknown` without families.
pub fn dominant_family(alert: &Alert) -> String {
    let mut best: Option<(&String, f64)> = None;
    for (family, share) in &alert.families {
        if best.is_none_or(|(_, s)| *share > s) {
            best = Some((family, *share));
        }
    }
    best.map_or_else(|| "unknown".to_string(), |(f, _)| f.clone())
}

/// Count, mean and p95 (nearest rank) over quanta with multiplicities, sorted by quantum.
pub fn score_stats(quanta: &[(u32, i64)]) -> Option<(i64, i64, u32)> {
    let count: i64 = quanta.iter().map(|(_, n)| *n).sum();
    if count <= 0 {
        return None;
    }
    let sum: i64 = quanta.iter().map(|(q, n)| i64::from(*q) * n).sum();
    // Nearest rank: the smallest quantum with at least ceil(0.95·count) scores at or below it.
    let rank = (count.unsigned_abs() * 95).div_ceil(100) as i64;
    let mut seen = 0;
    let mut p95 = 0;
    for (q, n) in quanta {
        seen += n;
        p95 = *q;
        if seen >= rank {
            break;
        }
    }
    Some((count, sum, p95))
}

impl DeviceState {
    fn summary(&self, thing_id: &str) -> DeviceSummary {
        let mut by_severity = BTreeMap::new();
        let mut alert_counts = Vec::new();
        for ((kind, sev), n) in &self.counts {
            *by_severity
                .entry(severity_name(*sev).to_string())
                .or_insert(0) += n;
            alert_counts.push(AlertCount {
                alert_type: kind.clone(),
                severity: severity_name(*sev).to_string(),
                count: *n,
            });
        }
        alert_counts.sort_by_key(|c| std::cmp::Reverse(c.count));
        let mut families: Vec<FamilyCount> = self
            .families
            .iter()
            .map(|(f, n)| FamilyCount {
                family: f.clone(),
                count: *n,
            })
            .collect();
        families.sort_by_key(|f| std::cmp::Reverse(f.count));
        families.truncate(TOP_FAMILIES);
        let (scores_count, score_mean, score_p95) = match self.scores {
            Some((n, sum, p95)) => (
                n,
                Some(sum as f64 / n as f64 * SCORE_QUANTUM),
                Some(f64::from(p95) * SCORE_QUANTUM),
            ),
            None => (0, None, None),
        };
        let sev = |name: &str| by_severity.get(name).copied().unwrap_or(0) as f64;
        let risk =
            3.0 * sev("critical") + sev("warning") + 0.25 * sev("info") + score_p95.unwrap_or(0.0);
        DeviceSummary {
            thing_id: thing_id.to_string(),
            alerts_total: self.counts.values().sum(),
            alerts_by_severity: by_severity,
            alert_counts,
            scores_count,
            score_mean,
            score_p95,
            dominant_families: families,
            risk,
        }
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.families.is_empty() && self.scores.is_none()
    }
}

impl FleetSnapshot {
    /// Epochs absorbed so far.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// One device's summary.
    pub fn device(&self, thing_id: &str) -> Option<DeviceSummary> {
        self.devices.get(thing_id).map(|d| d.summary(thing_id))
    }

    /// Every device's summary, sorted by thing id.
    pub fn devices(&self) -> Vec<DeviceSummary> {
        let mut all: Vec<DeviceSummary> = self.devices.iter().map(|(t, d)| d.summary(t)).collect();
        all.sort_by(|a, b| a.thing_id.cmp(&b.thing_id));
        all
    }

    /// Fleet totals and the full health ranking (worst first; ties by thing id).
    pub fn fleet(&self) -> FleetSummary {
        let devices = self.devices();
        let mut by_severity = BTreeMap::new();
        let mut by_type = BTreeMap::new();
        let (mut scores_count, mut score_sum) = (0i64, 0f64);
        for d in &devices {
            for (s, n) in &d.alerts_by_severity {
                *by_severity.entry(s.clone()).or_insert(0) += n;
            }
            for c in &d.alert_counts {
                *by_type.entry(c.alert_type.clone()).or_insert(0) += c.count;
            }
            if let Some(mean) = d.score_mean {
                scores_count += d.scores_count;
                score_sum += mean * d.scores_count as f64;
            }
        }
        let mut order: Vec<&DeviceSummary> = devices.iter().collect();
        order.sort_by(|a, b| b.risk.total_cmp(&a.risk).then(a.thing_id.cmp(&b.thing_id)));
        let ranking = order
            .iter()
            .enumerate()
            .map(|(i, d)| RankedDevice {
                rank: i + 1,
                thing_id: d.thing_id.clone(),
                risk: d.risk,
                alerts_total: d.alerts_total,
                score_p95: d.score_p95,
            })
            .collect();
        FleetSummary {
            epoch: self.epoch,
            devices: devices.len(),
            alerts_total: by_severity.values().sum(),
            alerts_by_severity: by_severity,
            alerts_by_type: by_type,
            scores_count,
            score_mean: (scores_count > 0).then(|| score_sum / scores_count as f64),
            ranking,
        }
    }

    fn apply(&mut self, mut changes: Vec<Change>) {
        // Retractions first, so a value replaced within one epoch ends up as the new one.
        let negative = |c: &Change| match c {
            Change::Count(_, d) | Change::Family(_, d) => *d < 0,
            Change::Scores(..) => false,
        };
        changes.sort_by_key(|c| !negative(c));
        for change in changes {
            match change {
                Change::Count((thing, key), n) => {
                    let d = self.devices.entry(thing.clone()).or_default();
                    if n > 0 {
                        d.counts.insert(key, n as i64);
                    } else {
                        d.counts.remove(&key);
                    }
                }
                Change::Family((thing, family), n) => {
                    let d = self.devices.entry(thing.clone()).or_default();
                    if n > 0 {
                        d.families.insert(family, n as i64);
                    } else {
                        d.families.remove(&family);
                    }
                }
                Change::Scores(thing, stats) => {
                    let d = self.devices.entry(thing).or_default();
                    d.scores = (stats.0 > 0).then_some(stats);
                }
            }
        }
        self.devices.retain(|_, d| !d.is_empty());
    }
}

/// The shared snapshot plus a signal for waiters.
type Shared = Arc<(Mutex<FleetSnapshot>, Condvar)>;

/// Feeds the summaries and reads them. Cloning shares the same dataflow.
#[derive(Clone)]
pub struct Fleet {
    tx: Arc<Mutex<Option<mpsc::Sender<Batch>>>>,
    pending: Arc<Mutex<Batch>>,
    committed: Arc<Mutex<u64>>,
    shared: Shared,
}

impl Fleet {
    /// Starts the summaries' dataflow on its own thread.
    pub fn start() -> std::io::Result<Fleet> {
        let (tx, rx) = mpsc::channel::<Batch>();
        let shared: Shared = Arc::new((Mutex::new(FleetSnapshot::default()), Condvar::new()));
        let publish = shared.clone();
        // `execute_directly` wants a `Sync` closure; the receiver is only `Send`.
        let rx = Mutex::new(rx);
        std::thread::Builder::new()
            .name("egizml-fleet".into())
            .spawn(move || {
                timely::execute_directly(move |worker| {
                    let rx = rx.into_inner().unwrap_or_else(|e| e.into_inner());
                    run(worker, rx, publish)
                })
            })?;
        Ok(Fleet {
            tx: Arc::new(Mutex::new(Some(tx))),
            pending: Arc::new(Mutex::new(Batch::default())),
            committed: Arc::new(Mutex::new(0)),
            shared,
        })
    }

    /// Adds (`diff = 1`) or retracts (`diff = -1`) an alert in the current epoch.
    pub fn alert(&self, alert: &Alert, diff: isize) {
        let key = (
            alert.thing_id.to_string(),
            alert.alert_type.clone(),
            severity_code(alert.severity),
            dominant_family(alert),
        );
        lock(&self.pending).alerts.push((key, diff));
    }

    /// Adds one thing's scores of the current epoch, aggregated to quanta before they enter the dataflow.
    pub fn scores(&self, thing_id: &str, scores: &[f64]) {
        let mut quanta: Vec<u32> = scores.iter().map(|s| quantise(*s)).collect();
        quanta.sort_unstable();
        let mut pending = lock(&self.pending);
        for run in quanta.chunk_by(|a, b| a == b) {
            pending
                .scores
                .push(((thing_id.to_string(), run[0]), run.len() as isize));
        }
    }

    /// Closes the current epoch; its changes reach the snapshot shortly after. Returns the epoch number.
    pub fn commit(&self) -> u64 {
        let batch = std::mem::take(&mut *lock(&self.pending));
        let mut committed = lock(&self.committed);
        if let Some(tx) = lock(&self.tx).as_ref() {
            if tx.send(batch).is_ok() {
                *committed += 1;
            }
        }
        *committed
    }

    /// Commits and waits until the snapshot includes everything committed so far.
    pub fn sync(&self) -> FleetSnapshot {
        let epoch = self.commit();
        let (lock_, cvar) = &*self.shared;
        let mut snap = lock_.lock().unwrap_or_else(|e| e.into_inner());
        while snap.epoch < epoch {
            snap = cvar.wait(snap).unwrap_or_else(|e| e.into_inner());
        }
        snap.clone()
    }

    /// The summaries as of the last completed epoch.
    pub fn snapshot(&self) -> FleetSnapshot {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the dataflow once it has absorbed what was committed.
    pub fn close(&self) {
        lock(&self.tx).take();
    }
}

/// Feeds a [`Fleet`] from a pipeline sink: alerts as they come, scores gathered per thing and handed
/// over once per flush (one epoch per flush), so the summaries never see single readings.
pub struct FleetFeed {
    fleet: Fleet,
    scores: HashMap<String, Vec<f64>>,
}

impl FleetFeed {
    pub fn new(fleet: Fleet) -> FleetFeed {
        FleetFeed {
            fleet,
            scores: HashMap::new(),
        }
    }

    /// Takes what the summaries use from one pipeline output.
    pub fn observe(&mut self, output: &crate::pipeline::Output) {
        use crate::pipeline::Output;
        match output {
            Output::Alert(a) => self.fleet.alert(a, 1),
            Output::Score(s) => self
                .scores
                .entry(s.thing_id.to_string())
                .or_default()
                .push(s.score),
            Output::Dead(_) | Output::Prediction(_) => {}
        }
    }

    /// Hands over the gathered scores and closes the epoch.
    pub fn flush(&mut self) {
        let _span = tracing::debug_span!("fleet_feed", things = self.scores.len()).entered();
        for (thing, scores) in self.scores.drain() {
            self.fleet.scores(&thing, &scores);
        }
        self.fleet.commit();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The summaries' dataflow: one worker, epochs numbered from 1.
fn run(worker: &mut timely::worker::Worker, rx: mpsc::Receiver<Batch>, shared: Shared) {
    let out: Rc<RefCell<Vec<Change>>> = Rc::new(RefCell::new(Vec::new()));
    let (o1, o2, o3) = (out.clone(), out.clone(), out.clone());
    let probe = timely::dataflow::ProbeHandle::<u64>::new();
    let probes = probe.clone();
    let (mut alerts_in, mut scores_in) = worker.dataflow::<u64, _, _>(move |scope| {
        let (alerts_in, alerts) = scope.new_collection::<AlertKey, isize>();
        let (scores_in, scores) = scope.new_collection::<(String, u32), isize>();
        alerts
            .clone()
            .map(|(thing, kind, sev, _)| (thing, (kind, sev)))
            .count()
            .inspect(move |((key, n), _, diff)| {
                o1.borrow_mut()
                    .push(Change::Count(key.clone(), if *diff > 0 { *n } else { -1 }))
            })
            .probe_with(&probes);
        alerts
            .map(|(thing, _, _, family)| (thing, family))
            .count()
            .inspect(move |((key, n), _, diff)| {
                o2.borrow_mut()
                    .push(Change::Family(key.clone(), if *diff > 0 { *n } else { -1 }))
            })
            .probe_with(&probes);
        scores
            .reduce(|_thing, input: &[(&u32, isize)], output| {
                let quanta: Vec<(u32, i64)> = input.iter().map(|(q, n)| (**q, *n as i64)).collect();
                if let Some(stats) = score_stats(&quanta) {
                    output.push((stats, 1isize));
                }
            })
            .inspect(move |((thing, stats), _, diff)| {
                // A retraction of old stats is followed by the insertion of the new; a lone retraction
                // (all scores gone) leaves a zero count.
                let stats = if *diff > 0 { *stats } else { (0, 0, 0) };
                o3.borrow_mut().push(Change::Scores(thing.clone(), stats));
            })
            .probe_with(&probes);
        (alerts_in, scores_in)
    });
    let mut epoch = 0u64;
    while let Ok(batch) = rx.recv() {
        for (key, diff) in batch.alerts {
            alerts_in.update(key, diff);
        }
        for (key, n) in batch.scores {
            scores_in.update(key, n);
        }
        epoch += 1;
        alerts_in.advance_to(epoch);
        scores_in.advance_to(epoch);
        alerts_in.flush();
        scores_in.flush();
        let _span = tracing::debug_span!("fleet_summaries", epoch).entered();
        while probe.less_than(&epoch) {
            worker.step();
        }
        let mut changes = std::mem::take(&mut *out.borrow_mut());
        // Score changes: within an epoch the retraction of a thing's old stats and the new stats arrive
        // in any order; keep the insertion when there is one.
        changes.sort_by_key(|c| matches!(c, Change::Scores(_, s) if s.0 > 0));
        let (lock_, cvar) = &*shared;
        let mut snap = lock_.lock().unwrap_or_else(|e| e.into_inner());
        snap.apply(changes);
        snap.epoch = epoch;
        cvar.notify_all();
    }
}

#[cfg(test)]
mod tests;
