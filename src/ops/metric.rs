//! What a metric is and how its samples are read: its kind, its reader over the shards'
//! counters and histograms ([`Read`]), and one scrape's view of them ([`Scrape`]). The metrics
//! themselves are the table in [`super::metrics`].

use std::cell::OnceCell;
use std::fmt;

use hdrhistogram::Histogram;

use super::Sources;
use crate::telemetry::counters::{NodeStats, ShardStats, ViewStats};
use crate::telemetry::histograms::ShardHistograms;
use crate::telemetry::value_report::Reports;

/// A Prometheus metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample's value: counts stay integers, durations and ratios are reals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Count(u64),
    Real(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Count(n) => write!(f, "{n}"),
            Value::Real(x) => write!(f, "{x}"),
        }
    }
}

/// Where a metric's samples go; label values come in the order of [`Metric::labels`].
pub trait Samples {
    fn sample(&mut self, labels: &[&str], value: Value);
    /// A histogram recorded in `unit` seconds per count, with cumulative buckets at `bounds`
    /// seconds.
    fn histogram(&mut self, labels: &[&str], h: &Histogram<u64>, unit: f64, bounds: &[f64]);
}

/// What one scrape reads: the sources, and the shards' histograms merged once, on first use.
pub struct Scrape<'a> {
    pub src: &'a Sources,
    merged: OnceCell<(ShardHistograms, ShardHistograms)>,
    values: OnceCell<Reports>,
}

impl<'a> Scrape<'a> {
    pub fn new(src: &'a Sources) -> Scrape<'a> {
        Scrape {
            src,
            merged: OnceCell::new(),
            values: OnceCell::new(),
        }
    }

    /// Histograms summed over shards: since start.
    pub fn total(&self) -> &ShardHistograms {
        &self.merged().0
    }

    /// Histograms summed over shards: the last one-second interval.
    pub fn last(&self) -> &ShardHistograms {
        &self.merged().1
    }

    /// The served values' reports, read once per scrape.
    pub fn values(&self) -> &Reports {
        self.values.get_or_init(|| self.src.value_reports())
    }

    fn merged(&self) -> &(ShardHistograms, ShardHistograms) {
        self.merged.get_or_init(|| self.src.merged_histograms())
    }

    pub(super) fn sum(&self, f: impl Fn(&ShardStats) -> u64) -> u64 {
        self.src.shards.iter().map(|s| f(s)).sum()
    }

    /// Per Redis Cluster node ("host:port", in order): every shard's counters of it.
    pub(super) fn by_node(
        &self,
    ) -> std::collections::BTreeMap<String, Vec<std::sync::Arc<NodeStats>>> {
        let mut out: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for s in &self.src.shards {
            for n in s.node_list() {
                out.entry(n.addr.clone()).or_default().push(n);
            }
        }
        out
    }
}

/// How a metric's samples are read.
pub enum Read {
    /// One sample: the sum over shards.
    Total(fn(&ShardStats) -> u64),
    /// One sample per shard, labelled `shard`.
    PerShard(fn(&ShardStats) -> u64),
    /// One sample per view, labelled `view`, summed over shards.
    PerView(fn(&ViewStats) -> u64),
    /// One sample per Redis Cluster node, labelled `node` ("host:port"), summed over shards.
    PerNode(fn(&NodeStats) -> u64),
    /// Samples with labels of their own (ops, codes, statuses, histograms).
    Custom(fn(&Scrape, &mut dyn Samples)),
}

/// One metric family.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The labels every sample carries, in order.
    pub labels: &'static [&'static str],
    pub read: Read,
}

impl Metric {
    /// Writes this metric's samples.
    pub fn read(&self, scrape: &Scrape, out: &mut dyn Samples) {
        match &self.read {
            Read::Total(f) => out.sample(&[], Value::Count(scrape.sum(f))),
            Read::PerShard(f) => {
                for s in &scrape.src.shards {
                    out.sample(&[&s.shard.to_string()], Value::Count(f(s)));
                }
            }
            Read::PerView(f) => {
                for view in scrape.src.registry().views() {
                    let v = scrape.sum(|s| s.view(view.id).map_or(0, f));
                    out.sample(&[&view.name], Value::Count(v));
                }
            }
            Read::PerNode(f) => {
                for (node, per_shard) in scrape.by_node() {
                    let v = per_shard.iter().map(|n| f(n)).sum();
                    out.sample(&[&node], Value::Count(v));
                }
            }
            Read::Custom(f) => f(scrape, out),
        }
    }
}

/// Sub-millisecond buckets for request and Redis latency, in seconds.
pub const LATENCY_BOUNDS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];
/// Feature age buckets, in seconds: from a second to a day.
pub const AGE_BOUNDS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

pub(super) const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    read: Read,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        labels,
        read,
    }
}

pub(super) const fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    read: Read,
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        labels,
        read,
    }
}

pub(super) const fn histogram(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    read: fn(&Scrape, &mut dyn Samples),
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
        labels,
        read: Read::Custom(read),
    }
}
