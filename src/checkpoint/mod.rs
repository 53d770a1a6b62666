//! State checkpoints: per-thing state (windows, statistics, online models, rule counters, sensor-fault
//! and alert-policy state) written periodically and on a clean shutdown, restored on start together
//! with the Kafka offsets it corresponds to, so a restart neither re-learns nor re-emits alerts.
//! See docs/CHECKPOINTS.md for the format and what a restart does.
//!
//! A checkpoint is a consistent cut at an epoch boundary B (a multiple of `interval_s` in the live
//! epochs, milliseconds since the run started): every worker's engine writes its things once its
//! frontier has passed every epoch below B and before it processes any epoch from B on; every
//! worker's source records, per Kafka partition, the next offset after the last message it sent in
//! an epoch below B. The manifest, written last (temporary file + rename), makes the checkpoint
//! complete, and only once the sinks have acknowledged every output of the epochs below B: a
//! restored state never contains a reading whose outputs were not delivered.

#[cfg(test)]
pub(crate) mod tests;

use crate::config::{at_least_one, positive_f64, DataflowConfig};
use crate::event::Name;
use crate::pipeline::engine::{Engine, ThingSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use xxhash_rust::xxh3::Xxh3;

/// Version of the checkpoint format (manifest and worker files). Bump it with any change to
/// [`ThingSnapshot`] or to anything it contains: a checkpoint of another version is refused.
pub const FORMAT_VERSION: u32 = 5;

/// First bytes of a worker file.
const MAGIC: &[u8; 8] = b"EGZMLCKP";

/// The manifest's file name inside a checkpoint's folder.
pub const MANIFEST: &str = "MANIFEST.json";

/// The boundary of the checkpoint written on a clean shutdown (after the last epoch).
pub const FINAL: u64 = u64::MAX;

/// The service's `checkpoint` section.
///
/// ```yaml
/// checkpoint:
///   dir: state/checkpoints   # relative to the service config's folder
///   interval_s: 60
///   keep: 3
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Folder of the checkpoints (one sub-folder `ckpt-<id>` each); created when missing. A relative
    /// path is resolved against the service config's folder.
    pub dir: PathBuf,
    /// Seconds between periodic checkpoints; one is also written on a clean shutdown (SIGTERM, idle
    /// stop, end of a live source).
    #[serde(default = "default_interval", deserialize_with = "positive_f64")]
    pub interval_s: f64,
    /// Complete checkpoints kept; older ones are deleted once a newer one is complete.
    #[serde(default = "default_keep", deserialize_with = "at_least_one")]
    pub keep: usize,
    /// What the newest checkpoint being of another format version, or of a dataflow whose
    /// state-shaping settings changed (window, EWMA alpha, statistics estimator, online model on/off,
    /// model half-life/shrinkage/exclude,
    /// features, sensor faults), means at start: `fail` (default: exit with an error naming the
    /// manifest and both values) or `start_fresh` (log a warning and start without state; the old
    /// checkpoints are deleted once a new one is complete).
    #[serde(default)]
    pub on_mismatch: OnMismatch,
}

fn default_interval() -> f64 {
    60.0
}

fn default_keep() -> usize {
    3
}

/// See [`CheckpointConfig::on_mismatch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    #[default]
    Fail,
    StartFresh,
}

