//! `/metrics`: the metric tables ([`super::metrics::all`]) in the Prometheus
//! text exposition format (version 0.0.4), through a small writer of that format.

use std::fmt::{Display, Write as _};

use hdrhistogram::Histogram;

use super::metrics::{self, Samples, Scrape, Value};
use super::Sources;

/// One scrape of every metric, in the table's order.
pub fn metrics(src: &Sources) -> String {
    let scrape = Scrape::new(src);
    let mut p = Prom::default();
    for m in metrics::all() {
        p.family(m.name, m.kind.name(), m.help);
        m.read(
            &scrape,
            &mut Family {
                prom: &mut p,
                name: m.name,
                labels: m.labels,
            },
        );
    }
    p.finish()
}

/// The samples of one family: label values are paired with the family's label names here.
struct Family<'a> {
    prom: &'a mut Prom,
    name: &'static str,
    labels: &'static [&'static str],
}

impl Family<'_> {
    fn pairs<'v>(&self, values: &[&'v str]) -> Vec<(&'static str, &'v str)> {
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values",
            self.name
        );
        self.labels
            .iter()
            .copied()
            .zip(values.iter().copied())
            .collect()
    }
}

impl Samples for Family<'_> {
    fn sample(&mut self, labels: &[&str], value: Value) {
        let pairs = self.pairs(labels);
        self.prom.sample(self.name, &pairs, value);
    }

    fn histogram(&mut self, labels: &[&str], h: &Histogram<u64>, unit: f64, bounds: &[f64]) {
        let pairs = self.pairs(labels);
        self.prom.histogram(self.name, &pairs, h, unit, bounds);
    }
}

/// Builds one scrape's worth of text.
#[derive(Default)]
pub struct Prom {
    out: String,
}

impl Prom {
    /// Starts a metric family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            let _ = write!(self.out, "{k}=\"{}\"", escape(v));
        }
        self.out.push('}');
    }

    /// A histogram sample set from an HDR histogram recorded in `unit` seconds per count (1e-6
    /// for microseconds), with cumulative buckets at `bounds` seconds. `_sum` is the HDR mean
    /// times the count: exact to the histogram's 3 significant digits.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &Histogram<u64>,
        unit: f64,
        bounds: &[f64],
    ) {
        for b in bounds {
            let upto = (b / unit).floor() as u64;
            let count = if upto == 0 {
                0
            } else {
                h.count_between(0, upto)
            };
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(&format!("{b}")));
            let _ = writeln!(self.out, " {count}");
        }
        self.out.push_str(name);
        self.out.push_str("_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.len());
        self.sample(
            &format!("{name}_sum"),
            labels,
            h.mean() * h.len() as f64 * unit,
        );
        self.sample(&format!("{name}_count"), labels, h.len());
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
