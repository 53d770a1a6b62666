use super::mahalanobis::{wilson_hilferty_z, ModelScore, OnlineMahalanobis};
use super::normalise;
use super::stats::{FeatureScores, FeatureStats};
use super::window::RollingWindow;
use crate::config::ModelConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

// ---------------------------------------------------------------------------------------------------
// Naive reference implementations
// ---------------------------------------------------------------------------------------------------

fn naive_sorted(xs: &[f64]) -> Vec<f64> {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn naive_median(xs: &[f64]) -> f64 {
    let s = naive_sorted(xs);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn naive_mad(xs: &[f64]) -> f64 {
    let m = naive_median(xs);
    let dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    naive_median(&dev)
}

fn naive_mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn naive_std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = naive_mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// numpy's default ("linear") quantile, written from its definition independently of the window.
fn naive_quantile(xs: &[f64], q: f64) -> f64 {
    let s = naive_sorted(xs);
    let h = (s.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    s[lo] + (h - lo as f64) * (s[hi] - s[lo])
}

fn normal(rng: &mut SmallRng) -> f64 {
    StandardNormal.sample(rng)
}

/// A nasty mix: small integers (many duplicates, negatives, zero), Gaussian noise on a large offset,
/// and level steps between regimes.
fn mixed_sequence(rng: &mut SmallRng, len: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let regime = rng.random_range(0..4);
        let run = rng.random_range(1..300);
        for _ in 0..run {
            let v = match regime {
                0 => rng.random_range(-5i32..=5) as f64,
                1 => 1e6 + normal(rng),
                2 => -3.5 + 0.01 * normal(rng),
                _ => {
                    if rng.random_bool(0.7) {
                        42.0
                    } else {
                        -0.0
                    }
                }
            };
            out.push(v);
        }
    }
    out.truncate(len);
    out
}

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b} (tol {tol})");
}

// ---------------------------------------------------------------------------------------------------
// RollingWindow
// ---------------------------------------------------------------------------------------------------

#[test]
fn window_matches_naive_recomputation_on_long_sequences() {
    let mut rng = SmallRng::seed_from_u64(7);
    for &cap in &[1usize, 2, 3, 8, 60, 101] {
        let xs = mixed_sequence(&mut rng, 4000 + 37 * cap);
        let mut w = RollingWindow::new(cap);
        for (i, &x) in xs.iter().enumerate() {
            w.push(x);
            let start = (i + 1).saturating_sub(cap);
            let win = &xs[start..=i];
            let ctx = format!("cap {cap} step {i}");
            assert_eq!(w.len(), win.len(), "{ctx}");
            assert_eq!(w.last(), Some(x), "{ctx}");
            assert!(w.iter().eq(win.iter().copied()), "{ctx}: iter order");
            assert_eq!(w.sorted(), naive_sorted(win).as_slice(), "{ctx}: sorted");
            assert_eq!(w.min(), naive_sorted(win)[0], "{ctx}");
            assert_eq!(w.max(), *naive_sorted(win).last().unwrap(), "{ctx}");
            assert_eq!(w.median(), naive_median(win), "{ctx}: median");
            assert_eq!(w.mad(), naive_mad(win), "{ctx}: mad");
            for q in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
                assert_close(
                    w.quantile(q),
                    naive_quantile(win, q),
                    1e-9 * (1.0 + naive_quantile(win, q).abs()),
                    &format!("{ctx}: quantile {q}"),
                );
            }
            let scale = win.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert_close(w.mean(), naive_mean(win), 1e-12 * (1.0 + scale), &ctx);
            let sd = naive_std(win);
            // Relative to the spread, plus rounding of the level itself (1e6 offsets).
            assert_close(
                w.std(),
                sd,
                1e-9 * sd + 1e-12 * scale,
                &format!("{ctx}: std"),
            );
        }
    }
}

