//! Detection quality on a labelled simulator run (event level), and explanation completeness.

use crate::common::*;
use egizml::eval::episodes::{episodes_from_labels, event_metrics, Episode};
use egizml::event::Alert;

#[test]
fn labelled_simulator_run_has_event_level_precision_and_recall_of_at_least_0_9() {
    let dir = tempfile::tempdir().unwrap();
    // 100 things x 2,000 readings (1 s apart), ~2 fault episodes per thing per 1,000 readings.
    let (input, injected) = simulate(dir.path(), 100, 200_000, 11);
    let args = replay_args(&input, dir.path(), 2);
    let (summary, _) = run_replay(&args);
    assert_eq!(summary.points, 200_000);

    // Episodes from the labels in the replayed scores agree with what the simulator injected.
    let scores = read_json_lines(args.scores.as_ref().unwrap());
    let labels: Vec<(String, i64, u8)> = scores
        .iter()
        .map(|s| {
            (
                s["thing_id"].as_str().unwrap().to_string(),
                s["ts"].as_i64().unwrap(),
                s["label"].as_u64().unwrap() as u8,
            )
        })
        .collect();
    let episodes: Vec<Episode> =
        episodes_from_labels(labels.iter().map(|(t, ts, l)| (t.as_str(), *ts, *l)));
    assert_eq!(episodes.len(), injected.len());
    assert!(
        episodes.len() >= 150,
        "enough episodes to measure: {}",
        episodes.len()
    );

    let alerts: Vec<Alert> = std::fs::read_to_string(&args.alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // An alert counts for an episode from its start to 5 readings (5 s) after its end.
    let m = event_metrics(&alerts, &episodes, 5_000);
    println!("event-level: {m:?}");
    assert!(
        m.recall >= 0.9,
        "recall {:.3} ({} of {} episodes)",
        m.recall,
        m.detected,
        m.episodes
    );
    assert!(
        m.precision >= 0.9,
        "precision {:.3} ({} of {} alerts)",
        m.precision,
        m.true_alerts,
        m.alerts
    );

    // Every alert is explained.
    for a in &alerts {
        assert!(
            !a.top_features.is_empty() && a.top_features.len() <= 3,
            "{a:?}"
        );
        let share: f64 = a.families.values().sum();
        assert!(
            (share - 1.0).abs() < 1e-3,
            "family shares sum to {share}: {a:?}"
        );
        assert!(!a.explanation.is_empty());
        assert!((0.0..=1.0).contains(&a.score));
    }
}
