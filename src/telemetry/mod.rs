//! What the proxy counts and measures: per-shard [`counters`] (relaxed atomics, each written by
//! its own shard only), latency and age [`histograms`] and served-value tallies ([`values`])
//! recorded per shard and shipped once a second, the latter added into sliding windows
//! ([`value_window`]). Operators read them through [`crate::ops`].

pub mod counters;
pub mod histograms;
pub mod value_report;
pub mod value_window;
pub mod values;

use std::cell::RefCell;
use std::rc::Rc;

/// What a shard's reading stage records into, both shipped to the stats thread once a second:
/// latency and age histograms, and served-value tallies.
#[derive(Clone)]
pub struct Recorders {
    pub histograms: Rc<RefCell<histograms::ShardHistograms>>,
    pub values: Rc<RefCell<values::ShardValues>>,
}