#[test]
fn window_sorted_copy_is_kept_while_asked_for_and_changes_no_result() {
    // Two windows fed the same samples: `cached` is asked for its order statistics in bursts (so its
    // sorted copy is made, maintained over pushes, freed when idle and made again), `plain` never keeps
    // one. Mean and std (whose sums are re-centred on a sample) must agree bit for bit, and
    // the order statistics must match the naive ones at every step.
    let mut rng = SmallRng::seed_from_u64(11);
    for &cap in &[1usize, 2, 5, 60, 101] {
        let xs = mixed_sequence(&mut rng, 3000 + 17 * cap);
        let mut cached = RollingWindow::new(cap);
        let mut plain = RollingWindow::new(cap);
        let mut kept = 0;
        for (i, &x) in xs.iter().enumerate() {
            cached.push(x);
            plain.push(x);
            let ctx = format!("cap {cap} step {i}");
            assert_eq!(cached.mean().to_bits(), plain.mean().to_bits(), "{ctx}");
            assert_eq!(cached.std().to_bits(), plain.std().to_bits(), "{ctx}");
            // Bursts of requests on every step, then requests every 4th step (the copy stays), then
            // none for longer than the idle limit (the copy is freed).
            let asked = (i / 30) % 2 == 0 || (i % 30 < 15 && i % 4 == 0);
            if asked {
                let win = &xs[(i + 1).saturating_sub(cap)..=i];
                let o = cached.order_stats_cached();
                assert_eq!(o, plain.order_stats(), "{ctx}");
                assert_eq!(o.median, naive_median(win), "{ctx}: median");
                assert_eq!(o.mad, naive_mad(win), "{ctx}: mad");
                assert_eq!(o.q1, plain.quantile(0.25), "{ctx}: q1");
                assert_eq!(o.q3, plain.quantile(0.75), "{ctx}: q3");
                assert_eq!(cached.sorted(), naive_sorted(win), "{ctx}: sorted copy");
                assert!(cached.has_sorted_copy(), "{ctx}");
            }
            kept += usize::from(cached.has_sorted_copy());
            assert!(!plain.has_sorted_copy(), "{ctx}: only asking keeps a copy");
        }
        assert!(kept < xs.len(), "cap {cap}: the copy is freed when idle");
        // Idle for the limit: freed, and the window's heap is its ring again.
        for _ in 0..=super::window::SORTED_IDLE_PUSHES {
            cached.push(1.0);
        }
        assert!(!cached.has_sorted_copy(), "cap {cap}");
        assert_eq!(cached.heap_bytes(), cap * 8, "cap {cap}");
    }
}

#[test]
fn window_std_is_accurate_on_large_offset_after_a_level_step() {
    // 0.1 noise on a 1e8 level, after a step from 0: the textbook sum-of-squares formula loses every
    // digit here; the shifted sums must not.
    let mut rng = SmallRng::seed_from_u64(3);
    let mut w = RollingWindow::new(50);
    let mut all = Vec::new();
    for _ in 0..30 {
        let x = normal(&mut rng);
        w.push(x);
        all.push(x);
    }
    for _ in 0..500 {
        let x = 1e8 + 0.1 * normal(&mut rng);
        w.push(x);
        all.push(x);
        let win = &all[all.len().saturating_sub(50)..];
        let sd = naive_std(win);
        assert_close(w.std(), sd, 1e-6 * sd + 1e-6, "std after step");
    }
}

#[test]
fn window_quantiles_match_numpy() {
    // np.quantile([3, -1, 4, 1, 5, 9, 2, 6, 5, 3], q) for q = 0, .1, .25, .33, .5, .75, .9, 1
    let mut w = RollingWindow::new(10);
    for x in [3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0] {
        w.push(x);
    }
    let expected = [
        (0.0, -1.0),
        (0.1, 0.8),
        (0.25, 2.25),
        (0.33, 2.97),
        (0.5, 3.5),
        (0.75, 5.0),
        (0.9, 6.3),
        (1.0, 9.0),
    ];
    for (q, want) in expected {
        assert_close(w.quantile(q), want, 1e-12, &format!("q={q}"));
    }
    // numpy docs: np.percentile([1, 2, 3, 4], 25) == 1.75; np.quantile([[10, 7, 4], [3, 2, 1]], 0.5) == 3.5
    let mut w = RollingWindow::new(4);
    for x in [4.0, 2.0, 1.0, 3.0] {
        w.push(x);
    }
    assert_close(w.quantile(0.25), 1.75, 1e-12, "1..4 p25");
    let mut w = RollingWindow::new(6);
    for x in [10.0, 7.0, 4.0, 3.0, 2.0, 1.0] {
        w.push(x);
    }
    assert_close(w.quantile(0.5), 3.5, 1e-12, "median of 6");
    assert_eq!(w.quantile(0.5), w.median());
    // Out-of-range q is clamped; NaN q gives NaN.
    assert_eq!(w.quantile(-1.0), 1.0);
    assert_eq!(w.quantile(2.0), 10.0);
    assert!(w.quantile(f64::NAN).is_nan());
}

