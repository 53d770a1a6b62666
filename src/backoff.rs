//! Exponential backoff with jitter, shared by the reconnecting sources and the retrying sinks.
//!
//! Attempt `n` (0-based) waits a random time in `[d/2, d]` where `d = min(max, base * 2^n)`
//! ("equal jitter"): the wait still grows exponentially, never exceeds `max`, and clients that lost
//! the same server at the same moment spread their retries instead of arriving together.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Backoff state: call [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    /// Delays start at `base` and double up to `max` (`max` below `base` is raised to `base`).
    pub fn new(base: Duration, max: Duration) -> Backoff {
        // The seed only needs to differ between processes and threads, not to be unpredictable.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ thread_salt();
        Backoff::with_seed(base, max, seed)
    }

    /// As [`Backoff::new`] with a fixed seed (tests).
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The cap `d` of the next wait, before jitter: `min(max, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(30);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before the next attempt, in `[ceiling/2, ceiling]`; advances the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling();
        let half = cap / 2;
        let spread = (cap - half).as_micros() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            self.rng.random_range(0..=spread)
        };
        self.attempt = self.attempt.saturating_add(1);
        half + Duration::from_micros(jitter)
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `base` (after a successful connection or request).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn thread_salt() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish()
}

/// Sleeps `d`, waking early when `stop` returns true (checked every 20 ms). Returns `false` when
/// stopped early.
pub fn sleep_unless(d: Duration, stop: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + d;
    loop {
        if stop() {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(until - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_bounds_and_stay_under_max() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(5_000);
        for seed in 0..50 {
            let mut b = Backoff::with_seed(base, max, seed);
            let mut expected_cap = base;
            for attempt in 0..20 {
                assert_eq!(b.ceiling(), expected_cap, "seed {seed} attempt {attempt}");
                let d = b.next_delay();
                assert!(
                    d >= expected_cap / 2 && d <= expected_cap,
                    "seed {seed} attempt {attempt}: {d:?} outside [{:?}, {expected_cap:?}]",
                    expected_cap / 2
                );
                assert!(d <= max);
                expected_cap = (expected_cap * 2).min(max);
            }
            assert_eq!(b.ceiling(), max, "capped after enough failures");
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        // 200 draws at the cap: equal jitter covers [cap/2, cap], so both halves of it are hit and
        // the draws are not all the same.
        let cap = Duration::from_millis(1_000);
        let mut b = Backoff::with_seed(cap, cap, 7);
        let draws: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        let mid = Duration::from_millis(750);
        assert!(draws.iter().any(|d| *d < mid) && draws.iter().any(|d| *d > mid));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "{} distinct delays", distinct.len());
    }

    #[test]
    fn reset_returns_to_base_and_huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_millis(10), Duration::from_secs(30), 1);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.attempts(), 200);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(10));
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(10));
        // max below base is raised to base.
        let mut c = Backoff::with_seed(Duration::from_millis(50), Duration::from_millis(1), 2);
        assert_eq!(c.ceiling(), Duration::from_millis(50));
        assert!(c.next_delay() <= Duration::from_millis(50));
    }

    #[test]
    fn sleep_unless_stops_early() {
        assert!(!sleep_unless(Duration::from_secs(3600), || true));
        assert!(sleep_unless(Duration::from_millis(30), || false));
    }
}
