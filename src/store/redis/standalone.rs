//! The backend for one standalone Redis server (with or without replicas behind it): every key
//! lives on the one node, so a batch is one MGET and the node's breaker covers every key.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::FutureExt;

use super::node::Node;
use crate::store::{Backend, Fetched, ReadKey, StoreError, WriteItem};

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

    fn read<'a>(
        &'a self,
        keys: &'a [ReadKey],
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Vec<Fetched>> {
        self.node.read(keys, timeout).boxed_local()
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