#[test]
fn window_mad_small_cases() {
    let mut w = RollingWindow::new(16);
    // median 4, |dev| = 3 2 2 1 0 1 4 5 -> sorted 0 1 1 2 2 3 4 5... (n = 7 below)
    for x in [1.0, 2.0, 2.0, 3.0, 4.0, 6.0, 9.0] {
        w.push(x);
    }
    // median 3; deviations 2 1 1 0 1 3 6 -> sorted 0 1 1 1 2 3 6 -> MAD 1
    assert_eq!(w.median(), 3.0);
    assert_eq!(w.mad(), 1.0);
    w.push(100.0);
    // median 3.5; deviations 2.5 1.5 1.5 .5 .5 2.5 5.5 96.5 -> sorted .5 .5 1.5 1.5 2.5 2.5 5.5 96.5
    assert_eq!(w.median(), 3.5);
    assert_eq!(w.mad(), 2.0);
    let mut w = RollingWindow::new(5);
    w.push(-7.0);
    assert_eq!(w.mad(), 0.0);
    for _ in 0..10 {
        w.push(2.5);
    }
    assert_eq!(w.mad(), 0.0);
}

#[test]
fn window_empty_single_and_degenerate_inputs() {
    let mut w = RollingWindow::new(4);
    assert!(w.is_empty());
    for v in [
        w.mean(),
        w.std(),
        w.min(),
        w.max(),
        w.median(),
        w.mad(),
        w.quantile(0.5),
    ] {
        assert!(v.is_nan(), "empty window statistics are NaN");
    }
    assert_eq!(w.last(), None);
    w.push(f64::NAN);
    w.push(f64::INFINITY);
    assert!(w.is_empty(), "non-finite samples are ignored");
    w.push(5.0);
    assert_eq!(
        (w.mean(), w.std(), w.median(), w.mad()),
        (5.0, 0.0, 5.0, 0.0)
    );
    w.clear();
    assert!(w.is_empty() && w.mean().is_nan());
    w.push(1.0);
    w.push(3.0);
    assert_eq!(w.mean(), 2.0);
    assert_close(w.std(), 2f64.sqrt(), 1e-15, "std of 1,3");

    let mut w = RollingWindow::new(0);
    assert_eq!(w.capacity(), 1);
    w.push(1.0);
    w.push(2.0);
    assert_eq!((w.len(), w.last(), w.mean()), (1, Some(2.0), 2.0));
}

#[test]
fn window_constant_signal_has_exactly_zero_std() {
    let mut w = RollingWindow::new(60);
    for i in 0..1000 {
        w.push(if i < 100 { i as f64 } else { 230.1 });
    }
    assert_eq!(w.std(), 0.0);
    assert_eq!(w.mean(), 230.1);
    assert!(w.is_full());
}

// ---------------------------------------------------------------------------------------------------
// FeatureStats
// ---------------------------------------------------------------------------------------------------

fn gaussian_stats(seed: u64, n: usize, mean: f64, sd: f64) -> FeatureStats {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut fs = FeatureStats::new(60, 0.3);
    for _ in 0..n {
        fs.update(mean + sd * normal(&mut rng));
    }
    fs
}

#[test]
fn stats_are_zero_until_warm() {
    let mut fs = FeatureStats::new(60, 0.3);
    assert_eq!(fs.min_samples(), 8);
    for i in 0..7 {
        assert!(!fs.warm());
        assert_eq!(fs.score(1e6), FeatureScores::default(), "sample {i}");
        fs.update(10.0 + i as f64);
    }
    assert_eq!(fs.score(1e6), FeatureScores::default());
    fs.update(17.0);
    assert!(fs.warm());
    let s = fs.score(1e6);
    assert!(s.z > 100.0 && s.robust_z > 100.0 && s.iqr > 100.0 && s.ewma_z > 100.0);

    // A window smaller than 8 warms when full.
    let mut small = FeatureStats::new(3, 0.3);
    assert_eq!(small.min_samples(), 3);
    small.update(1.0);
    small.update(2.0);
    assert_eq!(small.score(50.0), FeatureScores::default());
    small.update(3.0);
    assert!(small.score(50.0).z > 10.0);
}

