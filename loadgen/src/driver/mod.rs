//! The load engine: open-loop (or closed-loop) requests over pipelined connections, to
//! featureproxy's binary protocol or to a RESP server, timed from each request's intended send
//! time.
//!
//! Layout. The connections are split over `threads` workers. Each worker has
//!
//! * a **sender** OS thread (open loop only) that owns the schedule: request `k` of connection `c`
//!   is due at `start + c/rate + k·connections/rate` (stretched by `--burst`). It sleeps with
//!   `nanosleep` and a 1 µs timer slack (tokio's timers are millisecond-grained), then sends every
//!   request that is due, each stamped with its *intended* time. When a connection has
//!   `--inflight` requests outstanding, its due requests wait and go out late, still stamped with
//!   their intended time: the wait is counted (no coordinated omission).
//! * a **receiver** thread running a current-thread tokio runtime that reads every connection,
//!   matches replies to requests (by request id for featureproxy, in order for RESP), and records
//!   latency = reply time − intended time into per-worker HDR histograms. It also times requests
//!   out and reconnects broken connections. In closed-loop mode it sends too: each reply is
//!   immediately replaced by a new request.
//!
//! A request's entities are a pure function of `(connection, k)` ([`Workload::entities_of`]), so
//! the only per-request state is a slot holding `k`, the intended and the actual send time.
//!
//! Files. This module holds the public configuration and result types and re-exports [`run()`];
//! the engine itself is split by role: `shared` (the per-connection slots and the state every
//! thread shares, including request encoding), `run` (starting the threads and merging their
//! results), `sender` (the open-loop schedule), `receiver` (the receiver thread and each
//! connection's lifecycle) and `replies` (what each reply counts for).

mod receiver;
mod replies;
mod run;
mod sender;
mod shared;
mod tls;

pub use self::run::run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::server_cpu::ServerCpu;
use crate::spec::{Burst, Target};
use crate::workload::Workload;

/// A send more than this late counts as "behind schedule".
pub const LATE_NS: u64 = 1_000_000;
/// Histograms hold microseconds up to an hour, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

fn new_sec_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 2).expect("valid histogram bounds")
}

/// How requests are encoded and replies read.
#[derive(Debug, Clone)]
pub enum Proto {
    /// featureproxy's binary protocol.
    Fp {
        view_id: u16,
        schema_id: u32,
        get_flags: u16,
        deadline_us: u32,
        /// The view's feature dtypes, to check rows against the values `seed` wrote.
        dtypes: Vec<featureproxy_protocol::Dtype>,
        token: String,
    },
    /// RESP GET / MGET of `{redis_prefix}{key}`.
    Resp { redis_prefix: Vec<u8> },
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: Target,
    /// Connect to a featureproxy target over TLS with these settings (certificates already
    /// read). RESP targets are always plaintext.
    pub tls: Option<featureproxy_client::TlsConnector>,
    /// The view's name (for reports).
    pub view: String,
    pub proto: Proto,
    pub workload: Arc<Workload>,
    /// Entity keys are `{key_prefix}{id}`.
    pub key_prefix: Vec<u8>,
    /// Requests per second over all connections; `None` is closed loop.
    pub rate: Option<f64>,
    pub burst: Option<Burst>,
    pub connections: usize,
    pub inflight: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request unanswered this long fails its connection (which is reopened).
    pub timeout: Duration,
    /// Check the rows of every Nth reply against the seeded values (0: never).
    pub verify_every: u64,
    /// Print a live progress line on stderr.
    pub progress: bool,
    /// Server processes whose CPU time is sampled at the start and the end of the measured
    /// window (`--server-pid`).
    pub server_pids: Vec<u32>,
}

