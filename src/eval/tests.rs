use super::episodes::*;
use crate::event::{Alert, Name};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn alert(thing: &str, ts: i64) -> Alert {
    crate::testkit::alert(thing, "test", ts)
}

fn ep(thing: &str, start_ts: i64, end_ts: i64) -> Episode {
    Episode {
        thing_id: Name::new(thing),
        start_ts,
        end_ts,
    }
}

#[test]
fn episodes_from_unsorted_labels() {
    let pts = vec![
        ("b", 30, 1),
        ("a", 50, 1),
        ("a", 10, 0),
        ("a", 20, 1),
        ("b", 10, 1),
        ("a", 30, 1),
        ("a", 40, 0),
        ("b", 20, 1),
        ("a", 60, 1),
        ("b", 40, 0),
        ("c", 10, 0),
        ("a", 70, 0),
        ("a", 80, 1),
    ];
    let eps = episodes_from_labels(pts);
    assert_eq!(
        eps,
        vec![
            ep("a", 20, 30),
            ep("a", 50, 60),
            ep("a", 80, 80),
            ep("b", 10, 30),
        ]
    );
    assert!(episodes_from_labels(Vec::<(&str, i64, u8)>::new()).is_empty());
}

#[test]
fn other_things_do_not_end_runs() {
    // Interleaved things: a label 0 of thing y must not split x's run.
    let pts = vec![
        ("x", 1, 1),
        ("y", 1, 0),
        ("x", 2, 1),
        ("y", 2, 0),
        ("x", 3, 0),
    ];
    assert_eq!(episodes_from_labels(pts), vec![ep("x", 1, 2)]);
}

#[test]
fn grace_boundary() {
    let eps = vec![ep("a", 1000, 2000)];
    let m = |ts: i64| event_metrics(&[alert("a", ts)], &eps, 500);
    for (ts, counts) in [
        (999, false),
        (1000, true),
        (1500, true),
        (2000, true),
        (2500, true),
        (2501, false),
    ] {
        let r = m(ts);
        assert_eq!(r.true_alerts, counts as usize, "ts {ts}");
        assert_eq!(r.detected, counts as usize, "ts {ts}");
        assert_eq!(r.precision, if counts { 1.0 } else { 0.0 });
        assert_eq!(r.recall, if counts { 1.0 } else { 0.0 });
    }
    // Without grace the end is the last instant that counts.
    assert_eq!(event_metrics(&[alert("a", 2000)], &eps, 0).true_alerts, 1);
    assert_eq!(event_metrics(&[alert("a", 2001)], &eps, 0).true_alerts, 0);
}

#[test]
fn mixed_alerts_and_episodes() {
    let eps = vec![
        ep("a", 100, 200),
        ep("a", 1000, 1100),
        ep("b", 100, 200),
        ep("c", 500, 600),
    ];
    let alerts = vec![
        alert("a", 150),  // true, detects a#1
        alert("a", 180),  // true, same episode
        alert("a", 700),  // false: between episodes, beyond grace
        alert("b", 150),  // true, detects b
        alert("c", 150),  // false: before c's episode
        alert("d", 550),  // false: thing without episodes
        alert("a", 1150), // true within grace of a#2
    ];
    let r = event_metrics(&alerts, &eps, 100);
    assert_eq!(r.episodes, 4);
    assert_eq!(r.alerts, 7);
    assert_eq!(r.true_alerts, 4);
    assert_eq!(r.detected, 3);
    assert!((r.precision - 4.0 / 7.0).abs() < 1e-12);
    assert!((r.recall - 0.75).abs() < 1e-12);
    let f1 = 2.0 * r.precision * r.recall / (r.precision + r.recall);
    assert!((r.f1() - f1).abs() < 1e-12);
}

#[test]
fn empty_inputs() {
    let r = event_metrics(&[], &[ep("a", 1, 2)], 0);
    assert_eq!((r.precision, r.recall, r.detected), (1.0, 0.0, 0));
    let r = event_metrics(&[alert("a", 5)], &[], 0);
    assert_eq!((r.precision, r.recall, r.true_alerts), (0.0, 1.0, 0));
    let r = event_metrics(&[], &[], 0);
    assert_eq!((r.precision, r.recall), (1.0, 1.0));
    assert_eq!(r.f1(), 1.0);
}

#[test]
fn long_episode_before_short_one_still_covers() {
    // The earlier-starting episode reaches past the later one: an alert after the later one's grace but
    // inside the earlier one is true (needs the running maximum, not just the latest start).
    let eps = vec![ep("a", 0, 10_000), ep("a", 100, 200)];
    let r = event_metrics(&[alert("a", 5_000)], &eps, 0);
    assert_eq!(r.true_alerts, 1);
    assert_eq!(r.detected, 1);
}

#[test]
fn matches_brute_force() {
    let mut rng = SmallRng::seed_from_u64(7);
    let things = ["p", "q", "r"];
    for round in 0..50 {
        let eps: Vec<Episode> = (0..rng.random_range(0..12))
            .map(|_| {
                let s = rng.random_range(0..5_000i64);
                ep(
                    things[rng.random_range(0..3)],
                    s,
                    s + rng.random_range(0..400),
                )
            })
            .collect();
        let alerts: Vec<Alert> = (0..rng.random_range(0..30))
            .map(|_| {
                alert(
                    things[rng.random_range(0..3)],
                    rng.random_range(0..5_500i64),
                )
            })
            .collect();
        let grace = rng.random_range(0..300i64);
        let hit = |a: &Alert, e: &Episode| {
            a.thing_id == e.thing_id && e.start_ts <= a.ts && a.ts <= e.end_ts + grace
        };
        let true_alerts = alerts
            .iter()
            .filter(|a| eps.iter().any(|e| hit(a, e)))
            .count();
        let detected = eps
            .iter()
            .filter(|e| alerts.iter().any(|a| hit(a, e)))
            .count();
        let r = event_metrics(&alerts, &eps, grace);
        assert_eq!(r.true_alerts, true_alerts, "round {round}");
        assert_eq!(r.detected, detected, "round {round}");
        assert_eq!((r.alerts, r.episodes), (alerts.len(), eps.len()));
    }
}
