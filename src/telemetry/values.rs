//! Tallies of served feature values, per view and feature: kept by each shard for one second
//! (plain numbers in the shard's own `RefCell`: no lock, no atomic), shipped to the stats thread
//! with the histograms, and added up there ([`super::value_window`]).
//!
//! A tally counts sampled values into the feature's fixed bins (the baseline's edges), plus
//! zeros, values equal to the default, NaN, infinities and moments. Fixed bins merge by exact
//! addition and are all PSI needs; a sketch would cost 2-4x the time and kilobytes per feature.

use std::sync::Arc;

use crate::config::registry::View;
use crate::config::watch::{Watch, WatchedFeature};
use crate::store::ViewId;

/// One feature's sampled values over an interval (or, on the stats side, many).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTally {
    /// Values sampled, NaN included.
    pub n: u64,
    pub nan: u64,
    /// +/- infinity: counted in the end bins, left out of the moments.
    pub inf: u64,
    pub zero: u64,
    /// Values equal to the feature's default (as numbers: -0.0 equals 0.0).
    pub default_eq: u64,
    /// Sum and sum of squares of the finite values, for mean and standard deviation.
    pub sum: f64,
    pub sumsq: f64,
    pub min: f64,
    pub max: f64,
    /// Counts per bin of the feature's edges (NaN in none).
    pub bins: Vec<u64>,
}

impl FeatureTally {
    pub fn new(bins: usize) -> FeatureTally {
        FeatureTally {
            n: 0,
            nan: 0,
            inf: 0,
            zero: 0,
            default_eq: 0,
            sum: 0.0,
            sumsq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            bins: vec![0; bins],
        }
    }

    /// Counts one sampled value `x` of feature `f`.
    #[inline]
    pub fn record(&mut self, f: &WatchedFeature, x: f64) {
        self.n += 1;
        if x.is_nan() {
            self.nan += 1;
            return;
        }
        self.zero += (x == 0.0) as u64;
        self.default_eq += (x == f.default) as u64;
        // Bin i holds [edges[i-1], edges[i]): numpy's searchsorted(edges, x, side="right").
        let bin = f.edges.partition_point(|&e| e <= x);
        if let Some(b) = self.bins.get_mut(bin) {
            *b += 1;
        }
        if x.is_infinite() {
            self.inf += 1;
            return;
        }
        self.sum += x;
        self.sumsq += x * x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Adds `o` in: every field is a sum, a min or a max, so the order never matters.
    pub fn add(&mut self, o: &FeatureTally) {
        self.n += o.n;
        self.nan += o.nan;
        self.inf += o.inf;
        self.zero += o.zero;
        self.default_eq += o.default_eq;
        self.sum += o.sum;
        self.sumsq += o.sumsq;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        for (a, b) in self.bins.iter_mut().zip(&o.bins) {
            *a += b;
        }
    }
}

/// One view's tallies, with the watch they were counted under (its bins).
#[derive(Debug, Clone)]
pub struct ViewTally {
    pub watch: Arc<Watch>,
    pub features: Vec<FeatureTally>,
    /// Sampled entity occurrences, whatever their status.
    pub sampled: u64,
    /// Of those, the ones served as defaults (MISSING, EXPIRED, DEGRADED, INVALID): with the
    /// values, what the model saw (`psi_served`).
    pub sampled_defaults: u64,
    /// NaN or infinities read from the store, per feature: every row read, not a sample.
    pub non_finite: Vec<u64>,
    /// Rows answered INVALID because of this feature (a Feast field null, missing or of another
    /// kind): every row read, by feature.
    pub invalid_by_field: Vec<u64>,
}

impl ViewTally {
    pub fn new(watch: Arc<Watch>) -> ViewTally {
        let features = watch
            .features
            .iter()
            .map(|f| FeatureTally::new(f.edges.len() + 1))
            .collect();
        let n = watch.features.len();
        ViewTally {
            watch,
            features,
            sampled: 0,
            sampled_defaults: 0,
            non_finite: vec![0; n],
            invalid_by_field: vec![0; n],
        }
    }