#[test]
fn stats_spike_scores_large_and_signed() {
    let fs = gaussian_stats(11, 300, 100.0, 1.0);
    let up = fs.score(110.0);
    assert!(up.z > 6.0, "{up:?}");
    assert!(up.robust_z > 6.0, "{up:?}");
    assert!(up.iqr > 2.0, "{up:?}");
    assert!(up.ewma_z > 4.0, "{up:?}");
    let down = fs.score(90.0);
    assert!(down.z < -6.0 && down.robust_z < -6.0 && down.iqr < -2.0 && down.ewma_z < -4.0);
    // A typical value scores small, and the median sits inside the quartiles.
    let typical = fs.score(fs.window.median());
    assert!(typical.z.abs() < 1.0 && typical.robust_z == 0.0 && typical.iqr == 0.0);
    // Against the detectors' default thresholds, the spike is far past 0.8 and the typical value is not.
    assert!(normalise(up.z, 4.0) > 0.99);
    assert!(normalise(typical.z, 4.0) < 0.1);
}

#[test]
fn stats_definitions_match_window_statistics() {
    let fs = gaussian_stats(5, 200, -20.0, 3.0);
    let w = &fs.window;
    let x = -5.0;
    let s = fs.score(x);
    assert_close(s.z, (x - w.mean()) / w.std(), 1e-12, "z");
    assert_close(
        s.robust_z,
        (x - w.median()) / (1.4826 * w.mad()),
        1e-12,
        "robust z",
    );
    let q3 = w.quantile(0.75);
    let iqr = q3 - w.quantile(0.25);
    assert_close(s.iqr, (x - q3) / iqr, 1e-12, "iqr");
    let e = 0.3 * x + 0.7 * fs.ewma().unwrap();
    let want = (e - w.mean()) / (w.std() * (0.3f64 / 1.7).sqrt());
    assert_close(s.ewma_z, want, 1e-12, "ewma z");
}

#[test]
fn stats_constant_signal_then_small_change_is_finite_and_large() {
    let mut fs = FeatureStats::new(60, 0.3);
    for _ in 0..100 {
        fs.update(50.0);
    }
    assert_eq!(fs.score(50.0), FeatureScores::default());
    let s = fs.score(50.5);
    for v in [s.z, s.robust_z, s.ewma_z, s.iqr] {
        assert!(v.is_finite() && v > 5.0, "{s:?}");
    }
    // Floor is 0.1% of the level: 0.5 / 0.05 = 10.
    assert_close(s.z, 10.0, 1e-9, "floored z");
    // Constant zero: the absolute floor keeps it finite too.
    let mut zero = FeatureStats::new(60, 0.3);
    for _ in 0..20 {
        zero.update(0.0);
    }
    let s = zero.score(1.0);
    assert!(s.z.is_finite() && s.z > 1e6);
}

#[test]
fn stats_score_is_pure_and_update_learns() {
    let mut fs = gaussian_stats(9, 100, 10.0, 2.0);
    let before = (
        fs.window.len(),
        fs.window.mean(),
        fs.window.std(),
        fs.window.last(),
        fs.ewma(),
    );
    let a = fs.score(25.0);
    let b = fs.score(25.0);
    assert_eq!(a, b);
    let after = (
        fs.window.len(),
        fs.window.mean(),
        fs.window.std(),
        fs.window.last(),
        fs.ewma(),
    );
    assert_eq!(before, after);
    let c = fs.score_and_update(25.0);
    assert_eq!(a, c);
    assert_eq!(fs.window.last(), Some(25.0));
    assert_ne!(fs.score(25.0), a, "the learned spike changes later scores");
    // Non-finite values neither score nor poison the state.
    assert_eq!(fs.score(f64::NAN), FeatureScores::default());
    let mean = fs.window.mean();
    fs.update(f64::NAN);
    fs.update(f64::NEG_INFINITY);
    assert_eq!(fs.window.mean(), mean);
    assert!(fs.ewma().unwrap().is_finite());
}

#[test]
fn stats_ewma_starts_at_first_value() {
    let mut fs = FeatureStats::new(10, 0.5);
    fs.update(4.0);
    assert_eq!(fs.ewma(), Some(4.0));
    fs.update(8.0);
    assert_eq!(fs.ewma(), Some(6.0));
    // alpha 0 would freeze the chart; it is clamped to a tiny positive value.
    assert!(FeatureStats::new(10, 0.0).alpha() > 0.0);
}

