//! The backend for one standalone Redis server (with or without replicas behind it): every key
//! lives on the one node, so a batch is one call (one MGET, and an HMGET per hash) on the node's
//! one read connection, and the node's breaker covers every key. That call answers or fails as a
//! whole, except per key: a key holding another type (WRONGTYPE) fails alone, and where Redis
//! answers one command with an error, the other commands' keys keep their answers.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::FutureExt;

use super::node::Node;
use super::reads::{self, Group};
use crate::store::{Backend, Landing, ReadKey, StoreError, WriteItem};

/// A standalone Redis behind the storage seam.
pub struct Standalone {
    node: Rc<Node>,
}

impl Standalone {
    pub fn new(node: Rc<Node>) -> Standalone {
        Standalone { node }
    }
}

impl Backend for Standalone {
    fn admits(&self, _key: &ReadKey, now: Instant) -> bool {
        self.node.admits(now)
    }

    fn admits_all(&self, now: Instant) -> bool {
        self.node.admits(now)
    }

    fn read<'a>(
        &'a self,
        keys: &'a [ReadKey],
        timeout: Duration,
        landing: &'a dyn Landing,
    ) -> LocalBoxFuture<'a, ()> {
        async move {
            let whole = [Group::Whole(keys.len())];
            let outcome = self.node.read_groups(keys, &whole, timeout, landing).await;
            reads::fail_unlanded(&whole, &outcome, landing);
            landing.landed();
        }
        .boxed_local()
    }

    fn write(
        &self,
        items: Vec<WriteItem>,
        timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<(), StoreError>> {
        self.node.write(items, timeout).boxed_local()
    }

    fn ready(&self) -> LocalBoxFuture<'_, Result<(), StoreError>> {
        self.node.wait_connected().boxed_local()
    }

    fn close(&self) -> LocalBoxFuture<'_, ()> {
        self.node.quit().boxed_local()
    }
}
