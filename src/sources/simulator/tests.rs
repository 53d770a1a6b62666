use super::*;
use crate::eval::episodes::episodes_from_labels;
use std::collections::HashMap;

fn cfg(things: usize, seed: u64, faults_per_1000: f64) -> SimulatorConfig {
    SimulatorConfig {
        things,
        seed,
        faults_per_1000,
        ..SimulatorConfig::default()
    }
}

/// Compact per-thing record of a run: the points themselves would take too much memory in long runs.
struct Series {
    equip: EquipmentType,
    names: Vec<Name>,
    ts: Vec<i64>,
    labels: Vec<u8>,
    rows: Vec<Vec<f64>>,
}

impl Series {
    fn col(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }
    fn idx(&self, ts: i64) -> usize {
        self.ts.binary_search(&ts).unwrap()
    }
    fn mean(&self, col: usize, from: usize, to: usize) -> f64 {
        let s: f64 = self.rows[from..to].iter().map(|r| r[col]).sum();
        s / (to - from) as f64
    }
}

struct Run {
    series: HashMap<Name, Series>,
    episodes: Vec<FaultEpisode>,
}

fn run(c: SimulatorConfig, rounds: usize) -> Run {
    let things = c.things;
    let mut sim = Simulator::new(c);
    let mut series: HashMap<Name, Series> = HashMap::new();
    for _ in 0..things * rounds {
        let p = sim.next_point();
        let s = series.entry(p.thing_id.clone()).or_insert_with(|| Series {
            equip: match p.equipment_type.as_str() {
                "oven" => EquipmentType::Oven,
                "mixer" => EquipmentType::Mixer,
                _ => EquipmentType::Conveyor,
            },
            names: p.values.iter().map(|(n, _)| n.clone()).collect(),
            ts: Vec::new(),
            labels: Vec::new(),
            rows: Vec::new(),
        });
        s.ts.push(p.ts);
        s.labels.push(p.label.unwrap());
        s.rows.push(p.values.iter().map(|(_, v)| *v).collect());
    }
    let episodes = sim.episodes_emitted();
    Run { series, episodes }
}

/// Episodes whose every reading was emitted, with their (first, last) reading index.
fn complete<'a>(
    r: &'a Run,
    kind: FaultKind,
) -> impl Iterator<Item = (&'a Series, usize, usize)> + 'a {
    r.episodes
        .iter()
        .filter(move |e| e.kind == kind)
        .filter_map(move |e| {
            let s = &r.series[&e.thing_id];
            let (lo, hi) = kind.length_range();
            let a = s.idx(e.start_ts);
            let b = s.idx(e.end_ts);
            let len = (b - a + 1) as u64;
            // Skip episodes cut by the end of the run: the tests look at the reading after the episode too.
            (len >= lo && len <= hi && b + 1 < s.ts.len()).then_some((s, a, b))
        })
}

#[test]
fn same_seed_gives_identical_points() {
    let a: Vec<Point> = Simulator::new(cfg(7, 11, 20.0)).take(7 * 800).collect();
    let b: Vec<Point> = Simulator::new(cfg(7, 11, 20.0)).take(7 * 800).collect();
    assert_eq!(a, b);
    assert!(a.iter().any(|p| p.label == Some(1)));
}

#[test]
fn different_seeds_differ() {
    let a: Vec<Point> = Simulator::new(cfg(5, 1, 2.0)).take(500).collect();
    let b: Vec<Point> = Simulator::new(cfg(5, 2, 2.0)).take(500).collect();
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.values != y.values)
        .count();
    assert!(differing > 490, "only {differing} points differ");
    // Same things and times though: the seed changes values, not the schedule of readings.
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x.thing_id == y.thing_id && x.ts == y.ts));
}

#[test]
fn round_robin_time_seq_and_ids() {
    let c = SimulatorConfig {
        things: 4,
        interval_ms: 500,
        start_ts: 1_000,
        ..SimulatorConfig::default()
    };
    let mut sim = Simulator::new(c);
    assert_eq!(sim.thing_count(), 4);
    let pts: Vec<Point> = (0..12).map(|_| sim.next_point()).collect();
    for (i, p) in pts.iter().enumerate() {
        assert_eq!(p.seq, i as u64);
        assert_eq!(p.ts, 1_000 + (i / 4) as i64 * 500);
        assert_eq!(p.thing_id, thing_id(i % 4));
        assert_eq!(p.origin, Origin::None);
        assert!(matches!(p.label, Some(0) | Some(1)));
    }
    assert_eq!(pts[0].thing_id, "oven-00000");
    assert_eq!(pts[1].thing_id, "mixer-00001");
    assert_eq!(pts[2].thing_id, "conveyor-00002");
    assert_eq!(pts[2].equipment_type, "conveyor");
    let names: Vec<&str> = pts[0].values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, EquipmentType::Oven.features());
    let names: Vec<&str> = pts[1].values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, EquipmentType::Mixer.features());
    let names: Vec<&str> = pts[2].values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, EquipmentType::Conveyor.features());
    assert_eq!(Simulator::new(cfg(0, 1, 0.0)).thing_count(), 1);
}