// ---------------------------------------------------------------------------------------------------
// OnlineMahalanobis
// ---------------------------------------------------------------------------------------------------

fn cfg(half_life: f64, shrinkage: f64) -> ModelConfig {
    ModelConfig {
        half_life,
        shrinkage,
        threshold: 5.0,
        ..ModelConfig::default()
    }
}

/// Correlated 2-D Gaussian: unit marginals, correlation `rho`.
fn correlated_pair(rng: &mut SmallRng, rho: f64) -> [f64; 2] {
    let a = normal(rng);
    let b = normal(rng);
    [a, rho * a + (1.0 - rho * rho).sqrt() * b]
}

#[test]
fn model_is_none_until_warm() {
    let mut m = OnlineMahalanobis::new(3, &ModelConfig::default());
    assert_eq!(m.min_samples(), 16);
    let mut rng = SmallRng::seed_from_u64(1);
    for i in 0..15 {
        let x = [normal(&mut rng), normal(&mut rng), normal(&mut rng)];
        assert!(m.score(&x).is_none(), "sample {i}");
        m.update(&x);
    }
    assert!(m.score(&[0.0, 0.0, 0.0]).is_none());
    m.update(&[0.1, -0.2, 0.3]);
    assert_eq!(m.count(), 16);
    assert!(m.score(&[0.0, 0.0, 0.0]).is_some());
    // Larger dimension needs 2*dim samples.
    assert_eq!(
        OnlineMahalanobis::new(13, &ModelConfig::default()).min_samples(),
        26
    );
    // Wrong length or non-finite input: no score, no learning.
    assert!(m.score(&[0.0, 0.0]).is_none());
    assert!(m.score(&[0.0, f64::NAN, 0.0]).is_none());
    m.update(&[1.0, 2.0]);
    m.update(&[1.0, f64::INFINITY, 2.0]);
    assert_eq!(m.count(), 16);
    // dim 0 never scores.
    let mut z = OnlineMahalanobis::new(0, &ModelConfig::default());
    for _ in 0..20 {
        z.update(&[]);
    }
    assert!(z.score(&[]).is_none());
}

#[test]
fn model_early_estimates_are_plain_averages() {
    let mut m = OnlineMahalanobis::new(2, &cfg(500.0, 0.05));
    let xs = [[1.0, 2.0], [3.0, -1.0], [2.0, 0.5], [6.0, 4.0], [-2.0, 1.0]];
    for x in &xs {
        m.update(x);
    }
    let n = xs.len() as f64;
    let mean = [
        xs.iter().map(|x| x[0]).sum::<f64>() / n,
        xs.iter().map(|x| x[1]).sum::<f64>() / n,
    ];
    assert_close(m.mean()[0], mean[0], 1e-12, "mean 0");
    assert_close(m.mean()[1], mean[1], 1e-12, "mean 1");
    for i in 0..2 {
        for j in 0..2 {
            let c = xs
                .iter()
                .map(|x| (x[i] - mean[i]) * (x[j] - mean[j]))
                .sum::<f64>()
                / n;
            assert_close(m.covariance(i, j), c, 1e-12, "population covariance");
        }
    }
    assert_close(m.alpha(), 1.0 - 0.5f64.powf(1.0 / 500.0), 1e-15, "alpha");
}

#[test]
fn model_contributions_sum_to_t2_and_score_into_agrees() {
    let mut rng = SmallRng::seed_from_u64(21);
    let dim = 5;
    let mut m = OnlineMahalanobis::new(dim, &ModelConfig::default());
    for _ in 0..400 {
        let base = normal(&mut rng);
        let x: Vec<f64> = (0..dim)
            .map(|i| 10.0 * i as f64 + base * (i as f64 + 1.0) + normal(&mut rng))
            .collect();
        m.update(&x);
    }
    let mut scratch = Vec::new();
    let mut out = ModelScore::default();
    for _ in 0..50 {
        let x: Vec<f64> = (0..dim)
            .map(|i| 10.0 * i as f64 + 3.0 * normal(&mut rng))
            .collect();
        let s = m.score(&x).unwrap();
        assert_eq!(s.contributions.len(), dim);
        let sum: f64 = s.contributions.iter().sum();
        assert_close(sum, s.t2, 1e-9 * (1.0 + s.t2), "contributions sum");
        assert!(s.t2 >= 0.0 && s.z >= 0.0);
        assert_eq!(s.z, wilson_hilferty_z(s.t2 / m.small_sample_factor(), dim));
        assert!(m.score_into(&x, &mut scratch, &mut out));
        assert_eq!(out, s);
    }
}

