use super::*;
use crate::event::Point;
use crate::pipeline::{self, Input, RunOptions};
use crate::rules::{RuleSet, RulesHandle};
use crate::sources::simulator::{Simulator, SimulatorConfig};
use crate::testkit::CollectSink;
use std::sync::Arc;

/// Simulated fleet telemetry: faults start after each thing's 300 quiet readings, so a state learned
/// on the first part of the stream matters for the alerts of the second.
/// Simulated fleet telemetry with faults, numbered in sequence (also used by the pipeline's tests).
pub(crate) fn readings(things: usize, per_thing: usize, seed: u64) -> Vec<Point> {
    let mut sim = Simulator::new(SimulatorConfig {
        things,
        seed,
        faults_per_1000: 6.0,
        ..SimulatorConfig::default()
    });
    (0..things * per_thing)
        .map(|i| {
            let mut p = sim.next_point();
            p.seq = i as u64 + 1;
            p
        })
        .collect()
}

fn dataflow() -> Arc<DataflowConfig> {
    Arc::new(DataflowConfig {
        warmup: 100,
        ..DataflowConfig::default()
    })
}

fn rules() -> RulesHandle {
    let set = RuleSet::load(Path::new("configs/rules.yaml")).expect("default rules");
    RulesHandle::fixed(set)
}

/// Outputs as JSON lines (bit-identical floats compare equal as text: serde_json prints the shortest
/// representation that round-trips).
fn process(engine: &mut Engine, points: &[Point]) -> Vec<String> {
    let mut out = Vec::new();
    for p in points {
        engine.process(crate::pipeline::Record::Point(p.clone(), 0), 0, &mut out);
    }
    out.iter()
        .map(|(_, o)| serde_json::to_string(o).expect("output JSON"))
        .collect()
}

fn alerts(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.starts_with("{\"Alert\"")).count()
}

#[test]
fn a_restored_engine_continues_exactly_like_one_that_never_stopped() {
    let points = readings(6, 700, 7);
    let (first, second) = points.split_at(points.len() / 2);
    let (cfg, rules) = (dataflow(), rules());

    let mut never_stopped = Engine::new(Arc::clone(&cfg), rules.clone(), true);
    process(&mut never_stopped, first);
    let expected = process(&mut never_stopped, second);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker-0.bin");
    let mut before = Engine::new(Arc::clone(&cfg), rules.clone(), true);
    process(&mut before, first);
    assert_eq!(write_worker_file(&file, &before, 0, 1).unwrap(), 6);
    drop(before);

    let mut things = Vec::new();
    let rules_hash = read_worker_file(&file, |id, s| things.push((id, s))).unwrap();
    assert_eq!(things.len(), 6);
    assert!(
        things.iter().all(|(_, s)| s.learned() >= 300),
        "the warm-up counters come back"
    );
    let mut restored = Engine::new(Arc::clone(&cfg), rules.clone(), true);
    restored.restore(things, rules_hash).unwrap();
    let got = process(&mut restored, second);
    assert!(alerts(&expected) > 0, "the second half alerts");
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }

    // The comparison can tell: an engine that starts cold on the second half differs.
    let mut cold = Engine::new(cfg, rules, true);
    assert_ne!(process(&mut cold, second), expected);
}

#[test]
fn a_restored_compact_engine_continues_exactly_and_needs_the_same_statistics() {
    // Streaming statistics, no online model (dataflows/compact.yaml's state).
    let mut compact = (*dataflow()).clone();
    compact.detectors.stats.estimator = crate::detectors::stats::StatsEstimator::Streaming;
    compact.detectors.model.enabled = false;
    compact.ensemble.stats_weight = 1.0;
    compact.ensemble.model_weight = 0.0;
    compact.ensemble.threshold = 0.9;
    compact.ensemble.warning_score = 0.9;
    let (cfg, rules) = (Arc::new(compact), rules());
    let points = readings(6, 700, 5);
    let (first, second) = points.split_at(points.len() / 2);

    let mut never_stopped = Engine::new(Arc::clone(&cfg), rules.clone(), true);
    process(&mut never_stopped, first);
    let expected = process(&mut never_stopped, second);
    assert!(alerts(&expected) > 0, "the second half alerts");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker-0.bin");
    let mut before = Engine::new(Arc::clone(&cfg), rules.clone(), true);
    process(&mut before, first);
    write_worker_file(&file, &before, 0, 1).unwrap();
    let read = || {
        let mut things = Vec::new();
        let hash = read_worker_file(&file, |id, s| things.push((id, s))).unwrap();
        (things, hash)
    };
    let (things, rules_hash) = read();
    let mut restored = Engine::new(Arc::clone(&cfg), rules.clone(), true);
    restored.restore(things, rules_hash).unwrap();
    assert_eq!(process(&mut restored, second), expected);

    // Streaming estimates do not restore into window statistics: refused, naming the thing.
    let (things, rules_hash) = read();
    let mut windowed = Engine::new(dataflow(), rules, true);
    let e = windowed.restore(things, rules_hash).unwrap_err();
    assert!(e.starts_with("thing "), "{e}");
    assert!(e.contains("Streaming statistics"), "{e}");
}

