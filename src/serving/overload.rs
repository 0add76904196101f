//! Shedding instead of queueing. When a connection sends faster than its shard serves it, the
//! excess waits in the kernel's socket buffers, out of the proxy's sight, and every request
//! behind it is late: a burst above capacity would queue for seconds. Each connection therefore
//! estimates how long the bytes waiting for it (in the kernel and in its read buffer) will take
//! to serve, at the pace it has been serving them while behind. While more requests wait than
//! the connection may have in flight anyway (`max_inflight_per_connection`: a client that keeps
//! a bounded number outstanding is never shed) and they would take longer than
//! `shed_queue_delay` to serve, it answers GETs with a pre-encoded OVERLOADED frame instead of
//! serving them. A shed costs a header decode and a copy of the pre-encoded reply (about 190
//! bytes), a small fraction of a served GET, so shedding drains the queue quickly and the shard
//! keeps serving at capacity. The oldest requests (at the front of the queue, already late) are
//! the ones shed. Per connection: a client that floods sheds its own requests, not other
//! clients'.
//!
//! That estimate sees only what has reached the proxy's socket buffer, which holds few large
//! requests; and requests already admitted can queue inside the shard (for the store, behind
//! one another's batches). So the shard also watches how long the requests that wait on the
//! store take, CoDel-style ([`Pressure`]): when even the quickest of them over an interval took
//! longer than `shed_queue_delay`, a queue is standing, and it goes on standing for as long as
//! the limit below turns GETs away in each interval: the limit itself keeps the waits near its
//! budget, where one dips below the target now and then, and lifting the limit then let an
//! interval's worth of surplus in, which later requests waited behind (p99 86-110 ms at 2x-4x
//! capacity, against 36-38 ms with the rule; benches/RESULTS.md). While it stands, the shard
//! admits only as many GETs to wait on the store as it answers, at its recent pace, within half
//! the default deadline (Little's law: that many in flight wait about that long), and a
//! connection with more than [`SHED_FLOOR`] in flight has its further GETs shed past that limit,
//! even past `max_inflight_per_connection` (where it would otherwise stop reading and leave the
//! queue in the kernel and the client, out of sight). The limit follows capacity: no fixed number of
//! requests in flight suits both a store that answers 100,000 GETs a second and one that
//! answers 5,000.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use featureproxy_protocol::{ErrorCode, ProtocolError, Response};

/// Weight of the newest pace sample in the moving average.
const PACE_WEIGHT: f64 = 0.25;

/// A connection with at most this many requests waiting on the store is never shed for the
/// shard's standing queue: a caller that waits for its answers is not what makes the queue.
/// Also the least the shard admits while a queue stands, so a store that answers slowly still
/// gets work.
pub const SHED_FLOOR: usize = 16;

/// How long the shard watches its waiting requests before it judges whether a queue stands.
const PRESSURE_INTERVAL: Duration = Duration::from_millis(100);

/// Weight of the newest interval in the shard's answer pace.
const ANSWER_PACE_WEIGHT: f64 = 0.5;

/// Whether a queue stands in the shard: CoDel's test (Nichols and Jacobson, "Controlling Queue
/// Delay", 2012) on the time requests that waited on the store took, from their read to their
/// answer. A queue that drains within an interval lets at least one request through quickly; one
/// that stands does not. Also the pace at which those requests are answered, for the number the
/// shard may admit while a queue stands. Owned by the shard's thread.
#[derive(Debug)]
pub struct Pressure {
    target: Duration,
    /// How long admitted requests may queue while a queue stands.
    budget: Duration,
    interval_start: Option<Instant>,
    /// The quickest wait in the current interval.
    quickest: Duration,
    /// Requests answered in the current interval.
    answered: u64,
    /// Answers per second over recent intervals; None until one interval ended.
    pace: Option<f64>,
    standing: bool,
    /// Whether the limit was reached in the current interval (set by [`Pressure::sheds`]).
    reached: Cell<bool>,
}

impl Pressure {
    /// Judges against `target` (`shed_queue_delay`; a zero target never reports a queue) and
    /// admits, while a queue stands, what the shard answers within `budget`.
    pub fn new(target: Duration, budget: Duration) -> Pressure {
        Pressure {
            target,
            budget,
            interval_start: None,
            quickest: Duration::MAX,
            answered: 0,
            pace: None,
            standing: false,
            reached: Cell::new(false),
        }
    }

    /// A request that waited on the store was answered `waited` after it was read.
    pub fn record(&mut self, waited: Duration, now: Instant) {
        if self.target.is_zero() {
            return;
        }
        self.quickest = self.quickest.min(waited);
        self.answered += 1;
        let start = *self.interval_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= PRESSURE_INTERVAL {
            // A limit that turned GETs away means the demand is still above what the shard
            // answers, whatever the quickest wait (see the module's comment).
            self.standing = self.quickest > self.target || (self.standing && self.reached.get());
            self.reached.set(false);
            let sample = self.answered as f64 / elapsed.as_secs_f64();
            self.pace = Some(match self.pace {
                Some(p) => p + ANSWER_PACE_WEIGHT * (sample - p),
                None => sample,
            });
            self.interval_start = Some(now);
            self.quickest = Duration::MAX;
            self.answered = 0;
        }
    }