#[test]
fn model_detects_correlation_break_that_marginals_miss() {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut m = OnlineMahalanobis::new(2, &ModelConfig::default());
    let mut xs = RollingWindow::new(2000);
    let mut ys = RollingWindow::new(2000);
    for _ in 0..2000 {
        let p = correlated_pair(&mut rng, 0.95);
        xs.push(p[0]);
        ys.push(p[1]);
        m.update(&p);
    }
    let (sx, sy) = (xs.std(), ys.std());
    let broken = [1.5 * sx * 0.95 + xs.mean(), -1.5 * sy * 0.95 + ys.mean()];
    let along = [2.5 * sx + xs.mean(), 2.5 * sy + ys.mean()];
    // Each marginal of the broken point is within 1.5 sigma: univariate z misses it.
    assert!(((broken[0] - xs.mean()) / sx).abs() < 1.5);
    assert!(((broken[1] - ys.mean()) / sy).abs() < 1.5);
    let b = m.score(&broken).unwrap();
    let a = m.score(&along).unwrap();
    assert!(b.t2 > 4.0 * a.t2, "broken {b:?} vs along {a:?}");
    assert!(
        b.z > 5.0,
        "correlation break passes the default threshold: {b:?}"
    );
    assert!(a.z < 3.0, "in-pattern point stays below it: {a:?}");
    // Both features share the blame for the break.
    assert!(b.contributions.iter().all(|&c| c > 0.0));
}

#[test]
fn wilson_hilferty_calibration() {
    for k in [1usize, 2, 5, 13, 20] {
        let kf = k as f64;
        let at_mean = wilson_hilferty_z(kf, k);
        assert_close(at_mean, (2.0 / (9.0 * kf)).sqrt(), 1e-12, "z at T^2 = k");
        assert!(at_mean < 0.5);
        let median = kf * (1.0 - 2.0 / (9.0 * kf)).powi(3);
        assert_close(wilson_hilferty_z(median, k), 0.0, 1e-9, "z at WH median");
        assert_eq!(wilson_hilferty_z(0.0, k), 0.0, "clamped at 0");
        assert!(wilson_hilferty_z(4.0 * kf, k) > wilson_hilferty_z(2.0 * kf, k));
    }
    // chi2(10) 99.9th percentile = 29.588 -> z close to Phi^-1(0.999) = 3.090
    assert_close(wilson_hilferty_z(29.588, 10), 3.090, 0.05, "chi2(10) 0.999");
    // chi2(3) 95th percentile = 7.815 -> 1.645
    assert_close(wilson_hilferty_z(7.815, 3), 1.645, 0.05, "chi2(3) 0.95");
    assert_eq!(wilson_hilferty_z(5.0, 0), 0.0);
    assert_eq!(wilson_hilferty_z(f64::NAN, 3), 0.0);
}

#[test]
fn model_constant_dimensions_do_not_produce_nan() {
    let mut rng = SmallRng::seed_from_u64(8);
    let mut m = OnlineMahalanobis::new(3, &ModelConfig::default());
    for _ in 0..200 {
        m.update(&[230.0, 0.0, 5.0 + normal(&mut rng)]);
    }
    let s = m.score(&[230.0, 0.0, 5.0]).unwrap();
    assert!(s.t2.is_finite() && s.z.is_finite());
    assert!(s.contributions.iter().all(|c| c.is_finite()));
    assert!(
        s.z < 2.0,
        "an in-pattern point on a flat feature is normal: {s:?}"
    );
    // A step of 1% on the flat feature is a finite, large anomaly (resolution floor 0.1%).
    let s = m.score(&[232.3, 0.0, 5.0]).unwrap();
    assert!(s.t2.is_finite() && s.z > 5.0, "{s:?}");
    assert!(s.contributions[0] > 0.9 * s.t2);
    let s = m.score(&[230.0, 1e-3, 5.0]).unwrap();
    assert!(s.t2.is_finite() && s.z > 5.0, "{s:?}");
}

