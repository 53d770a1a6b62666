use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn alert(thing: &str, kind: &str, ts: i64, severity: Severity, family: &str) -> Alert {
    let mut families = BTreeMap::new();
    families.insert(family.to_string(), 0.7);
    families.insert("other".to_string(), 0.3);
    Alert {
        severity,
        source: "rule".to_string(),
        model_version: "m/1".to_string(),
        families,
        ..crate::testkit::alert(thing, kind, ts)
    }
}

/// The summaries computed from scratch over the live alerts and all scores so far.
fn brute_force(alerts: &[Alert], scores: &HashMap<String, Vec<f64>>) -> Vec<DeviceSummary> {
    let mut devices: BTreeMap<String, DeviceState> = BTreeMap::new();
    for a in alerts {
        let d = devices.entry(a.thing_id.to_string()).or_default();
        *d.counts
            .entry((a.alert_type.clone(), severity_code(a.severity)))
            .or_insert(0) += 1;
        *d.families.entry(dominant_family(a)).or_insert(0) += 1;
    }
    for (thing, list) in scores {
        if list.is_empty() {
            continue;
        }
        let mut q: Vec<u32> = list.iter().map(|s| quantise(*s)).collect();
        q.sort_unstable();
        let n = q.len() as i64;
        let sum: i64 = q.iter().map(|x| i64::from(*x)).sum();
        // Nearest-rank p95 over the sorted list.
        let rank = (q.len() * 95).div_ceil(100);
        devices.entry(thing.clone()).or_default().scores = Some((n, sum, q[rank - 1]));
    }
    devices.iter().map(|(t, d)| d.summary(t)).collect()
}

fn same_families(a: &DeviceSummary, b: &DeviceSummary) -> bool {
    // Ties in family counts may be listed in either order: compare as multisets of counts and check
    // every listed family has the listed count.
    let counts = |d: &DeviceSummary| {
        d.dominant_families
            .iter()
            .map(|f| f.count)
            .collect::<Vec<_>>()
    };
    counts(a) == counts(b)
}

fn normalise(mut d: DeviceSummary) -> DeviceSummary {
    d.alert_counts
        .sort_by(|a, b| (&a.alert_type, &a.severity).cmp(&(&b.alert_type, &b.severity)));
    d.dominant_families.clear();
    d
}

#[test]
fn summaries_equal_a_brute_force_computation_under_additions_and_retractions() {
    let fleet = Fleet::start().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let things = ["oven-1", "oven-2", "mixer-3", "press-4"];
    let kinds = ["overheat", "phase_imbalance", "ensemble"];
    let families = ["voltage", "temperature", "current"];
    let sevs = [Severity::Info, Severity::Warning, Severity::Critical];
    let mut live: Vec<Alert> = Vec::new();
    let mut scores: HashMap<String, Vec<f64>> = HashMap::new();
    let mut ts = 0;
    for epoch in 1..=40u64 {
        for _ in 0..rng.random_range(0..6) {
            ts += 1;
            let a = alert(
                things[rng.random_range(0..things.len())],
                kinds[rng.random_range(0..kinds.len())],
                ts,
                sevs[rng.random_range(0..3)],
                families[rng.random_range(0..families.len())],
            );
            fleet.alert(&a, 1);
            live.push(a);
        }
        // Retract a few earlier alerts (false-positive feedback, retention).
        for _ in 0..rng.random_range(0..3) {
            if !live.is_empty() {
                let a = live.swap_remove(rng.random_range(0..live.len()));
                fleet.alert(&a, -1);
            }
        }
        // Per-epoch per-thing score aggregates (skipping some things some epochs).
        for thing in things {
            if rng.random_bool(0.6) {
                let batch: Vec<f64> = (0..rng.random_range(1..30))
                    .map(|_| rng.random::<f64>().powi(3))
                    .collect();
                fleet.scores(thing, &batch);
                scores.entry(thing.to_string()).or_default().extend(batch);
            }
        }
        let snap = fleet.sync();
        assert_eq!(snap.epoch(), epoch);
        let got = snap.devices();
        let want = brute_force(&live, &scores);
        assert_eq!(got.len(), want.len(), "epoch {epoch}: device count");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                same_families(g, w),
                "epoch {epoch}: families {g:?} vs {w:?}"
            );
            assert_eq!(normalise(g.clone()), normalise(w.clone()), "epoch {epoch}");
        }
        let fleet_summary = snap.fleet();
        assert_eq!(fleet_summary.alerts_total, live.len() as i64);
        assert_eq!(fleet_summary.ranking.len(), want.len());
        // The ranking: every device by risk, worst first, ties by thing id; totals from the brute force.
        let mut order: Vec<(f64, String)> =
            want.iter().map(|d| (d.risk, d.thing_id.clone())).collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let ranked: Vec<(f64, String)> = fleet_summary
            .ranking
            .iter()
            .map(|r| (r.risk, r.thing_id.clone()))
            .collect();
        assert_eq!(ranked, order, "epoch {epoch}: ranking");
        let scored: i64 = want.iter().map(|d| d.scores_count).sum();
        assert_eq!(fleet_summary.scores_count, scored, "epoch {epoch}");
        let by_type = live.iter().fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a.alert_type.clone()).or_insert(0i64) += 1;
            m
        });
        assert_eq!(fleet_summary.alerts_by_type, by_type, "epoch {epoch}");
    }
    // Retracting everything empties the alert side; the scores stay.
    for a in live.drain(..) {
        fleet.alert(&a, -1);
    }
    let snap = fleet.sync();
    assert_eq!(snap.fleet().alerts_total, 0);
    assert!(snap
        .devices()
        .iter()
        .all(|d| d.alert_counts.is_empty() && d.scores_count > 0));
    fleet.close();
}

#[test]
fn score_stats_use_nearest_rank() {
    assert_eq!(score_stats(&[]), None);
    // 20 scores: 19 of quantum 1, one of quantum 9 -> p95 is rank 19 -> quantum 1.
    assert_eq!(score_stats(&[(1, 19), (9, 1)]), Some((20, 28, 1)));
    // 10 scores: rank ceil(9.5) = 10 -> the largest.
    assert_eq!(score_stats(&[(1, 9), (9, 1)]), Some((10, 18, 9)));
}
