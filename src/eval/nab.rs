//! Numenta Anomaly Benchmark (NAB) scoring, in its two published forms.
//!
//! Both reward an early first detection inside a window around each labelled anomaly, charge every
//! detection outside the windows, charge every window without a detection, and normalise the sum so the
//! null detector (no detection at all) scores 0 and the perfect detector (one detection at the start of
//! every window) scores 100: `score = 100 * (S - S_null) / (S_perfect - S_null)`, with the raw sums added
//! over all files before normalising.
//!
//! Profiles (weights A_tp, A_fp, A_fn as SKAB writes them, i.e. signed; NAB's `config/profiles.json`
//! stores the magnitudes): standard (1, -0.11, -1), reward_low_FP_rate (1, -0.22, -1),
//! reward_low_FN_rate (1, -0.11, -2).
//!
//! ## Numenta NAB ([`score_numenta`])
//! Source: Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly
//! Benchmark" (ICMLA 2015) and github.com/numenta/NAB (`nab/labeler.py`, `nab/sweeper.py`).
//! - Windows: each label is the centre of a window; the windows of a file together span 10% of its
//!   points, i.e. each is `floor(0.1 * n / labels)` points long (half on each side, clamped to the file);
//!   overlapping windows merge.
//! - Probation: detections in the first 15% of the points (at most 5,000) are ignored (the detector is
//!   still learning); windows are kept.
//! - A detection inside a window at relative position `y = -(right - i + 1) / width` (-1 at the window's
//!   first point, ~0 at its last) scores `A_tp * sigma(y) / sigma(-1)`, where
//!   `sigma(y) = 2 / (1 + exp(5y)) - 1` is NAB's scaled sigmoid (`sigma(y) = -1` for `y > 3`). Only the
//!   first detection of a window counts; later ones in the same window score 0.
//! - A detection outside every window scores `|A_fp| * sigma(y)` (negative): before the first window
//!   `sigma = -1`; after a window, `y = (i - right) / (width - 1)` of the preceding window, so a detection
//!   just after a window costs little and one far after costs the full `A_fp`.
//! - A window without a detection scores `A_fn`.
//!
//! NAB sweeps the detector's score threshold to optimise each profile; here the detections are binary
//! (thresholded by the detector itself), which is how an alerting system is actually run.
//!
//! ## SKAB's variant ([`score_skab`])
//! Source: SKAB (github.com/waico/SKAB, README leaderboard and notebooks) scoring with the `tsad` package
//! (`tsad/evaluating/evaluating.py`: `chp_score(..., metric='nab', window_width='60s',
//! anomaly_window_destination='righter')`, `my_scale`, `single_evaluate_nab`).
//! - A window of 60 s is placed to the right of each true changepoint: `[cp, cp + 60 s]`, both ends
//!   included.
//! - The first detection in a window at relative position `r = (t - start) / (end - start)` scores the
//!   tanh curve `y(x) = (A_tp - A_fp)/2 * (1 - tanh(x)/tanh(pi/2)) + A_fp` at `x = -pi/2 + pi*k/999`,
//!   `k = min(floor(1000 r), 999)` (tsad samples the curve at 1,000 points): A_tp at the window start,
//!   A_fp at its end. Later detections in the same window are ignored.
//! - Each detection outside all windows scores A_fp (flat); each window without a detection scores A_fn.
//! - No probation.

/// Profile weights, signed (A_fp and A_fn negative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub a_tp: f64,
    pub a_fp: f64,
    pub a_fn: f64,
}

/// The three published profiles, in the order standard, low FP, low FN.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        a_tp: 1.0,
        a_fp: -0.11,
        a_fn: -1.0,
    },
    Profile {
        name: "low_fp",
        a_tp: 1.0,
        a_fp: -0.22,
        a_fn: -1.0,
    },
    Profile {
        name: "low_fn",
        a_tp: 1.0,
        a_fp: -0.11,
        a_fn: -2.0,
    },
];

/// Raw sums of one or more files under one profile, before normalisation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RawScore {
    pub score: f64,
    pub null: f64,
    pub perfect: f64,
    /// Windows with at least one detection.
    pub detected: usize,
    /// Windows without a detection.
    pub missed: usize,
    /// Counted detections outside every window.
    pub false_positives: usize,
}

impl RawScore {
    /// Adds another file's sums.
    pub fn add(&mut self, o: &RawScore) {
        self.score += o.score;
        self.null += o.null;
        self.perfect += o.perfect;
        self.detected += o.detected;
        self.missed += o.missed;
        self.false_positives += o.false_positives;
    }