#[test]
fn equipment_mix() {
    let mut counts = HashMap::new();
    for i in 0..1000 {
        *counts.entry(EquipmentType::of_index(i)).or_insert(0) += 1;
        let id = thing_id(i);
        let (ty, num) = id.split_once('-').unwrap();
        assert_eq!(ty, EquipmentType::of_index(i).as_str());
        assert_eq!(num, format!("{i:05}"));
    }
    assert_eq!(counts[&EquipmentType::Oven], 400);
    assert_eq!(counts[&EquipmentType::Mixer], 300);
    assert_eq!(counts[&EquipmentType::Conveyor], 300);
}

#[test]
fn labels_are_one_exactly_inside_episodes() {
    let mut sim = Simulator::new(cfg(20, 5, 10.0));
    let pts: Vec<Point> = (0..20 * 2500).map(|_| sim.next_point()).collect();
    let eps = sim.episodes_emitted();
    assert!(eps.len() > 20, "too few episodes: {}", eps.len());
    for p in &pts {
        let inside = eps
            .iter()
            .any(|e| e.thing_id == p.thing_id && e.start_ts <= p.ts && p.ts <= e.end_ts);
        assert_eq!(p.label, Some(inside as u8), "{} at {}", p.thing_id, p.ts);
    }
    // Episodes recovered from labels are the simulator's episodes (they never touch: quiet gaps).
    let mut from_labels = episodes_from_labels(
        pts.iter()
            .map(|p| (p.thing_id.as_str(), p.ts, p.label.unwrap())),
    );
    let mut expected: Vec<_> = eps
        .iter()
        .map(|e| (e.thing_id.clone(), e.start_ts, e.end_ts))
        .collect();
    expected.sort();
    let mut got: Vec<_> = from_labels
        .drain(..)
        .map(|e| (e.thing_id, e.start_ts, e.end_ts))
        .collect();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn faults_change_only_labelled_readings() {
    // The normal signal does not depend on the fault streams: without faults the same seed gives the
    // same readings, so every difference must be inside an episode and every episode reading differs.
    let with: Vec<Point> = Simulator::new(cfg(15, 9, 8.0)).take(15 * 2000).collect();
    let without: Vec<Point> = Simulator::new(cfg(15, 9, 0.0)).take(15 * 2000).collect();
    let mut faulty = 0;
    for (a, b) in with.iter().zip(&without) {
        assert_eq!(b.label, Some(0));
        if a.label == Some(1) {
            faulty += 1;
            assert_ne!(a.values, b.values, "{} at {}", a.thing_id, a.ts);
        } else {
            assert_eq!(a.values, b.values, "{} at {}", a.thing_id, a.ts);
        }
    }
    assert!(faulty > 100);
}

#[test]
fn scheduling_rules() {
    let c = cfg(60, 3, 5.0);
    let interval = c.interval_ms;
    let start = c.start_ts;
    let mut sim = Simulator::new(c);
    for _ in 0..60 * 3000 {
        sim.next_point();
    }
    let eps = sim.episodes().to_vec();
    assert!(eps.len() > 100);
    let mut by_thing: HashMap<&str, Vec<&FaultEpisode>> = HashMap::new();
    for e in &eps {
        let idx: usize = e.thing_id.split_once('-').unwrap().1.parse().unwrap();
        let equip = EquipmentType::of_index(idx);
        assert!(equip.fault_kinds().contains(&e.kind), "{e:?}");
        let first_n = (e.start_ts - start) / interval;
        assert!(first_n >= WARMUP_READINGS as i64, "{e:?}");
        let len = ((e.end_ts - e.start_ts) / interval + 1) as u64;
        let (lo, hi) = e.kind.length_range();
        assert!(lo <= len && len <= hi, "{e:?}");
        by_thing.entry(e.thing_id.as_str()).or_default().push(e);
    }
    for v in by_thing.values() {
        for w in v.windows(2) {
            let quiet = (w[1].start_ts - w[0].end_ts) / interval - 1;
            assert!(quiet >= QUIET_READINGS as i64, "{:?} then {:?}", w[0], w[1]);
        }
    }
}

/// One long run shared by the per-kind visibility tests.
fn long_run() -> &'static Run {
    static RUN: std::sync::OnceLock<Run> = std::sync::OnceLock::new();
    RUN.get_or_init(|| run(cfg(120, 2024, 2.0), 3000))
}

