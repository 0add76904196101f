//! A connection's outbox: the replies waiting to be written. The connection's task and the
//! requests waiting inside it ([`super::inflight`]) append; the task writes them all at the end
//! of its turn. Owned by one shard's thread, so plain cells: no lock, no atomic.

use std::cell::RefCell;

use bytes::BytesMut;
use featureproxy_protocol::{ProtocolError, Response};
use tracing::debug;

use crate::telemetry::counters::ShardStats;

/// Replies waiting to be written, in the order they were answered.
#[derive(Default)]
pub struct Outbox {
    buf: RefCell<BytesMut>,
}

impl Outbox {
    /// Appends a reply encoded by `f`; the connection writes it at the end of its turn. (Every
    /// request that may push lives inside the connection's task, so none pushes after it ends.)
    pub fn push(&self, f: impl FnOnce(&mut BytesMut)) {
        f(&mut self.buf.borrow_mut());
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

    /// Bytes of replies waiting.
    pub fn len(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.borrow().is_empty()
    }

    /// The waiting replies, for the connection task to write (and clear what it wrote).
    pub fn pending(&self) -> std::cell::RefMut<'_, BytesMut> {
        self.buf.borrow_mut()
    }
}
