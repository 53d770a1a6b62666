//! Operating-regime aware scoring (`detectors.regimes`) on a machine with production phases: a reading
//! that is normal for one phase but appears in another is alerted with regimes and missed without,
//! and clean multi-phase data raises no more alerts with regimes than without.

use crate::common::*;
use egizml::commands::replay::ReplayArgs;
use egizml::eval::episodes::{episodes_from_labels, event_metrics, Episode};
use egizml::event::Alert;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;

/// Production phases of the oven: (conveyor speed rpm, heater current A, zone temperature C). Loading
/// and cooling draw the same current at the same temperature; only the speed tells them from baking.
const PHASES: [(f64, f64, f64); 3] = [
    (600.0, 20.0, 160.0),
    (1200.0, 45.0, 230.0),
    (1800.0, 20.0, 160.0),
];

/// Readings per thing, and the first reading an anomaly may start at (after every warm-up).
const READINGS: usize = 4_000;
const FIRST_FAULT: usize = 800;

/// One thing's readings as flat lines with labels: phases load -> bake -> cool -> load ... (load and
/// cool 80-200 readings, bake 150-250); current and temperature follow the phase with a lag of about
/// one reading. With `faults`, about half of the baking stays after `FIRST_FAULT` get 30 readings of
/// the loading phase's current and temperature while the conveyor keeps the baking speed (label 1),
/// starting at least 70 readings into the stay (so the rolling statistics no longer hold the loading
/// phase's values and see the change too, as the default ensemble needs).
fn oven_lines(thing: &str, seed: u64, faults: bool) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let g = |rng: &mut SmallRng| -> f64 { StandardNormal.sample(rng) };
    let mut lines = Vec::with_capacity(READINGS);
    let (mut current, mut temp) = (PHASES[0].1, PHASES[0].2);
    let mut phase = 0;
    let mut i = 0;
    while i < READINGS {
        let len = if phase == 1 {
            rng.random_range(150..250)
        } else {
            rng.random_range(80..200)
        };
        let fault = if faults && phase == 1 && i >= FIRST_FAULT && rng.random_bool(0.5) {
            let start = rng.random_range(70..len - 40);
            Some(start..start + 30)
        } else {
            None
        };
        for k in 0..len.min(READINGS - i) {
            let faulty = fault.as_ref().is_some_and(|f| f.contains(&k));
            let (speed, c, t) = PHASES[phase];
            let (c, t) = if faulty {
                (PHASES[0].1, PHASES[0].2)
            } else {
                (c, t)
            };
            current += 0.7 * (c - current);
            temp += 0.7 * (t - temp);
            let values = [
                ("speed_rpm", speed + 3.0 * g(&mut rng)),
                ("current_a", current + 0.5 * g(&mut rng)),
                ("temp_zone_1", temp + 1.0 * g(&mut rng)),
                ("voltage_a", 230.0 + 0.8 * g(&mut rng)),
            ];
            let values: serde_json::Map<String, serde_json::Value> = values
                .iter()
                .map(|(n, v)| (n.to_string(), serde_json::json!((v * 1e3).round() / 1e3)))
                .collect();
            lines.push(
                serde_json::json!({"thing_id": thing, "equipment_type": "oven",
                    "ts": T0 + (i + k) as i64 * 1000, "values": values, "label": u8::from(faulty)})
                .to_string(),
            );
        }
        i += len;
        phase = (phase + 1) % PHASES.len();
    }
    lines
}

fn write_plant(dir: &Path, faults: bool) -> std::path::PathBuf {
    // Things interleaved by time, as a plant's stream arrives.
    let things: Vec<Vec<String>> = (0..4)
        .map(|k| oven_lines(&format!("oven-{k:05}"), 100 + k as u64, faults))
        .collect();
    let lines: Vec<String> = (0..READINGS)
        .flat_map(|i| things.iter().map(move |t| t[i].clone()))
        .collect();
    let path = dir.join(format!("phases-{faults}.jsonl"));
    write_lines(&path, &lines);
    path
}

