//! What the proxy counts and measures: per-shard [`counters`] (relaxed atomics, each written by
//! its own shard only), latency and age [`histograms`] (recorded per shard, shipped once a
//! second). Operators read them through [`crate::ops`].

pub mod counters;
pub mod histograms;
