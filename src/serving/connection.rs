//! One client connection, served by one task that owns the socket. Each turn it decodes every
//! complete frame it has read, answers what it can on the spot (replies go into the outbox),
//! writes all the turn's replies with one write, then waits for more bytes or for requests that
//! wait on the store ([`InFlight`], run inside this task) to answer. No task per request, no
//! writer task.
//!
//! Backpressure: past `max_inflight_per_connection` requests waiting on the store, or once
//! `max_frame` bytes of replies wait for a client that does not read them, the connection stops
//! reading from its socket (TCP pushes back on the client) instead of queueing without bound.
//! Overload: while the connection's queue would take longer than `shed_queue_delay` to serve, or
//! a queue stands in the shard and the connection has many requests in flight, its GETs are
//! shed ([`super::overload`]), past the in-flight limit too.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use featureproxy_protocol::{decode_frame, peek_op, ErrorCode, Limits, Op, ProtocolError, Request};
use tokio::sync::watch;
use tracing::warn;

use super::dispatch::dispatch;
use super::inflight::InFlight;
use super::outbox::Outbox;
use super::overload::Backlog;
use super::session::Session;
use super::Serving;
use crate::telemetry::counters::{CloseReason, Handshake};
use crate::transport::Transport;

/// Room kept free in the read buffer before each read.
const READ_ROOM: usize = 4096;
/// What the read buffer grows by when it runs short of room.
const READ_CHUNK: usize = 16 * 1024;
/// A reply buffer larger than this is released once written, not kept for the next turn.
const KEEP_WRITE_BUFFER: usize = 1024 * 1024;
/// How a TLS ClientHello begins: a handshake record of TLS 1.x.
const TLS_CLIENT_HELLO: [u8; 2] = [0x16, 0x03];

