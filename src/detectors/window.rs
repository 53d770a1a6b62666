//! A fixed-capacity rolling window: O(1) push, O(1) mean/std, and order statistics (min, max, median,
//! MAD, quantiles) on demand.
//!
//! The samples live in a ring buffer in arrival order (to know what to evict). Order statistics need
//! the samples sorted, but the detectors ask for them only for the readings scored in full (see
//! `pipeline::engine::score`: the statistics are skipped for almost every reading), so a push does not
//! keep a sorted copy up to date. [`RollingWindow::order_stats_cached`] sorts a copy when asked and
//! keeps it while it keeps being asked for (an anomalous episode, or score lines for every reading):
//! each push then maintains it by binary search plus one `memmove` (cheaper than any tree at the window
//! sizes used here, tens to a few hundred samples). After [`SORTED_IDLE_PUSHES`] pushes without a
//! request the copy is freed, and the next request sorts again: the copy never costs more than about
//! twice what sorting on every request would, and most windows hold none. The copy is a cache, not
//! state: checkpoints do not store it, and whichever way the samples are ordered, a median is the same
//! number.
//!
//! Mean and variance come from running sums of `x - shift`, where `shift` is a sample near the centre of
//! the window. Shifting avoids the catastrophic cancellation of the textbook `sum(x^2) - n*mean^2` on
//! signals with a large offset (230 V mains with 0.1 V noise), and an exact recomputation every
//! `capacity` pushes removes the drift that add/subtract of evicted samples accumulates. Because `shift`
//! is an actual sample, a constant signal yields exactly zero deviations and a standard deviation of
//! exactly 0.
//!
//! All statistics of an empty window are NaN, so a caller that forgets a warm-up check gets an obviously
//! invalid value rather than a plausible zero. Non-finite samples are ignored by [`RollingWindow::push`]:
//! one NaN or infinity would otherwise poison the running sums and the ordering until it is evicted.

use std::cell::RefCell;
use std::cmp::Ordering;

/// Pushes without an order-statistics request after which a window frees its sorted copy. Maintaining
/// the copy costs a binary search and a memmove per push (about an eighth of sorting 60 samples), so
/// after this many pushes keeping it has cost about as much as sorting again would.
pub const SORTED_IDLE_PUSHES: u32 = 8;

thread_local! {
    /// Scratch for order statistics of a window without a sorted copy.
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// The order statistics the detectors use (see [`RollingWindow::order_stats`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OrderStats {
    pub median: f64,
    /// Unscaled median absolute deviation from the median.
    pub mad: f64,
    /// `quantile(0.25)`.
    pub q1: f64,
    /// `quantile(0.75)`.
    pub q3: f64,
}

/// Rolling window over the last `capacity` samples of one feature.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RollingWindow {
    capacity: usize,
    /// Samples in arrival order; slot `head` holds the oldest once the buffer is full.
    ring: Vec<f64>,
    head: usize,
    /// Reference value subtracted before summing (a recent central sample).
    shift: f64,
    /// Sum of `x - shift` over the window.
    s1: f64,
    /// Sum of `(x - shift)^2` over the window.
    s2: f64,
    /// Pushes since the running sums were last recomputed exactly.
    since_recompute: usize,
    /// The same samples ascending (by `f64::total_cmp`, a total order over finite values), while order
    /// statistics keep being asked for; a cache, not stored in checkpoints.
    #[serde(skip)]
    sorted: Option<Vec<f64>>,
    /// Pushes since the sorted copy was last used.
    #[serde(skip)]
    idle: u32,
}

impl RollingWindow {
    /// Creates an empty window. A capacity of 0 is treated as 1 (the configuration rejects 0; this keeps
    /// the type total instead of panicking).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RollingWindow {
            capacity,
            ring: Vec::with_capacity(capacity),
            head: 0,
            shift: 0.0,
            s1: 0.0,
            s2: 0.0,
            since_recompute: 0,
            sorted: None,
            idle: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Heap bytes owned (the ring, and the sorted copy while there is one, by allocated capacity).
    pub fn heap_bytes(&self) -> usize {
        let sorted = self.sorted.as_ref().map_or(0, Vec::capacity);
        (self.ring.capacity() + sorted) * std::mem::size_of::<f64>()
    }

    /// True while the window keeps a sorted copy (see the module docs).
    pub fn has_sorted_copy(&self) -> bool {
        self.sorted.is_some()
    }