/// Why a checkpoint cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable checkpoint: {message}")]
    Corrupt { path: String, message: String },
    #[error("{path}: checkpoint format version {found}; this egizml ({crate_version}) reads version {expected} only. Remove the checkpoint folder, or set `checkpoint.on_mismatch: start_fresh`, to start without state")]
    Version {
        path: String,
        found: u64,
        expected: u32,
        crate_version: &'static str,
    },
    #[error("{path}: the checkpoint's state was learned under other settings of dataflow `{dataflow}` ({differences}). Restore them, remove the checkpoint folder, or set `checkpoint.on_mismatch: start_fresh`, to start without state")]
    Settings {
        path: String,
        dataflow: String,
        differences: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The dataflow settings that shape the stored state: a checkpoint is restored only under the same
/// ones. Thresholds, weights, the alert policy's windows, rules, registry models and sinks may change
/// between runs (the restored state is then used with the new settings).
pub fn state_settings(cfg: &DataflowConfig) -> serde_json::Value {
    let m = &cfg.detectors.model;
    let f = &cfg.features;
    serde_json::json!({
        "window": cfg.window,
        "detectors.ewma_alpha": cfg.detectors.ewma_alpha,
        "detectors.stats.estimator": cfg.detectors.stats.estimator,
        "detectors.model.enabled": m.enabled,
        "detectors.model.half_life": m.half_life,
        "detectors.model.shrinkage": m.shrinkage,
        "detectors.model.exclude": m.exclude,
        "features.voltage_imbalance": f.voltage_imbalance,
        "features.current_imbalance": f.current_imbalance,
        "features.zone_spread": f.zone_spread,
        "features.sql": f.sql_set.as_ref().map(|s| s.sql_hash()),
        "sensor_faults": cfg.sensor_faults,
        "detectors.regimes": cfg.detectors.regimes,
    })
}

/// `key: checkpoint -> now` for every setting that differs.
fn differences(saved: &serde_json::Value, now: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let saved = saved.as_object().unwrap_or(&empty);
    let now = now.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
    let none = serde_json::Value::Null;
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (saved.get(k).unwrap_or(&none), now.get(k).unwrap_or(&none));
            (a != b).then(|| format!("{k}: {a} in the checkpoint, {b} now"))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Kafka partition's position: the next offset to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What makes a checkpoint complete (`MANIFEST.json`, written last).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Increases with every checkpoint of the folder (also across runs).
    pub id: u64,
    /// Wall-clock time the checkpoint was completed, epoch milliseconds.
    pub created_unix_ms: u64,
    /// The dataflow's name.
    pub dataflow: String,
    /// [`state_settings`] the state was learned under.
    pub state_settings: serde_json::Value,
    /// Fingerprint of the rules in force (their counters are restored only under the same rules).
    pub rules_hash: u64,
    /// Workers that wrote the state (any worker count can restore it).
    pub workers: usize,
    pub things: u64,
    /// Written on a clean shutdown (else periodic).
    pub shutdown: bool,
    /// The worker files, relative to the checkpoint's folder.
    pub files: Vec<String>,
    /// Per Kafka partition, the next offset after the last message included in the state.
    pub offsets: Vec<PartitionOffset>,
}

impl Manifest {
    /// The offsets as a map.
    pub fn offset_map(&self) -> BTreeMap<(String, i32), i64> {
        self.offsets
            .iter()
            .map(|o| ((o.topic.clone(), o.partition), o.offset))
            .collect()
    }
}

/// The header of a worker file (after the magic and the format version).
#[derive(Debug, Serialize, Deserialize)]
struct WorkerHeader {
    worker: u32,
    workers: u32,
    rules_hash: u64,
    things: u64,
}

/// Hashes what passes through (the worker files end with the xxh3 of everything before).
struct Hashing<T> {
    inner: T,
    hash: Box<Xxh3>,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            hash: Box::new(Xxh3::new()),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn bincode_io(e: bincode::ErrorKind) -> std::io::Error {
    match e {
        bincode::ErrorKind::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Writes one worker's things to `path` (a temporary file renamed into place, synced); returns how
/// many things it wrote.
pub fn write_worker_file(
    path: &Path,
    engine: &Engine,
    worker: usize,
    workers: usize,
) -> Result<u64, CheckpointError> {
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut w = Hashing::new(BufWriter::with_capacity(1 << 16, file));
    let things = engine.things() as u64;
    let header = WorkerHeader {
        worker: worker as u32,
        workers: workers as u32,
        rules_hash: engine.rules_hash(),
        things,
    };
    let write = |w: &mut Hashing<BufWriter<std::fs::File>>| -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT_VERSION.to_le_bytes())?;
        bincode::serialize_into(&mut *w, &header).map_err(|e| bincode_io(*e))?;
        engine.for_each_snapshot(|id, s| {
            bincode::serialize_into(&mut *w, &(id, s)).map_err(|e| bincode_io(*e))
        })?;
        let digest = w.hash.digest();
        w.inner.write_all(&digest.to_le_bytes())?;
        w.inner.flush()?;
        w.inner.get_ref().sync_all()
    };
    write(&mut w).map_err(io(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(things)
}

/// Reads a worker file, handing every thing to `f`; returns its rules hash.
pub fn read_worker_file(
    path: &Path,
    mut f: impl FnMut(Name, ThingSnapshot),
) -> Result<u64, CheckpointError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut r = Hashing::new(BufReader::with_capacity(1 << 16, file));
    let mut magic = [0u8; 8];
    let mut version = [0u8; 4];
    r.read_exact(&mut magic)
        .and_then(|_| r.read_exact(&mut version))
        .map_err(|e| corrupt(path, e))?;
    if &magic != MAGIC {
        return Err(corrupt(path, "not an egizml worker state file"));
    }
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path: path.display().to_string(),
            found: version.into(),
            expected: FORMAT_VERSION,
            crate_version: env!("CARGO_PKG_VERSION"),
        });
    }
    let header: WorkerHeader = bincode::deserialize_from(&mut r).map_err(|e| corrupt(path, e))?;
    for _ in 0..header.things {
        let (id, s): (Name, ThingSnapshot) =
            bincode::deserialize_from(&mut r).map_err(|e| corrupt(path, e))?;
        f(id, s);
    }
    let digest = r.hash.digest();
    let mut stored = [0u8; 8];
    r.inner
        .read_exact(&mut stored)
        .map_err(|e| corrupt(path, format!("no checksum: {e}")))?;
    if u64::from_le_bytes(stored) != digest {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(io(path))? != 0 {
        return Err(corrupt(path, "trailing bytes after the checksum"));
    }
    Ok(header.rules_hash)
}

fn checkpoint_id(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?.parse().ok()
}

/// Every `ckpt-<id>` folder of `dir`, by id, and whether it is complete (has a manifest).
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf, bool)>, CheckpointError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let Some(id) = entry.file_name().to_str().and_then(checkpoint_id) else {
            continue;
        };
        let path = entry.path();
        let complete = path.join(MANIFEST).is_file();
        out.push((id, path, complete));
    }
    out.sort_by_key(|(id, ..)| *id);
    Ok(out)
}

