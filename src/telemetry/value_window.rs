//! The stats thread's side of value watching: shard tallies added into a sliding window (a
//! ring of slots, each a few seconds of every shard's tallies) and a since-start total, and
//! what operators read from them: shares, moments, quantiles read off the bins, and PSI
//! against the baseline.
//!
//! PSI under no drift is about (bins - 1) / n, so it is published only from
//! [`PSI_MIN_SAMPLES`] samples in the window: below, noise alone would cross the alert's 0.2.

use std::sync::Arc;
use std::time::Duration;

use super::values::{FeatureTally, ViewTally};
use crate::config::watch::Watch;
use crate::store::ViewId;

/// Fewest sampled values in the window for its PSI to be published (~0.01 mean PSI at 10 bins).
pub const PSI_MIN_SAMPLES: u64 = 1000;
/// A window is cut into this many slots at most; a slot is at least a second.
const MAX_SLOTS: u64 = 60;
/// Proportion given to an empty bin, on both sides, so that PSI stays finite (as Evidently).
const EMPTY_BIN: f64 = 1e-4;

/// One view's window and total.
struct ViewWindow {
    watch: Arc<Watch>,
    /// The slot number (seconds since the epoch / slot length) each ring entry holds.
    slot_of: Vec<u64>,
    ring: Vec<ViewTally>,
    total: ViewTally,
}

/// Every view's windows, on the stats thread.
pub struct ValueWindows {
    slot_secs: u64,
    slots: usize,
    window: Duration,
    /// Most (view, feature) pairs `/metrics` shows.
    max_features: usize,
    views: Vec<Option<ViewWindow>>,
}

