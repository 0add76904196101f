//! The run's report: text for people, JSON for scripts, SVG for eyes.

use std::fmt::Write as _;

use featureproxy_protocol::Status;
use hdrhistogram::Histogram;

use crate::driver::{Measured, RunConfig};
use crate::server_cpu::{self, ServerCpu};
use crate::spec::{fmt_us, Slo, SloInput};

/// Percentiles every report shows.
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
];

/// A finished run, ready to print.
pub struct Report {
    pub label: String,
    pub cfg: RunConfig,
    pub m: Measured,
    /// Measured share of entities that went to the top 1% of keys, and the analytic one.
    pub top1: Option<(f64, f64)>,
    pub slo: Option<(String, Vec<String>)>,
}

fn pct(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(p / 100.0) as f64
    }
}

impl Report {
    pub fn new(label: String, cfg: RunConfig, m: Measured, slo: Option<&(String, Slo)>) -> Report {
        let top1 = if let Some(t) = &cfg.workload.trace {
            Some((t.top1_share, f64::NAN))
        } else if m.sampled_entities > 0 {
            Some((
                m.top1_entities as f64 / m.sampled_entities as f64,
                cfg.workload.expected_top1_share(),
            ))
        } else {
            None
        };
        let mut r = Report {
            label,
            cfg,
            m,
            top1,
            slo: None,
        };
        if let Some((text, slo)) = slo {
            let h = &r.m.hist;
            let f = |p: f64| pct(h, p);
            let failed = slo.evaluate(SloInput {
                percentile_us: &f,
                max_us: h.max() as f64,
                errors: r.m.error_count(),
            });
            r.slo = Some((text.clone(), failed));
        }
        r
    }

    pub fn duration_s(&self) -> f64 {
        self.cfg.duration.as_secs_f64().max(1e-9)
    }

    pub fn achieved_rps(&self) -> f64 {
        self.m.in_window as f64 / self.duration_s()
    }

    pub fn offered_rps(&self) -> f64 {
        self.m.sends as f64 / self.duration_s()
    }

    pub fn late_share(&self) -> f64 {
        if self.m.sends == 0 {
            0.0
        } else {
            self.m.late_sends as f64 / self.m.sends as f64
        }
    }

    pub fn slo_passed(&self) -> Option<bool> {
        self.slo.as_ref().map(|(_, f)| f.is_empty())
    }

    /// Each server's CPU over the measured window with its µs per request and per entity
    /// answered in that window.
    pub fn server_cpu(&self) -> Vec<(&ServerCpu, Option<f64>, Option<f64>)> {
        self.m
            .server_cpu
            .iter()
            .map(|c| {
                let s = c.cpu_s.as_ref().ok().copied();
                (
                    c,
                    server_cpu::per(s, self.m.in_window),
                    server_cpu::per(s, self.m.in_window_entities),
                )
            })
            .collect()
    }

    /// All servers together: (CPU s, µs per request, µs per entity); None when there are no
    /// servers or one of them could not be measured.
    pub fn server_cpu_total(&self) -> Option<(f64, Option<f64>, Option<f64>)> {
        server_cpu::total(&self.m.server_cpu).map(|s| {
            (
                s,
                server_cpu::per(Some(s), self.m.in_window),
                server_cpu::per(Some(s), self.m.in_window_entities),
            )
        })
    }

    fn mode(&self) -> String {
        match self.cfg.rate {
            Some(r) => format!("open loop at {r:.0} req/s"),
            None => "closed loop (max throughput)".to_string(),
        }
    }

