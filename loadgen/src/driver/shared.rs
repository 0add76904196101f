//! The state the threads of a run share: each connection's request slots, its write half and
//! in-flight count ([`Conn`]), the sender wake-up ([`Wake`]) and the run-wide clock, config and
//! live counters ([`Shared`]), with the registering, encoding and writing of requests that both
//! the sender and (in closed loop) the receiver do. It is separate because it is the one contract
//! between the sender and receiver threads: everything here is atomics or behind a mutex.

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use featureproxy_protocol::{FrameWriter, Limits, Op};

use super::tls::{self, Session};
use super::{Measured, Proto, RunConfig, LATE_NS};
use crate::resp::encode_command;
use crate::workload::write_entity_key;

pub(super) struct Slot {
    pub(super) k: AtomicU64,
    /// Intended send time in ns since t0, plus one; 0 when the slot is free.
    pub(super) intended: AtomicU64,
    pub(super) sent: AtomicU64,
}

/// Wakes a sender thread waiting for a connection to drop below its in-flight limit.
pub(super) struct Wake {
    pub(super) waiting: AtomicBool,
    pub(super) thread: OnceLock<std::thread::Thread>,
}

impl Wake {
    pub(super) fn notify(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

pub(super) struct Writer {
    pub(super) stream: Option<std::net::TcpStream>,
    /// The connection's TLS session, for a TLS target: what `stream` carries is encrypted.
    pub(super) tls: Option<Session>,
    pub(super) next_k: u64,
    pub(super) buf: BytesMut,
    pub(super) keys: Vec<u8>,
    pub(super) ends: Vec<u32>,
    pub(super) resp_out: Vec<u8>,
}

pub(super) struct Conn {
    pub(super) index: u64,
    pub(super) slots: Box<[Slot]>,
    pub(super) mask: u64,
    pub(super) inflight: AtomicU32,
    pub(super) writer: Mutex<Writer>,
    pub(super) close_reason: Mutex<Option<&'static str>>,
    pub(super) wake: Arc<Wake>,
}

impl Conn {
    pub(super) fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn slot(&self, k: u64) -> &Slot {
        &self.slots[(k & self.mask) as usize]
    }

    /// Frees the slot of request `k` (if it still holds it): `(intended, sent)`.
    pub(super) fn take(&self, k: u64) -> Option<(u64, u64)> {
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

    pub(super) fn set_reason(&self, reason: &'static str) {
        let mut r = self
            .close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        r.get_or_insert(reason);
    }
}

pub(super) struct Shared {
    pub(super) cfg: RunConfig,
    pub(super) t0: OnceLock<Instant>,
    pub(super) warm_ns: u64,
    pub(super) end_ns: u64,
    pub(super) warm_ids: u64,
    pub(super) limits: Limits,
    pub(super) senders_done: AtomicUsize,
    pub(super) live_sent: AtomicU64,
    pub(super) live_done: AtomicU64,
    pub(super) live_errors: AtomicU64,
}

impl Shared {
    pub(super) fn now_ns(&self) -> u64 {
        self.t0.get().map_or(0, |t0| {
            Instant::now().saturating_duration_since(*t0).as_nanos() as u64
        })
    }

    pub(super) fn measured(&self, intended: u64) -> bool {
        intended >= self.warm_ns
    }

    /// Index of the measured second that `t` falls in.
    pub(super) fn sec(&self, t: u64) -> usize {
        (t.saturating_sub(self.warm_ns) / 1_000_000_000) as usize
    }

    pub(super) fn closed(&self) -> bool {
        self.cfg.rate.is_none()
    }

    /// Interval between two requests of one connection whose schedule is at `t` ns.
    pub(super) fn interval_ns(&self, t: f64) -> f64 {
        let rate = self.cfg.rate.unwrap_or(1.0);
        let mult = self
            .cfg
            .burst
            .map_or(1.0, |b| b.multiplier(Duration::from_nanos(t as u64)));
        self.cfg.connections as f64 * 1e9 / (rate * mult)
    }

    /// Registers request `k = w.next_k` (intended at `intended`) and encodes it into `w.buf`.
    /// False when the connection has no free slot for it.
    pub(super) fn register(
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
    pub(super) fn flush(&self, conn: &Conn, w: &mut Writer) {
        if w.buf.is_empty() {
            return;
        }
        let Some(stream) = w.stream.as_mut() else {
            w.buf.clear();
            return;
        };
        if let Some(session) = &w.tls {
            if let Err(reason) = tls::write(session, stream, &w.buf, self.cfg.timeout) {
                conn.set_reason(reason);
                let _ = stream.shutdown(Shutdown::Both);
            }
            w.buf.clear();
            return;
        }
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
