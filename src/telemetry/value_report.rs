//! What operators read of the served values, view by view and feature by feature: the window's
//! and since-start summaries, the bins observed against expected, the baseline in force and the
//! non-finite counts. `/stats` shows all of it; `/metrics` a bounded few numbers of it.

use serde::Serialize;

use super::value_window::{summarize, FeatureSummary, ValueWindows, PSI_MIN_SAMPLES};
use super::values::ViewTally;
use crate::config::registry::{Registry, View};
use crate::config::watch::NonFinite;

/// One view's served values.
#[derive(Debug, Serialize)]
pub struct ViewReport {
    pub view: String,
    pub sample_rate: f64,
    pub window_seconds: u64,
    /// Entity occurrences sampled in the window and since start, and of those the ones served
    /// as defaults.
    pub window_sampled: u64,
    pub window_sampled_defaults: u64,
    pub total_sampled: u64,
    pub total_sampled_defaults: u64,
    pub baseline: Option<BaselineInfo>,
    pub features: Vec<FeatureReport>,
}

#[derive(Debug, Serialize)]
pub struct BaselineInfo {
    pub path: String,
    pub sha256: String,
}

/// One feature's served values.
#[derive(Debug, Serialize)]
pub struct FeatureReport {
    pub feature: String,
    pub non_finite: &'static str,
    /// NaN or infinities read from the store since start (every row, not a sample).
    pub non_finite_total: u64,
    /// Rows answered INVALID because of this feature since start (Feast views: a field null,
    /// missing or of another kind).
    pub invalid_total: u64,
    pub baseline_zero_share: Option<f64>,
    pub baseline_default_share: Option<f64>,
    /// The feature's default is 0, so its default share is its zero share.
    pub default_is_zero: bool,
    pub window: FeatureSummary,
    pub since_start: FeatureSummary,
    /// Why `window.psi` is absent, when it is.
    pub psi_absent: Option<String>,
    /// The baseline's bins (None without one: the generic bins behind the quantiles of a
    /// feature without a baseline are not shown), the window's counts in them, and the
    /// baseline's shares.
    pub edges: Option<Vec<f64>>,
    pub observed: Option<Vec<u64>>,
    pub expected: Option<Vec<f64>>,
}

/// Every view's report, and how many features `/metrics` may show.
pub struct Reports {
    pub views: Vec<ViewReport>,
    pub max_features: usize,
}

impl Reports {
    /// The (view, feature) pairs `/metrics` shows: the first `max_features` in registry order
    /// (a fixed set, so series do not come and go with the data).
    pub fn exported(&self) -> impl Iterator<Item = (&ViewReport, &FeatureReport)> {
        self.views
            .iter()
            .flat_map(|v| v.features.iter().map(move |f| (v, f)))
            .take(self.max_features)
    }

    /// The features left out of `/metrics` by the cap.
    pub fn omitted(&self) -> usize {
        let all: usize = self.views.iter().map(|v| v.features.len()).sum();
        all.saturating_sub(self.max_features)
    }
}

/// Every view of `registry`, at `unix_secs`.
pub fn report(windows: &ValueWindows, registry: &Registry, unix_secs: u64) -> Reports {
    Reports {
        views: registry
            .views()
            .iter()
            .map(|v| view_report(windows, v, unix_secs))
            .collect(),
        max_features: windows.max_features(),
    }
}

fn view_report(windows: &ValueWindows, view: &View, unix_secs: u64) -> ViewReport {
    let empty = ViewTally::new(view.watch.clone());
    let (window, total) = match windows.read(view.id, unix_secs) {
        // Counted under the watch in force (a reload that changed the bins restarts it).
        Some((w, t)) if w.watch.fingerprint == view.watch.fingerprint => (w, t.clone()),
        _ => (empty.clone(), empty),
    };
    let watch = &window.watch;
    let features = view
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let wf = &watch.features[i];
            let expected = wf.baseline.as_ref().map(|b| b.expected.clone());
            let sum = |t: &ViewTally| {
                summarize(
                    &t.features[i],
                    &wf.edges,
                    expected.as_deref(),
                    wf.default,
                    t.sampled_defaults,
                )
            };
            let w = sum(&window);
            let valued = window.features[i].n - window.features[i].nan;
            let psi_absent = match (&expected, w.psi) {
                (None, _) => Some("no baseline for this feature".to_string()),
                (Some(_), None) => Some(format!(
                    "{valued} values in the window; PSI is published from {PSI_MIN_SAMPLES}"
                )),
                _ => None,
            };
            FeatureReport {
                feature: f.name.clone(),
                non_finite: match wf.non_finite {
                    NonFinite::Serve => "serve",
                    NonFinite::Invalid => "invalid",
                },
                non_finite_total: total.non_finite[i],
                invalid_total: total.invalid_by_field[i],
                baseline_zero_share: wf.baseline.as_ref().map(|b| b.zero_share),
                baseline_default_share: wf.baseline.as_ref().map(|b| b.default_share),
                default_is_zero: wf.default == 0.0,
                window: w,
                since_start: sum(&total),
                psi_absent,
                edges: expected.as_ref().map(|_| wf.edges.to_vec()),
                observed: expected.as_ref().map(|_| window.features[i].bins.clone()),
                expected,
            }
        })
        .collect();
    ViewReport {
        view: view.name.clone(),
        sample_rate: view.watch.sample_rate,
        window_seconds: windows.window().as_secs(),
        window_sampled: window.sampled,
        window_sampled_defaults: window.sampled_defaults,
        total_sampled: total.sampled,
        total_sampled_defaults: total.sampled_defaults,
        baseline: view.watch.baseline.as_ref().map(|b| BaselineInfo {
            path: b.path.display().to_string(),
            sha256: b.sha256.clone(),
        }),
        features,
    }
}