    /// Checks that a deserialised window (a state checkpoint) is internally consistent, so a damaged
    /// one is refused with a reason instead of panicking later.
    pub fn check(&self) -> Result<(), String> {
        let n = self.ring.len();
        if self.capacity == 0
            || n > self.capacity
            || (n == self.capacity && self.head >= self.capacity)
            || (n < self.capacity && self.head != 0)
        {
            return Err(format!(
                "rolling window of capacity {} with {} samples (head {})",
                self.capacity, n, self.head
            ));
        }
        // `shift` is always a sample (or 0 when empty).
        if !self.ring.iter().all(|v| v.is_finite()) || !self.shift.is_finite() {
            return Err("rolling window with a non-finite sample".into());
        }
        Ok(())
    }

    /// Adds a sample, evicting the oldest when full. Non-finite samples are ignored. O(1), plus a
    /// binary search and a memmove while the window keeps a sorted copy. Inlined into the callers'
    /// per-feature loops (a call's register saves cost a fifth of a push); the recompute stays out
    /// of line.
    #[inline]
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if self.ring.is_empty() {
            self.shift = x;
            self.s1 = 0.0;
            self.s2 = 0.0;
            self.since_recompute = 0;
        }
        if self.sorted.is_some() {
            self.idle += 1;
            if self.idle > SORTED_IDLE_PUSHES {
                self.sorted = None;
            }
        }
        let mut evicted_sq = 0.0;
        if self.ring.len() < self.capacity {
            self.ring.push(x);
            if let Some(s) = self.sorted.as_mut() {
                let pos = match s.binary_search_by(|v| v.total_cmp(&x)) {
                    Ok(i) | Err(i) => i,
                };
                s.insert(pos, x);
            }
        } else {
            let old = std::mem::replace(&mut self.ring[self.head], x);
            self.head += 1;
            if self.head == self.capacity {
                self.head = 0;
            }
            if let Some(s) = self.sorted.as_mut() {
                if !replace_sorted(s, old, x) {
                    // Unreachable while the two views agree; forget the copy rather than panic.
                    self.sorted = None;
                }
            }
            let d = old - self.shift;
            self.s1 -= d;
            self.s2 -= d * d;
            evicted_sq = d * d;
        }
        let d = x - self.shift;
        self.s1 += d;
        self.s2 += d * d;
        self.since_recompute += 1;
        // Subtracting a square much larger than what remains leaves mostly rounding error behind (an
        // outlier or an old level leaving the window). Each such outlier triggers at most one O(n)
        // recompute, so the amortised cost stays O(1) on ordinary data and O(n) in the worst case.
        if self.since_recompute >= self.capacity
            || evicted_sq > 1e6 * self.s2
            || self.shift_is_stale()
        {
            self.recompute_sums();
        }
    }

    /// True when the level has moved so far from `shift` that `s2 - s1^2/n` loses more than ~6 digits
    /// to cancellation (a step change). Right after a recompute this is false, because the shift is
    /// then within a standard deviation of the mean (see `recompute_sums`), so it cannot trigger on
    /// every push.
    fn shift_is_stale(&self) -> bool {
        // `m1^2 > 1e6 * (s2/n - m1^2)` with `m1 = s1/n`, times n^2: no division on every push.
        let n = self.ring.len() as f64;
        let s1_sq = self.s1 * self.s1;
        s1_sq > 1e6 * (self.s2 * n - s1_sq)
    }

    /// Re-centres `shift` on the sample nearest the window's running mean (the first such in ring
    /// order) and recomputes the sums exactly. O(n) without sorting or selecting: a median would do as
    /// well, but finding one costs several times more, on every `capacity`-th push of every window.
    /// Some sample lies within one standard deviation of the mean, so the nearest one does too, and
    /// `shift_is_stale` cannot hold right after a recompute. The choice reads only the ring (in its
    /// stored order) and the sums, which checkpoints keep, so a restored window re-centres as the
    /// original would.
    #[inline(never)]
    fn recompute_sums(&mut self) {
        self.since_recompute = 0;
        let Some(&first) = self.ring.first() else {
            self.s1 = 0.0;
            self.s2 = 0.0;
            return;
        };
        let centre = self.shift + self.s1 / self.ring.len() as f64;
        let (mut nearest, mut distance) = (first, (first - centre).abs());
        for &v in &self.ring[1..] {
            let d = (v - centre).abs();
            if d < distance {
                (nearest, distance) = (v, d);
            }
        }
        self.shift = nearest;
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in &self.ring {
            let d = v - nearest;
            s1 += d;
            s2 += d * d;
        }
        self.s1 = s1;
        self.s2 = s2;
    }

    /// Calls `f` with the samples ascending: the sorted copy if there is one, else a sorted scratch copy.
    fn with_sorted<R>(&self, f: impl FnOnce(&[f64]) -> R) -> R {
        if let Some(s) = &self.sorted {
            return f(s);
        }
        SCRATCH.with_borrow_mut(|v| {
            v.clear();
            v.extend_from_slice(&self.ring);
            v.sort_unstable_by(f64::total_cmp);
            f(v)
        })
    }

    /// The sorted copy, made if there is none; marks it used.
    fn sorted_copy(&mut self) -> &[f64] {
        self.idle = 0;
        let (ring, capacity) = (&self.ring, self.capacity);
        self.sorted.get_or_insert_with(|| {
            let mut s = Vec::with_capacity(capacity);
            s.extend_from_slice(ring);
            s.sort_unstable_by(f64::total_cmp);
            s
        })
    }

    /// Forgets all samples (keeps the ring's allocation).
    pub fn clear(&mut self) {
        self.ring.clear();
        self.sorted = None;
        self.idle = 0;
        self.head = 0;
        self.shift = 0.0;
        self.s1 = 0.0;
        self.s2 = 0.0;
        self.since_recompute = 0;
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once `capacity` samples are held.
    pub fn is_full(&self) -> bool {
        self.ring.len() == self.capacity
    }

    /// Samples oldest first.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        let (newer, older) = self.ring.split_at(self.head);
        older.iter().chain(newer.iter()).copied()
    }

    /// Samples in ascending order (a copy).
    pub fn sorted(&self) -> Vec<f64> {
        self.with_sorted(<[f64]>::to_vec)
    }

    /// Arithmetic mean; NaN when empty.
    pub fn mean(&self) -> f64 {
        let n = self.len();
        if n == 0 {
            return f64::NAN;
        }
        self.shift + self.s1 / n as f64
    }

    /// Sample variance (n - 1); 0 for a single sample, NaN when empty.
    pub fn variance(&self) -> f64 {
        let n = self.len();
        match n {
            0 => f64::NAN,
            1 => 0.0,
            _ => {
                let nf = n as f64;
                // Rounding can push a (near-)zero variance slightly negative.
                ((self.s2 - self.s1 * self.s1 / nf) / (nf - 1.0)).max(0.0)
            }
        }
    }

    /// Sample standard deviation (n - 1); 0 for a single sample, NaN when empty.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// Smallest sample; NaN when empty.
    pub fn min(&self) -> f64 {
        self.iter().min_by(f64::total_cmp).unwrap_or(f64::NAN)
    }

    /// Largest sample; NaN when empty.
    pub fn max(&self) -> f64 {
        self.iter().max_by(f64::total_cmp).unwrap_or(f64::NAN)
    }

    /// Median (mean of the two middle samples for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        self.with_sorted(median_of_sorted)
    }

    /// Median, MAD and quartiles at once (one sort at most), leaving the window as it is: for occasional
    /// callers. NaN when empty.
    pub fn order_stats(&self) -> OrderStats {
        self.with_sorted(order_stats_of_sorted)
    }

    /// [`RollingWindow::order_stats`] from the window's sorted copy, made if there is none and kept
    /// (maintained by the next pushes) while requests keep coming: for a caller that asks on every
    /// reading for a while.
    pub fn order_stats_cached(&mut self) -> OrderStats {
        order_stats_of_sorted(self.sorted_copy())
    }

    /// Reads one value per cache line of the window's storage. The engine calls this for all of a
    /// thing's features before working on them, so the loads of a cold thing (thousands of things do
    /// not fit in L2) overlap instead of stalling one at a time.
    pub fn touch(&self) -> f64 {
        const PER_LINE: usize = 64 / std::mem::size_of::<f64>();
        let mut acc = 0.0;
        if let Some(s) = &self.sorted {
            for v in s.iter().step_by(PER_LINE) {
                acc += v;
            }
        }
        for v in self.ring.iter().step_by(PER_LINE) {
            acc += v;
        }
        acc
    }

    /// Median absolute deviation from the median (unscaled); NaN when empty.
    pub fn mad(&self) -> f64 {
        self.with_sorted(mad_of_sorted)
    }

    /// Linear-interpolated quantile, q in [0, 1] (numpy's default "linear", Hyndman-Fan type 7).
    /// `q` outside [0, 1] is clamped; NaN when empty or when `q` is NaN.
    pub fn quantile(&self, q: f64) -> f64 {
        self.with_sorted(|s| quantile_of_sorted(s, q))
    }

    /// Most recent sample.
    pub fn last(&self) -> Option<f64> {
        if self.ring.is_empty() {
            None
        } else if self.ring.len() < self.capacity {
            self.ring.last().copied()
        } else {
            Some(self.ring[(self.head + self.capacity - 1) % self.capacity])
        }
    }
}

