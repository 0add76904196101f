//! A Redis Cluster behind the storage seam, where one failed node degrades only its own keys.
//!
//! The proxy owns the slot map (CLUSTER SLOTS, refreshed on a timer, after MOVED and after a
//! node fails) and keeps, per shard, one plain connection, one breaker and one tracking
//! connection per node: a dead master stalls only its own client, never the other slots (one
//! clustered fred client would stall them all until failover ends; see the research note on
//! Redis Cluster). A batch is split by hash slot (Redis refuses an MGET across slots, even on one
//! node); every slot bound for one node goes in one call, written once, every node at once; each
//! node's answers land in the batch as soon as it answers.

pub mod members;
mod refresh;
mod slots;
mod split;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use tokio::sync::Notify;

pub use slots::{slot_of, SlotMap};

use super::node::Node;
use crate::store::{Backend, Landing, ReadKey, StoreError, WriteItem};
use crate::telemetry::counters::ShardStats;
use members::Members;

/// Where a cluster's reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// Every read goes to the slot's primary.
    #[default]
    Primary,
    /// Reads go to a healthy replica of the slot (READONLY), else to the primary; while the
    /// primary's breaker is open a replica still serves: a stale row beats defaults.
    ReplicaPreferred,
}

/// Which servers hold each slot, with the shard's node for each.
struct Routes {
    map: SlotMap,
    /// Per range of `map`, its primary and its replicas.
    primaries: Vec<Rc<Node>>,
    replicas: Vec<Vec<Rc<Node>>>,
    /// Every node above once: a slot map can have many more ranges than nodes.
    nodes: Vec<Rc<Node>>,
}

/// One shard's view of a Redis Cluster.
pub struct Cluster {
    seeds: Vec<String>,
    read_from: ReadFrom,
    routes: RefCell<Option<Rc<Routes>>>,
    members: Members,
    refresh_now: Notify,
    map_ready: Notify,
    last_refresh: Cell<Option<Instant>>,
    stats: Arc<ShardStats>,
}

/// True for a URL that names a Redis Cluster (`redis-cluster://`, or `rediss-cluster://` over
/// TLS).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// The seeds of a `redis-cluster://HOST:PORT?node=HOST:PORT&node=...` URL (or
/// `rediss-cluster://`), as "host:port".
pub fn seeds_of(url: &str) -> Result<Vec<String>, StoreError> {
    let bad = |why: &str| {
        StoreError::Unavailable(format!(
            "bad Redis Cluster URL {url:?}: {why}; write redis-cluster://HOST:PORT?node=HOST:PORT&node=HOST:PORT"
        ))
    };
    let rest = url
        .strip_prefix("redis-cluster://")
        .or_else(|| url.strip_prefix("rediss-cluster://"))
        .ok_or_else(|| bad("it must start with redis-cluster:// (or rediss-cluster:// for TLS)"))?;
    if rest.contains('@') {
        return Err(bad("credentials are not supported in cluster URLs yet"));
    }
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut seeds = vec![first.trim_end_matches('/').to_string()];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("node", addr)) => seeds.push(addr.to_string()),
            _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
        }
    }
    for s in &seeds {
        let ok = s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(bad(&format!("{s:?} is not HOST:PORT")));
        }
    }
    Ok(seeds)
}

impl Cluster {
    /// A cluster reached through `seeds`; nothing is connected until [`Cluster::run`] reads
    /// the first slot map.
    pub fn new(
        seeds: Vec<String>,
        read_from: ReadFrom,
        members: Members,
        stats: Arc<ShardStats>,
    ) -> Rc<Cluster> {
        Rc::new(Cluster {
            seeds,
            read_from,
            routes: RefCell::new(None),
            members,
            refresh_now: Notify::new(),
            map_ready: Notify::new(),
            last_refresh: Cell::new(None),
            stats,
        })
    }

    fn routes(&self) -> Option<Rc<Routes>> {
        self.routes.borrow().clone()
    }
}

impl Backend for Cluster {
    fn admits(&self, key: &ReadKey, now: Instant) -> bool {
        let Some(routes) = self.routes() else {
            return true;
        };
        self.reader_for(&routes, slot_of(&key.key), now)
            .is_none_or(|n| n.admits(now))
    }

    fn admits_all(&self, now: Instant) -> bool {
        self.routes()
            .is_none_or(|routes| routes.nodes.iter().all(|n| n.admits(now)))
    }

    fn read<'a>(
        &'a self,
        keys: &'a [ReadKey],
        timeout: Duration,
        landing: &'a dyn Landing,
    ) -> LocalBoxFuture<'a, ()> {
        self.read_all(keys, timeout, landing).boxed_local()
    }

    fn write(
        &self,
        items: Vec<WriteItem>,
        timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<(), StoreError>> {
        self.write_all(items, timeout).boxed_local()
    }

    fn ready(&self) -> LocalBoxFuture<'_, Result<(), StoreError>> {
        async move {
            loop {
                let notified = self.map_ready.notified();
                if self.routes.borrow().is_some() {
                    return Ok(());
                }
                notified.await;
            }
        }
        .boxed_local()
    }

    fn close(&self) -> LocalBoxFuture<'_, ()> {
        self.members.close_all().boxed_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_give_their_seeds_or_say_what_is_wrong() {
        assert_eq!(
            seeds_of("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=h:7002").unwrap(),
            ["127.0.0.1:7000", "127.0.0.1:7001", "h:7002"]
        );
        assert_eq!(seeds_of("redis-cluster://h:1/").unwrap(), ["h:1"]);
        for (bad, why) in [
            ("redis://h:1", "must start with redis-cluster://"),
            ("redis-cluster://u:p@h:1", "credentials"),
            ("redis-cluster://h", "\"h\" is not HOST:PORT"),
            (
                "redis-cluster://h:1?nodes=h:2",
                "unknown parameter \"nodes=h:2\"",
            ),
        ] {
            let e = seeds_of(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