#[test]
fn model_collinear_features_without_shrinkage_still_factorise() {
    let mut rng = SmallRng::seed_from_u64(13);
    let mut m = OnlineMahalanobis::new(3, &cfg(200.0, 0.0));
    for _ in 0..300 {
        let a = 100.0 + normal(&mut rng);
        m.update(&[a, 2.0 * a, -a]);
    }
    let s = m.score(&[101.0, 202.0, -101.0]).unwrap();
    assert!(s.t2.is_finite() && s.contributions.iter().all(|c| c.is_finite()));
    let broken = m.score(&[101.0, 198.0, -101.0]).unwrap();
    assert!(broken.t2.is_finite() && broken.t2 > s.t2);
}

#[test]
fn model_score_is_pure_and_update_moves_the_mean() {
    let mut rng = SmallRng::seed_from_u64(17);
    let mut m = OnlineMahalanobis::new(2, &cfg(50.0, 0.05));
    for _ in 0..100 {
        m.update(&correlated_pair(&mut rng, 0.5));
    }
    let x = [4.0, 4.0];
    let a = m.score(&x).unwrap();
    assert_eq!(m.score(&x).unwrap(), a);
    assert_eq!(m.count(), 100);
    // Learning the new operating point makes it normal (short half-life forgets the old one).
    for _ in 0..500 {
        let p = correlated_pair(&mut rng, 0.5);
        m.update(&[4.0 + p[0], 4.0 + p[1]]);
    }
    let b = m.score(&x).unwrap();
    assert!(b.t2 < a.t2 / 10.0, "{a:?} -> {b:?}");
    assert!(m.count() == 600);
}

#[test]
fn model_score_into_reuses_its_buffers() {
    let mut rng = SmallRng::seed_from_u64(99);
    let mut m = OnlineMahalanobis::new(4, &ModelConfig::default());
    for _ in 0..100 {
        let x: Vec<f64> = (0..4).map(|_| normal(&mut rng)).collect();
        m.update(&x);
    }
    let mut scratch = Vec::new();
    let mut out = ModelScore::default();
    assert!(m.score_into(&[0.0; 4], &mut scratch, &mut out));
    let (sp, cp) = (scratch.as_ptr(), out.contributions.as_ptr());
    for i in 0..20 {
        assert!(m.score_into(&[i as f64; 4], &mut scratch, &mut out));
        assert_eq!((scratch.as_ptr(), out.contributions.as_ptr()), (sp, cp));
    }
    assert!(!m.score_into(&[0.0; 3], &mut scratch, &mut out));
}

#[test]
fn normalise_maps_threshold_to_point_eight() {
    for t in [1.0, 3.0, 4.0, 5.0] {
        assert_close(normalise(t, t), 0.8, 1e-12, "threshold");
        assert_close(normalise(-t, t), 0.8, 1e-12, "sign-insensitive");
        assert_eq!(normalise(0.0, t), 0.0);
        assert!(normalise(0.5 * t, t) < normalise(t, t));
        assert!(normalise(2.0 * t, t) > 0.99 && normalise(2.0 * t, t) <= 1.0);
    }
}

#[test]
fn small_sample_factor_deflates_t2_of_a_young_model_only() {
    let dim = 13;
    let mut m = OnlineMahalanobis::new(dim, &ModelConfig::default());
    let mut rng = SmallRng::seed_from_u64(5);
    for _ in 0..30 {
        let x: Vec<f64> = (0..dim).map(|_| normal(&mut rng)).collect();
        m.update(&x);
    }
    // n = 30, k = 13: (31 * 29) / (30 * 17) = 1.763
    assert_close(
        m.small_sample_factor(),
        31.0 * 29.0 / (30.0 * 17.0),
        1e-12,
        "factor at n = 30",
    );
    for _ in 0..5_000 {
        let x: Vec<f64> = (0..dim).map(|_| normal(&mut rng)).collect();
        m.update(&x);
    }
    // Capped at the EW effective sample size (~1443 for half-life 500): close to 1.
    let f = m.small_sample_factor();
    assert!(f > 1.0 && f < 1.02, "{f}");
}

// ---------------------------------------------------------------------------------------------------
// Operating regimes
// ---------------------------------------------------------------------------------------------------

mod regimes {
    use super::super::regimes::{fit, silhouette, NoRegimes, RegimeConfig};
    use crate::config::ModelConfig;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    /// `n` readings cycling through `centres` (runs of `run` readings) with unit noise: by rows (the
    /// centre's coordinates + noise) and model rows (by + one noise feature).
    fn phased(centres: &[[f64; 2]], n: usize, run: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut by = Vec::new();
        let mut x = Vec::new();
        for i in 0..n {
            let c = centres[(i / run) % centres.len()];
            let r: [f64; 3] = std::array::from_fn(|_| StandardNormal.sample(&mut rng));
            by.extend([c[0] + r[0], c[1] + r[1]]);
            x.extend([c[0] + r[0], c[1] + r[1], 10.0 + r[2]]);
        }
        (by, x)
    }