/// Serves one connection until the peer leaves, a fatal protocol error, or shutdown.
/// `peer_names` are the names in the client's TLS certificate (empty without one).
pub async fn serve(
    socket: Transport,
    peer_names: Vec<String>,
    serving: Rc<Serving>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = serving.settings.clone();
    let stats = serving.stats.clone();
    let limits = Limits {
        max_frame: settings.max_frame,
        max_batch: settings.max_batch,
    };
    let max_inflight = settings.max_inflight_per_connection;
    let max_waiting = settings.max_frame as usize;
    let mut session = Session::new(serving.access.clone(), peer_names, serving.shard);
    let outbox = Rc::new(Outbox::default());
    let mut inflight = InFlight::default();
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    // None while the connection still reads; Some(why) once it only finishes what is in flight.
    let mut closing: Option<CloseReason> = None;
    let mut backlog = Backlog::new(settings.shed_queue_delay, max_inflight);
    // When the incomplete frame at the front of `rbuf` began to arrive: it must be whole within
    // frame_timeout of that, however slowly its bytes trickle in.
    let mut partial_since: Option<Instant> = None;
    // Made once: a new `changed()` each turn would join the channel's waiters and leave again.
    let stop = shutdown.changed();
    tokio::pin!(stop);

    loop {
        // Serve every complete frame, unless the connection is at one of its limits.
        let mut shed = 0;
        let unread = rbuf.len();
        while closing.is_none() && outbox.len() < max_waiting {
            let shedding = sheds(&backlog, &serving, inflight.len());
            if !may_take(inflight.len(), max_inflight, shedding, &rbuf) {
                break;
            }
            let before = rbuf.len();
            let decoded = decode_frame(&mut rbuf, limits.max_frame);
            backlog.consumed(before - rbuf.len());
            match decoded {
                Ok(Some(frame)) if shedding && frame.op == Op::Get as u8 && session.is_open() => {
                    backlog.shed(&mut outbox.pending(), frame.request_id);
                    shed += 1;
                }
                Ok(Some(frame)) => {
                    let started = Instant::now();
                    let rid = frame.request_id;
                    match session.admit(Request::decode(&frame, &limits), &serving.registry.pin()) {
                        Ok(req) => dispatch(&serving, &outbox, &mut inflight, req, rid, started),
                        Err(refusal) => {
                            if let Some(why) = refusal.auth {
                                stats.auth_failures[why as usize].inc();
                            }
                            outbox.error(&stats, refusal.error, rid);
                            if refusal.close {
                                closing = Some(CloseReason::ProtocolError);
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err((request_id, err)) => {
                    if !socket.is_tls() && rbuf.starts_with(&TLS_CLIENT_HELLO) {
                        stats.tls_handshakes[Handshake::TlsOnPlaintextPort as usize].inc();
                        warn!(
                            peer = ?socket.tcp().peer_addr().ok(),
                            "a TLS ClientHello came to the plaintext port: point TLS clients at the TLS port ([server.tls] listen), or turn TLS off in the client"
                        );
                    }
                    outbox.error(&stats, err, request_id);
                    closing = Some(CloseReason::ProtocolError);
                }
            }
        }
        if shed > 0 {
            stats.requests_shed.add(shed);
            stats.errors(ErrorCode::Overloaded).add(shed);
            stats.requests_failed.of(Op::Get).add(shed);
        }

        // Write what is ready: normally all of it, in one write.
        if !outbox.is_empty() {
            let mut out = outbox.pending();
            match socket.try_write(&out) {
                Ok(n) if n > 0 => {
                    stats.bytes_out.add(n as u64);
                    if n < out.len() {
                        out.advance(n);
                    } else if out.capacity() > KEEP_WRITE_BUFFER {
                        // One huge reply must not pin its buffer for the connection's life.
                        *out = BytesMut::new();
                    } else {
                        out.clear();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(_) | Err(_) => {
                    drop(out);
                    closing = Some(CloseReason::Io);
                    break;
                }
            }
        }
        if closing.is_some() && inflight.is_empty() && outbox.is_empty() && !socket.wants_write() {
            break;
        }

        let shedding = sheds(&backlog, &serving, inflight.len());
        let reading = closing.is_none()
            && may_take(inflight.len(), max_inflight, shedding, &rbuf)
            && outbox.len() < max_waiting;
        // Part of a frame is in: the rest must follow within frame_timeout of its first bytes,
        // so a peer cannot hold a half frame (and its buffer) open forever, not even by sending
        // a byte now and then. What is left after a frame was taken came with the last read.
        // The clock runs only while the connection reads: its own backpressure is no fault of
        // the peer's.
        let took_a_frame = rbuf.len() < unread;
        partial_since = match partial_since {
            _ if rbuf.is_empty() || !reading => None,
            Some(since) if !took_a_frame => Some(since),
            _ => Some(Instant::now()),
        };
        let frame_due = partial_since.map(|since| since + settings.frame_timeout);
        if reading && rbuf.capacity() - rbuf.len() < READ_ROOM {
            rbuf.reserve(READ_CHUNK);
        }
        let room = rbuf.capacity() - rbuf.len();
        tokio::select! {
            biased;
            _ = inflight.settle(), if !inflight.is_empty() => {}
            r = socket.writable(), if !outbox.is_empty() || socket.wants_write() => {
                if r.is_err() || socket.flush().is_err() {
                    closing = Some(CloseReason::Io);
                    break;
                }
            }
            r = socket.readable(), if reading => match r.and_then(|()| socket.try_read_buf(&mut rbuf)) {
                Ok(0) => closing = Some(CloseReason::Peer),
                Ok(n) => {
                    stats.bytes_in.add(n as u64);
                    backlog.after_read(socket.tcp(), n, room, rbuf.len());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closing = Some(CloseReason::Io),
            },
            _ = until(frame_due), if frame_due.is_some() => {
                let msg = format!(
                    "frame incomplete after {:?}: {} bytes of a frame received, the rest never came",
                    settings.frame_timeout,
                    rbuf.len()
                );
                outbox.error(&stats, ProtocolError::malformed(msg), 0);
                closing = Some(CloseReason::FrameTimeout);
            }
            // Polled only until it fires: it sets `closing`, which disables the branch.
            _ = &mut stop, if closing.is_none() => closing = Some(CloseReason::Shutdown),
        }
    }
    socket.shutdown();
    let reason = closing.unwrap_or(CloseReason::Peer);
    stats.connections_closed[reason as usize].inc();
}

/// Sleeps until `due`; never done for None. Nothing is made until it is first polled, so a turn
/// without a half frame neither reads the clock nor builds a timer.
async fn until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether this connection's GETs are shed now: its own backlog is too long, or a queue stands
/// in the shard, the shard has as many waiting on the store as it may, and this connection has
/// more than its floor of them ([`Pressure::sheds`](super::overload::Pressure::sheds)).
fn sheds(backlog: &Backlog, serving: &Serving, inflight: usize) -> bool {
    backlog.shedding() || {
        let waiting = serving.stats.inflight_requests.get() as usize;
        serving.pressure.borrow().sheds(inflight, waiting)
    }
}

/// Whether the connection may take the frame at the front of `rbuf` (or read to find one):
/// below its in-flight limit always; at the limit only while shedding, and only GETs (which are
/// answered OVERLOADED at once), so that a flood is shed rather than left unread in the kernel.
fn may_take(inflight: usize, max_inflight: usize, shedding: bool, rbuf: &[u8]) -> bool {
    inflight < max_inflight || (shedding && peek_op(rbuf).is_none_or(|op| op == Op::Get as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: length 8, the op, no flags, request id 1.
    fn frame(op: Op) -> Vec<u8> {
        vec![8, 0, 0, 0, op as u8, 0, 0, 0, 1, 0, 0, 0]
    }

    #[test]
    fn past_the_in_flight_limit_only_gets_to_be_shed_are_taken() {
        let (get, put) = (frame(Op::Get), frame(Op::Put));
        // Below the limit: anything, shedding or not.
        assert!(may_take(3, 128, false, &put));
        assert!(may_take(3, 128, true, &get));
        // At the limit, not shedding: nothing (TCP backpressure).
        assert!(!may_take(128, 128, false, &get));
        // At the limit, shedding: GETs (answered OVERLOADED), or more bytes to find one...
        assert!(may_take(128, 128, true, &get));
        assert!(may_take(200, 128, true, &[]));
        // ...but never another request: it waits until the connection is below the limit.
        assert!(!may_take(128, 128, true, &put));
    }
}