fn config(dir: &Path) -> CheckpointConfig {
    CheckpointConfig {
        dir: dir.to_path_buf(),
        interval_s: 60.0,
        keep: 2,
        on_mismatch: OnMismatch::Fail,
    }
}

/// A live run over `points` (through a channel, like the simulator source) with checkpointing into
/// `dir`; returns its outputs sorted (the per-thing order is what is deterministic) and its summary.
fn live_run(
    points: &[Point],
    workers: usize,
    dir: &Path,
    cfg: &Arc<DataflowConfig>,
) -> (Vec<String>, Summary) {
    let ckpt = Checkpointing::open(&config(dir), cfg, workers).expect("checkpoint opens");
    let (tx, rx) = std::sync::mpsc::sync_channel(points.len());
    for p in points {
        tx.send(p.clone()).unwrap();
    }
    drop(tx);
    let out = Arc::new(Mutex::new(Vec::new()));
    let opts = RunOptions {
        workers,
        emit_scores: true,
        checkpoint: Some(Arc::new(ckpt)),
        ..RunOptions::default()
    };
    let report = pipeline::run(
        Arc::clone(cfg),
        rules(),
        Input::Live(rx),
        Box::new(CollectSink(Arc::clone(&out))),
        opts,
    )
    .expect("run");
    let mut lines: Vec<String> = out
        .lock()
        .unwrap()
        .iter()
        .map(|(_, o)| serde_json::to_string(o).unwrap())
        .collect();
    lines.sort();
    (lines, report.checkpoint.expect("checkpoint summary"))
}

#[test]
fn a_shutdown_checkpoint_restores_under_any_worker_count() {
    let points = readings(9, 640, 11);
    let (first, second) = points.split_at(points.len() / 2);
    let cfg = dataflow();
    let reference_dir = tempfile::tempdir().unwrap();
    let (all, _) = live_run(&points, 1, reference_dir.path(), &cfg);
    let cold = tempfile::tempdir().unwrap();
    let (cold_second, _) = live_run(second, 1, cold.path(), &cfg);
    // The reference's outputs caused by the second half: all but those of the first.
    let firsts = {
        let d = tempfile::tempdir().unwrap();
        live_run(first, 1, d.path(), &cfg).0
    };
    let mut expected = all.clone();
    for f in &firsts {
        let i = expected
            .iter()
            .position(|e| e == f)
            .expect("first-half output");
        expected.remove(i);
    }
    assert!(alerts(&expected) > 0, "the second half alerts");
    assert_ne!(cold_second, expected, "a cold start differs");

    for (before, after) in [(2, 3), (3, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (out1, s1) = live_run(first, before, dir.path(), &cfg);
        assert_eq!(out1, firsts, "{before} workers");
        assert_eq!(s1.written, 1, "the shutdown checkpoint");
        assert_eq!(s1.restored, None);
        let (out2, s2) = live_run(second, after, dir.path(), &cfg);
        assert_eq!(s2.restored, s1.last);
        assert_eq!(s2.restored_things, 9);
        assert_eq!(out2, expected, "{before} -> {after} workers");
        // Two complete checkpoints kept (`keep: 2`), nothing else.
        let left = list(dir.path()).unwrap();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().all(|(.., complete)| *complete));
    }
}

