//! A connection's outbox: the replies waiting to be written, the requests still in flight, and
//! the wake-up of the connection's task when a request that waited on the store has answered.
//! Owned by one shard's thread, so plain cells: no lock, no atomic.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::BytesMut;
use featureproxy_protocol::{ProtocolError, Response};
use tracing::debug;

use crate::telemetry::counters::ShardStats;

/// Replies waiting to be written, in the order they were answered.
#[derive(Default)]
pub struct Outbox {
    buf: RefCell<BytesMut>,
    /// Requests answered by tasks of their own that have not answered yet.
    inflight: Cell<usize>,
    /// Set when a request task answered (or finished) since the connection task last looked.
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// The connection is gone: late replies are dropped.
    closed: Cell<bool>,
}

impl Outbox {
    /// Appends a reply encoded by `f` (the connection task's own replies: it writes them at
    /// the end of its turn, so there is nobody to wake).
    pub fn push(&self, f: impl FnOnce(&mut BytesMut)) {
        if !self.closed.get() {
            f(&mut self.buf.borrow_mut());
        }
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

    /// A request is about to run as a task of its own.
    pub fn begin_request(&self) {
        self.inflight.set(self.inflight.get() + 1);
    }

    /// A request task is done (its reply, if any, pushed): the connection task writes it and may
    /// read again if it had stopped at the in-flight limit.
    pub fn end_request(&self) {
        self.inflight.set(self.inflight.get() - 1);
        self.wake();
    }

    pub fn inflight(&self) -> usize {
        self.inflight.get()
    }

    /// Bytes of replies waiting.
    pub fn len(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.borrow().is_empty()
    }

    /// The waiting replies, for the connection task to write and then [`Outbox::written`].
    pub fn pending(&self) -> std::cell::RefMut<'_, BytesMut> {
        self.buf.borrow_mut()
    }

    /// The connection task is gone; replies that come later are dropped.
    pub fn close(&self) {
        self.closed.set(true);
        self.buf.borrow_mut().clear();
    }

    fn wake(&self) {
        self.woken.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until a request task has answered or finished since the last call.
    pub async fn woken(&self) {
        poll_fn(|cx| {
            if self.woken.replace(false) {
                return Poll::Ready(());
            }
            let mut slot = self.waker.borrow_mut();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
