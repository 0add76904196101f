//! Latency and age histograms (HDR), recorded by each shard into its own set and shipped to the
//! stats thread once a second: no histogram is ever shared with another thread while written.
//!
//! The stats side keeps, per shard, the sum since start and the last complete interval, so
//! operators see both "p99 over the last second" and "p99 since start".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};
use hdrhistogram::Histogram;

use super::value_window::ValueWindows;
use super::values::ViewTally;
use crate::store::ViewId;

/// Request and Redis latencies are recorded in microseconds, 1 µs to 60 s.
const LATENCY_MAX_US: u64 = 60_000_000;
/// Feature ages are recorded in milliseconds, 1 ms to 49 days (what a u32 age can say).
const AGE_MAX_MS: u64 = u32::MAX as u64;

/// Two significant digits (1% resolution) keep a shard's whole set near 150 KB. Each shard
/// allocates a fresh set every second on its request thread: at three digits that was about
/// 2 MB to allocate and zero per second, a stall in the tail.
const SIGFIGS: u8 = 2;

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGFIGS).expect("static bounds are valid")
}

fn age_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, AGE_MAX_MS, SIGFIGS).expect("static bounds are valid")
}

/// One shard's histograms for one interval (or, on the stats side, summed over many).
#[derive(Clone)]
pub struct ShardHistograms {
    /// GET latency in µs, by view (index = view id - 1).
    pub get_us: Vec<Histogram<u64>>,
    /// PUT latency in µs, by view.
    pub put_us: Vec<Histogram<u64>>,
    /// Age in ms of every value found (FRESH, STALE or EXPIRED), by view.
    pub age_ms: Vec<Histogram<u64>>,
    /// Redis command latency in µs (MGETs and PUT writes).
    pub redis_us: Histogram<u64>,
}

impl ShardHistograms {
    pub fn new(n_views: usize) -> ShardHistograms {
        ShardHistograms {
            get_us: (0..n_views).map(|_| latency_histogram()).collect(),
            put_us: (0..n_views).map(|_| latency_histogram()).collect(),
            age_ms: (0..n_views).map(|_| age_histogram()).collect(),
            redis_us: latency_histogram(),
        }
    }

    /// Makes room for views with ids up to `n_views` (a reload added views).
    pub fn grow(&mut self, n_views: usize) {
        while self.get_us.len() < n_views {
            self.get_us.push(latency_histogram());
            self.put_us.push(latency_histogram());
            self.age_ms.push(age_histogram());
        }
    }

    fn view(v: &mut [Histogram<u64>], view_id: u16) -> Option<&mut Histogram<u64>> {
        v.get_mut((view_id as usize).checked_sub(1)?)
    }

    pub fn record_get(&mut self, view_id: u16, took: Duration) {
        if let Some(h) = Self::view(&mut self.get_us, view_id) {
            h.saturating_record(took.as_micros().max(1) as u64);
        }
    }

    pub fn record_put(&mut self, view_id: u16, took: Duration) {
        if let Some(h) = Self::view(&mut self.put_us, view_id) {
            h.saturating_record(took.as_micros().max(1) as u64);
        }
    }

    pub fn record_age(&mut self, view_id: u16, age_ms: u32) {
        if let Some(h) = Self::view(&mut self.age_ms, view_id) {
            h.saturating_record((age_ms as u64).max(1));
        }
    }

    pub fn record_redis(&mut self, took: Duration) {
        self.redis_us
            .saturating_record(took.as_micros().max(1) as u64);
    }

    /// Returns what was recorded so far and starts a new interval.
    pub fn take(&mut self) -> ShardHistograms {
        let n = self.get_us.len();
        std::mem::replace(self, ShardHistograms::new(n))
    }

    /// Adds `other` into `self` (growing `self` for views `other` has and it has not yet).
    pub fn add(&mut self, other: &ShardHistograms) {
        self.grow(other.get_us.len());
        let pairs = [
            (&mut self.get_us, &other.get_us),
            (&mut self.put_us, &other.put_us),
            (&mut self.age_ms, &other.age_ms),
        ];
        for (mine, theirs) in pairs {
            for (a, b) in mine.iter_mut().zip(theirs) {
                let _ = a.add(b);
            }
        }
        let _ = self.redis_us.add(&other.redis_us);
    }
}

/// One shard's interval, on its way to the stats thread.
pub struct Interval {
    pub shard: u16,
    pub histograms: ShardHistograms,
    /// The second's tallies of served values, by view (views with none left out).
    pub values: Vec<(ViewId, ViewTally)>,
}

/// What the stats endpoint reads: per shard, the last complete interval and the sum since start;
/// and the served values' windows, all shards together.
pub struct Aggregate {
    pub last: Vec<ShardHistograms>,
    pub total: Vec<ShardHistograms>,
    pub values: ValueWindows,
}

pub type SharedAggregate = Arc<Mutex<Aggregate>>;

/// The channel shards ship intervals on, and the aggregate it feeds, with `values`' windows.
/// The aggregate's lock is shared only by the aggregator and the HTTP thread, never by a shard.
pub fn aggregator(
    shards: usize,
    n_views: usize,
    values: ValueWindows,
) -> (Sender<Interval>, SharedAggregate) {
    let (tx, rx): (Sender<Interval>, Receiver<Interval>) = crossbeam::channel::bounded(shards * 64);
    let agg = Arc::new(Mutex::new(Aggregate {
        last: (0..shards).map(|_| ShardHistograms::new(n_views)).collect(),
        total: (0..shards).map(|_| ShardHistograms::new(n_views)).collect(),
        values,
    }));
    let shared = agg.clone();
    let spawned = std::thread::Builder::new()
        .name("stats-agg".into())
        .spawn(move || {
            for Interval {
                shard,
                histograms,
                values,
            } in rx
            {
                let Ok(mut a) = shared.lock() else { return };
                let i = shard as usize;
                if i < a.total.len() {
                    a.total[i].add(&histograms);
                    a.last[i] = histograms;
                }
                let now = unix_secs();
                for (view, tally) in &values {
                    a.values.add(*view, tally, now);
                }
            }
        });
    if spawned.is_err() {
        tracing::warn!(
            "could not start the stats aggregator thread; latency histograms stay empty"
        );
    }
    (tx, agg)
}

/// Seconds since the Unix epoch: value windows are cut on the wall clock.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_resets_and_add_sums() {
        let mut h = ShardHistograms::new(2);
        h.record_get(1, Duration::from_micros(100));
        h.record_get(2, Duration::from_micros(300));
        h.record_get(3, Duration::from_micros(300)); // no such view: ignored
        h.record_age(1, 5000);
        let first = h.take();
        assert_eq!(h.get_us[0].len(), 0);
        assert_eq!(first.get_us[0].len(), 1);
        let mut total = ShardHistograms::new(2);
        total.add(&first);
        total.add(&first);
        assert_eq!(total.get_us[1].len(), 2);
        let max = total.age_ms[0].max();
        assert!(total.age_ms[0].equivalent(max, 5000), "{max}");
    }
}
