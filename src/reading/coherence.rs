//! Coherence across shards: a PUT acknowledged on one shard must not leave an old row in another
//! shard's hot cache. Each shard listens on a channel of its own; the writing shard sends the
//! written entities to every other shard and waits until each has dropped them before it
//! acknowledges the PUT. Only writes use this path; reads never touch another shard. (Writes made
//! behind the proxy's back reach every shard through the store's own notices: see
//! [`crate::store::Change`].)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::store::ViewId;

/// Entities of a view to drop, and who to tell once they are gone.
pub struct Invalidation {
    pub view: ViewId,
    pub entities: Arc<[Bytes]>,
    pub done: oneshot::Sender<()>,
}

/// A shard's handles to every other shard's invalidation channel.
#[derive(Clone, Default)]
pub struct Peers {
    others: Vec<mpsc::UnboundedSender<Invalidation>>,
}

/// One receiver per shard and, for each shard, the senders to all the others.
pub fn channels(shards: usize) -> (Vec<Peers>, Vec<mpsc::UnboundedReceiver<Invalidation>>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
    let peers = (0..shards)
        .map(|me| Peers {
            others: txs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .map(|(_, t)| t.clone())
                .collect(),
        })
        .collect();
    (peers, rxs)
}

/// Another shard did not confirm in time.
#[derive(Debug, thiserror::Error)]
#[error("a shard did not confirm the cache invalidation within {0:?}")]
pub struct NotConfirmed(pub Duration);

impl Peers {
    /// Asks every other shard to drop `entities` of `view` and waits for all of them. A shard
    /// that has stopped (shutdown) has no cache left to hold a stale row, so it counts as
    /// confirmed.
    pub async fn invalidate(
        &self,
        view: ViewId,
        entities: Arc<[Bytes]>,
        within: Duration,
    ) -> Result<(), NotConfirmed> {
        let mut waits = Vec::with_capacity(self.others.len());
        for tx in &self.others {
            let (done, wait) = oneshot::channel();
            if tx
                .send(Invalidation {
                    view,
                    entities: entities.clone(),
                    done,
                })
                .is_ok()
            {
                waits.push(wait);
            }
        }
        let all = async {
            for w in waits {
                let _ = w.await;
            }
        };
        tokio::time::timeout(within, all)
            .await
            .map_err(|_| NotConfirmed(within))
    }
}