    fn status_names(&self) -> [&'static str; 6] {
        if self.cfg.target.is_resp() {
            ["hit", "-", "missing", "-", "-", "invalid"]
        } else {
            [
                "fresh", "stale", "missing", "expired", "degraded", "invalid",
            ]
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let m = &self.m;
        let c = &self.cfg;
        let w = &c.workload;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "== {}: {} view {} {}, {}",
            self.label,
            c.target,
            c.view,
            match (&c.proto, c.tls.is_some()) {
                (crate::driver::Proto::Fp { .. }, false) => "(featureproxy GET)",
                (crate::driver::Proto::Fp { .. }, true) => "(featureproxy GET over TLS)",
                (crate::driver::Proto::Resp { .. }, _) => "(RESP GET/MGET)",
            },
            self.mode()
        );
        let _ = writeln!(
            o,
            "   {} conns x {} inflight, {} thread(s); batch {}; {}; {:.0}s measured after {:.0}s warm-up{}",
            c.connections,
            c.inflight,
            c.threads,
            w.batch,
            match &w.trace {
                Some(t) => format!("trace of {} ids ({} distinct)", t.items.len(), t.distinct),
                None => format!(
                    "Zipf s={} over {} entities, {:.0}% cold",
                    w.zipf_s,
                    w.entities,
                    w.cold_fraction * 100.0
                ),
            },
            c.duration.as_secs_f64(),
            c.warmup.as_secs_f64(),
            c.burst
                .map(|b| format!("; burst {b}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "requests    {} answered: {:.0} req/s achieved ({:.0} offered), {:.0} entities/s",
            m.responses,
            self.achieved_rps(),
            self.offered_rps(),
            m.entities as f64 / self.duration_s()
        );
        let window_s = m.server_cpu.first().map_or(0.0, |c| c.window_s);
        let cost = |s: f64, req: Option<f64>, ent: Option<f64>| {
            format!(
                "{} us/request, {} us/entity, {s:.2} s over {window_s:.1} s",
                req.map_or("-".into(), sig3),
                ent.map_or("-".into(), sig3)
            )
        };
        for (c, req, ent) in self.server_cpu() {
            let what = match &c.cpu_s {
                Ok(s) => cost(*s, req, ent),
                Err(why) => why.clone(),
            };
            let _ = writeln!(o, "server cpu  {} (pid {}): {what}", c.name, c.pid);
        }
        if m.server_cpu.len() > 1 {
            let what = match self.server_cpu_total() {
                Some((s, req, ent)) => cost(s, req, ent),
                None => "n/a (not every server could be measured)".into(),
            };
            let _ = writeln!(o, "server cpu  total: {what}");
        }
        for (name, h, note) in [
            ("latency", &m.hist, "from the intended send time"),
            ("uncorrected", &m.uhist, "from the actual send time"),
        ] {
            let _ = write!(o, "{name:<12}");
            for (p, v) in PERCENTILES {
                let _ = write!(o, "{p} {:<9}", fmt_us(pct(h, v)));
            }
            let _ = writeln!(o, "max {:<9} ({note})", fmt_us(h.max() as f64));
        }
        let errors = m.error_count();
        if errors == 0 {
            let _ = writeln!(o, "errors      none");
        } else {
            let list: Vec<String> = m.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(o, "errors      {errors}: {}", list.join(", "));
        }
        let total = m.entities.max(1) as f64;
        let names = self.status_names();
        let mut parts = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if *n != "-" {
                parts.push(format!("{n} {:.2}%", m.statuses[i] as f64 * 100.0 / total));
            }
        }
        if !c.target.is_resp() {
            parts.push(format!("(cached {:.1}%)", m.cached as f64 * 100.0 / total));
        }
        let _ = writeln!(o, "statuses    {}", parts.join("  "));
        if let Some((got, want)) = self.top1 {
            if want.is_nan() {
                let _ = writeln!(
                    o,
                    "top 1%      of the trace's distinct keys took {:.1}% of its entities",
                    got * 100.0
                );
            } else {
                let _ = writeln!(
                    o,
                    "top 1%      of keys took {:.1}% of entities (analytic H(n/100,s)/H(n,s) = {:.1}%)",
                    got * 100.0,
                    want * 100.0
                );
            }
        }
        let _ = writeln!(
            o,
            "loadgen     {} sends, {:.3}% more than 1 ms behind schedule (lag p99 {}, max {})",
            m.sends,
            self.late_share() * 100.0,
            fmt_us(pct(&m.lag, 99.0)),
            fmt_us(m.lag.max() as f64)
        );
        if c.verify_every > 0 && !c.target.is_resp() {
            let _ = writeln!(
                o,
                "verify      {} rows compared with f(id, j), {} wrong{}",
                m.verify_checked,
                m.verify_bad,
                m.verify_example
                    .as_ref()
                    .map(|e| format!(" (e.g. {e})"))
                    .unwrap_or_default()
            );
        }
        if !m.shards.is_empty() {
            let list: Vec<String> = m
                .shards
                .iter()
                .map(|(s, n)| format!("shard {s}: {n}"))
                .collect();
            let _ = writeln!(o, "connections {}", list.join(", "));
        }
        let _ = writeln!(
            o,
            "timeline    second  answered/s   p99        max        errors  late-sends  degraded"
        );
        for (i, s) in m.seconds.iter().enumerate() {
            let mark = if i as f64 >= self.duration_s() {
                " (drain)"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "            {:>6}  {:>10}   {:<10} {:<10} {:>6}  {:>10}  {:>8}{mark}",
                i,
                s.responses,
                fmt_us(pct(&s.hist, 99.0)),
                fmt_us(s.hist.max() as f64),
                s.errors,
                s.late,
                s.degraded
            );
        }
        if let Some((spec, failed)) = &self.slo {
            if failed.is_empty() {
                let _ = writeln!(o, "SLO         {spec}: PASS");
            } else {
                let _ = writeln!(o, "SLO         {spec}: FAIL: {}", failed.join("; "));
            }
        }
        o
    }

    /// The report as a JSON object.
    pub fn json(&self) -> String {
        let m = &self.m;
        let c = &self.cfg;
        let w = &c.workload;
        let mut o = String::from("{\n");
        let mut field = |k: &str, v: String| {
            let _ = writeln!(o, "  {}: {v},", jstr(k));
        };
        field("label", jstr(&self.label));
        field("target", jstr(&c.target.to_string()));
        field("tls", c.tls.is_some().to_string());
        field("view", jstr(&c.view));
        field(
            "mode",
            jstr(if c.rate.is_some() { "open" } else { "closed" }),
        );
        field("rate", c.rate.map_or("null".into(), jnum));
        field("connections", c.connections.to_string());
        field("inflight", c.inflight.to_string());
        field("threads", c.threads.to_string());
        field("batch", jstr(&w.batch.to_string()));
        field("entities", w.entities.to_string());
        field("zipf_s", jnum(w.zipf_s));
        field("cold_fraction", jnum(w.cold_fraction));
        field(
            "burst",
            c.burst.map_or("null".into(), |b| jstr(&b.to_string())),
        );
        field("duration_s", jnum(c.duration.as_secs_f64()));
        field("warmup_s", jnum(c.warmup.as_secs_f64()));
        field("responses", m.responses.to_string());
        field("achieved_rps", jnum(self.achieved_rps()));
        field("offered_rps", jnum(self.offered_rps()));
        field(
            "entities_per_s",
            jnum(m.entities as f64 / self.duration_s()),
        );
        let cpus: Vec<String> = self
            .server_cpu()
            .iter()
            .map(|(c, req, ent)| {
                let opt = |v: Option<f64>| v.map_or("null".into(), jnum);
                format!(
                    "{{\"pid\": {}, \"name\": {}, \"cpu_s\": {}, \"us_per_request\": {}, \"us_per_entity\": {}, \"window_s\": {}, \"error\": {}}}",
                    c.pid,
                    jstr(&c.name),
                    opt(c.cpu_s.as_ref().ok().copied()),
                    opt(*req),
                    opt(*ent),
                    jnum(c.window_s),
                    c.cpu_s.as_ref().err().map_or("null".into(), |e| jstr(e))
                )
            })
            .collect();
        field("server_cpu", format!("[{}]", cpus.join(", ")));
        let cpu_total = self.server_cpu_total();
        field(
            "server_cpu_us_per_request_total",
            cpu_total.and_then(|t| t.1).map_or("null".into(), jnum),
        );
        field(
            "server_cpu_us_per_entity_total",
            cpu_total.and_then(|t| t.2).map_or("null".into(), jnum),
        );
        field("latency_us", hist_json(&m.hist));
        field("uncorrected_latency_us", hist_json(&m.uhist));
        let errs: Vec<String> = m
            .errors
            .iter()
            .map(|(k, v)| format!("{}: {v}", jstr(k)))
            .collect();
        field("errors_total", m.error_count().to_string());
        field("errors", format!("{{{}}}", errs.join(", ")));
        let total = m.entities.max(1) as f64;
        let names = [
            "fresh", "stale", "missing", "expired", "degraded", "invalid",
        ];
        let sts: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}: {}", jstr(n), m.statuses[i]))
            .collect();
        field("statuses", format!("{{{}}}", sts.join(", ")));
        field("entities_answered", m.entities.to_string());
        field("cached_share", jnum(m.cached as f64 / total));
        field(
            "top1_share",
            self.top1.map_or("null".into(), |(g, _)| jnum(g)),
        );
        field(
            "top1_share_expected",
            self.top1
                .and_then(|(_, w)| (!w.is_nan()).then_some(w))
                .map_or("null".into(), jnum),
        );
        field("sends", m.sends.to_string());
        field("late_sends", m.late_sends.to_string());
        field("late_share", jnum(self.late_share()));
        field("lag_us", hist_json(&m.lag));
        field("verify_checked", m.verify_checked.to_string());
        field("verify_bad", m.verify_bad.to_string());
        let secs: Vec<String> = m
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{{\"t\": {i}, \"responses\": {}, \"p99_us\": {}, \"max_us\": {}, \"errors\": {}, \"sent\": {}, \"late\": {}, \"degraded\": {}}}",
                    s.responses,
                    pct(&s.hist, 99.0),
                    s.hist.max(),
                    s.errors,
                    s.sent,
                    s.late,
                    s.degraded
                )
            })
            .collect();
        field("timeline", format!("[\n    {}\n  ]", secs.join(",\n    ")));
        match &self.slo {
            Some((spec, failed)) => {
                let f: Vec<String> = failed.iter().map(|s| jstr(s)).collect();
                field(
                    "slo",
                    format!(
                        "{{\"spec\": {}, \"passed\": {}, \"failed\": [{}]}}",
                        jstr(spec),
                        failed.is_empty(),
                        f.join(", ")
                    ),
                );
            }
            None => field("slo", "null".into()),
        }
        // Drop the last comma.
        if o.ends_with(",\n") {
            o.truncate(o.len() - 2);
            o.push('\n');
        }
        o.push_str("}\n");
        o
    }

    /// Column names of [`Report::tsv_row`].
    pub const TSV_HEADER: &'static str = "label\ttarget\tmode\trate\tachieved_rps\tentities_per_s\tp50_us\tp90_us\tp99_us\tp999_us\tp9999_us\tmax_us\tu_p99_us\terrors\terror_kinds\tfresh\tstale\tmissing\texpired\tdegraded\tinvalid\tcached_share\ttop1_share\tlate_share\tslo\tserver_cpu_us_per_request\tserver_cpu_us_per_entity\tserver_cpu";

    /// One tab-separated line with the headline numbers (see [`Report::TSV_HEADER`]).
    pub fn tsv_row(&self) -> String {
        let m = &self.m;
        let h = &m.hist;
        let total = m.entities.max(1) as f64;
        let kinds: Vec<String> = m.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let share = |i: usize| format!("{:.4}", m.statuses[i] as f64 / total);
        let cpu_total = self.server_cpu_total();
        // NAME:PID=US_PER_REQUEST/US_PER_ENTITY per server, in --server-pid order, so a script
        // can take them apart by position.
        let cpus: Vec<String> = self
            .server_cpu()
            .iter()
            .map(|(c, req, ent)| {
                let name: String = c
                    .name
                    .chars()
                    .map(|ch| if ":=,/\t ".contains(ch) { '_' } else { ch })
                    .collect();
                match (req, ent) {
                    (Some(r), Some(e)) => format!("{name}:{}={r:.4}/{e:.4}", c.pid),
                    _ => format!("{name}:{}=-/-", c.pid),
                }
            })
            .collect();
        [
            self.label.clone(),
            self.cfg.target.to_string(),
            if self.cfg.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_string(),
            self.cfg.rate.map_or("-".into(), |r| format!("{r:.0}")),
            format!("{:.0}", self.achieved_rps()),
            format!("{:.0}", m.entities as f64 / self.duration_s()),
            format!("{:.0}", pct(h, 50.0)),
            format!("{:.0}", pct(h, 90.0)),
            format!("{:.0}", pct(h, 99.0)),
            format!("{:.0}", pct(h, 99.9)),
            format!("{:.0}", pct(h, 99.99)),
            h.max().to_string(),
            format!("{:.0}", pct(&m.uhist, 99.0)),
            m.error_count().to_string(),
            if kinds.is_empty() {
                "-".into()
            } else {
                kinds.join(",")
            },
            share(0),
            share(1),
            share(2),
            share(3),
            share(4),
            share(5),
            format!("{:.4}", m.cached as f64 / total),
            self.top1.map_or("-".into(), |(g, _)| format!("{g:.4}")),
            format!("{:.5}", self.late_share()),
            match self.slo_passed() {
                Some(true) => "pass".into(),
                Some(false) => "FAIL".into(),
                None => "-".into(),
            },
            cpu_total
                .and_then(|t| t.1)
                .map_or("-".into(), |v| format!("{v:.4}")),
            cpu_total
                .and_then(|t| t.2)
                .map_or("-".into(), |v| format!("{v:.4}")),
            if cpus.is_empty() {
                "-".into()
            } else {
                cpus.join(",")
            },
        ]
        .join("\t")
    }

    /// An SVG with the latency percentile curve (corrected and uncorrected) and the per-second
    /// timeline (answered/s and p99).
    pub fn svg(&self) -> String {
        let (wd, ht) = (900.0, 700.0);
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{wd}" height="{ht}" viewBox="0 0 {wd} {ht}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
            wd / 2.0,
            xml(&format!(
                "{} — {} — {}",
                self.label,
                self.cfg.target,
                self.mode()
            ))
        );

        // Panel 1: percentile curve. x = nines (0 = p0, 1 = p90, 2 = p99, ... 5 = p99.999),
        // y = latency on a log scale.
        let (x0, y0, pw, ph) = (80.0, 50.0, 760.0, 270.0);
        let max_nines = 5.0;
        let h = &self.m.hist;
        let u = &self.m.uhist;
        let ymax = (h.max().max(u.max()).max(2) as f64).log10().ceil().max(1.0);
        let ymin = (h
            .min()
            .min(if u.is_empty() { u64::MAX } else { u.min() })
            .max(1) as f64)
            .log10()
            .floor()
            .min(ymax - 1.0);
        let sx = |n: f64| x0 + n / max_nines * pw;
        let sy = |us: f64| y0 + ph - (us.max(1.0).log10() - ymin) / (ymax - ymin) * ph;
        frame(&mut o, x0, y0, pw, ph);
        for n in 0..=5 {
            let label = ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999"][n];
            let x = sx(n as f64);
            let _ = writeln!(
                o,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
                y0 + ph,
                y0 + ph + 16.0
            );
        }
        let mut d = ymin as i32;
        while d as f64 <= ymax {
            let y = sy(10f64.powi(d));
            let _ = writeln!(
                o,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 6.0,
                y + 4.0,
                fmt_us(10f64.powi(d))
            );
            d += 1;
        }
        for (hist, color) in [(u, "#999"), (h, "#c0392b")] {
            if hist.is_empty() {
                continue;
            }
            let mut pts = String::new();
            let steps = 200;
            for i in 0..=steps {
                let n = max_nines * i as f64 / steps as f64;
                let q = 1.0 - 10f64.powf(-n);
                if q * hist.len() as f64 > hist.len() as f64 - 0.5 && i > 0 {
                    break;
                }
                let v = hist.value_at_quantile(q.min(1.0)) as f64;
                let _ = write!(pts, "{:.1},{:.1} ", sx(n), sy(v));
            }
            let _ = writeln!(
                o,
                r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>"#
            );
        }
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" fill="#c0392b">latency from intended send time (max {})</text><text x="{}" y="{}" fill="#999">from actual send time</text>"##,
            x0 + 10.0,
            y0 + 16.0,
            fmt_us(h.max() as f64),
            x0 + 10.0,
            y0 + 32.0
        );

        // Panel 2: timeline. Bars: answered/s (left axis); line: p99 per second (right axis).
        let (x0, y0, pw, ph) = (80.0, 390.0, 730.0, 260.0);
        frame(&mut o, x0, y0, pw, ph);
        let secs = &self.m.seconds;
        let n = secs.len().max(1) as f64;
        let rmax = secs.iter().map(|s| s.responses).max().unwrap_or(1).max(1) as f64;
        let pmax = secs.iter().map(|s| pct(&s.hist, 99.0)).fold(1.0, f64::max);
        let bw = pw / n;
        for (i, s) in secs.iter().enumerate() {
            let bh = s.responses as f64 / rmax * ph;
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"##,
                x0 + i as f64 * bw + 1.0,
                y0 + ph - bh,
                (bw - 2.0).max(1.0),
                bh,
                if s.errors > 0 { "#e6a23c" } else { "#9ec5e8" }
            );
        }
        let mut pts = String::new();
        for (i, s) in secs.iter().enumerate() {
            let v = pct(&s.hist, 99.0);
            let _ = write!(
                pts,
                "{:.1},{:.1} ",
                x0 + (i as f64 + 0.5) * bw,
                y0 + ph - v / pmax * ph
            );
        }
        let _ = writeln!(
            o,
            r##"<polyline points="{pts}" fill="none" stroke="#c0392b" stroke-width="2"/>"##
        );
        for f in [0.0, 0.5, 1.0] {
            let y = y0 + ph - f * ph;
            let _ = writeln!(
                o,
                r##"<text x="{}" y="{}" text-anchor="end">{:.0}/s</text><text x="{}" y="{}" fill="#c0392b">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                f * rmax,
                x0 + pw + 4.0,
                y + 4.0,
                fmt_us(f * pmax)
            );
        }
        let step = (n / 10.0).ceil().max(1.0) as usize;
        for i in (0..secs.len()).step_by(step) {
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{i}s</text>"#,
                x0 + (i as f64 + 0.5) * bw,
                y0 + ph + 16.0
            );
        }
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}">answered per second (bars; orange = errors that second) and p99 per second (red line, right axis)</text>"##,
            x0,
            y0 - 8.0
        );
        o.push_str("</svg>\n");
        o
    }
}

