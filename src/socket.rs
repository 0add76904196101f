//! One client connection: read frames, dispatch them, write replies.
//!
//! Replies are appended to the connection's outbox as they are ready, in any order, and a writer
//! task sends whatever has piled up in one write. Past `max_inflight_per_connection` requests in
//! flight the reader stops reading from the socket: TCP backpressure, not an unbounded queue.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use featureproxy_protocol::{
    decode_frame, ErrorCode, Frame, Limits, Op, ProtocolError, Request, Response, VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::handler::ShardCtx;
use crate::stats::{CloseReason, ShardStats};

/// Replies waiting to be written, and whether the connection is closing.
#[derive(Default)]
struct Outbox {
    buf: RefCell<BytesMut>,
    wake: Notify,
    /// Signalled after each write to the socket, for a reader waiting for room.
    drained: Notify,
    closing: Cell<bool>,
    dead: Cell<bool>,
    write_failed: Cell<bool>,
}

impl Outbox {
    fn push(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.dead.get() {
            return;
        }
        f(&mut self.buf.borrow_mut());
        self.wake.notify_one();
    }

    fn response(&self, resp: &Response, request_id: u32) {
        self.push(|b| resp.encode(b, request_id));
    }

    fn error(&self, ctx: &ShardCtx, err: ProtocolError, request_id: u32) {
        ctx.stats.request_err(err.code);
        debug!(shard = ctx.shard, code = err.code.name(), message = %err.message, "request refused");
        self.response(&Response::Error(err), request_id);
    }

    /// Waits until fewer than `limit` bytes of replies wait to be written. A client that sends
    /// requests but does not read its replies stops being read from here, instead of making the
    /// proxy buffer its replies without bound.
    async fn room(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            if self.buf.borrow().len() < limit || self.dead.get() {
                return;
            }
            drained.await;
        }
    }

    /// Flush what is queued, then close.
    fn close(&self) {
        self.closing.set(true);
        self.wake.notify_one();
    }

    async fn run_writer(self: Rc<Self>, mut wr: OwnedWriteHalf, stats: Arc<ShardStats>) {
        loop {
            let chunk = {
                let mut b = self.buf.borrow_mut();
                (!b.is_empty()).then(|| b.split())
            };
            match chunk {
                Some(c) => {
                    if wr.write_all(&c).await.is_err() {
                        self.write_failed.set(true);
                        break;
                    }
                    stats.bytes_out.add(c.len() as u64);
                    self.drained.notify_waiters();
                }
                None if self.closing.get() => break,
                None => self.wake.notified().await,
            }
        }
        self.dead.set(true);
        self.drained.notify_waiters();
        let _ = wr.shutdown().await;
    }
}

/// Serves one connection until the peer leaves, a fatal protocol error, or shutdown.
pub async fn serve(stream: TcpStream, ctx: Rc<ShardCtx>, mut shutdown: watch::Receiver<bool>) {
    let (mut rd, wr) = stream.into_split();
    let outbox = Rc::new(Outbox::default());
    let writer = tokio::task::spawn_local(outbox.clone().run_writer(wr, ctx.stats.clone()));
    let max_inflight = ctx.settings.max_inflight_per_connection;
    let permits = Arc::new(Semaphore::new(max_inflight));
    let limits = Limits {
        max_frame: ctx.settings.max_frame,
        max_batch: ctx.settings.max_batch,
    };
    let mut conn = ConnState {
        first_frame: true,
        authenticated: ctx.settings.auth_token.is_none(),
    };
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut reason = CloseReason::Peer;

    'read: loop {
        loop {
            match decode_frame(&mut rbuf, limits.max_frame) {
                Ok(Some(frame)) => {
                    outbox.room(limits.max_frame as usize).await;
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break 'read;
                    };
                    if !dispatch(&ctx, &outbox, &mut conn, &limits, frame, permit) {
                        reason = CloseReason::ProtocolError;
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err((request_id, err)) => {
                    outbox.error(&ctx, err, request_id);
                    reason = CloseReason::ProtocolError;
                    break 'read;
                }
            }
        }
        if outbox.dead.get() {
            reason = CloseReason::Io;
            break;
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        let read = if rbuf.is_empty() {
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => r,
                _ = shutdown.changed() => {
                    reason = CloseReason::Shutdown;
                    break;
                }
            }
        } else {
            // Part of a frame is in: the rest must follow within frame_timeout, so a peer
            // cannot hold a half frame (and its buffer) open forever.
            tokio::select! {
                r = tokio::time::timeout(ctx.settings.frame_timeout, rd.read_buf(&mut rbuf)) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        let msg = format!(
                            "frame incomplete after {:?}: {} bytes of a frame received, the rest never came",
                            ctx.settings.frame_timeout,
                            rbuf.len()
                        );
                        outbox.error(&ctx, ProtocolError::malformed(msg), 0);
                        reason = CloseReason::FrameTimeout;
                        break;
                    }
                },
                _ = shutdown.changed() => {
                    reason = CloseReason::Shutdown;
                    break;
                }
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => ctx.stats.bytes_in.add(n as u64),
            Err(_) => {
                reason = CloseReason::Io;
                break;
            }
        }
    }
    // Let requests in flight finish (shutdown waits for them up to its drain timeout).
    let _ = permits.acquire_many(max_inflight as u32).await;
    outbox.close();
    let _ = writer.await;
    if outbox.write_failed.get() {
        reason = CloseReason::Io;
    }
    ctx.stats.connections_closed[reason as usize].inc();
}

