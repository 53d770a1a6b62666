use super::FileStop;

#[test]
fn a_stopped_file_run_reads_a_prefix_of_whole_chunks() {
    // Two workers, each reading every chunk; worker 0 admits chunk 0, then worker 1 runs ahead to 2.
    let mut s = FileStop::default();
    for chunk in [0, 0, 1, 2] {
        assert!(s.admit(chunk, false));
    }
    // Worker 0 sees the stop before chunk 1: worker 1 has started chunks up to 2, so worker 0 still
    // reads 1 and 2 (every worker reads the same chunks), and no worker reads 3.
    assert!(s.admit(1, true));
    assert_eq!(s.stop_at, Some(3));
    assert!(s.admit(2, true));
    assert!(!s.admit(3, true));
    assert!(!s.admit(3, false));
    assert_eq!(s.stop_at, Some(3), "set once");
}

#[test]
fn a_stop_before_any_chunk_reads_nothing() {
    let mut s = FileStop::default();
    assert!(!s.admit(0, true));
    assert!(!s.admit(1, false));
}

#[test]
fn a_slow_sink_slows_a_live_source_and_bounds_what_is_in_flight() {
    use crate::sources::simulator::{Simulator, SimulatorConfig};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const POINTS: u64 = 12_000;
    const CHANNEL: usize = 100;
    const IN_FLIGHT: usize = 400;
    let produced = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
    let counter = Arc::clone(&produced);
    // As fast as the channel lets it: only backpressure can hold this producer back.
    let producer = std::thread::spawn(move || {
        let mut sim = Simulator::new(SimulatorConfig {
            things: 50,
            ..SimulatorConfig::default()
        });
        for _ in 0..POINTS {
            tx.send(sim.next_point()).expect("pipeline receives");
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    // How far the producer is ahead of the sink: readings handed to the source's channel.
    let sink = crate::testkit::SlowSink::new(std::time::Duration::from_millis(3), move || {
        produced.load(Ordering::SeqCst)
    });
    let progress = sink.progress();
    let opts = super::RunOptions {
        workers: 2,
        emit_scores: true,
        max_in_flight: IN_FLIGHT,
        ..super::RunOptions::default()
    };
    let flow = Arc::clone(&opts.flow);
    let cfg = Arc::new(crate::config::DataflowConfig::default());
    let rules = crate::rules::RulesHandle::fixed(crate::rules::RuleSet::empty());
    let report = super::run(cfg, rules, super::Input::Live(rx), Box::new(sink), opts).unwrap();
    producer.join().unwrap();
    // Nothing lost: every reading reached the sink.
    assert_eq!(report.counters.points, POINTS);
    assert_eq!(progress.written.load(Ordering::SeqCst), POINTS);
    assert_eq!(flow.read.load(Ordering::SeqCst), POINTS);
    assert_eq!(flow.processed.load(Ordering::SeqCst), POINTS);
    // At every write the source was at most the in-flight bound (plus the channel, which the
    // producer fills before it blocks) ahead of the sink: it read at the sink's rate.
    let ahead = progress.max_ahead.load(Ordering::SeqCst);
    assert!(
        ahead <= (IN_FLIGHT + CHANNEL) as u64,
        "source ran {ahead} readings ahead of the sink (bound {})",
        IN_FLIGHT + CHANNEL
    );
    // And it was the bound that held it: the producer filled what the bound allows.
    assert!(ahead >= IN_FLIGHT as u64 / 2, "only {ahead} ahead");
}

/// Runs `points` through one engine of the dataflow file `flow` (with its rules).
fn engine_after(flow: &str, points: &[crate::event::Point]) -> (super::Engine, usize) {
    use crate::rules::{RuleSet, RulesHandle};
    let cfg = crate::config::DataflowConfig::load(std::path::Path::new(flow)).expect("dataflow");
    let rules = RuleSet::load(cfg.rules.as_deref().expect("a rules file")).expect("rules");
    let mut engine = super::Engine::new(std::sync::Arc::new(cfg), RulesHandle::fixed(rules), false);
    let mut out = Vec::new();
    for p in points {
        engine.process(super::Record::Point(p.clone(), 0), 0, &mut out);
    }
    let alerts = out
        .iter()
        .filter(|(_, o)| matches!(o, super::Output::Alert(_)))
        .count();
    (engine, alerts)
}

#[test]
fn a_thing_without_per_thing_models_takes_under_1_kib() {
    // Past the warm-up and with full windows, and with faults (so rules and the policy hold state);
    // then each thing's last reading repeated twice, 400 s and 401 s later, when every alert window
    // has closed.
    // Simulated fleet telemetry (13 features per thing: 10 sensors and 3 derived ones).
    let mut points = crate::checkpoint::tests::readings(12, 400, 3);
    let end = points.iter().map(|p| p.ts).max().expect("readings");
    // Each thing's last healthy reading (label 0), so the repeats are normal.
    let mut last: Vec<crate::event::Point> = Vec::new();
    for p in points.iter().rev().filter(|p| p.label == Some(0)) {
        if !last.iter().any(|l| l.thing_id == p.thing_id) {
            last.push(p.clone());
        }
    }
    assert_eq!(last.len(), 12);
    for dt in [400_000, 401_000] {
        for p in &mut last {
            p.ts = end + dt;
            p.seq = points.len() as u64 + 1;
            points.push(p.clone());
        }
    }
    let (compact, alerts) = engine_after("dataflows/compact.yaml", &points);
    assert!(alerts > 0, "the faults alert");
    let (default, _) = engine_after("dataflows/default.yaml", &points);
    assert_eq!(compact.things(), 12);
    let ids: std::collections::BTreeSet<&str> =
        points.iter().map(|p| p.thing_id.as_str()).collect();
    assert_eq!(ids.len(), 12);
    let mut largest = 0;
    for id in ids {
        let c = compact.thing_footprint(id).expect("known thing");
        let d = default.thing_footprint(id).expect("known thing");
        println!(
            "{id}: compact {} {c:?}; default {} {d:?}",
            c.total(),
            d.total()
        );
        // Ovens: 10 sensors and 3 derived features; mixers 12, conveyors 11 features.
        assert!((11..=13).contains(&c.features), "{id}: {c:?}");
        if c.features == 13 {
            largest = largest.max(c.total());
        }
        assert!(c.total() < 1024, "{id}: {} bytes: {c:?}", c.total());
        // The alert policy's state exists only while a dedup, rate-limit or burst window of the
        // thing is open (a few minutes after an alert).
        assert_eq!((c.model, c.sensor_faults, c.policy), (0, 0, 0), "{c:?}");
        // 32 bytes per feature, sized exactly; rule counters only (their resolution is shared).
        assert_eq!(c.stats, c.features * 32, "{c:?}");
        assert!(c.rules <= 4 * 16, "{c:?}");
        // Values, previous values and presence bytes in one allocation; the struct in mimalloc's
        // 128-byte size class (issue 7: each allocation rounds up to a class).
        assert_eq!(
            c.values,
            (2 * c.features + c.features.div_ceil(8)) * 8,
            "{c:?}"
        );
        assert!(c.state <= 128, "{c:?}");
        // The default keeps windows, the online model and sensor-fault windows: over 10x more.
        assert!(d.total() > 10 * c.total(), "{id}: {d:?} vs {c:?}");
        // A ring of 60 samples per feature (plus a sorted copy while a feature's order statistics
        // are being asked for, see detectors::window).
        assert!(d.stats > c.features * 60 * 8, "{d:?}");
        // The online model's covariance and Cholesky factor: two packed triangles of 8-byte floats.
        assert!(d.model > (c.features - 1) * c.features * 8, "{d:?}");
    }
    assert!(largest > 13 * 32, "no 13-feature thing: {largest}");
    // An oven: struct 128, values 224, statistics 416, rule counters 40 (949 before issue 7's work).
    assert!(largest <= 808, "{largest}");
}

/// Grouping an epoch by thing gives exactly the order of sorting it by `(route, seq)`, for records in
/// input order (the counting sort) and out of it (the fallback), dead letters and repeated `seq`s
/// included.
#[test]
fn group_by_thing_orders_like_sorting_by_route_then_seq() {
    use super::engine::Record;
    use crate::decode::DeadLetter;
    use crate::event::{Name, Origin, Point};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(7);
    let record = |seq: u64, thing: u32, tag: u64, dead: bool| {
        if dead {
            Record::Dead(DeadLetter {
                reason: "bad_json".into(),
                detail: String::new(),
                raw: Vec::new(),
                seq,
                origin: Origin::None,
            })
        } else {
            Record::Point(
                Point {
                    thing_id: Name::from(format!("thing-{thing}")),
                    equipment_type: Name::from("oven"),
                    ts: 0,
                    values: vec![(Name::from("x"), 1.0)],
                    label: None,
                    seq,
                    origin: Origin::None,
                    learn_only: false,
                },
                tag,
            )
        }
    };
    let key = |r: &Record| match r {
        Record::Point(p, tag) => (p.thing_id.to_string(), p.seq, *tag),
        Record::Dead(d) => (String::new(), d.seq, u64::MAX),
    };
    for (n, things, sorted) in [
        (10, 3, true),
        (2000, 50, true),
        (5000, 700, true),
        (3000, 40, false),
        (6000, 700, false),
    ] {
        let mut seq = 0;
        let records: Vec<Record> = (0..n)
            .map(|tag| {
                // Repeats of a seq (a re-delivered message) keep their input order.
                if rng.random_range(0..10) > 0 {
                    seq += 1;
                }
                let s = if sorted { seq } else { rng.random_range(0..n) };
                record(
                    s,
                    rng.random_range(0..things),
                    tag,
                    rng.random_range(0..50) == 0,
                )
            })
            .collect();
        let mut want: Vec<Record> = records.clone();
        want.sort_by_cached_key(|r| (super::route(r), r.seq()));
        let got = super::group_by_thing(records);
        let (want, got): (Vec<_>, Vec<_>) = (
            want.iter().map(key).collect(),
            got.iter().map(key).collect(),
        );
        assert_eq!(got.len() as u64, n);
        assert_eq!(got, want, "n {n}, sorted {sorted}");
    }
}

/// After a rebalance the old member's in-flight messages of a partition can arrive after the new
/// member's re-reads of them (and its later ones): each worker keeps every offset of its things
/// exactly once, whatever the interleaving, with dead letters and many things per worker (a worker
/// sees only its own things' offsets, so they never form contiguous runs).
#[test]
fn kafka_offsets_from_two_members_interleaved_are_deduplicated_without_loss() {
    use crate::event::{Name, Origin, Point};
    use crate::pipeline::Record;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let record = |offset: i64, thing: Option<u32>| {
        let origin = Origin::Kafka {
            topic: "t".into(),
            partition: 3,
            offset,
        };
        match thing {
            Some(t) => Record::Point(
                Point {
                    thing_id: Name::from(format!("thing-{t}").as_str()),
                    equipment_type: Name::new("oven"),
                    ts: 0,
                    values: Vec::new(),
                    label: None,
                    seq: offset as u64,
                    origin,
                    learn_only: false,
                },
                0,
            ),
            None => Record::Dead(crate::decode::DeadLetter {
                reason: "bad".into(),
                detail: String::new(),
                raw: Vec::new(),
                seq: offset as u64,
                origin,
            }),
        }
    };
    let offset_of = |r: &Record| match r {
        Record::Point(p, _) => p.seq as i64,
        Record::Dead(d) => d.seq as i64,
    };
    for round in 0..50 {
        let (n, workers) = (rng.random_range(50..400), rng.random_range(1..5u64));
        // Offset -> thing (None: a malformed message).
        let things: Vec<Option<u32>> = (0..n)
            .map(|_| (rng.random_range(0..20) > 0).then(|| rng.random_range(0..30)))
            .collect();
        // The old member read up to `read`; everything below `commit` was processed; the new member
        // re-reads from `commit` to the end.
        let read = rng.random_range(0..=n);
        let commit = rng.random_range(0..=read);
        let worker_of = |r: &Record| (super::route(r) % workers) as usize;
        let mut seen: Vec<super::KafkaSeen> = (0..workers).map(|_| Default::default()).collect();
        let mut kept: Vec<Vec<i64>> = vec![Vec::new(); workers as usize];
        let mut deliver = |r: Record| {
            let w = worker_of(&r);
            if !seen[w].is_duplicate(&r) {
                kept[w].push(offset_of(&r));
            }
        };
        for (o, thing) in things.iter().enumerate().take(commit) {
            deliver(record(o as i64, *thing));
        }
        // Per worker, the two members' channels interleave at random; each keeps its own order.
        let mut old: Vec<Record> = (commit..read)
            .map(|o| record(o as i64, things[o]))
            .collect();
        let mut new: Vec<Record> = (commit..n).map(|o| record(o as i64, things[o])).collect();
        old.reverse();
        new.reverse();
        while !old.is_empty() || !new.is_empty() {
            let from_old = !old.is_empty() && (new.is_empty() || rng.random_range(0..2) == 0);
            let r = if from_old { old.pop() } else { new.pop() };
            deliver(r.expect("a record"));
        }
        for (w, mut got) in kept.into_iter().enumerate() {
            got.sort_unstable();
            let want: Vec<i64> = (0..n)
                .filter(|&o| worker_of(&record(o as i64, things[o])) == w)
                .map(|o| o as i64)
                .collect();
            assert_eq!(got, want, "round {round}, worker {w}: every offset once");
        }
    }
}

/// The ensemble alert's type is decided from `lead_feature` before the alert (and its explanation) is
/// built: it must name the feature the explanation puts first, ties and non-finite values included.
#[test]
fn lead_feature_is_the_explanations_first_feature() {
    use crate::event::Name;
    let names: Vec<Name> = ["voltage_a", "current_b", "current_a", "temp_zone_1", "pf"]
        .iter()
        .map(|n| Name::from(*n))
        .collect();
    // Values drawn from a small set so that ties (in absolute value) are frequent.
    let pool = [
        0.0,
        -0.0,
        0.25,
        -0.25,
        0.5,
        -0.5,
        1.0,
        f64::NAN,
        f64::INFINITY,
    ];
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
    let mut with_lead = 0;
    for _ in 0..2_000 {
        let contributions: Vec<f64> = (0..names.len())
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect();
        let ex = crate::explain::explain(names.iter().zip(contributions.iter().copied()));
        let expected = ex.top_features.first().map(|f| f.feature.as_str());
        assert_eq!(
            super::engine::lead_feature(&names, &contributions),
            expected,
            "{contributions:?}"
        );
        with_lead += usize::from(expected.is_some());
    }
    assert!(
        with_lead > 1_000,
        "the cases mostly have a lead ({with_lead})"
    );
}

#[test]
fn the_thing_read_before_decoding_is_the_decoded_one_or_none() {
    let key = memchr::memmem::Finder::new(super::THING_KEY);
    let thing = |line: &str| super::line_thing_id(line.as_bytes(), &key).map(|id| id.to_vec());
    assert_eq!(
        thing(r#"{"thing_id":"oven-1","ts":1}"#),
        Some(b"oven-1".to_vec())
    );
    assert_eq!(
        thing(r#"{"ts":1,"thing_id":"mixer 2"}"#),
        Some(b"mixer 2".to_vec())
    );
    assert_eq!(thing(r#"{"thing_id":"","ts":1}"#), Some(Vec::new()));
    // Escapes, other spellings and spacing, a cut line: not read (the line's chunk owner decodes it).
    assert_eq!(thing(r#"{"thing_id":"oven\u002d1","ts":1}"#), None);
    assert_eq!(thing(r#"{"thingId":"oven-1","ts":1}"#), None);
    assert_eq!(thing(r#"{"thing_id" : "oven-1","ts":1}"#), None);
    assert_eq!(thing(r#"{"thing_id":"oven-1"#), None);
    assert_eq!(thing("not json"), None);
    assert_eq!(thing(""), None);
}

#[test]
fn workers_that_route_a_files_lines_by_thing_write_what_one_worker_writes() {
    use std::sync::{Arc, Mutex};
    // 3 chunks of simulated telemetry with faults, some lines rewritten so that their thing cannot
    // be read before decoding (they take the exchange from their chunk's owner), some naming a
    // decoy thing first (read as the decoy, decoded as the real one or rejected), some malformed.
    let mut data = Vec::new();
    let sim = crate::sources::simulator::SimulatorConfig {
        things: 40,
        seed: 11,
        faults_per_1000: 6.0,
        ..Default::default()
    };
    crate::sources::simulator::write_jsonl(sim, 36_000, &mut data).unwrap();
    let text = String::from_utf8(data).unwrap();
    let mut lines: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let rest = line.strip_prefix(r#"{"thing_id":""#).expect("flat lines");
        lines.push(match i % 97 {
            1 => format!(r#"{{"thingId":"{rest}"#),
            2 => format!(r#"{{"thing_id" : "{rest}"#),
            3 => format!(r#"{{"thing_id":"\u006f{}"#, &rest[1..]),
            4 => format!(r#"{{"thing_id":"decoy-{i}",{}"#, &line[1..]),
            5 => format!(r#"{{"thing_id":"{}"#, &rest[..rest.len() / 2]),
            6 => String::new(),
            _ => line.to_string(),
        });
    }
    let file: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new((lines.join("\n") + "\n").into_bytes());
    let cfg = Arc::new(crate::config::DataflowConfig {
        warmup: 100,
        ..Default::default()
    });
    let rules = crate::rules::RulesHandle::fixed(
        crate::rules::RuleSet::load(std::path::Path::new("configs/rules.yaml")).unwrap(),
    );
    let replay = |workers: usize| {
        let outputs = Arc::new(Mutex::new(Vec::new()));
        let opts = super::RunOptions {
            workers,
            emit_scores: true,
            ..super::RunOptions::default()
        };
        let sink = Box::new(crate::testkit::CollectSink(Arc::clone(&outputs)));
        let input = super::Input::Lines(Arc::clone(&file));
        let report = super::run(Arc::clone(&cfg), rules.clone(), input, sink, opts).unwrap();
        let outputs: Vec<String> = outputs
            .lock()
            .unwrap()
            .iter()
            .map(|o| format!("{o:?}"))
            .collect();
        (report.counters, outputs)
    };
    let (one, one_out) = replay(1);
    assert!(one.alerts > 5, "the faults alert: {one:?}");
    assert!(
        one.malformed_total() > 300,
        "cut lines are dead letters: {one:?}"
    );
    let messages = lines.iter().filter(|l| !l.is_empty()).count() as u64;
    assert_eq!(
        one.points + one.malformed_total(),
        messages,
        "blank lines skipped"
    );
    for workers in [2, 3] {
        let (many, many_out) = replay(workers);
        assert_eq!(many.points, one.points, "{workers} workers");
        assert_eq!(many.malformed, one.malformed, "{workers} workers");
        assert_eq!(many.alerts, one.alerts, "{workers} workers");
        assert_eq!(many_out.len(), one_out.len(), "{workers} workers");
        for (a, b) in one_out.iter().zip(&many_out) {
            assert_eq!(a, b, "{workers} workers");
        }
    }
}
