//! A connection's outbox: replies are appended as they are ready, in any order, and a writer
//! task sends whatever has piled up in one write. Bounded: past a limit of bytes waiting, the
//! connection's reader stops reading (see [`Outbox::room`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use featureproxy_protocol::{ProtocolError, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tracing::debug;

use crate::telemetry::counters::ShardStats;

/// Replies waiting to be written, and whether the connection is closing.
#[derive(Default)]
pub struct Outbox {
    buf: RefCell<BytesMut>,
    wake: Notify,
    /// Signalled after each write to the socket, for a reader waiting for room.
    drained: Notify,
    closing: Cell<bool>,
    dead: Cell<bool>,
    write_failed: Cell<bool>,
}

impl Outbox {
    /// Appends a reply encoded by `f`; dropped if the connection is dead.
    pub fn push(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.dead.get() {
            return;
        }
        f(&mut self.buf.borrow_mut());
        self.wake.notify_one();
    }

    pub fn response(&self, resp: &Response, request_id: u32) {
        self.push(|b| resp.encode(b, request_id));
    }

    /// An ERROR frame, counted by code.
    pub fn error(&self, stats: &ShardStats, err: ProtocolError, request_id: u32) {
        stats.request_err(err.code);
        debug!(shard = stats.shard, code = err.code.name(), message = %err.message, "request refused");
        self.response(&Response::Error(err), request_id);
    }

    /// True once the writer stopped (the socket failed or the connection closed).
    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    /// True if a write to the socket failed.
    pub fn write_failed(&self) -> bool {
        self.write_failed.get()
    }

    /// Waits until fewer than `limit` bytes of replies wait to be written. A client that sends
    /// requests but does not read its replies stops being read from here, instead of making the
    /// proxy buffer its replies without bound.
    pub async fn room(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            if self.buf.borrow().len() < limit || self.dead.get() {
                return;
            }
            drained.await;
        }
    }

    /// Flush what is queued, then close.
    pub fn close(&self) {
        self.closing.set(true);
        self.wake.notify_one();
    }

    /// Writes replies as they pile up until the outbox closes or the socket fails.
    pub async fn run_writer(self: Rc<Self>, mut wr: OwnedWriteHalf, stats: Arc<ShardStats>) {
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