fn frame(o: &mut String, x: f64, y: f64, w: f64, h: f64) {
    let _ = writeln!(
        o,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#333"/>"##
    );
}

/// Three significant digits, enough for a cost that is compared as a ratio.
fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn hist_json(h: &Histogram<u64>) -> String {
    let mut parts: Vec<String> = PERCENTILES
        .iter()
        .map(|(n, p)| format!("{}: {}", jstr(&n.replace('.', "")), pct(h, *p)))
        .collect();
    parts.push(format!("\"max\": {}", h.max()));
    parts.push(format!(
        "\"mean\": {}",
        jnum(if h.is_empty() { 0.0 } else { h.mean() })
    ));
    parts.push(format!("\"count\": {}", h.len()));
    format!("{{{}}}", parts.join(", "))
}

fn jnum(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".into()
        } else {
            s.to_string()
        }
    } else {
        "null".into()
    }
}

pub fn jstr(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The status names, in wire order (for other modules' output).
pub fn status_name(i: usize) -> &'static str {
    Status::ALL.get(i).map_or("?", |s| s.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_helpers() {
        assert_eq!(jstr("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(jnum(1.5), "1.5");
        assert_eq!(jnum(2.0), "2");
        assert_eq!(jnum(0.0), "0");
        assert_eq!(jnum(f64::NAN), "null");
    }
}