/// The dataflow of the test: the embedded defaults (detectors, ensemble) with a warm-up that spans
/// every phase (so the plain model has seen them all too), no electrical derived features, a dedup
/// window shorter than the time between two episodes of a thing, the sensor-fault detector on (its
/// flatline check must not take a steady phase for a flat sensor: the tests count every alert), and
/// `regimes` when given.
fn dataflow(dir: &Path, name: &str, regimes: Option<&str>) -> std::path::PathBuf {
    let mut text = String::from(
        "name: phases\nwarmup: 600\nfeatures: {voltage_imbalance: false, current_imbalance: false, zone_spread: false}\n\
         policy: {dedup_s: 60}\n",
    );
    if let Some(r) = regimes {
        text.push_str(&format!("detectors:\n  regimes: {r}\n"));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

struct Outcome {
    alerts: Vec<Alert>,
    /// Readings the engine flagged anomalous.
    anomalous: usize,
    /// Per labelled episode, the highest score of its readings.
    episode_max: Vec<f64>,
    episodes: Vec<Episode>,
}

fn run(input: &Path, out: &Path, config: &Path) -> Outcome {
    std::fs::create_dir_all(out).unwrap();
    let args = ReplayArgs {
        config: Some(config.to_path_buf()),
        ..replay_args(input, out, 2)
    };
    let (summary, _) = run_replay(&args);
    assert_eq!(summary.points, 4 * READINGS as u64);
    let scores = read_json_lines(args.scores.as_ref().unwrap());
    let labels: Vec<(String, i64, u8, f64)> = scores
        .iter()
        .map(|s| {
            (
                s["thing_id"].as_str().unwrap().to_string(),
                s["ts"].as_i64().unwrap(),
                s["label"].as_u64().unwrap() as u8,
                s["score"].as_f64().unwrap(),
            )
        })
        .collect();
    let episodes = episodes_from_labels(labels.iter().map(|(t, ts, l, _)| (t.as_str(), *ts, *l)));
    let episode_max = episodes
        .iter()
        .map(|e| {
            labels
                .iter()
                .filter(|(t, ts, ..)| {
                    t == e.thing_id.as_str() && (e.start_ts..=e.end_ts).contains(ts)
                })
                .map(|x| x.3)
                .fold(0.0, f64::max)
        })
        .collect();
    let alerts = std::fs::read_to_string(&args.alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Outcome {
        alerts,
        anomalous: scores.iter().filter(|s| s["anomaly"] == true).count(),
        episode_max,
        episodes,
    }
}

/// The plant's telemetry (`faults` as in [`oven_lines`]) run three ways: without regimes, with
/// regimes by conveyor speed, and with regimes over every feature.
fn run_variants(dir: &Path, faults: bool) -> (Outcome, Outcome, Outcome) {
    let input = write_plant(dir, faults);
    let run_as = |name: &str, regimes: Option<&str>| {
        run(&input, &dir.join(name), &dataflow(dir, name, regimes))
    };
    (
        run_as("plain", None),
        run_as("speed", Some("{by: [speed_rpm]}")),
        run_as("all", Some("{}")),
    )
}

#[test]
fn a_reading_normal_for_another_phase_is_alerted_within_its_regime_and_missed_without() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, by_speed, all) = run_variants(dir.path(), true);
    let episodes = &plain.episodes;
    assert!(episodes.len() >= 12, "episodes: {}", episodes.len());
    for o in [&by_speed, &all] {
        assert_eq!(&o.episodes, episodes);
    }
    let m_plain = event_metrics(&plain.alerts, episodes, 5_000);
    let m_speed = event_metrics(&by_speed.alerts, episodes, 5_000);
    let m_all = event_metrics(&all.alerts, episodes, 5_000);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "plain: {m_plain:?} mean episode max score {:.3}\nby speed: {m_speed:?} {:.3}\nall features: {m_all:?} {:.3}",
        mean(&plain.episode_max),
        mean(&by_speed.episode_max),
        mean(&all.episode_max)
    );
    // Within the regime every wrong-phase episode is alerted, and nothing else is.
    assert_eq!(m_speed.detected, m_speed.episodes, "{m_speed:?}");
    assert_eq!(m_speed.true_alerts, m_speed.alerts, "{m_speed:?}");
    assert_eq!(m_all.detected, m_all.episodes, "{m_all:?}");
    assert_eq!(m_all.true_alerts, m_all.alerts, "{m_all:?}");
    // Without regimes the same readings sit inside the envelope of all phases: mostly missed, and
    // scored far lower.
    assert!(
        m_plain.detected * 4 <= m_plain.episodes,
        "plain model detected {} of {}",
        m_plain.detected,
        m_plain.episodes
    );
    assert!(mean(&plain.episode_max) + 0.2 < mean(&by_speed.episode_max));
    assert!(mean(&by_speed.episode_max) >= 0.8);

    // The alerts say which regime: the baking phase, the second of three by speed.
    let ensemble: Vec<&Alert> = by_speed
        .alerts
        .iter()
        .filter(|a| a.source == "ensemble")
        .collect();
    assert!(!ensemble.is_empty());
    for a in ensemble {
        let model = a
            .detectors
            .iter()
            .find(|d| d.detector == "online_mahalanobis")
            .unwrap_or_else(|| panic!("{a:?}"));
        let r = model.regime.as_ref().unwrap_or_else(|| panic!("{a:?}"));
        assert_eq!((r.id, r.count), (2, 3), "{a:?}");
        assert!((r.centre["speed_rpm"] - 1200.0).abs() < 10.0, "{r:?}");
        assert!(a.explanation.contains("regime 2 of 3"), "{}", a.explanation);
        // The wrong current and temperature lead the explanation, not the (right) speed.
        let lead = &a.top_features[0].feature;
        assert!(
            lead.as_str() == "current_a" || lead.as_str() == "temp_zone_1",
            "{a:?}"
        );
    }
}

