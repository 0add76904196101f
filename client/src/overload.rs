//! Retrying a GET the server shed (OVERLOADED): at most once, after a jittered pause, within
//! the call's timeout and within a retry budget, so that retries never double a flood.
//!
//! The budget is Finagle's `RetryBudget` (a token bucket whose deposits expire), with these
//! numbers: each GET the caller makes deposits 1/10 of a token ([`RETRY_BUDGET_GETS_PER_RETRY`]),
//! a retry spends a whole one, and [`RETRY_BUDGET_MIN_RETRIES`] tokens are there in every window
//! however few GETs were sent. Deposits and withdrawals older than [`RETRY_BUDGET_WINDOW`] (1 s,
//! kept in ten slices of 100 ms) no longer count. So in any second a client retries at most 10%
//! of the GETs it sent in that second, plus 10: a client sending 10,000 GETs a second into a
//! flood adds at most 1,010 retries, and one sending 5 a second can still retry each of them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The span over which the retry budget counts GETs sent and retries made.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(1);
/// GETs sent per retry the budget allows: 10, so retries are at most 10% of the GETs.
pub const RETRY_BUDGET_GETS_PER_RETRY: u64 = 10;
/// Retries the budget allows in every window, however few GETs were sent: 10 per second.
pub const RETRY_BUDGET_MIN_RETRIES: u64 = 10;

/// The window is kept in this many slices; a slice expires whole.
const SLICES: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    sent: u64,
    retried: u64,
}

/// The retry budget: see the module's comment. Times are passed in, so tests drive the clock.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    origin: Instant,
    /// The newest slice's number, counted in slices since `origin`.
    newest: u64,
    /// Slice number `i` lives at `i % SLICES`.
    slices: [Slice; SLICES],
}

impl RetryBudget {
    pub(crate) fn new(now: Instant) -> RetryBudget {
        RetryBudget {
            origin: now,
            newest: 0,
            slices: [Slice::default(); SLICES],
        }
    }

    /// A GET was sent: deposits 1/10 of a token.
    pub(crate) fn deposit(&mut self, now: Instant) {
        self.current(now).sent += 1;
    }

    /// Spends a token for a retry if the window holds a whole one; false (nothing spent) if not.
    pub(crate) fn try_spend(&mut self, now: Instant) -> bool {
        self.current(now);
        let (sent, retried) = self
            .slices
            .iter()
            .fold((0, 0), |(s, r), slice| (s + slice.sent, r + slice.retried));
        // Tokens: sent / 10 + 10 - retried; a retry needs one. In whole numbers:
        // (retried + 1) * 10 <= sent + 10 * 10.
        let k = RETRY_BUDGET_GETS_PER_RETRY;
        if (retried + 1) * k > sent + RETRY_BUDGET_MIN_RETRIES * k {
            return false;
        }
        self.current(now).retried += 1;
        true
    }

    /// The slice `now` falls in, after clearing the slices that expired since the last call. A
    /// `now` older than the newest slice (another thread read the clock first) counts in it.
    fn current(&mut self, now: Instant) -> &mut Slice {
        let slice = RETRY_BUDGET_WINDOW / SLICES as u32;
        let n = (now.saturating_duration_since(self.origin).as_nanos() / slice.as_nanos()) as u64;
        if n > self.newest {
            for i in self.newest + 1..=n.min(self.newest + SLICES as u64) {
                self.slices[(i % SLICES as u64) as usize] = Slice::default();
            }
            self.newest = n;
        }
        &mut self.slices[(self.newest % SLICES as u64) as usize]
    }
}

