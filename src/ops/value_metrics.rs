//! The metrics of watched feature values (README "Watching feature values"): per (view, feature)
//! at most five series, for at most `value_metrics_max_features` features, so `/metrics` stays
//! bounded however many features the registry has; `/stats` carries the details. Defined like
//! [`super::metrics::METRICS`] and rendered after them.

use super::metric::{counter, gauge};
use super::metrics::{Metric, Read, Value};

/// The value-watching metrics, in the order `/metrics` shows them.
pub static VALUE_METRICS: &[Metric] = &[
    gauge(
        "featureproxy_feature_psi",
        "PSI of a feature's served values (FRESH and STALE, sampled) over the value window against the view's training baseline; absent without a baseline or under 1,000 samples in the window. Above 0.2 the values no longer look like the training data.",
        &["view", "feature"],
        Read::Custom(|sc, out| {
            for (v, f) in sc.values().exported() {
                if let Some(psi) = f.window.psi {
                    out.sample(&[&v.view, &f.feature], Value::Real(psi));
                }
            }
        }),
    ),
    gauge(
        "featureproxy_feature_zero_ratio",
        "Share of a feature's sampled served values equal to 0 over the value window (NaN left out); compare with featureproxy_feature_baseline_zero_ratio.",
        &["view", "feature"],
        Read::Custom(|sc, out| {
            for (v, f) in sc.values().exported() {
                if let Some(r) = f.window.zero_share {
                    out.sample(&[&v.view, &f.feature], Value::Real(r));
                }
            }
        }),
    ),
    gauge(
        "featureproxy_feature_default_value_ratio",
        "Share of a feature's sampled values served FRESH or STALE that equal its default, over the value window: defaults written by the pipeline, which the statuses cannot see.",
        &["view", "feature"],
        Read::Custom(|sc, out| {
            for (v, f) in sc.values().exported() {
                if let Some(r) = f.window.default_share {
                    out.sample(&[&v.view, &f.feature], Value::Real(r));
                }
            }
        }),
    ),
    gauge(
        "featureproxy_feature_baseline_zero_ratio",
        "Share of a feature's training values equal to 0, from the view's baseline file (static until a reload).",
        &["view", "feature"],
        Read::Custom(|sc, out| {
            for (v, f) in sc.values().exported() {
                if let Some(r) = f.baseline_zero_share {
                    out.sample(&[&v.view, &f.feature], Value::Real(r));
                }
            }
        }),
    ),
    gauge(
        "featureproxy_feature_baseline_default_value_ratio",
        "Share of a feature's training values equal to its default, from the baseline file; only for features whose default is not 0 (for the others it is the zero ratio).",
        &["view", "feature"],
        Read::Custom(|sc, out| {
            for (v, f) in sc.values().exported() {
                if let (Some(r), false) = (f.baseline_default_share, f.default_is_zero) {
                    out.sample(&[&v.view, &f.feature], Value::Real(r));
                }
            }
        }),
    ),
    counter(
        "featureproxy_feature_nonfinite_total",
        "NaN or infinite values of a feature read from the store (every row read, not a sample), whether the view serves them (non_finite = serve) or answers INVALID (invalid).",
        &["view", "feature"],
        Read::Custom(|sc, out| {
            for (v, f) in sc.values().exported() {
                out.sample(&[&v.view, &f.feature], Value::Count(f.non_finite_total));
            }
        }),
    ),
    counter(
        "featureproxy_feature_samples_total",
        "Served entities sampled for value statistics since start, by view (at the view's sample_rate; those served as defaults included).",
        &["view"],
        Read::Custom(|sc, out| {
            for v in &sc.values().views {
                out.sample(&[&v.view], Value::Count(v.total_sampled));
            }
        }),
    ),
    gauge(
        "featureproxy_feature_window_samples",
        "Served entities sampled in the value window, by view: PSI is published from 1,000.",
        &["view"],
        Read::Custom(|sc, out| {
            for v in &sc.values().views {
                out.sample(&[&v.view], Value::Count(v.window_sampled));
            }
        }),
    ),
    gauge(
        "featureproxy_feature_metrics_max",
        "Most (view, feature) pairs the featureproxy_feature_* metrics show (value_metrics_max_features); /stats shows them all.",
        &[],
        Read::Custom(|sc, out| out.sample(&[], Value::Count(sc.values().max_features as u64))),
    ),
    gauge(
        "featureproxy_feature_metrics_omitted",
        "(view, feature) pairs left out of the featureproxy_feature_* metrics by value_metrics_max_features.",
        &[],
        Read::Custom(|sc, out| out.sample(&[], Value::Count(sc.values().omitted() as u64))),
    ),
];