/// Reads and checks a manifest: its format version first (so another version's layout gives a
/// version error, not a parse error), then the state settings against `now`.
pub fn read_manifest(
    path: &Path,
    dataflow: &str,
    now: &serde_json::Value,
) -> Result<Manifest, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(path, e))?;
    let found = value["format_version"]
        .as_u64()
        .ok_or_else(|| corrupt(path, "no format_version"))?;
    if found != u64::from(FORMAT_VERSION) {
        return Err(CheckpointError::Version {
            path: path.display().to_string(),
            found,
            expected: FORMAT_VERSION,
            crate_version: env!("CARGO_PKG_VERSION"),
        });
    }
    let m: Manifest = serde_json::from_value(value).map_err(|e| corrupt(path, e))?;
    let differences = differences(&m.state_settings, now);
    if !differences.is_empty() {
        return Err(CheckpointError::Settings {
            path: path.display().to_string(),
            dataflow: dataflow.to_string(),
            differences,
        });
    }
    Ok(m)
}

/// A checkpoint read back at start.
pub struct Restored {
    pub manifest: Manifest,
    /// The checkpoint's folder.
    pub path: PathBuf,
    /// The rules hash its things were written under.
    pub rules_hash: u64,
    /// Every thing's state, in file order.
    pub things: Vec<(Name, ThingSnapshot)>,
}