#[test]
fn clean_multi_phase_data_raises_no_more_alerts_with_regimes() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, by_speed, all) = run_variants(dir.path(), false);
    assert!(plain.episodes.is_empty());
    println!(
        "clean data, alerts (anomalous readings): plain {} ({}), by speed {} ({}), all features {} ({})",
        plain.alerts.len(),
        plain.anomalous,
        by_speed.alerts.len(),
        by_speed.anomalous,
        all.alerts.len(),
        all.anomalous
    );
    for o in [&by_speed, &all] {
        assert!(o.alerts.len() <= plain.alerts.len());
        assert!(o.anomalous <= plain.anomalous);
    }
}

#[test]
fn a_bad_regimes_section_fails_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let path = dir.path().join("flow.yaml");
        std::fs::write(&path, text).unwrap();
        let e = egizml::config::DataflowConfig::load(&path)
            .unwrap_err()
            .to_string();
        (path.display().to_string(), e)
    };
    let (file, e) = load("detectors:\n  regimes:\n    k: 0\n");
    assert!(e.starts_with(&format!("{file}:3:")), "{e}");
    assert!(
        e.contains("detectors.regimes.k") && e.contains("auto"),
        "{e}"
    );
    // A value's own check is placed at its mapping's first line (what serde_norway reports).
    let (file, e) = load("detectors:\n  regimes:\n    by: [speed]\n    max_k: 40\n");
    assert!(e.starts_with(&format!("{file}:3:")), "{e}");
    assert!(e.contains("detectors.regimes.max_k"), "{e}");
    let (file, e) = load("detectors:\n  regimes:\n    bye: [speed]\n");
    assert!(e.starts_with(&format!("{file}:3:")), "{e}");
    assert!(e.contains("bye"), "{e}");
    let (_, e) = load("detectors:\n  regimes: {k: 3, warmup: 20}\n");
    assert!(
        e.contains("`detectors.regimes.warmup` must be at least 60"),
        "{e}"
    );
    // `auto` and a number both parse.
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        "detectors:\n  regimes: {by: [speed_rpm], k: auto, settle: 0}\n",
    )
    .unwrap();
    let cfg = egizml::config::DataflowConfig::load(&path).unwrap();
    assert_eq!(cfg.detectors.regimes.unwrap().k, None);
}