/// A client's overload retries: the budget and the counters the caller reads.
#[derive(Debug)]
pub(crate) struct OverloadRetry {
    budget: Mutex<RetryBudget>,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl OverloadRetry {
    pub(crate) fn new() -> OverloadRetry {
        OverloadRetry {
            budget: Mutex::new(RetryBudget::new(Instant::now())),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A GET is being sent (its first attempt).
    pub(crate) fn sent(&self, now: Instant) {
        self.budget().deposit(now);
    }

    /// A GET was answered OVERLOADED at `now`: the pause before its one retry, or `None` to
    /// return OVERLOADED at once, when the pause would not end before `deadline` (the call's
    /// timeout) or the budget has no token left (counted as refused). `backoff` is the longest
    /// pause, `jitter` a random number in [0, 1) choosing where in [backoff / 2, backoff] it is.
    pub(crate) fn pause(
        &self,
        backoff: Duration,
        jitter: f64,
        now: Instant,
        deadline: Instant,
    ) -> Option<Duration> {
        let half = backoff / 2;
        let spread = (half.as_nanos() as f64 * jitter.clamp(0.0, 1.0)) as u64;
        let pause = half.saturating_add(Duration::from_nanos(spread));
        if now.checked_add(pause).is_none_or(|end| end >= deadline) {
            return None;
        }
        if !self.budget().try_spend(now) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        Some(pause)
    }

    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        // Every update is a few additions that cannot panic halfway: a poisoned lock is usable.
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A random number in [0, 1): enough for spreading retries apart, without a dependency (std's
/// `RandomState` is seeded randomly per thread and keyed anew for each instance).
pub(crate) fn jitter() -> f64 {
    let bits = RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn spend_all(b: &mut RetryBudget, now: Instant) -> u64 {
        let mut n = 0;
        while b.try_spend(now) {
            n += 1;
            assert!(n < 1_000_000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn a_quiet_client_may_retry_the_floor_each_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        assert_eq!(spend_all(&mut b, t0), RETRY_BUDGET_MIN_RETRIES);
        // Still spent 999 ms later: the withdrawals are in the window.
        assert_eq!(spend_all(&mut b, t0 + 999 * MS), 0);
        // A second later they have expired.
        assert_eq!(spend_all(&mut b, t0 + 1000 * MS), RETRY_BUDGET_MIN_RETRIES);
    }

    #[test]
    fn each_get_sent_earns_a_tenth_of_a_retry() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        for _ in 0..95 {
            b.deposit(t0);
        }
        // 95 / 10 = 9.5 tokens: 9 whole ones, plus the floor's 10.
        assert_eq!(spend_all(&mut b, t0), 19);
        // Five more GETs complete the tenth token.
        for _ in 0..4 {
            b.deposit(t0 + MS);
        }
        assert!(!b.try_spend(t0 + MS));
        b.deposit(t0 + MS);
        assert!(b.try_spend(t0 + MS));
        assert!(!b.try_spend(t0 + MS));
    }

    #[test]
    fn deposits_expire_with_their_slice() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        for _ in 0..100 {
            b.deposit(t0);
        }
        for _ in 0..100 {
            b.deposit(t0 + 500 * MS);
        }
        // 0.9 s later both slices count: 20 + 10 tokens.
        assert_eq!(spend_all(&mut b, t0 + 900 * MS), 30);
        // At 1.05 s the first slice (and none of the retries, made in the tenth slice) has
        // expired: 10 + 10 - 30 < 1.
        assert_eq!(spend_all(&mut b, t0 + 1050 * MS), 0);
        // At 1.9 s the retries made at 0.9 s have expired too: only the floor is left.
        assert_eq!(spend_all(&mut b, t0 + 1900 * MS), RETRY_BUDGET_MIN_RETRIES);
        // Long idle: a jump of many windows clears everything.
        assert_eq!(spend_all(&mut b, t0 + 3600 * 1000 * MS), 10);
    }

    #[test]
    fn a_clock_read_before_the_newest_slice_counts_in_it() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        assert_eq!(spend_all(&mut b, t0 + 500 * MS), 10);
        // Another thread's earlier reading: still within the window, nothing expires.
        for _ in 0..10 {
            b.deposit(t0 + 100 * MS);
        }
        assert!(b.try_spend(t0 + 100 * MS));
        assert!(!b.try_spend(t0 + 600 * MS));
    }

    /// A flood: 100 GETs every 10 ms for 10 s, each of them shed and wanting a retry. Retries are
    /// held to 10% of the GETs plus the floor, in every window and over the whole flood.
    #[test]
    fn a_flood_retries_a_tenth_plus_the_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        let (mut sent, mut retried) = (0u64, 0u64);
        let mut per_window = [0u64; 10];
        for tick in 0..1000u64 {
            let now = t0 + tick as u32 * 10 * MS;
            for _ in 0..100 {
                b.deposit(now);
                sent += 1;
                if b.try_spend(now) {
                    retried += 1;
                    per_window[(tick / 100) as usize] += 1;
                }
            }
        }
        assert_eq!(sent, 100_000);
        // Each window of 1 s holds 10,000 GETs: at most 1,000 + 10 retries in it.
        for (w, &r) in per_window.iter().enumerate() {
            assert!(r <= 1_010, "window {w}: {r} retries");
            assert!(r >= 990, "window {w}: only {r} retries");
        }
        assert!(retried <= 10 * 1_010, "{retried} retries for {sent} GETs");
    }

    #[test]
    fn the_pause_is_jittered_within_the_backoff_and_the_deadline() {
        let o = OverloadRetry::new();
        let now = Instant::now();
        let far = now + Duration::from_secs(1);
        let backoff = 20 * MS;
        assert_eq!(o.pause(backoff, 0.0, now, far), Some(10 * MS));
        assert_eq!(o.pause(backoff, 0.5, now, far), Some(15 * MS));
        let top = o.pause(backoff, 0.999_999, now, far).unwrap();
        assert!(top > 19 * MS && top <= backoff, "{top:?}");
        assert_eq!(o.retries(), 3);
        // A pause that would end at or past the deadline: no retry, nothing spent or refused.
        assert_eq!(o.pause(backoff, 0.5, now, now + 15 * MS), None);
        assert_eq!((o.retries(), o.refused()), (3, 0));
        // jitter() is in [0, 1) and varies.
        let draws: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(draws.iter().any(|&j| j != draws[0]));
    }

    #[test]
    fn refusals_are_counted() {
        let o = OverloadRetry::new();
        let now = Instant::now();
        let far = now + Duration::from_secs(1);
        for _ in 0..RETRY_BUDGET_MIN_RETRIES {
            assert!(o.pause(MS, 0.0, now, far).is_some());
        }
        assert_eq!(o.pause(MS, 0.0, now, far), None);
        assert_eq!(o.pause(MS, 0.0, now, far), None);
        assert_eq!((o.retries(), o.refused()), (10, 2));
        for _ in 0..10 {
            o.sent(now);
        }
        assert!(o.pause(MS, 0.0, now, far).is_some());
        assert_eq!((o.retries(), o.refused()), (11, 2));
    }
}
