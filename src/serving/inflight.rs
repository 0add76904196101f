//! A connection's requests that wait on the store, run inside the connection's own task: no task
//! is spawned per request, and whatever a store read answers is written by the connection in the
//! same turn that learns of it, together with every other reply that became ready.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};

/// One waiting request: it queues its own reply in the connection's outbox when done.
type Waiting = Pin<Box<dyn Future<Output = ()>>>;

/// The requests of one connection that wait on the store.
#[derive(Default)]
pub struct InFlight {
    requests: FuturesUnordered<Waiting>,
}

impl InFlight {
    /// Adds a request; it runs when the connection next waits ([`InFlight::settle`]).
    pub fn push(&mut self, request: impl Future<Output = ()> + 'static) {
        self.requests.push(Box::pin(request));
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Runs the waiting requests until at least one has answered, then returns with every one
    /// that is done by then, so their replies leave in one write. Pending forever when none
    /// waits (a select guards it with `!is_empty()`).
    pub async fn settle(&mut self) {
        poll_fn(|cx| {
            let mut answered = false;
            while let Poll::Ready(Some(())) = self.requests.poll_next_unpin(cx) {
                answered = true;
            }
            if answered {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