/// Replaces one copy of `old` in the ascending `s` by `new`, keeping it sorted, with a single memmove
/// of the span between them. False (nothing changed) when `old` is not in `s`.
fn replace_sorted(s: &mut [f64], old: f64, new: f64) -> bool {
    let pos = match s.binary_search_by(|v| v.total_cmp(&new)) {
        Ok(i) | Err(i) => i,
    };
    // Any index holding a bit-identical copy of `old` will do: equal samples are interchangeable.
    let Ok(r) = s.binary_search_by(|v| v.total_cmp(&old)) else {
        return false;
    };
    match pos.cmp(&r) {
        Ordering::Less | Ordering::Equal => {
            s.copy_within(pos..r, pos + 1);
            s[pos] = new;
        }
        Ordering::Greater => {
            s.copy_within(r + 1..pos, r);
            s[pos - 1] = new;
        }
    }
    true
}

fn order_stats_of_sorted(s: &[f64]) -> OrderStats {
    OrderStats {
        median: median_of_sorted(s),
        mad: mad_of_sorted(s),
        q1: quantile_of_sorted(s, 0.25),
        q3: quantile_of_sorted(s, 0.75),
    }
}

/// Median absolute deviation of ascending samples.
///
/// O(log n) without allocation: on sorted data the deviations `m - s[i]` left of the median and
/// `s[j] - m` right of it are two ascending sequences, so their merged median is a k-th smallest
/// element of two sorted sequences.
fn mad_of_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    let m = median_of_sorted(s);
    // Deviations from the median form two ascending sequences: to the left, m - s[split-1],
    // m - s[split-2], ...; to the right, s[split] - m, s[split+1] - m, ... Their k-th smallest
    // element is found by binary search in O(log n), without materialising the deviations.
    let split = s.partition_point(|&v| v < m);
    let left = |i: usize| m - s[split - 1 - i];
    let right = |i: usize| s[split + i] - m;
    let (nl, nr) = (split, n - split);
    let lo = kth_of_two_sorted(left, nl, right, nr, (n - 1) / 2);
    if n % 2 == 1 {
        lo
    } else {
        (lo + kth_of_two_sorted(left, nl, right, nr, n / 2)) / 2.0
    }
}

