//! A small writer for the Prometheus text exposition format (version 0.0.4).

use std::fmt::{Display, Write as _};

use hdrhistogram::Histogram;

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