/// Loads the newest complete checkpoint of `cfg.dir` for `dataflow` (None when there is none, or when
/// it does not fit and `on_mismatch` is `start_fresh`).
pub fn load_latest(
    cfg: &CheckpointConfig,
    dataflow: &DataflowConfig,
) -> Result<Option<Restored>, CheckpointError> {
    let Some((_, path, _)) = list(&cfg.dir)?.into_iter().rev().find(|(.., c)| *c) else {
        return Ok(None);
    };
    let now = state_settings(dataflow);
    let manifest = match read_manifest(&path.join(MANIFEST), &dataflow.name, &now) {
        Ok(m) => m,
        Err(e @ (CheckpointError::Version { .. } | CheckpointError::Settings { .. }))
            if cfg.on_mismatch == OnMismatch::StartFresh =>
        {
            tracing::warn!(error = %e, "checkpoint not restored (on_mismatch: start_fresh)");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut things = Vec::with_capacity(manifest.things as usize);
    let mut rules_hash = manifest.rules_hash;
    for file in &manifest.files {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(corrupt(
                &path.join(MANIFEST),
                format!("bad file name {file}"),
            ));
        }
        rules_hash = read_worker_file(&path.join(file), |id, s| things.push((id, s)))?;
    }
    if things.len() as u64 != manifest.things {
        return Err(corrupt(
            &path.join(MANIFEST),
            format!(
                "{} things in the manifest, {} in its files",
                manifest.things,
                things.len()
            ),
        ));
    }
    Ok(Some(Restored {
        manifest,
        path,
        rules_hash,
        things,
    }))
}

/// What checkpointing did in a run (part of the run's summary).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Id of the checkpoint restored at start.
    pub restored: Option<u64>,
    /// Things restored from it.
    pub restored_things: u64,
    /// Checkpoints completed by this run.
    pub written: u64,
    /// Id of the last one.
    pub last: Option<u64>,
}

/// One checkpoint being assembled.
#[derive(Default)]
struct Pending {
    id: u64,
    /// Things written per worker (None: that worker's write failed, so the checkpoint is dropped).
    engines: BTreeMap<usize, Option<u64>>,
    rules_hash: u64,
    feeds: BTreeSet<usize>,
    offsets: BTreeMap<(String, i32), i64>,
}

struct Inner {
    next_id: u64,
    /// The boundary of the last checkpoint completed.
    done_up_to: Option<u64>,
    pending: BTreeMap<u64, Pending>,
    summary: Summary,
}

/// Assembles the checkpoints of one run: engines and sources report their part of a boundary, and
/// the manifest is written once every part is in and the sinks have acknowledged the boundary.
pub struct Checkpointer {
    dir: PathBuf,
    interval_ms: u64,
    keep: usize,
    workers: usize,
    dataflow: String,
    settings: serde_json::Value,
    inner: Mutex<Inner>,
}

