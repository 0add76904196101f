//! What the proxy counts and measures: per-shard [`counters`] (relaxed atomics, each written by
//! its own shard only), latency and age [`histograms`] (recorded per shard, shipped once a
//! second), and the table of [`metrics`] that operators read them through.

pub mod counters;
pub mod histograms;
pub mod metrics;

use std::sync::Arc;

use crate::config::registry::Registry;
use counters::ShardStats;
use histograms::{ShardHistograms, SharedAggregate};

/// Everything the operators' endpoint reads.
pub struct Sources {
    pub shards: Vec<Arc<ShardStats>>,
    pub registry: Arc<Registry>,
    pub histograms: SharedAggregate,
    /// Unix seconds when the process started.
    pub started_unix_s: u64,
}

impl Sources {
    /// Histograms summed over shards: (since start, last interval).
    pub fn merged_histograms(&self) -> (ShardHistograms, ShardHistograms) {
        let n = self.registry.views().len();
        let (mut total, mut last) = (ShardHistograms::new(n), ShardHistograms::new(n));
        if let Ok(agg) = self.histograms.lock() {
            for h in &agg.total {
                total.add(h);
            }
            for h in &agg.last {
                last.add(h);
            }
        }
        (total, last)
    }
}