    /// True while the last interval's quickest wait was above the target.
    pub fn standing(&self) -> bool {
        self.standing
    }

    /// How many requests may wait on the store while a queue stands: as many as the shard
    /// answers within the budget at its recent pace, and at least [`SHED_FLOOR`].
    pub fn limit(&self) -> usize {
        let paced = self.pace.unwrap_or(0.0) * self.budget.as_secs_f64();
        (paced as usize).max(SHED_FLOOR)
    }

    /// True when a GET from a connection with `inflight` requests waiting on the store, in a
    /// shard with `waiting` of them, is to be shed for the shard's queue. Notes whether the
    /// limit was reached, which keeps a standing queue standing.
    pub fn sheds(&self, inflight: usize, waiting: usize) -> bool {
        if !self.standing || waiting < self.limit() {
            return false;
        }
        self.reached.set(true);
        inflight > SHED_FLOOR
    }
}

/// One connection's view of its own backlog.
pub struct Backlog {
    target: Duration,
    /// Requests that may wait without being shed, whatever their wait.
    allowance: usize,
    /// Bytes of frames consumed (served or shed) since the last full read.
    consumed_since: usize,
    /// Frames and bytes consumed over the connection's life, for the average frame size.
    frames_total: u64,
    bytes_total: u64,
    /// When the last read that filled its buffer returned; None once the connection caught up.
    last_full: Option<Instant>,
    /// Bytes per second consumed while behind (moving average); None until measured.
    pace: Option<f64>,
    shedding: bool,
    /// The OVERLOADED frame, with request id 0 (patched per shed).
    reply: Bytes,
}

/// Where the request id sits in a frame header.
const REQUEST_ID_AT: usize = 8;

impl Backlog {
    /// A connection that sheds while more than `allowance` requests wait and they would take
    /// longer than `target` to serve; a zero target never sheds.
    pub fn new(target: Duration, allowance: usize) -> Backlog {
        let mut reply = BytesMut::new();
        Response::Error(ProtocolError::new(
            ErrorCode::Overloaded,
            "shed: requests wait here longer than shed_queue_delay (on this connection, or in the shard while this connection has many in flight); retry with backoff or spread the load",
        ))
        .encode(&mut reply, 0);
        Backlog {
            target,
            allowance,
            consumed_since: 0,
            frames_total: 0,
            bytes_total: 0,
            last_full: None,
            pace: None,
            shedding: false,
            reply: reply.freeze(),
        }
    }

    /// True while GETs are to be shed.
    pub fn shedding(&self) -> bool {
        self.shedding
    }

    /// Counts one frame of `bytes` consumed (served or shed).
    pub fn consumed(&mut self, bytes: usize) {
        self.consumed_since += bytes;
        self.frames_total += 1;
        self.bytes_total += bytes as u64;
    }

    /// After a read of `read` bytes into `room` bytes of free buffer, with `buffered` bytes now
    /// unserved: re-judges whether to shed. Only a read that filled its room can have left more
    /// in the kernel, so only then is the kernel asked (one ioctl).
    pub fn after_read(&mut self, socket: &impl AsRawFd, read: usize, room: usize, buffered: usize) {
        if self.target.is_zero() {
            return;
        }
        if read < room {
            // The kernel had nothing more: the connection has caught up.
            self.shedding = false;
            self.last_full = None;
            return;
        }
        let now = Instant::now();
        // Between two full reads the connection was never idle for want of bytes: what it
        // consumed over that time is its pace, other connections' turns included.
        if let Some(then) = self.last_full.replace(now) {
            let dt = now.saturating_duration_since(then).as_secs_f64();
            if dt > 0.0 {
                let sample = self.consumed_since as f64 / dt;
                self.pace = Some(match self.pace {
                    Some(p) => p + PACE_WEIGHT * (sample - p),
                    None => sample,
                });
            }
        }
        self.consumed_since = 0;
        let Some(pace) = self.pace.filter(|p| *p > 0.0) else {
            return;
        };
        if self.frames_total == 0 {
            return;
        }
        let frame_len = self.bytes_total as f64 / self.frames_total as f64;
        let waiting = (buffered + unread_bytes(socket)) as f64;
        let frames = waiting / frame_len;
        let wait = waiting / pace;
        self.shedding = frames > self.allowance as f64 && wait > self.target.as_secs_f64();
    }

    /// Appends the OVERLOADED reply for request `request_id` to `out`.
    pub fn shed(&self, out: &mut BytesMut, request_id: u32) {
        let start = out.len();
        out.put_slice(&self.reply);
        out[start + REQUEST_ID_AT..start + REQUEST_ID_AT + 4]
            .copy_from_slice(&request_id.to_le_bytes());
    }
}