    /// `100 * (S - S_null) / (S_perfect - S_null)`; 0 when there is no window at all (perfect == null).
    pub fn normalised(&self) -> f64 {
        let d = self.perfect - self.null;
        if d.abs() < 1e-12 {
            0.0
        } else {
            100.0 * (self.score - self.null) / d
        }
    }
}

/// Normalised scores under the three profiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct NabScores {
    pub standard: f64,
    pub low_fp: f64,
    pub low_fn: f64,
}

impl NabScores {
    pub fn from_raw(raw: &[RawScore; 3]) -> NabScores {
        NabScores {
            standard: raw[0].normalised(),
            low_fp: raw[1].normalised(),
            low_fn: raw[2].normalised(),
        }
    }
}

/// An inclusive window of point indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
}

/// NAB's scaled sigmoid: `2 / (1 + exp(5y)) - 1`, and -1 for `y > 3`.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Numenta's windows for a file of `n` points with anomalies labelled at `labels` (point indices,
/// any order): each `floor(0.1 * n / labels.len())` points long, centred on its label, clamped to the
/// file, overlapping ones merged. Labels at or beyond `n` are ignored.
pub fn numenta_windows(n: usize, labels: &[usize]) -> Vec<Window> {
    let mut labels: Vec<usize> = labels.iter().copied().filter(|&i| i < n).collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.is_empty() {
        return Vec::new();
    }
    let length = (0.1 * n as f64 / labels.len() as f64).floor() as usize;
    let half = length / 2;
    let mut out: Vec<Window> = Vec::new();
    for i in labels {
        let w = Window {
            start: i.saturating_sub(half),
            end: (i + half).min(n - 1),
        };
        match out.last_mut() {
            Some(last) if w.start <= last.end => last.end = last.end.max(w.end),
            _ => out.push(w),
        }
    }
    out
}

/// Numenta's probationary period for `n` points: `floor(0.15 * n)`, at most 5,000.
pub fn numenta_probation(n: usize) -> usize {
    ((0.15 * n as f64).floor() as usize).min(5000)
}

/// Scores one file the Numenta way. `detections[i]` is the detector's binary output for point `i`;
/// `windows` must be sorted and disjoint (as [`numenta_windows`] makes them); detections before
/// `probation` are ignored.
pub fn score_numenta(
    detections: &[bool],
    windows: &[Window],
    probation: usize,
    p: &Profile,
) -> RawScore {
    let max_tp = scaled_sigmoid(-1.0);
    let mut raw = RawScore {
        null: p.a_fn * windows.len() as f64,
        perfect: p.a_tp * windows.len() as f64,
        ..RawScore::default()
    };
    let mut hit = vec![false; windows.len()];
    // Index of the window the point is in, or the last window before it.
    let mut w = 0usize;
    for (i, &d) in detections.iter().enumerate() {
        while w < windows.len() && windows[w].end < i {
            w += 1;
        }
        if !d || i < probation {
            continue;
        }
        if w < windows.len() && windows[w].start <= i {
            if !hit[w] {
                hit[w] = true;
                let win = windows[w];
                let width = (win.end - win.start + 1) as f64;
                let y = -((win.end - i + 1) as f64) / width;
                raw.score += p.a_tp * scaled_sigmoid(y) / max_tp;
            }
            continue;
        }
        // Outside: relative to the preceding window, if any.
        let unweighted = if w == 0 {
            -1.0
        } else {
            let prev = windows[w - 1];
            let width = (prev.end - prev.start + 1) as f64;
            let y = (i - prev.end) as f64 / (width - 1.0).max(1.0);
            scaled_sigmoid(y)
        };
        raw.score += unweighted * p.a_fp.abs();
        raw.false_positives += 1;
    }
    raw.detected = hit.iter().filter(|h| **h).count();
    raw.missed = windows.len() - raw.detected;
    raw.score += p.a_fn * raw.missed as f64;
    raw
}

/// SKAB's tanh scoring curve at relative position `r` in [0, 1] of the window (see the module docs).
pub fn skab_curve(r: f64, p: &Profile) -> f64 {
    const DETAIL: usize = 1000;
    let k = ((r.max(0.0) * DETAIL as f64).floor() as usize).min(DETAIL - 1);
    let half_pi = std::f64::consts::FRAC_PI_2;
    let x = -half_pi + std::f64::consts::PI * k as f64 / (DETAIL - 1) as f64;
    let span = p.a_tp - p.a_fp;
    span / 2.0 * (1.0 - x.tanh() / half_pi.tanh()) + p.a_fp
}