impl ValueWindows {
    /// Windows of `window` (cut into at most 60 slots of whole seconds), of which `/metrics`
    /// shows `max_features` (view, feature) pairs.
    pub fn new(window: Duration, max_features: usize) -> ValueWindows {
        let secs = window.as_secs().max(1);
        let slot_secs = secs.div_ceil(MAX_SLOTS).max(1);
        ValueWindows {
            slot_secs,
            slots: secs.div_ceil(slot_secs) as usize,
            window,
            max_features,
            views: Vec::new(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn max_features(&self) -> usize {
        self.max_features
    }

    /// Adds one shard's second of `view`'s tallies, at `unix_secs`. Tallies counted under
    /// other bins than the window's (a reload changed the baseline or the features) start the
    /// view's window and total afresh.
    pub fn add(&mut self, view: ViewId, tally: &ViewTally, unix_secs: u64) {
        let i = (view as usize).saturating_sub(1);
        if self.views.len() <= i {
            self.views.resize_with(i + 1, || None);
        }
        let slots = self.slots;
        let w = self.views[i].get_or_insert_with(|| ViewWindow::new(&tally.watch, slots));
        if w.watch.fingerprint != tally.watch.fingerprint {
            *w = ViewWindow::new(&tally.watch, slots);
        }
        w.watch = tally.watch.clone();
        let slot = unix_secs / self.slot_secs;
        let at = (slot % slots as u64) as usize;
        if w.slot_of[at] != slot {
            w.ring[at] = ViewTally::new(tally.watch.clone());
            w.slot_of[at] = slot;
        }
        w.ring[at].add(tally);
        w.total.add(tally);
    }

    /// `view`'s tallies over the window ending at `unix_secs`, and since start (or since its
    /// bins last changed), with the watch they were counted under.
    pub fn read(&self, view: ViewId, unix_secs: u64) -> Option<(ViewTally, &ViewTally)> {
        let w = self.views.get((view as usize).checked_sub(1)?)?.as_ref()?;
        let now = unix_secs / self.slot_secs;
        let mut sum = ViewTally::new(w.watch.clone());
        for (t, &slot) in w.ring.iter().zip(&w.slot_of) {
            if slot <= now && now - slot < self.slots as u64 {
                sum.add(t);
            }
        }
        Some((sum, &w.total))
    }
}

impl ViewWindow {
    fn new(watch: &Arc<Watch>, slots: usize) -> ViewWindow {
        ViewWindow {
            watch: watch.clone(),
            slot_of: vec![u64::MAX; slots],
            ring: (0..slots).map(|_| ViewTally::new(watch.clone())).collect(),
            total: ViewTally::new(watch.clone()),
        }
    }
}

/// What operators see of one feature's tally.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureSummary {
    pub n: u64,
    pub nan: u64,
    pub inf: u64,
    /// Shares of the non-NaN values (None with none).
    pub zero_share: Option<f64>,
    pub default_share: Option<f64>,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Quantiles interpolated within bins (the open end bins end at min and max).
    pub p01: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// PSI of the values against the baseline; None without one or under PSI_MIN_SAMPLES.
    pub psi: Option<f64>,
    /// PSI of what the model saw: the values plus the sampled rows served as defaults.
    pub psi_served: Option<f64>,
}

/// Summarises `t`, counted in the bins of `edges`, with `expected` the baseline's shares
/// and `defaults` the sampled rows served as defaults (whose value is `default`).
pub fn summarize(
    t: &FeatureTally,
    edges: &[f64],
    expected: Option<&[f64]>,
    default: f64,
    defaults: u64,
) -> FeatureSummary {
    let valued = t.n - t.nan;
    let finite = valued - t.inf;
    let share = |k: u64| (valued > 0).then(|| k as f64 / valued as f64);
    let mean = (finite > 0).then(|| t.sum / finite as f64);
    let std = mean.map(|m| (t.sumsq / finite as f64 - m * m).max(0.0).sqrt());
    let psi_of = |bins: &[u64]| {
        let n: u64 = bins.iter().sum();
        let e = expected?;
        (n >= PSI_MIN_SAMPLES).then(|| psi(bins, e))
    };
    let q = |q: f64| (finite > 0).then(|| quantile(&t.bins, edges, q, t.min, t.max));
    let mut served = t.bins.clone();
    if defaults > 0 && !default.is_nan() {
        let bin = edges.partition_point(|&e| e <= default);
        if let Some(b) = served.get_mut(bin) {
            *b += defaults;
        }
    }
    FeatureSummary {
        n: t.n,
        nan: t.nan,
        inf: t.inf,
        zero_share: share(t.zero),
        default_share: share(t.default_eq),
        mean,
        std,
        min: (finite > 0).then_some(t.min),
        max: (finite > 0).then_some(t.max),
        p01: q(0.01),
        p50: q(0.5),
        p99: q(0.99),
        psi: psi_of(&t.bins),
        psi_served: psi_of(&served),
    }
}

/// Population stability index of observed counts against expected shares.
pub fn psi(observed: &[u64], expected: &[f64]) -> f64 {
    let n: u64 = observed.iter().sum();
    if n == 0 {
        return 0.0;
    }
    observed
        .iter()
        .zip(expected)
        .map(|(&o, &e)| {
            let o = (o as f64 / n as f64).max(EMPTY_BIN);
            let e = e.max(EMPTY_BIN);
            (o - e) * (o / e).ln()
        })
        .sum()
}

/// The `q` quantile read off bin counts: linear within the bin it falls in, whose open ends
/// are taken as the observed min and max.
pub fn quantile(bins: &[u64], edges: &[f64], q: f64, min: f64, max: f64) -> f64 {
    let n: u64 = bins.iter().sum();
    if n == 0 {
        return f64::NAN;
    }
    let target = q * n as f64;
    let mut below = 0.0;
    for (i, &c) in bins.iter().enumerate() {
        let c = c as f64;
        if c > 0.0 && below + c >= target {
            let lo = if i == 0 { min } else { edges[i - 1].max(min) };
            let hi = if i == edges.len() {
                max
            } else {
                edges[i].min(max)
            };
            return lo + (hi - lo) * ((target - below) / c).clamp(0.0, 1.0);
        }
        below += c;
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_on_the_baseline_and_grows_with_a_shift() {
        let expected = [0.25, 0.25, 0.25, 0.25];
        assert!(psi(&[250, 250, 250, 250], &expected).abs() < 1e-12);
        let shifted = psi(&[100, 200, 300, 400], &expected);
        assert!((shifted - 0.2285).abs() < 1e-3, "{shifted}");
    }

    #[test]
    fn quantiles_interpolate_within_bins() {
        // Uniform on [0, 4) in bins of width 1.
        let bins = [0, 100, 100, 100, 100, 0];
        let edges = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert!((quantile(&bins, &edges, 0.5, 0.0, 4.0) - 2.0).abs() < 1e-9);
        assert!((quantile(&bins, &edges, 0.99, 0.0, 3.9) - 3.9 * 0.99 / 0.99).abs() < 0.1);
    }

    #[test]
    fn the_window_slides_and_the_total_keeps_everything() {
        use crate::config::watch::{NonFinite, Watch};
        let features = vec![crate::config::registry::Feature {
            name: "x".into(),
            dtype: featureproxy_protocol::Dtype::F64,
            default: [0; 8],
        }];
        let watch = Arc::new(Watch::new(&features, &[NonFinite::Serve], 1.0, None, 1));
        let mut w = ValueWindows::new(Duration::from_secs(10), 100);
        let mut tally = ViewTally::new(watch.clone());
        tally.record_row(&1.0f64.to_le_bytes());
        for t in 1000..1020 {
            w.add(1, &tally, t);
        }
        let (window, total) = w.read(1, 1019).unwrap();
        assert_eq!((window.sampled, total.sampled), (10, 20));
        assert_eq!(w.read(1, 1025).unwrap().0.sampled, 4, "seconds 1016-1019");
        assert_eq!(w.read(1, 2000).unwrap().0.sampled, 0);
        // Other bins (a new baseline) start afresh.
        let other = Arc::new(Watch::new(&features, &[NonFinite::Serve], 1.0, None, 2));
        let mut t2 = ViewTally::new(other);
        t2.record_default();
        w.add(1, &t2, 1020);
        let (window, total) = w.read(1, 1020).unwrap();
        assert_eq!((window.sampled, total.sampled), (1, 1));
    }

    #[test]
    fn psi_needs_enough_samples() {
        let mut t = FeatureTally::new(2);
        t.n = 999;
        t.bins = vec![500, 499];
        let s = summarize(&t, &[0.0], Some(&[0.5, 0.5]), 0.0, 0);
        assert_eq!(s.psi, None);
        t.n = 1000;
        t.bins = vec![500, 500];
        let s = summarize(&t, &[0.0], Some(&[0.5, 0.5]), 0.0, 1000);
        assert!(s.psi.unwrap().abs() < 1e-12);
        // A thousand rows of defaults (0.0, in the upper bin) shift what the model saw.
        assert!(s.psi_served.unwrap() > 0.1);
    }
}