impl Checkpointer {
    /// Prepares checkpointing into `cfg.dir` (created when missing) for a run with `workers` workers.
    pub fn new(
        cfg: &CheckpointConfig,
        dataflow: &DataflowConfig,
        workers: usize,
    ) -> Result<Checkpointer, CheckpointError> {
        std::fs::create_dir_all(&cfg.dir).map_err(io(&cfg.dir))?;
        let next_id = list(&cfg.dir)?.last().map_or(1, |(id, ..)| id + 1);
        Ok(Checkpointer {
            dir: cfg.dir.clone(),
            interval_ms: ((cfg.interval_s * 1e3).round() as u64).max(1),
            keep: cfg.keep.max(1),
            workers: workers.max(1),
            dataflow: dataflow.name.clone(),
            settings: state_settings(dataflow),
            inner: Mutex::new(Inner {
                next_id,
                done_up_to: None,
                pending: BTreeMap::new(),
                summary: Summary::default(),
            }),
        })
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// The newest boundary at or below epoch `t`.
    pub fn boundary_at_or_below(&self, t: u64) -> u64 {
        t - t % self.interval_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The folder of `boundary`'s checkpoint (assigning it an id); None for a superseded boundary.
    fn folder(&self, boundary: u64) -> Option<PathBuf> {
        let mut inner = self.lock();
        if inner.done_up_to.is_some_and(|d| boundary <= d) {
            return None;
        }
        let id = match inner.pending.get(&boundary) {
            Some(p) => p.id,
            None => {
                let id = inner.next_id;
                inner.next_id += 1;
                inner.pending.insert(
                    boundary,
                    Pending {
                        id,
                        ..Pending::default()
                    },
                );
                id
            }
        };
        Some(self.dir.join(format!("ckpt-{id:010}")))
    }

    /// Records the restored checkpoint in the summary.
    pub fn restored(&self, r: &Restored) {
        let mut inner = self.lock();
        inner.summary.restored = Some(r.manifest.id);
        inner.summary.restored_things = r.things.len() as u64;
    }

    /// Writes `engine`'s things as worker `worker`'s part of `boundary`. A failure is logged and
    /// drops this checkpoint only (the service goes on; the next one is tried as usual).
    pub fn write_engine(&self, boundary: u64, worker: usize, engine: &Engine) {
        let started = std::time::Instant::now();
        let Some(folder) = self.folder(boundary) else {
            return;
        };
        let path = folder.join(format!("worker-{worker}.bin"));
        let written = std::fs::create_dir_all(&folder)
            .map_err(io(&folder))
            .and_then(|_| write_worker_file(&path, engine, worker, self.workers));
        let things = match written {
            Ok(n) => {
                tracing::debug!(
                    worker,
                    boundary,
                    things = n,
                    ms = started.elapsed().as_millis() as u64,
                    "checkpoint: worker state written"
                );
                Some(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint: cannot write worker state");
                None
            }
        };
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(&boundary) {
            p.engines.insert(worker, things);
            p.rules_hash = engine.rules_hash();
        }
    }

    /// Records worker `worker`'s source positions for `boundary`: every message before them was sent
    /// in an epoch below it.
    pub fn feed_reached(
        &self,
        boundary: u64,
        worker: usize,
        offsets: &BTreeMap<(String, i32), i64>,
    ) {
        if self.folder(boundary).is_none() {
            return;
        }
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(&boundary) {
            p.feeds.insert(worker);
            for (k, &o) in offsets {
                let x = p.offsets.entry(k.clone()).or_insert(o);
                *x = (*x).max(o);
            }
        }
    }

    /// Records a source that advanced from epoch `from` to `to`: its positions hold for every
    /// boundary crossed.
    pub fn feed_advanced(
        &self,
        from: u64,
        to: u64,
        worker: usize,
        offsets: &BTreeMap<(String, i32), i64>,
    ) {
        let mut b = self.boundary_at_or_below(from) + self.interval_ms;
        while b <= to {
            self.feed_reached(b, worker, offsets);
            b += self.interval_ms;
        }
    }

    /// Completes the newest checkpoint whose parts are all in, if the sinks have acknowledged every
    /// epoch below its boundary (`acked`), and deletes what it supersedes.
    pub fn complete(&self, acked: u64) {
        let mut inner = self.lock();
        let ready = inner
            .pending
            .iter()
            .filter(|(&b, p)| {
                b <= acked && p.engines.len() == self.workers && p.feeds.len() == self.workers
            })
            .map(|(&b, _)| b)
            .next_back();
        let Some(boundary) = ready else {
            return;
        };
        let Some(p) = inner.pending.remove(&boundary) else {
            return;
        };
        // Every earlier boundary is superseded; parts of them arriving late are ignored.
        inner.pending.retain(|&b, _| b > boundary);
        inner.done_up_to = Some(boundary);
        if p.engines.values().any(Option::is_none) {
            tracing::warn!(
                id = p.id,
                "checkpoint dropped: a worker could not write its state"
            );
            return;
        }
        let id = p.id;
        let things = p.engines.values().map(|n| n.unwrap_or(0)).sum();
        let folder = self.dir.join(format!("ckpt-{id:010}"));
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            dataflow: self.dataflow.clone(),
            state_settings: self.settings.clone(),
            rules_hash: p.rules_hash,
            workers: self.workers,
            things,
            shutdown: boundary == FINAL,
            files: p
                .engines
                .keys()
                .map(|w| format!("worker-{w}.bin"))
                .collect(),
            offsets: p
                .offsets
                .into_iter()
                .map(|((topic, partition), offset)| PartitionOffset {
                    topic,
                    partition,
                    offset,
                })
                .collect(),
        };
        match write_manifest(&folder, &manifest) {
            Ok(()) => {
                tracing::info!(id, things, shutdown = manifest.shutdown, offsets = ?manifest.offsets, "checkpoint complete");
                inner.summary.written += 1;
                inner.summary.last = Some(id);
                let pending: BTreeSet<u64> = inner.pending.values().map(|p| p.id).collect();
                drop(inner);
                if let Err(e) = prune(&self.dir, self.keep, &pending) {
                    tracing::warn!(error = %e, "checkpoint: cannot delete old checkpoints");
                }
            }
            Err(e) => tracing::error!(error = %e, "checkpoint: cannot write the manifest"),
        }
    }

    /// What checkpointing did so far.
    pub fn summary(&self) -> Summary {
        self.lock().summary.clone()
    }
}

/// Writes `folder/MANIFEST.json` atomically (temporary file, sync, rename, sync of the folder).
fn write_manifest(folder: &Path, m: &Manifest) -> Result<(), CheckpointError> {
    let path = folder.join(MANIFEST);
    let tmp = folder.join(format!("{MANIFEST}.tmp"));
    let text = serde_json::to_vec_pretty(m).map_err(|e| corrupt(&path, e))?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()
    };
    write().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Keeps the newest `keep` complete checkpoints and those still being assembled (`pending`); deletes
/// older complete ones and incomplete ones left behind (a crash, a dropped or superseded checkpoint).
fn prune(dir: &Path, keep: usize, pending: &BTreeSet<u64>) -> Result<(), CheckpointError> {
    let all = list(dir)?;
    let complete: Vec<u64> = all
        .iter()
        .filter(|(.., c)| *c)
        .map(|(id, ..)| *id)
        .collect();
    let kept: BTreeSet<u64> = complete.iter().rev().take(keep).copied().collect();
    for (id, path, _) in all {
        if kept.contains(&id) || pending.contains(&id) {
            continue;
        }
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// Checkpointing of one run: the checkpoint restored at start (taken by the pipeline) and the writer
/// of new ones.
pub struct Checkpointing {
    pub writer: Checkpointer,
    restored: Mutex<Option<Restored>>,
}

impl Checkpointing {
    /// Loads the newest complete checkpoint of `cfg.dir` (refusing one that does not fit, see
    /// [`CheckpointConfig::on_mismatch`]) and prepares writing new ones for `workers` workers.
    pub fn open(
        cfg: &CheckpointConfig,
        dataflow: &DataflowConfig,
        workers: usize,
    ) -> Result<Checkpointing, CheckpointError> {
        let restored = load_latest(cfg, dataflow)?;
        let writer = Checkpointer::new(cfg, dataflow, workers)?;
        match &restored {
            Some(r) => {
                tracing::info!(id = r.manifest.id, path = %r.path.display(), things = r.things.len(), offsets = ?r.manifest.offsets, "restoring checkpoint");
                writer.restored(r);
            }
            None => {
                tracing::info!(dir = %cfg.dir.display(), "no checkpoint to restore: starting without state")
            }
        }
        Ok(Checkpointing {
            writer,
            restored: Mutex::new(restored),
        })
    }

    /// The restored checkpoint (once).
    pub fn take_restored(&self) -> Option<Restored> {
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