struct ConnState {
    first_frame: bool,
    authenticated: bool,
}

/// Handles one frame; returns false when the connection must close.
fn dispatch(
    ctx: &Rc<ShardCtx>,
    outbox: &Rc<Outbox>,
    conn: &mut ConnState,
    limits: &Limits,
    frame: Frame,
    permit: OwnedSemaphorePermit,
) -> bool {
    let rid = frame.request_id;
    let started = std::time::Instant::now();
    let first = std::mem::replace(&mut conn.first_frame, false);
    let req = match Request::decode(&frame, limits) {
        Ok(r) => r,
        Err(e) if !conn.authenticated => {
            let msg = format!(
                "this server requires HELLO with a token as the first frame ({})",
                e.message
            );
            outbox.error(ctx, ProtocolError::new(ErrorCode::Unauthorized, msg), rid);
            return false;
        }
        Err(e) => {
            let close = e.code.closes_connection();
            outbox.error(ctx, e, rid);
            return !close;
        }
    };
    if let Request::Hello(h) = &req {
        if !first {
            let msg = "HELLO is only allowed as the first frame of a connection";
            outbox.error(ctx, ProtocolError::malformed(msg), rid);
            return false;
        }
        if h.version != VERSION {
            let msg = format!(
                "protocol version {} is not supported; this server speaks version {VERSION}",
                h.version
            );
            outbox.error(
                ctx,
                ProtocolError::new(ErrorCode::UnsupportedVersion, msg),
                rid,
            );
            return false;
        }
        if let Some(token) = &ctx.settings.auth_token {
            if !constant_time_eq(token.as_bytes(), h.token.as_bytes()) {
                let msg = "the HELLO token does not match this server's auth token";
                outbox.error(ctx, ProtocolError::new(ErrorCode::Unauthorized, msg), rid);
                return false;
            }
        }
        conn.authenticated = true;
    }
    if !conn.authenticated {
        let msg = format!(
            "this server requires HELLO with its auth token as the first frame; got {} first",
            req.op().name()
        );
        outbox.error(ctx, ProtocolError::new(ErrorCode::Unauthorized, msg), rid);
        return false;
    }
    let op = req.op();
    match req {
        Request::Hello(_) => outbox.response(&ctx.hello_reply(), rid),
        Request::Ping => outbox.response(&Response::Pong, rid),
        Request::Schema { view } => match ctx.schema(&view) {
            Ok(r) => outbox.response(&r, rid),
            Err(e) => {
                ctx.stats.request_failed(op);
                outbox.error(ctx, e, rid);
                return true;
            }
        },
        Request::Get(get) => {
            let work = {
                let (ctx, outbox) = (ctx.clone(), outbox.clone());
                async move {
                    let reply = ctx.get(get, started).await?;
                    outbox.push(|b| reply.encode(b, rid));
                    Ok(())
                }
            };
            spawn_request(ctx, outbox, op, rid, permit, work);
            return true;
        }
        Request::Put(put) => {
            let work = {
                let (ctx, outbox) = (ctx.clone(), outbox.clone());
                async move {
                    let resp = ctx.put(put, started).await?;
                    outbox.response(&resp, rid);
                    Ok(())
                }
            };
            spawn_request(ctx, outbox, op, rid, permit, work);
            return true;
        }
    }
    ctx.stats.request_ok(op);
    true
}

/// Runs a request that waits on Redis as a task of its own, holding its in-flight permit until
/// it has answered. `work` queues the reply itself; an error becomes an ERROR frame.
fn spawn_request(
    ctx: &Rc<ShardCtx>,
    outbox: &Rc<Outbox>,
    op: Op,
    rid: u32,
    permit: OwnedSemaphorePermit,
    work: impl std::future::Future<Output = Result<(), ProtocolError>> + 'static,
) {
    let (ctx, outbox) = (ctx.clone(), outbox.clone());
    ctx.stats.inflight_requests.inc();
    tokio::task::spawn_local(async move {
        match work.await {
            Ok(()) => ctx.stats.request_ok(op),
            Err(e) => {
                ctx.stats.request_failed(op);
                outbox.error(&ctx, e, rid)
            }
        }
        ctx.stats.inflight_requests.dec();
        drop(permit);
    });
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xFF);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