    #[test]
    fn auto_finds_the_phases_orders_them_and_fits_a_model_per_regime() {
        let centres = [[100.0, 0.0], [0.0, 0.0], [50.0, 40.0]];
        let (by, x) = phased(&centres, 600, 50, 1);
        let cfg = RegimeConfig::default();
        let r = fit(&by, 2, &x, 3, &cfg, &ModelConfig::default()).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.silhouette > 0.8, "{}", r.silhouette);
        // Ordered by the first feature: 0, 50, 100.
        let firsts: Vec<f64> = (0..3).map(|k| r.centre_of(k).next().unwrap()).collect();
        for (got, want) in firsts.iter().zip([0.0, 50.0, 100.0]) {
            assert!((got - want).abs() < 1.0, "{firsts:?}");
        }
        // Each regime model learned its own readings (settled ones only): ~200 each, minus settling.
        for reg in &r.regimes {
            assert!(reg.model.warm());
            assert!(
                (150..=200).contains(&reg.model.count()),
                "{}",
                reg.model.count()
            );
        }
        // A reading at a regime centre is in that regime and close; one between regimes is far.
        let mut z = Vec::new();
        let mut terms = Vec::new();
        r.scale_into(&[50.0, 40.0], &mut z);
        let a = r.assign(&z, &mut terms);
        assert_eq!(a.regime, 1);
        assert!(r.distance_z(&a) < 2.0, "{a:?}");
        r.scale_into(&[25.0, 20.0], &mut z);
        let a = r.assign(&z, &mut terms);
        assert!(r.distance_z(&a) > 10.0, "{a:?}");
        assert_eq!(terms.len(), 2);
        assert!((terms.iter().sum::<f64>() - a.distance_t2).abs() < 1e-9);
    }

    #[test]
    fn no_distinct_phases_or_no_variation_means_no_regimes() {
        let (by, x) = phased(&[[5.0, 5.0]], 600, 50, 2);
        let cfg = RegimeConfig::default();
        match fit(&by, 2, &x, 3, &cfg, &ModelConfig::default()) {
            Err(NoRegimes::NoDistinctPhases { silhouette, .. }) => assert!(silhouette < 0.5),
            other => panic!("{other:?}"),
        }
        let flat = vec![3.0; 1200];
        assert_eq!(
            fit(&flat, 2, &x, 3, &cfg, &ModelConfig::default()).unwrap_err(),
            NoRegimes::Constant
        );
        let one = RegimeConfig {
            k: Some(1),
            ..RegimeConfig::default()
        };
        assert_eq!(
            fit(&by, 2, &x, 3, &one, &ModelConfig::default()).unwrap_err(),
            NoRegimes::OneRegime
        );
        assert_eq!(
            fit(&by[..8], 2, &x[..12], 3, &cfg, &ModelConfig::default()).unwrap_err(),
            NoRegimes::TooFewReadings(4)
        );
        // Two distinct values only: at most two regimes, even when four are asked for.
        let two: Vec<f64> = (0..600).flat_map(|i| [(i % 2) as f64, 0.0]).collect();
        let four = RegimeConfig {
            k: Some(4),
            ..RegimeConfig::default()
        };
        assert!(matches!(
            fit(&two, 2, &x, 3, &four, &ModelConfig::default()),
            Err(NoRegimes::FewDistinct(2))
        ));
    }

    #[test]
    fn silhouette_of_well_separated_clusters_is_near_one_and_of_a_bad_split_is_low() {
        let z: Vec<f64> = (0..40)
            .map(|i| {
                if i < 20 {
                    i as f64 * 0.01
                } else {
                    10.0 + i as f64 * 0.01
                }
            })
            .collect();
        let good: Vec<usize> = (0..40).map(|i| usize::from(i >= 20)).collect();
        assert!(silhouette(&z, 1, &good, 2) > 0.95);
        let bad: Vec<usize> = (0..40).map(|i| i % 2).collect();
        assert!(silhouette(&z, 1, &bad, 2) < 0.05);
    }
}