/// One second of the measured window (by completion time).
#[derive(Debug, Clone)]
pub struct Second {
    pub hist: Histogram<u64>,
    pub responses: u64,
    pub errors: u64,
    pub sent: u64,
    pub late: u64,
    /// Entities answered with defaults because Redis was failing (DEGRADED).
    pub degraded: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            hist: new_sec_hist(),
            responses: 0,
            errors: 0,
            sent: 0,
            late: 0,
            degraded: 0,
        }
    }

    fn merge(&mut self, o: &Second) {
        let _ = self.hist.add(&o.hist);
        self.responses += o.responses;
        self.errors += o.errors;
        self.sent += o.sent;
        self.late += o.late;
        self.degraded += o.degraded;
    }
}

/// What a run measured: the raw material of [`crate::report::Report`].
#[derive(Debug, Clone)]
pub struct Measured {
    /// Latency from the intended send time, µs.
    pub hist: Histogram<u64>,
    /// Latency from the actual send time (what a closed-loop tool would report), µs.
    pub uhist: Histogram<u64>,
    /// How late each send was against its schedule, µs.
    pub lag: Histogram<u64>,
    pub seconds: Vec<Second>,
    /// Replies to measured requests (any time).
    pub responses: u64,
    /// Replies that arrived inside the measured window.
    pub in_window: u64,
    pub entities: u64,
    /// Entities of the replies that arrived inside the measured window: what the servers'
    /// CPU time over that window paid for.
    pub in_window_entities: u64,
    /// Entity statuses by [`Status`](featureproxy_protocol::Status) value, and how many were
    /// served from the hot cache.
    pub statuses: [u64; 6],
    pub cached: u64,
    pub errors: BTreeMap<String, u64>,
    pub sends: u64,
    pub late_sends: u64,
    pub sampled_entities: u64,
    pub top1_entities: u64,
    pub verify_checked: u64,
    pub verify_bad: u64,
    pub verify_example: Option<String>,
    /// Connections per proxy shard (from HELLO).
    pub shards: BTreeMap<u16, u64>,
    /// CPU of each `--server-pid` over the measured window, in the order given.
    pub server_cpu: Vec<ServerCpu>,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            hist: new_hist(),
            uhist: new_hist(),
            lag: new_hist(),
            seconds: Vec::new(),
            responses: 0,
            in_window: 0,
            entities: 0,
            in_window_entities: 0,
            statuses: [0; 6],
            cached: 0,
            errors: BTreeMap::new(),
            sends: 0,
            late_sends: 0,
            sampled_entities: 0,
            top1_entities: 0,
            verify_checked: 0,
            verify_bad: 0,
            verify_example: None,
            shards: BTreeMap::new(),
            server_cpu: Vec::new(),
        }
    }

    fn second(&mut self, s: usize) -> &mut Second {
        // Bounded: seconds past the window only come from the drain, itself bounded by the
        // timeout.
        while self.seconds.len() <= s {
            self.seconds.push(Second::new());
        }
        &mut self.seconds[s]
    }

    fn error(&mut self, kind: &str, sec: usize) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
        self.second(sec).errors += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, o: &Measured) {
        let _ = self.hist.add(&o.hist);
        let _ = self.uhist.add(&o.uhist);
        let _ = self.lag.add(&o.lag);
        for (i, s) in o.seconds.iter().enumerate() {
            self.second(i).merge(s);
        }
        self.responses += o.responses;
        self.in_window += o.in_window;
        self.entities += o.entities;
        self.in_window_entities += o.in_window_entities;
        for i in 0..6 {
            self.statuses[i] += o.statuses[i];
        }
        self.cached += o.cached;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        self.sends += o.sends;
        self.late_sends += o.late_sends;
        self.sampled_entities += o.sampled_entities;
        self.top1_entities += o.top1_entities;
        self.verify_checked += o.verify_checked;
        self.verify_bad += o.verify_bad;
        if self.verify_example.is_none() {
            self.verify_example.clone_from(&o.verify_example);
        }
        for (k, v) in &o.shards {
            *self.shards.entry(*k).or_insert(0) += v;
        }
    }
}
