use super::cmapss::{parse_rul, parse_units, Cycle, Unit, COLUMNS, SENSORS, SETTINGS};
use super::features::{batch_features, FeatureBuilder, FeatureSpec};
use super::metrics::{phm08, rmse};
use super::model::{Conformal, RulModel, TrainOptions};
use super::predict::{recommended_action, RulConfig};
use super::RulError;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Run-to-failure units whose sensors drift with wear (quadratically, towards failure) under noise:
/// enough signal to train a small model in well under a second.
pub(crate) fn synthetic_units(n: u32, seed: u64) -> Vec<Unit> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (1..=n)
        .map(|id| {
            let life: u32 = rng.random_range(70..130);
            let cycles = (1..=life)
                .map(|c| {
                    let wear = f64::from(c) / f64::from(life);
                    let mut sensors = [0.0; SENSORS];
                    for (i, s) in sensors.iter_mut().enumerate() {
                        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                        *s = 100.0 * (i + 1) as f64
                            + sign * 4.0 * wear * wear
                            + rng.random::<f64>() * 0.5;
                    }
                    Cycle {
                        cycle: c,
                        settings: [0.0; SETTINGS],
                        sensors,
                    }
                })
                .collect();
            Unit { id, cycles }
        })
        .collect()
}

/// A small RUL model (5 trees) on synthetic units, for registry and config tests.
pub(crate) fn small_model() -> RulModel {
    let mut opts = TrainOptions::cmapss("synthetic");
    opts.forest.n_trees = 5;
    RulModel::train(&synthetic_units(15, 1), &opts).expect("the synthetic units train")
}

#[test]
fn small_model_learns_the_synthetic_wear() {
    let m = small_model();
    m.check().unwrap();
    assert_eq!(m.input_names().len(), m.spec.len() + 1);
    assert_eq!(m.hyper_parameters()["forest"]["n_trees"], 5);
    // Fresh units: early cycles predict a long life, the last ones a short one.
    let unit = &synthetic_units(1, 99)[0];
    let p = m.unit_predictions(unit).unwrap();
    assert!(
        p[p.len() - 1] < p[20] - 30.0,
        "{} vs {}",
        p[p.len() - 1],
        p[20]
    );
}

fn row(unit: u32, cycle: u32) -> String {
    let mut v = vec![unit.to_string(), cycle.to_string()];
    v.extend((0..COLUMNS - 2).map(|i| format!("{}.5", i)));
    v.join(" ") + "  "
}

fn parse_err(text: &str) -> String {
    match parse_units(text, Path::new("train_FD001.txt")) {
        Err(e) => e.to_string(),
        Ok(u) => panic!("expected an error, got {} units", u.len()),
    }
}

#[test]
fn loader_reads_units_and_cycles() {
    let text = [row(1, 1), row(1, 2), row(2, 1)].join("\n") + "\n";
    let units = parse_units(&text, Path::new("x")).unwrap();
    assert_eq!(units.len(), 2);
    assert_eq!(units[0].cycles.len(), 2);
    assert_eq!(units[0].last_cycle(), 2);
    assert_eq!(units[1].cycles[0].sensors[20], 23.5);
    assert_eq!(units[1].cycles[0].settings[0], 0.5);
}

#[test]
fn loader_errors_name_file_line_and_cause() {
    let short = "1 1 0.1 0.2\n";
    assert_eq!(
        parse_err(short),
        "train_FD001.txt:1: 4 columns, expected 26"
    );
    let bad = row(1, 1).replace("3.5", "x3");
    assert!(parse_err(&bad).contains("train_FD001.txt:1: column 6: \"x3\" is not a number"));
    let long = row(1, 1) + " 7";
    assert!(parse_err(&long).contains("more than 26 columns"));
    let gap = [row(1, 1), row(1, 3)].join("\n");
    assert_eq!(
        parse_err(&gap),
        "train_FD001.txt:2: unit 1: cycle 3 follows cycle 1"
    );
    let unit_gap = [row(1, 1), row(3, 1)].join("\n");
    assert!(parse_err(&unit_gap).contains("unit 3 where unit 2 was expected"));
    let late_start = row(1, 2);
    assert!(parse_err(&late_start).contains("starts at cycle 2"));
    let frac = row(1, 1).replacen("1 1", "1 1.5", 1);
    assert!(parse_err(&frac).contains("cycle 1.5 is not a positive integer"));
    assert!(parse_err("\n  \n").contains("no rows"));
    let nan = row(1, 1).replace("3.5", "NaN");
    assert!(parse_err(&nan).contains("is not finite"));

    let e = parse_rul("12\n-3\n", Path::new("RUL_FD001.txt")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "RUL_FD001.txt:2: \"-3\" is not a non-negative number"
    );
    assert_eq!(
        parse_rul("112 \n98\n", Path::new("r")).unwrap(),
        vec![112.0, 98.0]
    );

    let missing = super::cmapss::load_subset(Path::new("/nonexistent-dir"), "FD001").unwrap_err();
    assert!(matches!(missing, RulError::Io { .. }));
    assert!(missing
        .to_string()
        .starts_with("/nonexistent-dir/train_FD001.txt: "));
    let bad_subset = super::cmapss::load_subset(Path::new("."), "../etc").unwrap_err();
    assert!(bad_subset.to_string().contains("not of the form FD001"));
}

