//! A circuit breaker per shard and store node.
//!
//! While Redis fails, every read that waits for it spends its caller's deadline for nothing. The
//! breaker notices a run of failures and stops calling Redis for a while: reads get DEGRADED
//! defaults at once. After `reset_timeout` it lets a few probe reads through (half-open); their
//! outcome closes it again or re-opens it. Owned by one shard's thread, so no locks.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// When to open and when to try again. The defaults live with the `breaker_*` server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures are counted over this sliding window.
    pub window: Duration,
    /// Opens only with at least this many failures in the window...
    pub min_failures: u32,
    /// ...making up at least this share of the window's calls.
    pub failure_ratio: f64,
    /// How long it stays open before probing.
    pub reset_timeout: Duration,
    /// Probe calls allowed while half-open; all must succeed to close.
    pub probes: u32,
}

/// The breaker's state, as reported to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 open, 2 half-open: the value of the state gauge.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// The state a gauge value stands for (the inverse of [`BreakerState::gauge`]).
    pub fn from_gauge(gauge: u8) -> BreakerState {
        match gauge {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

const BUCKETS: usize = 10;

/// Success and failure counts over a window split into `BUCKETS` slots.
#[derive(Debug)]
struct Window {
    slot_len: Duration,
    start: Instant,
    /// (slot number since `start`, successes, failures)
    slots: [(u64, u32, u32); BUCKETS],
}

impl Window {
    fn new(window: Duration, now: Instant) -> Window {
        Window {
            slot_len: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            start: now,
            slots: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn slot_no(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_nanos() / self.slot_len.as_nanos()) as u64
    }

    fn record(&mut self, now: Instant, ok: bool) {
        let no = self.slot_no(now);
        let slot = &mut self.slots[(no % BUCKETS as u64) as usize];
        if slot.0 != no {
            *slot = (no, 0, 0);
        }
        if ok {
            slot.1 += 1;
        } else {
            slot.2 += 1;
        }
    }

    /// (successes, failures) within the window ending now.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let no = self.slot_no(now);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 + BUCKETS as u64 > no)
            .fold((0, 0), |(a, b), s| (a + s.1, b + s.2))
    }
}

#[derive(Debug)]
enum Inner {
    Closed(Window),
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// A state change, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// The breaker refused a call: it is open, or half-open with all its probes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

pub struct Breaker {
    config: BreakerConfig,
    inner: RefCell<Inner>,
    transitions: Cell<u64>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        let window = Window::new(config.window, Instant::now());
        Breaker {
            config,
            inner: RefCell::new(Inner::Closed(window)),
            transitions: Cell::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        match &*self.inner.borrow() {
            Inner::Closed(_) => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// True while open and not yet due to probe: callers can serve defaults without asking.
    pub fn rejects(&self, now: Instant) -> bool {
        matches!(&*self.inner.borrow(), Inner::Open { until } if now < *until)
    }

    /// Number of state changes since start.
    pub fn transitions(&self) -> u64 {
        self.transitions.get()
    }

    /// Asks to call Redis now. `Ok` carries a transition if asking moved the breaker from open to
    /// half-open; `Err(Rejected)` means don't call: serve defaults.
    pub fn try_acquire(&self, now: Instant) -> Result<Option<Transition>, Rejected> {
        let mut inner = self.inner.borrow_mut();
        match &mut *inner {
            Inner::Closed(_) => Ok(None),
            Inner::Open { until } if now >= *until => {
                *inner = Inner::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                };
                Ok(Some(
                    self.changed(BreakerState::Open, BreakerState::HalfOpen),
                ))
            }
            Inner::Open { .. } => Err(Rejected),
            Inner::HalfOpen { admitted, .. } if *admitted < self.config.probes => {
                *admitted += 1;
                Ok(None)
            }
            Inner::HalfOpen { .. } => Err(Rejected),
        }
    }

    /// Reports the outcome of a call that `try_acquire` allowed.
    pub fn record(&self, now: Instant, ok: bool) -> Option<Transition> {
        let mut inner = self.inner.borrow_mut();
        match &mut *inner {
            Inner::Closed(window) => {
                window.record(now, ok);
                if ok {
                    return None;
                }
                let (good, bad) = window.totals(now);
                let ratio = bad as f64 / (good + bad) as f64;
                if bad >= self.config.min_failures && ratio >= self.config.failure_ratio {
                    *inner = Inner::Open {
                        until: now + self.config.reset_timeout,
                    };
                    return Some(self.changed(BreakerState::Closed, BreakerState::Open));
                }
                None
            }
            // A call admitted before the breaker opened finished late: it changes nothing.
            Inner::Open { .. } => None,
            Inner::HalfOpen { succeeded, .. } => {
                if !ok {
                    *inner = Inner::Open {
                        until: now + self.config.reset_timeout,
                    };
                    return Some(self.changed(BreakerState::HalfOpen, BreakerState::Open));
                }
                *succeeded += 1;
                if *succeeded >= self.config.probes {
                    *inner = Inner::Closed(Window::new(self.config.window, now));
                    return Some(self.changed(BreakerState::HalfOpen, BreakerState::Closed));
                }
                None
            }
        }
    }

    fn changed(&self, from: BreakerState, to: BreakerState) -> Transition {
        self.transitions.set(self.transitions.get() + 1);
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            window: Duration::from_secs(1),
            min_failures: 3,
            failure_ratio: 0.5,
            reset_timeout: Duration::from_millis(100),
            probes: 2,
        })
    }

    #[test]
    fn opens_on_enough_failures_and_ratio() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            b.record(t, true);
        }
        assert_eq!(b.record(t, false), None);
        assert_eq!(b.record(t, false), None);
        // 3 failures of 7 calls: under the ratio.
        assert_eq!(b.record(t, false), None);
        let tr = b.record(t, false).unwrap();
        assert_eq!((tr.from, tr.to), (BreakerState::Closed, BreakerState::Open));
        assert!(b.try_acquire(t).is_err());
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = breaker();
        let t = Instant::now();
        b.record(t, false);
        b.record(t, false);
        assert_eq!(b.record(t + Duration::from_millis(1500), false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_probes_close_or_reopen() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(t, false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let later = t + Duration::from_millis(150);
        let tr = b.try_acquire(later).unwrap().unwrap();
        assert_eq!(tr.to, BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(later), Ok(None));
        assert!(b.try_acquire(later).is_err(), "only 2 probes");
        assert_eq!(b.record(later, true), None);
        assert_eq!(b.record(later, true).unwrap().to, BreakerState::Closed);

        for _ in 0..3 {
            b.record(later, false);
        }
        let again = later + Duration::from_millis(150);
        b.try_acquire(again).unwrap();
        assert_eq!(b.record(again, false).unwrap().to, BreakerState::Open);
        assert_eq!(b.transitions(), 6);
    }
}