/// Scores one file the SKAB way. `ts` are the points' times (ms, ascending), `detections` the detected
/// changepoints (same length), `changepoints` the true changepoint times; each window is
/// `[cp, cp + window_ms]`.
pub fn score_skab(
    ts: &[i64],
    detections: &[bool],
    changepoints: &[i64],
    window_ms: i64,
    p: &Profile,
) -> RawScore {
    let mut cps: Vec<i64> = changepoints.to_vec();
    cps.sort_unstable();
    let windows: Vec<(i64, i64)> = cps.iter().map(|&c| (c, c + window_ms)).collect();
    let mut raw = RawScore {
        null: p.a_fn * windows.len() as f64,
        perfect: p.a_tp * windows.len() as f64,
        ..RawScore::default()
    };
    let mut hit = vec![false; windows.len()];
    for (&t, &d) in ts.iter().zip(detections) {
        if !d {
            continue;
        }
        match windows.iter().position(|&(s, e)| s <= t && t <= e) {
            Some(w) => {
                if !hit[w] {
                    hit[w] = true;
                    let (s, e) = windows[w];
                    let r = if e > s {
                        (t - s) as f64 / (e - s) as f64
                    } else {
                        0.0
                    };
                    raw.score += skab_curve(r, p);
                }
            }
            None => {
                raw.score += p.a_fp;
                raw.false_positives += 1;
            }
        }
    }
    raw.detected = hit.iter().filter(|h| **h).count();
    raw.missed = windows.len() - raw.detected;
    raw.score += p.a_fn * raw.missed as f64;
    raw
}