    /// Counts every feature of a served packed `row`.
    pub fn record_row(&mut self, row: &[u8]) {
        self.sampled += 1;
        for (t, f) in self.features.iter_mut().zip(&self.watch.features) {
            t.record(f, f.value(row));
        }
    }

    /// Counts a sampled entity served its view's defaults.
    pub fn record_default(&mut self) {
        self.sampled += 1;
        self.sampled_defaults += 1;
    }

    /// Adds `o` in; both must have been counted under bins of the same shape (the caller
    /// checks the watches' fingerprints).
    pub fn add(&mut self, o: &ViewTally) {
        self.sampled += o.sampled;
        self.sampled_defaults += o.sampled_defaults;
        for (a, b) in self.features.iter_mut().zip(&o.features) {
            a.add(b);
        }
        for (a, b) in self.non_finite.iter_mut().zip(&o.non_finite) {
            *a += b;
        }
        for (a, b) in self.invalid_by_field.iter_mut().zip(&o.invalid_by_field) {
            *a += b;
        }
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.sampled == 0
            && self.non_finite.iter().all(|&n| n == 0)
            && self.invalid_by_field.iter().all(|&n| n == 0)
    }
}

/// A shard's tallies for the current second, by view id (index = id - 1).
#[derive(Debug, Default)]
pub struct ShardValues {
    pub views: Vec<Option<ViewTally>>,
}

impl ShardValues {
    /// The tally of `view`, started afresh when the view's watch is not the one it was counted
    /// under (a reload: a second's tally at most is lost). One pointer compare per request.
    pub fn view(&mut self, view: &View) -> &mut ViewTally {
        let i = (view.id as usize).saturating_sub(1);
        if self.views.len() <= i {
            self.views.resize_with(i + 1, || None);
        }
        let slot = &mut self.views[i];
        // A reload gave the view another watch: its tallies start afresh.
        if !matches!(slot, Some(t) if Arc::ptr_eq(&t.watch, &view.watch)) {
            *slot = None;
        }
        slot.get_or_insert_with(|| ViewTally::new(view.watch.clone()))
    }

    /// What was counted this second (views with nothing counted left out), leaving fresh
    /// tallies under the same watches.
    pub fn take(&mut self) -> Vec<(ViewId, ViewTally)> {
        let mut out = Vec::new();
        for (i, slot) in self.views.iter_mut().enumerate() {
            if let Some(t) = slot {
                if !t.is_empty() {
                    let fresh = ViewTally::new(t.watch.clone());
                    out.push((i as ViewId + 1, std::mem::replace(t, fresh)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::watch::NonFinite;
    use featureproxy_protocol::Dtype;

    fn feature(edges: &[f64]) -> WatchedFeature {
        WatchedFeature {
            offset: 0,
            dtype: Dtype::F64,
            default: 1.0,
            non_finite: NonFinite::Serve,
            edges: Arc::from(edges),
            baseline: None,
        }
    }

    #[test]
    fn bins_as_searchsorted_right_and_counts_specials_apart() {
        let f = feature(&[0.0, 1.0]);
        let mut t = FeatureTally::new(3);
        for x in [-5.0, -0.0, 0.0, 0.5, 1.0, 7.0, f64::NAN, f64::INFINITY] {
            t.record(&f, x);
        }
        assert_eq!(t.bins, [1, 3, 3]);
        assert_eq!((t.n, t.nan, t.inf, t.zero, t.default_eq), (8, 1, 1, 2, 1));
        assert_eq!((t.min, t.max, t.sum), (-5.0, 7.0, 3.5));
        let mut sum = FeatureTally::new(3);
        sum.add(&t);
        sum.add(&t);
        assert_eq!(sum.bins, [2, 6, 6]);
        assert_eq!((sum.n, sum.min, sum.max), (16, -5.0, 7.0));
    }
}