#[test]
fn incremental_features_equal_batch_definition_at_every_cycle() {
    let spec = FeatureSpec {
        sensors: vec!["a".into(), "b".into(), "c".into()],
        short: 4,
        long: 9,
        baseline: 6,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let history: Vec<Vec<f64>> = (0..60)
        .map(|t| {
            vec![
                100.0 + 0.1 * t as f64 + rng.random::<f64>(),
                rng.random::<f64>() * 1e4,
                -5.0 + (t as f64).sqrt(),
            ]
        })
        .collect();
    let mut b = FeatureBuilder::new(&spec);
    let mut out = Vec::new();
    for t in 0..history.len() {
        b.push(&history[t], &mut out);
        assert_eq!(out.len(), spec.len());
        // Bit-for-bit: the same sums in the same order.
        assert_eq!(
            out,
            batch_features(&spec, &history[..=t]),
            "cycle {}",
            t + 1
        );
    }
    assert_eq!(spec.names().len(), spec.len());
    assert_eq!(spec.names()[2], "a_slope_long");
}

#[test]
fn features_hand_computed() {
    let spec = FeatureSpec {
        sensors: vec!["x".into()],
        short: 2,
        long: 3,
        baseline: 2,
    };
    let mut b = FeatureBuilder::new(&spec);
    let mut out = Vec::new();
    b.push(&[1.0], &mut out);
    assert_eq!(out, vec![1.0, 1.0, 0.0, 0.0, 1.0]);
    b.push(&[3.0], &mut out);
    // mean_short 2, mean_long 2, slope 2, drift 2 - 2 = 0
    assert_eq!(out, vec![2.0, 2.0, 2.0, 0.0, 2.0]);
    b.push(&[5.0], &mut out);
    assert_eq!(out, vec![4.0, 3.0, 2.0, 1.0, 3.0]);
    b.push(&[4.0], &mut out);
    // window 3,5,4: mean 4, slope 0.5; baseline stays (1+3)/2 = 2
    assert_eq!(out, vec![4.5, 4.0, 0.5, 2.0, 4.0]);
}

#[test]
fn metrics_on_hand_computed_cases() {
    assert_eq!(rmse(&[], &[]), 0.0);
    assert!((rmse(&[1.0, 2.0], &[3.0, 2.0]) - 2f64.sqrt()).abs() < 1e-12);
    // d = -13 (early): e - 1; d = +10 (late): e - 1; d = 0: 0.
    let e1 = std::f64::consts::E - 1.0;
    assert!((phm08(&[7.0], &[20.0]) - e1).abs() < 1e-12);
    assert!((phm08(&[30.0], &[20.0]) - e1).abs() < 1e-12);
    assert_eq!(phm08(&[5.0], &[5.0]), 0.0);
    // Late costs more than early by the same amount.
    assert!(phm08(&[25.0], &[20.0]) > phm08(&[15.0], &[20.0]));
}

#[test]
fn conformal_interval_covers_held_out_data_at_nominal_rate() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut draw = |n: usize| -> (Vec<f64>, Vec<f64>) {
        (0..n)
            .map(|_| {
                let p: f64 = rng.random::<f64>() * 125.0;
                // Errors grow with the predicted RUL, as they do on C-MAPSS; skewed (late heavier).
                let noise = (rng.random::<f64>() - 0.3) * (5.0 + 0.2 * p);
                (p, p + noise)
            })
            .unzip()
    };
    let (cp, ct) = draw(3000);
    let c = Conformal::calibrate(&cp, &ct, 0.1).unwrap();
    let (tp, tt) = draw(5000);
    let covered = tp
        .iter()
        .zip(&tt)
        .filter(|(p, t)| {
            let (lo, hi) = c.interval(**p);
            **t >= lo && **t <= hi
        })
        .count() as f64
        / tp.len() as f64;
    assert!((0.87..=0.95).contains(&covered), "coverage {covered}");
    // Narrower near failure than far from it.
    let w = |p: f64| {
        let (lo, hi) = c.interval(p);
        hi - lo
    };
    assert!(w(10.0) < w(110.0));
    // Failure probabilities: monotone in the horizon, 0 far below, 1 far above.
    let p = 40.0;
    assert_eq!(c.prob_within(p, 0.0), 0.0);
    assert_eq!(c.prob_within(p, 500.0), 1.0);
    let probs: Vec<f64> = (0..100).map(|h| c.prob_within(p, h as f64)).collect();
    assert!(probs.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        (c.prob_within(p, p) - 0.3).abs() < 0.08,
        "{}",
        c.prob_within(p, p)
    );
}

#[test]
fn conformal_rejects_empty_calibration() {
    assert!(Conformal::calibrate(&[], &[], 0.1).is_err());
}

#[test]
fn config_validation_and_actions() {
    assert!(RulConfig::default().validate().is_ok());
    let bad = RulConfig {
        hours_per_cycle: 0.0,
        ..RulConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("hours_per_cycle"));
    assert!(recommended_action(10.0, 72.0).starts_with("Stop"));
    assert_eq!(
        recommended_action(50.0, 72.0),
        "Schedule maintenance within 50 h"
    );
    assert!(recommended_action(150.0, 72.0).starts_with("Plan"));
    assert!(recommended_action(1000.0, 72.0).starts_with("No action"));
}