/// Bytes received on `socket` that the proxy has not read yet (FIONREAD); 0 if unknown.
fn unread_bytes(socket: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to a live c_int.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use featureproxy_protocol::{decode_frame, Frame, Limits};

    #[test]
    fn the_shed_reply_is_an_overloaded_error_with_the_request_id() {
        let b = Backlog::new(Duration::from_millis(10), 128);
        let mut out = BytesMut::new();
        b.shed(&mut out, 7);
        b.shed(&mut out, 0xdead_beef);
        for want in [7, 0xdead_beef] {
            let frame: Frame = decode_frame(&mut out, 1 << 20).unwrap().unwrap();
            assert_eq!(frame.request_id, want);
            let limits = Limits {
                max_frame: 1 << 20,
                max_batch: 4096,
            };
            match Response::decode(&frame, &limits).unwrap() {
                Response::Error(e) => assert_eq!(e.code, ErrorCode::Overloaded),
                other => panic!("not an error: {other:?}"),
            }
        }
        assert!(out.is_empty());
    }

    #[test]
    fn a_queue_stands_only_while_even_the_quickest_wait_is_above_target() {
        let target = Duration::from_millis(10);
        let mut p = Pressure::new(target, Duration::from_millis(25));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // One interval of slow answers but one quick one: no standing queue.
        for (at, waited) in [(0, 30), (20, 40), (50, 2), (90, 35), (100, 30)] {
            p.record(ms(waited), t0 + ms(at));
        }
        assert!(!p.standing());
        // The next interval: every answer slow.
        for (at, waited) in [(120, 30), (150, 25), (199, 40), (200, 30)] {
            p.record(ms(waited), t0 + ms(at));
        }
        assert!(p.standing());
        // It ends with the first interval that lets one through quickly.
        for (at, waited) in [(230, 40), (260, 3), (300, 40)] {
            p.record(ms(waited), t0 + ms(at));
        }
        assert!(!p.standing());
        // A zero target (shedding off) never reports a queue.
        let mut off = Pressure::new(Duration::ZERO, Duration::from_millis(25));
        for at in 0..10 {
            off.record(ms(500), t0 + ms(at * 50));
        }
        assert!(!off.standing());
    }

    #[test]
    fn while_a_queue_stands_the_shard_admits_what_it_answers_within_the_budget() {
        let ms = Duration::from_millis;
        let mut p = Pressure::new(ms(10), ms(25));
        let t0 = Instant::now();
        // Two intervals of 1,000 slow answers each: 10,000 answers a second.
        for i in 0..=2000u64 {
            p.record(ms(30), t0 + Duration::from_micros(i * 100));
        }
        assert!(p.standing());
        // 10,000/s x 25 ms: 250 may wait.
        assert!((245..=255).contains(&p.limit()), "limit {}", p.limit());
        assert!(!p.sheds(100, 249), "below the limit");
        assert!(p.sheds(100, 250), "at the limit");
        assert!(!p.sheds(SHED_FLOOR, 1000), "a connection at the floor");
        // A store that answers ten a second still gets the floor's worth.
        let mut slow = Pressure::new(ms(10), ms(25));
        for i in 0..=3u64 {
            slow.record(ms(150), t0 + ms(i * 150));
        }
        assert!(slow.standing());
        assert_eq!(slow.limit(), SHED_FLOOR);
        // No standing queue, no shedding, however many wait.
        let calm = Pressure::new(ms(10), ms(25));
        assert!(!calm.sheds(1000, 1000));
    }

    #[test]
    fn a_queue_held_at_the_limit_stands_until_an_interval_passes_without_reaching_it() {
        let ms = Duration::from_millis;
        let mut p = Pressure::new(ms(10), ms(25));
        let t0 = Instant::now();
        // Two intervals of slow answers: a queue stands, and the limit is reached.
        let mut at = 0;
        for _ in 0..=200 {
            p.record(ms(30), t0 + Duration::from_micros(at));
            at += 1000;
        }
        assert!(p.standing());
        let limit = p.limit();
        assert!(p.sheds(100, limit));
        // The limit holds the waits near the budget; one dips below the target. Because the
        // limit turned GETs away in that interval, the queue still stands.
        for waited in [20, 9, 20] {
            p.record(ms(waited), t0 + Duration::from_micros(at));
            at += 50_000;
        }
        assert!(p.standing(), "the limit was reached in the interval");
        // An interval with a quick answer and nothing turned away: the demand fell below what
        // the shard answers, and the queue no longer stands.
        for waited in [20, 9, 20] {
            p.record(ms(waited), t0 + Duration::from_micros(at));
            at += 50_000;
        }
        assert!(!p.standing());
        // Below the limit, a GET is not shed and the limit is not marked as reached.
        assert!(!p.sheds(100, 0));
    }

    #[test]
    fn a_read_that_did_not_fill_its_room_stops_shedding() {
        let mut b = Backlog::new(Duration::from_millis(10), 128);
        b.shedding = true;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.after_read(&sock, 10, 4096, 0);
        assert!(!b.shedding());
    }
}