/// Changepoints of a binary prediction, SKAB's way: `|diff(prediction)|`, the first point never one.
pub fn changepoints_of(prediction: &[bool]) -> Vec<bool> {
    let mut out = Vec::with_capacity(prediction.len());
    for (i, &p) in prediction.iter().enumerate() {
        out.push(i > 0 && p != prediction[i - 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn scaled_sigmoid_matches_nab() {
        // 2/(1+e^-5) - 1 = tanh(2.5)
        assert!(close(scaled_sigmoid(-1.0), 2.5f64.tanh()));
        assert!(close(scaled_sigmoid(0.0), 0.0));
        assert!(close(scaled_sigmoid(3.0), -(7.5f64.tanh())));
        assert_eq!(scaled_sigmoid(3.01), -1.0);
    }

    #[test]
    fn numenta_windows_are_10_percent_centred_and_merged() {
        // 100 points, 2 labels: each window floor(0.1*100/2) = 5 points, half = 2.
        assert_eq!(
            numenta_windows(100, &[50, 20]),
            vec![Window { start: 18, end: 22 }, Window { start: 48, end: 52 }]
        );
        // Clamped at both ends.
        assert_eq!(
            numenta_windows(100, &[0, 99]),
            vec![Window { start: 0, end: 2 }, Window { start: 97, end: 99 }]
        );
        // Overlapping windows merge.
        assert_eq!(
            numenta_windows(100, &[50, 52]),
            vec![Window { start: 48, end: 54 }]
        );
        assert!(numenta_windows(100, &[]).is_empty());
        assert_eq!(numenta_probation(100), 15);
        assert_eq!(numenta_probation(1_000_000), 5000);
    }

    /// 100 points, one label at 50: window floor(0.1*100/1) = 10 -> [45, 55] (11 points), probation 15.
    fn fixture() -> (Vec<Window>, usize) {
        (numenta_windows(100, &[50]), numenta_probation(100))
    }

    #[test]
    fn numenta_perfect_null_and_first_detection_only() {
        let (w, prob) = fixture();
        let mut d = vec![false; 100];
        for p in &PROFILES {
            let null = score_numenta(&d, &w, prob, p);
            assert!(close(null.normalised(), 0.0));
            assert_eq!(null.missed, 1);
        }
        // Detection at the window start = perfect; later ones in the window change nothing.
        d[45] = true;
        d[46] = true;
        d[55] = true;
        for p in &PROFILES {
            let s = score_numenta(&d, &w, prob, p);
            assert!(close(s.normalised(), 100.0), "{p:?} {s:?}");
            assert_eq!((s.detected, s.false_positives), (1, 0));
        }
    }

    #[test]
    fn numenta_late_detection_false_positives_and_probation() {
        let (w, prob) = fixture();
        let mut d = vec![false; 100];
        // Last point of the window: y = -1/11, score sigma(-1/11)/sigma(-1) = tanh(2.5/11)/tanh(2.5).
        d[55] = true;
        let tp = (2.5f64 / 11.0).tanh() / 2.5f64.tanh();
        // An FP before the window (after probation) costs the full A_fp; one in probation is ignored.
        d[30] = true;
        d[5] = true;
        // An FP 2 points after the window: y = 2/(11-1) = 0.2, sigma(0.2) = -tanh(0.5).
        d[57] = true;
        let fp_after = -(0.5f64.tanh());
        let expected = |p: &Profile| {
            let raw = tp * p.a_tp + p.a_fp.abs() * (-1.0 + fp_after);
            100.0 * (raw - p.a_fn) / (p.a_tp - p.a_fn)
        };
        for p in &PROFILES {
            let s = score_numenta(&d, &w, prob, p);
            assert!(close(s.normalised(), expected(p)), "{p:?} {s:?}");
            assert_eq!(s.false_positives, 2);
        }
        // Hand values for the standard profile: raw = 0.223439/0.986614 - 0.11*(1 + 0.462117).
        let s = score_numenta(&d, &w, prob, &PROFILES[0]);
        let raw = 0.223_438_8 / 0.986_614_3 - 0.11 * (1.0 + 0.462_117_2);
        assert!((s.score - raw).abs() < 1e-6, "{}", s.score);
        // Missed window under low FN costs 2: all FPs and no TP.
        d[55] = false;
        let s = score_numenta(&d, &w, prob, &PROFILES[2]);
        let raw = -2.0 - 0.11 * (1.0 + (-fp_after));
        // The FP at 57 is now 2 points after the (missed) window: still relative to it.
        assert!(close(s.score, raw), "{} vs {raw}", s.score);
        assert!(close(s.normalised(), 100.0 * (raw + 2.0) / 3.0));
    }

    #[test]
    fn skab_curve_runs_from_a_tp_to_a_fp() {
        for p in &PROFILES {
            assert!(close(skab_curve(0.0, p), p.a_tp));
            assert!(close(skab_curve(1.0, p), p.a_fp));
            // Symmetric about the middle: k = 500 is just past x = 0.
            let mid = (p.a_tp + p.a_fp) / 2.0;
            assert!((skab_curve(0.5, p) - mid).abs() < 0.01);
        }
    }

    #[test]
    fn skab_scores_windows_right_of_changepoints() {
        // Points 1 s apart; changepoints at 10 s and 100 s; windows [10, 70] and [100, 160] s.
        let ts: Vec<i64> = (0..200).map(|i| i * 1000).collect();
        let cps = [10_000, 100_000];
        let mut d = vec![false; 200];
        for p in &PROFILES {
            let s = score_skab(&ts, &d, &cps, 60_000, p);
            assert!(close(s.normalised(), 0.0));
        }
        // Detections at both window starts: perfect; a second one in a window is ignored.
        d[10] = true;
        d[100] = true;
        d[101] = true;
        for p in &PROFILES {
            let s = score_skab(&ts, &d, &cps, 60_000, p);
            assert!(close(s.normalised(), 100.0));
        }
        // A detection 5 s before a changepoint is an FP (the window is to the right only); the first
        // window is detected at its end (70 s: A_fp), the second missed.
        let mut d = vec![false; 200];
        d[95] = true;
        d[70] = true;
        for p in &PROFILES {
            let s = score_skab(&ts, &d, &cps, 60_000, p);
            let raw = p.a_fp + p.a_fp + p.a_fn;
            assert!(close(s.score, raw), "{p:?} {s:?}");
            assert_eq!((s.detected, s.missed, s.false_positives), (1, 1, 1));
            let expected = 100.0 * (raw - 2.0 * p.a_fn) / (2.0 * p.a_tp - 2.0 * p.a_fn);
            assert!(close(s.normalised(), expected));
        }
        // Standard profile by hand: (-0.11 - 0.11 - 1 - (-2)) / (2 - (-2)) * 100 = 19.5.
        let s = score_skab(&ts, &d, &cps, 60_000, &PROFILES[0]);
        assert!(close(s.normalised(), 19.5));
    }

    #[test]
    fn changepoints_are_flips() {
        let p = [false, true, true, false, false, true];
        assert_eq!(
            changepoints_of(&p),
            vec![false, true, false, true, false, true]
        );
        assert!(changepoints_of(&[]).is_empty());
        assert_eq!(changepoints_of(&[true]), vec![false]);
    }
}