#[test]
fn every_fault_kind_occurs() {
    let r = long_run();
    for kind in FaultKind::ALL {
        let n = complete(r, kind).count();
        assert!(n >= 10, "{kind:?}: only {n} complete episodes");
    }
}

#[test]
fn voltage_spike_is_visible() {
    let r = long_run();
    for (s, a, b) in complete(r, FaultKind::VoltageSpike) {
        let swelled = ["voltage_a", "voltage_b", "voltage_c"].iter().any(|f| {
            let c = s.col(f);
            let pre = s.mean(c, a - 30, a);
            (a..=b).all(|i| s.rows[i][c] >= 1.10 * pre)
        });
        assert!(swelled, "spike at {} not visible", s.ts[a]);
        assert_eq!(s.labels[b + 1], 0);
    }
}

#[test]
fn phase_imbalance_is_visible() {
    let r = long_run();
    for (s, a, b) in complete(r, FaultKind::PhaseImbalance) {
        let m: Vec<f64> = ["current_a", "current_b", "current_c"]
            .iter()
            .map(|f| s.mean(s.col(f), a, b + 1))
            .collect();
        let dropped = (0..3).any(|p| {
            let others = (m[(p + 1) % 3] + m[(p + 2) % 3]) / 2.0;
            m[p] <= 0.88 * others
        });
        assert!(dropped, "imbalance at {} not visible: {m:?}", s.ts[a]);
    }
}

#[test]
fn overheat_is_visible() {
    let r = long_run();
    let mut mixers = 0;
    for (s, a, b) in complete(r, FaultKind::OverheatDrift) {
        let cols: &[&str] = match s.equip {
            EquipmentType::Oven => &["temp_zone_1", "temp_zone_2", "temp_zone_3"],
            EquipmentType::Mixer => {
                mixers += 1;
                &["temp_motor"]
            }
            EquipmentType::Conveyor => panic!("overheat on a conveyor"),
        };
        let hot = cols.iter().any(|f| {
            let c = s.col(f);
            s.rows[b][c] >= s.mean(c, a - 10, a) + 15.0
        });
        assert!(hot, "overheat at {} not visible", s.ts[a]);
    }
    assert!(mixers > 0);
}

#[test]
fn power_factor_degradation_is_visible() {
    let r = long_run();
    for (s, a, b) in complete(r, FaultKind::PowerFactorDegradation) {
        let c = s.col("power_factor");
        let pre = s.mean(c, a - 30, a);
        let late = s.mean(c, a + 15, b + 1);
        assert!(late <= pre - 0.08, "pf {pre} -> {late} at {}", s.ts[a]);
    }
}

#[test]
fn bearing_wear_is_visible() {
    let r = long_run();
    for (s, a, b) in complete(r, FaultKind::BearingWear) {
        assert_ne!(s.equip, EquipmentType::Oven);
        let v = s.col("vibration_rms");
        assert!(
            s.rows[b][v] >= 2.0 * s.mean(v, a - 30, a),
            "vibration at {} not visible",
            s.ts[a]
        );
        let sp = s.col(if s.equip == EquipmentType::Mixer {
            "speed_rpm"
        } else {
            "speed_mps"
        });
        let pre = s.mean(sp, a - 30, a);
        let end = s.mean(sp, b - 4, b + 1);
        assert!(end <= pre * 0.995, "speed {pre} -> {end} at {}", s.ts[a]);
    }
}