#[test]
fn periodic_checkpoints_complete_while_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dataflow();
    let ckpt = Arc::new(
        Checkpointing::open(
            &CheckpointConfig {
                interval_s: 0.05,
                ..config(dir.path())
            },
            &cfg,
            2,
        )
        .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    let points = readings(4, 200, 3);
    let feeder = std::thread::spawn(move || {
        for chunk in points.chunks(40) {
            for p in chunk {
                tx.send(p.clone()).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let opts = RunOptions {
        workers: 2,
        checkpoint: Some(Arc::clone(&ckpt)),
        ..RunOptions::default()
    };
    let out = Arc::new(Mutex::new(Vec::new()));
    let report = pipeline::run(
        cfg,
        rules(),
        Input::Live(rx),
        Box::new(CollectSink(out)),
        opts,
    )
    .unwrap();
    feeder.join().unwrap();
    let s = report.checkpoint.unwrap();
    assert!(s.written >= 3, "{s:?}");
    let left = list(dir.path()).unwrap();
    let complete: Vec<u64> = left
        .iter()
        .filter(|(.., c)| *c)
        .map(|(id, ..)| *id)
        .collect();
    assert_eq!(complete.len(), 2, "{left:?}");
    assert_eq!(complete.last(), s.last.as_ref());
    let m = read_manifest(
        &left.last().unwrap().1.join(MANIFEST),
        "default",
        &state_settings(&dataflow()),
    )
    .unwrap();
    assert!(m.shutdown);
    assert_eq!(m.things, 4);
    assert_eq!(m.files, ["worker-0.bin", "worker-1.bin"]);
}

/// Writes a one-worker checkpoint of a few things into `dir`.
fn small_checkpoint(dir: &Path) {
    let points = readings(3, 50, 5);
    let (_, s) = live_run(&points, 1, dir, &dataflow());
    assert_eq!(s.written, 1);
}

fn only_checkpoint(dir: &Path) -> PathBuf {
    let all = list(dir).unwrap();
    assert_eq!(all.len(), 1);
    all[0].1.clone()
}

#[test]
fn another_format_version_is_refused_naming_the_file_and_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    small_checkpoint(dir.path());
    let manifest = only_checkpoint(dir.path()).join(MANIFEST);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let changed = text.replace(
        &format!("\"format_version\": {FORMAT_VERSION},"),
        "\"format_version\": 99,",
    );
    assert_ne!(text, changed);
    std::fs::write(&manifest, changed).unwrap();
    let e = load_latest(&config(dir.path()), &dataflow())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.starts_with(&manifest.display().to_string()), "{e}");
    assert!(
        e.contains("checkpoint format version 99")
            && e.contains(&format!("reads version {FORMAT_VERSION}")),
        "{e}"
    );
    assert!(e.contains("on_mismatch: start_fresh"), "{e}");
    // ... or ignored when asked to.
    let fresh = CheckpointConfig {
        on_mismatch: OnMismatch::StartFresh,
        ..config(dir.path())
    };
    assert!(load_latest(&fresh, &dataflow()).unwrap().is_none());

    // A worker file of another version (the manifest being right) is refused too.
    std::fs::write(&manifest, text).unwrap();
    let file = only_checkpoint(dir.path()).join("worker-0.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let e = load_latest(&config(dir.path()), &dataflow())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.starts_with(&file.display().to_string()), "{e}");
    assert!(e.contains("version 7"), "{e}");
}

#[test]
fn other_state_settings_are_refused_naming_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    small_checkpoint(dir.path());
    let other = DataflowConfig {
        window: 30,
        ..(*dataflow()).clone()
    };
    let e = load_latest(&config(dir.path()), &other)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains(MANIFEST), "{e}");
    assert!(e.contains("window: 60 in the checkpoint, 30 now"), "{e}");
    // Thresholds are not state: the checkpoint is restored under new ones.
    let mut tuned = (*dataflow()).clone();
    tuned.ensemble.threshold = 0.9;
    tuned.policy.dedup_s = 10.0;
    let r = load_latest(&config(dir.path()), &tuned).unwrap().unwrap();
    assert_eq!(r.things.len(), 3);
}

#[test]
fn a_damaged_worker_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    small_checkpoint(dir.path());
    let file = only_checkpoint(dir.path()).join("worker-0.bin");
    let good = std::fs::read(&file).unwrap();
    for cut in [good.len() / 2, good.len() - 3] {
        std::fs::write(&file, &good[..cut]).unwrap();
        let e = load_latest(&config(dir.path()), &dataflow()).err().unwrap();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
    }
    let mut flipped = good.clone();
    let i = good.len() * 2 / 3;
    flipped[i] ^= 0x40;
    std::fs::write(&file, &flipped).unwrap();
    let e = load_latest(&config(dir.path()), &dataflow()).err().unwrap();
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
}

#[test]
fn the_format_is_guarded_by_its_version() {
    // If this fails, the bytes of a checkpoint changed (a field of ThingSnapshot or of a state type
    // it holds): bump FORMAT_VERSION, then update the hash below. (Only the hash when the fields
    // stay as they are and only the values these readings leave behind change, as when the rolling
    // window's sums were re-centred on another sample: older checkpoints still load.)
    let mut engine = Engine::new(dataflow(), RulesHandle::fixed(RuleSet::empty()), false);
    process(&mut engine, &readings(2, 150, 1));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.bin");
    write_worker_file(&file, &engine, 0, 1).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    assert_eq!(
        (FORMAT_VERSION, format!("{hash:016x}")),
        (5, "4f02d18506827e25".to_string()),
        "checkpoint bytes changed"
    );
}
