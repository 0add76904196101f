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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use featureproxy_protocol::{
    decode_frame, FrameWriter, Hello, Limits, Op, Request, Response, Status, VERSION,
};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::keys::write_row;
use crate::resp::{encode_command, parse_reply, Elem};
use crate::spec::{Burst, Target};
use crate::workload::{write_entity_key, Entity, Workload};

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
    /// Entity statuses by [`Status`] value, and how many were served from the hot cache.
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

// ---------------------------------------------------------------------------------------------
// Shared state

struct Slot {
    k: AtomicU64,
    /// Intended send time in ns since t0, plus one; 0 when the slot is free.
    intended: AtomicU64,
    sent: AtomicU64,
}

/// Wakes a sender thread waiting for a connection to drop below its in-flight limit.
struct Wake {
    waiting: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Wake {
    fn notify(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

struct Writer {
    stream: Option<std::net::TcpStream>,
    next_k: u64,
    buf: BytesMut,
    keys: Vec<u8>,
    ends: Vec<u32>,
    resp_out: Vec<u8>,
}

struct Conn {
    index: u64,
    slots: Box<[Slot]>,
    mask: u64,
    inflight: AtomicU32,
    writer: Mutex<Writer>,
    close_reason: Mutex<Option<&'static str>>,
    wake: Arc<Wake>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, k: u64) -> &Slot {
        &self.slots[(k & self.mask) as usize]
    }

    /// Frees the slot of request `k` (if it still holds it): `(intended, sent)`.
    fn take(&self, k: u64) -> Option<(u64, u64)> {
        let slot = self.slot(k);
        if slot.k.load(Ordering::Acquire) != k {
            return None;
        }
        let sent = slot.sent.load(Ordering::Acquire);
        let intended = slot.intended.swap(0, Ordering::AcqRel);
        if intended == 0 {
            return None;
        }
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify();
        Some((intended - 1, sent))
    }

    fn set_reason(&self, reason: &'static str) {
        let mut r = self
            .close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        r.get_or_insert(reason);
    }
}

struct Shared {
    cfg: RunConfig,
    t0: OnceLock<Instant>,
    warm_ns: u64,
    end_ns: u64,
    warm_ids: u64,
    limits: Limits,
    senders_done: AtomicUsize,
    live_sent: AtomicU64,
    live_done: AtomicU64,
    live_errors: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.t0.get().map_or(0, |t0| {
            Instant::now().saturating_duration_since(*t0).as_nanos() as u64
        })
    }

    fn measured(&self, intended: u64) -> bool {
        intended >= self.warm_ns
    }

    /// Index of the measured second that `t` falls in.
    fn sec(&self, t: u64) -> usize {
        (t.saturating_sub(self.warm_ns) / 1_000_000_000) as usize
    }

    fn closed(&self) -> bool {
        self.cfg.rate.is_none()
    }

    /// Interval between two requests of one connection whose schedule is at `t` ns.
    fn interval_ns(&self, t: f64) -> f64 {
        let rate = self.cfg.rate.unwrap_or(1.0);
        let mult = self
            .cfg
            .burst
            .map_or(1.0, |b| b.multiplier(Duration::from_nanos(t as u64)));
        self.cfg.connections as f64 * 1e9 / (rate * mult)
    }

    /// Registers request `k = w.next_k` (intended at `intended`) and encodes it into `w.buf`.
    /// False when the connection has no free slot for it.
    fn register(
        &self,
        conn: &Conn,
        w: &mut Writer,
        intended: u64,
        now: u64,
        st: &mut Measured,
    ) -> bool {
        if conn.inflight.load(Ordering::Acquire) as usize >= self.cfg.inflight {
            return false;
        }
        let k = w.next_k;
        let slot = conn.slot(k);
        if slot.intended.load(Ordering::Acquire) != 0 {
            return false;
        }
        let measured = self.measured(intended);
        // Draw the entities.
        w.keys.clear();
        w.ends.clear();
        let (keys, ends) = (&mut w.keys, &mut w.ends);
        let prefix = &self.cfg.key_prefix;
        let (mut sampled, mut top1) = (0u64, 0u64);
        self.cfg
            .workload
            .entities_of(conn.index, self.cfg.connections as u64, k, |e, top| {
                write_entity_key(keys, prefix, e);
                ends.push(keys.len() as u32);
                sampled += 1;
                top1 += u64::from(top);
            });
        match &self.cfg.proto {
            Proto::Fp {
                view_id,
                schema_id,
                get_flags,
                deadline_us,
                ..
            } => {
                let fw = FrameWriter::start(&mut w.buf, Op::Get as u8, k as u32);
                w.buf.put_u16_le(*view_id);
                w.buf.put_u16_le(*get_flags);
                w.buf.put_u32_le(*schema_id);
                w.buf.put_u32_le(*deadline_us);
                w.buf.put_u32_le(w.ends.len() as u32);
                let mut start = 0usize;
                for &end in &w.ends {
                    let key = &w.keys[start..end as usize];
                    start = end as usize;
                    w.buf.put_u16_le(key.len() as u16);
                    w.buf.put_slice(key);
                }
                fw.finish(&mut w.buf);
            }
            Proto::Resp { redis_prefix } => {
                w.resp_out.clear();
                let cmd: &[u8] = if w.ends.len() == 1 { b"GET" } else { b"MGET" };
                encode_command(&mut w.resp_out, cmd, redis_prefix, &w.keys, &w.ends);
                w.buf.put_slice(&w.resp_out);
            }
        }
        slot.k.store(k, Ordering::Release);
        slot.sent.store(now, Ordering::Release);
        slot.intended.store(intended + 1, Ordering::Release);
        conn.inflight.fetch_add(1, Ordering::AcqRel);
        w.next_k += 1;
        self.live_sent.fetch_add(1, Ordering::Relaxed);
        if measured {
            st.sends += 1;
            st.sampled_entities += sampled;
            st.top1_entities += top1;
            let lag = now.saturating_sub(intended);
            st.lag.saturating_record((lag / 1000).max(1));
            let late = lag > LATE_NS;
            st.late_sends += u64::from(late);
            let s = st.second(self.sec(intended));
            s.sent += 1;
            s.late += u64::from(late);
        }
        true
    }

    /// Writes out `w.buf`. On failure the connection is shut down; its receiver fails the
    /// requests in flight and reconnects.
    fn flush(&self, conn: &Conn, w: &mut Writer) {
        if w.buf.is_empty() {
            return;
        }
        let Some(stream) = w.stream.as_mut() else {
            w.buf.clear();
            return;
        };
        let mut off = 0;
        let mut blocked_since: Option<Instant> = None;
        let failed = loop {
            if off >= w.buf.len() {
                break false;
            }
            match stream.write(&w.buf[off..]) {
                Ok(0) => break true,
                Ok(n) => {
                    off += n;
                    blocked_since = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The socket buffer is full: the server is not reading. Wait a little, up to
                    // the request timeout.
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.cfg.timeout {
                        conn.set_reason("timeout");
                        break true;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(_) => break true,
            }
        };
        w.buf.clear();
        if failed {
            conn.set_reason("write_error");
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs the workload; returns what was measured. Fails only when the connections cannot be
/// opened at the start.
pub fn run(cfg: RunConfig) -> Result<Measured, String> {
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let conns_total = cfg.connections.max(1);
    let warm_ns = cfg.warmup.as_nanos() as u64;
    let end_ns = warm_ns + cfg.duration.as_nanos() as u64;
    let cap = (cfg.inflight.max(1) * 4).next_power_of_two();
    let shared = Arc::new(Shared {
        warm_ids: cfg.workload.warm_count(),
        cfg: RunConfig {
            threads,
            connections: conns_total,
            ..cfg
        },
        t0: OnceLock::new(),
        warm_ns,
        end_ns,
        limits: Limits {
            max_frame: u32::MAX,
            max_batch: u32::MAX,
        },
        senders_done: AtomicUsize::new(0),
        live_sent: AtomicU64::new(0),
        live_done: AtomicU64::new(0),
        live_errors: AtomicU64::new(0),
    });
    let open = !shared.closed();
    let wakes: Vec<Arc<Wake>> = (0..threads)
        .map(|_| {
            Arc::new(Wake {
                waiting: AtomicBool::new(false),
                thread: OnceLock::new(),
            })
        })
        .collect();
    let conns: Vec<Arc<Conn>> = (0..conns_total)
        .map(|i| {
            Arc::new(Conn {
                index: i as u64,
                slots: (0..cap)
                    .map(|_| Slot {
                        k: AtomicU64::new(u64::MAX),
                        intended: AtomicU64::new(0),
                        sent: AtomicU64::new(0),
                    })
                    .collect(),
                mask: cap as u64 - 1,
                inflight: AtomicU32::new(0),
                writer: Mutex::new(Writer {
                    stream: None,
                    next_k: 0,
                    buf: BytesMut::with_capacity(64 * 1024),
                    keys: Vec::new(),
                    ends: Vec::new(),
                    resp_out: Vec::new(),
                }),
                close_reason: Mutex::new(None),
                wake: wakes[i % threads].clone(),
            })
        })
        .collect();

    // Main + receivers + senders meet at the start line once every connection is open.
    let go = Arc::new(Barrier::new(1 + threads + if open { threads } else { 0 }));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (w, wake) in wakes.iter().enumerate() {
        let mine: Vec<Arc<Conn>> = conns
            .iter()
            .filter(|c| c.index as usize % threads == w)
            .cloned()
            .collect();
        let (sh, go2, tx) = (shared.clone(), go.clone(), ready_tx.clone());
        let list = mine.clone();
        receivers.push(
            std::thread::Builder::new()
                .name(format!("loadgen-recv-{w}"))
                .spawn(move || receiver_main(sh, list, go2, tx))
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
        if open {
            let (sh, go2, wake) = (shared.clone(), go.clone(), wake.clone());
            senders.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-send-{w}"))
                    .spawn(move || sender_main(sh, mine, go2, wake))
                    .map_err(|e| format!("cannot start a thread: {e}"))?,
            );
        }
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker thread died while connecting".to_string()),
        }
    }
    // Start the clock even on failure so every thread gets past the barrier and stops.
    let _ = shared.t0.set(Instant::now());
    if failure.is_some() {
        shared.senders_done.store(usize::MAX / 2, Ordering::Release);
    }
    go.wait();

    let progress = shared.cfg.progress && failure.is_none();
    let total_ns = end_ns;
    let mut last = Instant::now();
    while receivers.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if progress && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let now = shared.now_ns();
            let phase = if now < warm_ns {
                "warm-up"
            } else if now < end_ns {
                "measuring"
            } else {
                "draining"
            };
            eprint!(
                "\r\x1b[2K[loadgen] {:>5.1}s / {:.1}s {phase}: sent {}, answered {}, errors {}",
                now as f64 / 1e9,
                total_ns as f64 / 1e9,
                shared.live_sent.load(Ordering::Relaxed),
                shared.live_done.load(Ordering::Relaxed),
                shared.live_errors.load(Ordering::Relaxed),
            );
        }
    }
    if progress {
        eprintln!();
    }
    let mut total = Measured::new();
    for h in senders {
        match h.join() {
            Ok(m) => total.merge(&m),
            Err(_) => return Err("a sender thread panicked".into()),
        }
    }
    for h in receivers {
        match h.join() {
            Ok(m) => total.merge(&m),
            Err(_) => return Err("a receiver thread panicked".into()),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

// ---------------------------------------------------------------------------------------------
// Sender

fn set_fine_timer_slack() {
    // Linux rounds nanosleep wake-ups up by the thread's timer slack (50 µs by default); 1 µs
    // keeps the schedule honest at sub-millisecond intervals.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

fn sender_main(
    shared: Arc<Shared>,
    conns: Vec<Arc<Conn>>,
    go: Arc<Barrier>,
    wake: Arc<Wake>,
) -> Measured {
    let _ = wake.thread.set(std::thread::current());
    set_fine_timer_slack();
    let mut st = Measured::new();
    go.wait();
    if shared.senders_done.load(Ordering::Acquire) >= usize::MAX / 2 {
        return st;
    }
    let rate = shared.cfg.rate.unwrap_or(1.0);
    // Connection c starts c/rate seconds in, so the connections' schedules interleave.
    let mut due: Vec<f64> = conns.iter().map(|c| c.index as f64 * 1e9 / rate).collect();
    let end = shared.end_ns as f64;
    let give_up = shared.end_ns + shared.cfg.timeout.as_nanos() as u64;
    let mut window = (0u64, 0u64, 0u64); // (second, sends, late)
    let mut last_warn: Option<Instant> = None;
    loop {
        let now = shared.now_ns();
        if due.iter().all(|d| *d >= end) {
            break;
        }
        if now > give_up {
            // Requests still unsent this long after the end never will be.
            for d in due.iter_mut() {
                while *d < end {
                    if shared.measured(*d as u64) {
                        st.error("unsent", shared.sec(*d as u64));
                    }
                    *d += shared.interval_ns(*d);
                }
            }
            break;
        }
        let mut blocked = false;
        let (sends0, late0) = (st.sends, st.late_sends);
        for (i, c) in conns.iter().enumerate() {
            if due[i] > now as f64 || due[i] >= end {
                continue;
            }
            let mut w = c.lock();
            if w.stream.is_none() {
                // Not connected (being reopened): each due request fails at once.
                while due[i] <= now as f64 && due[i] < end {
                    if shared.measured(due[i] as u64) {
                        st.error("not_connected", shared.sec(due[i] as u64));
                        shared.live_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    due[i] += shared.interval_ns(due[i]);
                }
                continue;
            }
            while due[i] <= now as f64 && due[i] < end {
                if !shared.register(c, &mut w, due[i] as u64, now, &mut st) {
                    blocked = true;
                    break;
                }
                due[i] += shared.interval_ns(due[i]);
            }
            shared.flush(c, &mut w);
        }
        // Falling behind: warn (at most every 5 s) when over 1% of a second's sends were late.
        let sec = now / 1_000_000_000;
        if sec != window.0 {
            if window.1 >= 100
                && window.2 * 100 > window.1
                && now >= shared.warm_ns
                && last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            {
                last_warn = Some(Instant::now());
                eprintln!(
                    "\nWARN loadgen is behind its schedule: {} of {} sends ({:.1}%) went out more than 1 ms late in second {}; latencies include that delay (counted from the intended send time). Lower --rate, add --connections/--inflight, or give loadgen more --threads/CPU.",
                    window.2,
                    window.1,
                    window.2 as f64 * 100.0 / window.1 as f64,
                    window.0
                );
            }
            window = (sec, 0, 0);
        }
        window.1 += st.sends - sends0;
        window.2 += st.late_sends - late0;

        let next = due.iter().copied().fold(f64::INFINITY, f64::min);
        let now = shared.now_ns();
        if blocked && next <= now as f64 {
            // Wait for a reply to free a slot (the receiver unparks us), at most 500 µs.
            wake.waiting.store(true, Ordering::Release);
            std::thread::park_timeout(Duration::from_micros(500));
            wake.waiting.store(false, Ordering::Release);
            continue;
        }
        let wait = next - now as f64;
        if wait > 0.0 {
            let wait = Duration::from_nanos(wait.min(50e6) as u64);
            if wait > Duration::from_millis(2) {
                std::thread::sleep(wait - Duration::from_millis(1));
            } else {
                std::thread::sleep(wait);
            }
        }
    }
    shared.senders_done.fetch_add(1, Ordering::AcqRel);
    st
}

// ---------------------------------------------------------------------------------------------
// Receiver

struct Worker {
    shared: Arc<Shared>,
    st: RefCell<Measured>,
}

fn receiver_main(
    shared: Arc<Shared>,
    conns: Vec<Arc<Conn>>,
    go: Arc<Barrier>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Measured {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start a tokio runtime: {e}")));
            go.wait();
            return Measured::new();
        }
    };
    let worker = Rc::new(Worker {
        shared: shared.clone(),
        st: RefCell::new(Measured::new()),
    });
    let local = tokio::task::LocalSet::new();
    let w2 = worker.clone();
    local.block_on(&rt, async move {
        let worker = w2;
        // Open every connection before the clock starts.
        let mut opened = Vec::new();
        for _ in &conns {
            match connect(&worker.shared).await {
                Ok(x) => opened.push(x),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    go.wait();
                    return;
                }
            }
        }
        // Install the write halves before the start line, so the senders find them.
        let mut readers = Vec::new();
        for (c, (w, r, shard)) in conns.iter().zip(opened) {
            if let Some(s) = shard {
                *worker.st.borrow_mut().shards.entry(s).or_insert(0) += 1;
            }
            readers.push((c.clone(), r, install(c, w)));
        }
        let _ = ready.send(Ok(()));
        go.wait();
        if shared.senders_done.load(Ordering::Acquire) >= usize::MAX / 2 {
            return;
        }
        for (c, r, first_k) in readers {
            tokio::task::spawn_local(conn_task(worker.clone(), c, r, first_k));
        }
        // Time out stuck requests, and finish once everything sent has been answered.
        let timeout_ns = shared.cfg.timeout.as_nanos() as u64;
        let senders = if shared.closed() {
            0
        } else {
            shared.cfg.threads
        };
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = shared.now_ns();
            for c in &conns {
                let oldest = c
                    .slots
                    .iter()
                    .filter(|s| s.intended.load(Ordering::Acquire) != 0)
                    .map(|s| s.sent.load(Ordering::Acquire))
                    .min();
                if oldest.is_some_and(|t| now.saturating_sub(t) > timeout_ns) {
                    c.set_reason("timeout");
                    if let Some(s) = c.lock().stream.as_ref() {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            }
            let sending_done =
                now >= shared.end_ns && shared.senders_done.load(Ordering::Acquire) >= senders;
            if sending_done
                && conns
                    .iter()
                    .all(|c| c.inflight.load(Ordering::Acquire) == 0)
            {
                break;
            }
            if now > shared.end_ns + 2 * timeout_ns + 1_000_000_000 {
                break;
            }
        }
        // Whatever is still outstanding was never answered.
        for c in &conns {
            fail_conn(&worker, c, "timeout");
        }
    });
    drop(local);
    worker.st.replace(Measured::new())
}

/// Puts a freshly opened connection in place; returns the first request number it will carry.
fn install(conn: &Conn, stream: std::net::TcpStream) -> u64 {
    let mut w = conn.lock();
    w.stream = Some(stream);
    w.buf.clear();
    *conn
        .close_reason
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    w.next_k
}

/// Fails every request in flight on `conn` with `reason` and closes it.
fn fail_conn(worker: &Worker, conn: &Conn, reason: &str) {
    let sh = &worker.shared;
    let mut w = conn.lock();
    if let Some(s) = w.stream.take() {
        let _ = s.shutdown(Shutdown::Both);
    }
    w.buf.clear();
    let now = sh.now_ns();
    let mut st = worker.st.borrow_mut();
    for slot in conn.slots.iter() {
        let i = slot.intended.swap(0, Ordering::AcqRel);
        if i == 0 {
            continue;
        }
        conn.inflight.fetch_sub(1, Ordering::AcqRel);
        let intended = i - 1;
        if sh.measured(intended) {
            sh.live_errors.fetch_add(1, Ordering::Relaxed);
            st.error(reason, sh.sec(now));
            if reason == "timeout" {
                // An unanswered request took at least this long: keep it in the tail.
                st.hist
                    .saturating_record((now.saturating_sub(intended) / 1000).max(1));
            }
        }
    }
    drop(st);
    drop(w);
    conn.wake.notify();
}

type Opened = (std::net::TcpStream, tokio::net::TcpStream, Option<u16>);

/// Opens one connection (with HELLO for featureproxy): the write half for the sender, the read
/// half for the receiver, and the proxy shard that serves it.
async fn connect(shared: &Shared) -> Result<Opened, String> {
    let addr = shared.cfg.target.addr();
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut shard = None;
    if let Proto::Fp { token, .. } = &shared.cfg.proto {
        let mut out = BytesMut::new();
        Request::Hello(Hello {
            version: VERSION,
            token: token.clone(),
            client_name: "loadgen".into(),
        })
        .encode(&mut out, 0);
        let hello = async {
            s.write_all(&out).await.map_err(|e| e.to_string())?;
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                if let Some(f) = decode_frame(&mut buf, 1 << 20).map_err(|(_, e)| e.to_string())? {
                    return match Response::decode(&f, &Limits::default()) {
                        Ok(Response::Hello(h)) => Ok(h.shard),
                        Ok(Response::Error(e)) => Err(format!("HELLO refused: {e}")),
                        Ok(_) => Err("unexpected reply to HELLO".to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                }
                if s.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed during HELLO".to_string());
                }
            }
        };
        shard = Some(
            tokio::time::timeout(Duration::from_secs(2), hello)
                .await
                .map_err(|_| format!("{addr}: no HELLO reply within 2s"))?
                .map_err(|e| format!("{addr}: {e}"))?,
        );
    }
    let std = s.into_std().map_err(|e| e.to_string())?;
    let w = std.try_clone().map_err(|e| e.to_string())?;
    let r = tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())?;
    Ok((w, r, shard))
}

/// Reads one connection for the whole run, reopening it whenever it breaks.
async fn conn_task(
    worker: Rc<Worker>,
    conn: Arc<Conn>,
    mut stream: tokio::net::TcpStream,
    mut first_k: u64,
) {
    let sh = worker.shared.clone();
    loop {
        if sh.closed() {
            fill_closed(&worker, &conn);
        }
        let reason = read_loop(&worker, &conn, &mut stream, first_k).await;
        let reason = conn
            .close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(reason);
        fail_conn(&worker, &conn, reason);
        // Reopen, every 100 ms, for as long as the run goes on.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sh.now_ns() >= sh.end_ns {
                return;
            }
            if let Ok((w, r, _)) = connect(&sh).await {
                first_k = install(&conn, w);
                stream = r;
                break;
            }
        }
    }
}

/// Sends requests until the connection has `--inflight` outstanding (closed loop).
fn fill_closed(worker: &Worker, conn: &Conn) {
    let sh = &worker.shared;
    let now = sh.now_ns();
    if now >= sh.end_ns {
        return;
    }
    let mut w = conn.lock();
    if w.stream.is_none() {
        return;
    }
    let mut st = worker.st.borrow_mut();
    while sh.register(conn, &mut w, now, now, &mut st) {}
    drop(st);
    sh.flush(conn, &mut w);
}

/// Reads replies until the connection fails; returns why.
async fn read_loop(
    worker: &Worker,
    conn: &Conn,
    stream: &mut tokio::net::TcpStream,
    first_k: u64,
) -> &'static str {
    let sh = &worker.shared;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut next_k = first_k;
    let mut elems = Vec::new();
    let mut scratch = Vec::new();
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return "conn_closed",
            Ok(_) => {}
            Err(_) => return "conn_reset",
        }
        let now = sh.now_ns();
        match &sh.cfg.proto {
            Proto::Fp { .. } => loop {
                match decode_frame(&mut buf, u32::MAX) {
                    Ok(Some(frame)) => on_fp_frame(worker, conn, frame, now, &mut scratch),
                    Ok(None) => break,
                    Err(_) => return "decode",
                }
            },
            Proto::Resp { .. } => loop {
                match parse_reply(&buf, &mut elems) {
                    Ok(Some(used)) => {
                        on_resp_reply(worker, conn, next_k, &buf[..used], &elems, now);
                        next_k += 1;
                        buf.advance(used);
                    }
                    Ok(None) => break,
                    Err(_) => return "decode",
                }
            },
        }
        if sh.closed() {
            fill_closed(worker, conn);
        }
    }
}

/// Latency bookkeeping common to both protocols; false when the request is not measured.
fn record(worker: &Worker, st: &mut Measured, intended: u64, sent: u64, now: u64) -> bool {
    let sh = &worker.shared;
    sh.live_done.fetch_add(1, Ordering::Relaxed);
    if !sh.measured(intended) {
        return false;
    }
    let lat = (now.saturating_sub(intended) / 1000).max(1);
    st.hist.saturating_record(lat);
    st.uhist
        .saturating_record((now.saturating_sub(sent) / 1000).max(1));
    st.responses += 1;
    if now < sh.end_ns {
        st.in_window += 1;
    }
    let s = st.second(sh.sec(now));
    s.hist.saturating_record(lat);
    s.responses += 1;
    true
}

fn on_fp_frame(
    worker: &Worker,
    conn: &Conn,
    frame: featureproxy_protocol::Frame,
    now: u64,
    scratch: &mut Vec<u8>,
) {
    let sh = &worker.shared;
    let id = frame.request_id;
    let k = conn.slot(id as u64).k.load(Ordering::Acquire);
    let mut st = worker.st.borrow_mut();
    if k as u32 != id {
        st.error("stray_reply", sh.sec(now));
        return;
    }
    let Some((intended, sent)) = conn.take(k) else {
        st.error("stray_reply", sh.sec(now));
        return;
    };
    if !record(worker, &mut st, intended, sent, now) {
        return;
    }
    let sec = sh.sec(now);
    match Response::decode(&frame, &sh.limits) {
        Ok(Response::Get(g)) => {
            st.entities += g.n as u64;
            let mut degraded = 0;
            for &b in g.status_bytes() {
                st.statuses[(b & 0x7f).min(5) as usize] += 1;
                st.cached += u64::from(b & 0x80 != 0);
                degraded += u64::from(b & 0x7f == Status::Degraded as u8);
            }
            st.second(sec).degraded += degraded;
            if sh.cfg.verify_every > 0 && k % sh.cfg.verify_every == 0 {
                verify_fp(worker, &mut st, conn, k, &g, scratch);
            }
        }
        Ok(Response::Error(e)) => {
            sh.live_errors.fetch_add(1, Ordering::Relaxed);
            st.error(&format!("server:{}", e.code.name()), sec);
        }
        Ok(_) => st.error("unexpected_reply", sec),
        Err(_) => st.error("decode", sec),
    }
}

/// Checks the rows of a GET reply against the values `loadgen seed` wrote.
fn verify_fp(
    worker: &Worker,
    st: &mut Measured,
    conn: &Conn,
    k: u64,
    g: &featureproxy_protocol::GetResponse,
    expected: &mut Vec<u8>,
) {
    let sh = &worker.shared;
    let Proto::Fp { dtypes, .. } = &sh.cfg.proto else {
        return;
    };
    let mut i = 0usize;
    let n = g.n as usize;
    let (mut checked, mut bad) = (0u64, 0u64);
    let mut example = None;
    sh.cfg
        .workload
        .entities_of(conn.index, sh.cfg.connections as u64, k, |e, _| {
            if i >= n {
                return;
            }
            let status = g.status(i).status;
            if let Entity::Id(id) = e {
                let served = matches!(status, Status::Fresh | Status::Stale);
                if served {
                    checked += 1;
                    let problem = if id >= sh.warm_ids {
                        Some("a never-seeded (cold) key had a value".to_string())
                    } else {
                        expected.clear();
                        write_row(expected, dtypes, id);
                        (g.row(i) != &expected[..]).then(|| "row differs from f(id, j)".to_string())
                    };
                    if let Some(p) = problem {
                        bad += 1;
                        example.get_or_insert_with(|| format!("entity {id}: {p}"));
                    }
                }
            }
            i += 1;
        });
    if i != n {
        bad += 1;
        example.get_or_insert_with(|| format!("reply has {n} entities, the request {i}"));
    }
    st.verify_checked += checked;
    st.verify_bad += bad;
    if bad > 0 {
        let sec = sh.sec(sh.now_ns());
        st.error("wrong_value", sec);
        if st.verify_example.is_none() {
            st.verify_example = example;
        }
    }
}

fn on_resp_reply(worker: &Worker, conn: &Conn, k: u64, raw: &[u8], elems: &[Elem], now: u64) {
    let sh = &worker.shared;
    let mut st = worker.st.borrow_mut();
    let Some((intended, sent)) = conn.take(k) else {
        st.error("stray_reply", sh.sec(now));
        return;
    };
    if !record(worker, &mut st, intended, sent, now) {
        return;
    }
    let sec = sh.sec(now);
    if let Some(Elem::Error(a, b)) = elems.iter().find(|e| matches!(e, Elem::Error(..))) {
        let msg = String::from_utf8_lossy(&raw[*a..*b]);
        let word = msg.split_whitespace().next().unwrap_or("ERR").to_string();
        sh.live_errors.fetch_add(1, Ordering::Relaxed);
        st.error(&format!("resp:{word}"), sec);
        return;
    }
    for e in elems {
        st.entities += 1;
        let status = match e {
            Elem::Nil => Status::Missing,
            // A stored value: format byte 1, computed_at, row.
            Elem::Bulk(a, b) if b - a >= 9 && raw[*a] == 1 => Status::Fresh,
            _ => Status::Invalid,
        };
        st.statuses[status as usize] += 1;
    }
}