/// Linear-interpolated quantile of ascending samples (see [`RollingWindow::quantile`]).
fn quantile_of_sorted(s: &[f64], q: f64) -> f64 {
    let n = s.len();
    if n == 0 || q.is_nan() {
        return f64::NAN;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    if lo + 1 >= n {
        return s[n - 1];
    }
    let frac = h - lo as f64;
    s[lo] + frac * (s[lo + 1] - s[lo])
}

/// The k-th smallest (0-based) element of the union of two ascending sequences given by index
/// functions, in O(log(len)) steps: find how many to take from `a` so the first k+1 are the smallest.
fn kth_of_two_sorted(
    a: impl Fn(usize) -> f64,
    a_len: usize,
    b: impl Fn(usize) -> f64,
    b_len: usize,
    k: usize,
) -> f64 {
    let mut lo = (k + 1).saturating_sub(b_len);
    let mut hi = (k + 1).min(a_len);
    while lo < hi {
        let i = (lo + hi) / 2;
        let j = k + 1 - i;
        // Taking i from `a` and j from `b`: if a[i] is still below b[j-1], take more from `a`.
        if a(i) < b(j - 1) {
            lo = i + 1;
        } else {
            hi = i;
        }
    }
    let i = lo;
    let j = k + 1 - i;
    let from_a = if i > 0 { a(i - 1) } else { f64::NEG_INFINITY };
    let from_b = if j > 0 { b(j - 1) } else { f64::NEG_INFINITY };
    from_a.max(from_b)
}

fn median_of_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