#[test]
fn normal_data_is_sane_and_smooth() {
    let r = long_run();
    let mut checked = 0;
    for s in r.series.values() {
        let v: Vec<usize> = ["voltage_a", "voltage_b", "voltage_c"]
            .iter()
            .map(|f| s.col(f))
            .collect();
        let i: Vec<usize> = ["current_a", "current_b", "current_c"]
            .iter()
            .map(|f| s.col(f))
            .collect();
        let pf = s.col("power_factor");
        let mut prev_mean_i: Option<f64> = None;
        for (k, row) in s.rows.iter().enumerate() {
            if s.labels[k] == 1 {
                prev_mean_i = None;
                continue;
            }
            checked += 1;
            for &c in &v {
                assert!((220.0..=240.0).contains(&row[c]), "voltage {}", row[c]);
            }
            assert!((0.85..=0.99).contains(&row[pf]), "pf {}", row[pf]);
            let mean_i = (row[i[0]] + row[i[1]] + row[i[2]]) / 3.0;
            assert!(mean_i > 0.5);
            for &c in &i {
                assert!((row[c] / mean_i - 1.0).abs() < 0.06, "phases unequal");
            }
            // Load changes smoothly: no step in the mean current beyond noise.
            if let Some(p) = prev_mean_i {
                assert!(
                    (mean_i / p - 1.0).abs() < 0.05,
                    "current step {p} -> {mean_i}"
                );
            }
            prev_mean_i = Some(mean_i);
            match s.equip {
                EquipmentType::Oven => {
                    for f in ["temp_zone_1", "temp_zone_2", "temp_zone_3"] {
                        let t = row[s.col(f)];
                        assert!((175.0..=205.0).contains(&t), "{f} {t}");
                    }
                }
                EquipmentType::Mixer => {
                    let t = row[s.col("temp_motor")];
                    assert!((50.0..=68.0).contains(&t), "temp_motor {t}");
                    let vib = row[s.col("vibration_rms")];
                    assert!((1.2..=3.2).contains(&vib), "vibration {vib}");
                    let rpm = row[s.col("speed_rpm")];
                    assert!((1420.0..=1475.0).contains(&rpm), "rpm {rpm}");
                }
                EquipmentType::Conveyor => {
                    let vib = row[s.col("vibration_rms")];
                    assert!((0.8..=2.5).contains(&vib), "vibration {vib}");
                    let mps = row[s.col("speed_mps")];
                    assert!((1.35..=1.65).contains(&mps), "speed {mps}");
                }
            }
        }
    }
    assert!(checked > 300_000);
}

#[test]
fn write_jsonl_lines_parse() {
    let c = cfg(6, 77, 10.0);
    let mut buf = Vec::new();
    let eps = write_jsonl(c.clone(), 6 * 1200, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6 * 1200);
    let mut sim = Simulator::new(c);
    let mut labels = Vec::new();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 5);
        let p = sim.next_point();
        assert_eq!(obj["thing_id"].as_str().unwrap(), p.thing_id);
        assert_eq!(obj["equipment_type"].as_str().unwrap(), p.equipment_type);
        assert!(obj["ts"].is_i64());
        assert_eq!(obj["ts"].as_i64().unwrap(), p.ts);
        let label = obj["label"].as_u64().unwrap();
        assert!(label <= 1);
        assert_eq!(Some(label as u8), p.label);
        let values = obj["values"].as_object().unwrap();
        assert_eq!(values.len(), p.values.len());
        for (name, x) in &p.values {
            // Rounded values survive the text round trip exactly.
            assert_eq!(values[name.as_str()].as_f64().unwrap(), *x);
        }
        labels.push((
            obj["thing_id"].as_str().unwrap().to_string(),
            p.ts,
            label as u8,
        ));
    }
    assert!(!eps.is_empty());
    let from_file = episodes_from_labels(labels.iter().map(|(t, ts, l)| (t.as_str(), *ts, *l)));
    let mut got: Vec<_> = from_file
        .into_iter()
        .map(|e| (e.thing_id, e.start_ts, e.end_ts))
        .collect();
    let mut want: Vec<_> = eps
        .into_iter()
        .map(|e| (e.thing_id, e.start_ts, e.end_ts))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn episodes_serialize_snake_case() {
    let e = FaultEpisode {
        thing_id: Name::new("oven-00000"),
        kind: FaultKind::PowerFactorDegradation,
        start_ts: 1,
        end_ts: 2,
    };
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["kind"], "power_factor_degradation");
    for k in FaultKind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
    }
}

#[test]
fn the_fault_mix_restricts_the_injected_kinds() {
    let mut sim = Simulator::new(SimulatorConfig {
        fault_kinds: vec![FaultKind::VoltageSpike, FaultKind::BearingWear],
        ..cfg(30, 7, 20.0)
    });
    for _ in 0..30 * 2_000 {
        sim.next_point();
    }
    let kinds: std::collections::BTreeSet<&str> =
        sim.episodes().iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["bearing_wear", "voltage_spike"].into_iter().collect(),
        "only the chosen kinds, and both of them"
    );
    // Bearing wear only where the equipment has bearings; ovens get spikes only.
    assert!(sim
        .episodes()
        .iter()
        .filter(|e| e.kind == FaultKind::BearingWear)
        .all(|e| !e.thing_id.starts_with("oven")));
    assert_eq!(
        "phase_imbalance".parse::<FaultKind>(),
        Ok(FaultKind::PhaseImbalance)
    );
    assert!("meltdown"
        .parse::<FaultKind>()
        .unwrap_err()
        .contains("voltage_spike"));
}
