//! A Redis Cluster behind the storage seam, where one failed node degrades only its own keys.
//!
//! The proxy owns the slot map (CLUSTER SLOTS, refreshed on a timer, after MOVED and after a
//! node fails) and keeps, per shard, one plain connection, one breaker and one tracking
//! connection per node: a dead master stalls only its own client, never the other slots (one
//! clustered fred client would stall them all until failover ends; see the research note on
//! Redis Cluster). A batch is split by hash slot (Redis refuses an MGET across slots, even on one
//! node), every slot's MGET goes out at once, and the answers are put back in key order.

pub mod members;
mod slots;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{join_all, LocalBoxFuture};
use futures::FutureExt;
use tokio::sync::Notify;
use tracing::{info, warn};

pub use slots::{slot_of, SlotMap};

use super::node::Node;
use crate::store::breaker::BreakerState;
use crate::store::{Backend, Change, Failure, Fetched, ReadKey, Redirect, StoreError, WriteItem};
use crate::telemetry::counters::ShardStats;
use members::Members;

/// How often the slot map is read even when nothing went wrong.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The least time between two reads of the slot map (MOVED storms ask for many).
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// How long one node may take to answer CLUSTER SLOTS before the next is asked.
const SLOTS_TIMEOUT: Duration = Duration::from_millis(500);

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

/// The seeds of a `redis-cluster://HOST:PORT?node=HOST:PORT&node=...` URL, as "host:port".
pub fn seeds_of(url: &str) -> Result<Vec<String>, StoreError> {
    let bad = |why: &str| {
        StoreError::Unavailable(format!(
            "bad Redis Cluster URL {url:?}: {why}; write redis-cluster://HOST:PORT?node=HOST:PORT&node=HOST:PORT"
        ))
    };
    let rest = url
        .strip_prefix("redis-cluster://")
        .ok_or_else(|| bad("it must start with redis-cluster://"))?;
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

    /// Keeps the slot map current until the shard stops: on a timer, and soon after a MOVED
    /// or a node failure asked for it, at most once per [`REFRESH_GAP`].
    pub async fn run(self: Rc<Self>) {
        loop {
            if let Some(last) = self.last_refresh.get() {
                tokio::time::sleep_until((last + REFRESH_GAP).into()).await;
            }
            self.last_refresh.set(Some(Instant::now()));
            self.refresh().await;
            self.publish_gauges();
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = self.refresh_now.notified() => {}
            }
        }
    }

    /// Asks for a slot map read soon (rate-limited by [`Cluster::run`]).
    fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Reads CLUSTER SLOTS from the first node that answers (known primaries, then replicas,
    /// then the seeds) and installs it.
    async fn refresh(&self) {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(r) = self.routes.borrow().as_ref() {
            for range in r.map.ranges() {
                candidates.push(range.primary.clone());
            }
            for range in r.map.ranges() {
                candidates.extend(range.replicas.iter().cloned());
            }
        }
        candidates.extend(self.seeds.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| seen.insert(c.clone()));
        for addr in candidates {
            let Ok(node) = self.members.get_or_start(&addr) else {
                continue;
            };
            if !node.is_connected()
                && tokio::time::timeout(SLOTS_TIMEOUT, node.wait_connected())
                    .await
                    .is_err()
            {
                continue;
            }
            match node.cluster_slots(SLOTS_TIMEOUT).await {
                Ok(reply) => match SlotMap::parse(reply, &addr) {
                    Ok(map) => {
                        self.install(map).await;
                        return;
                    }
                    Err(why) => warn!(
                        shard = self.stats.shard,
                        node = addr,
                        why,
                        "unreadable CLUSTER SLOTS reply"
                    ),
                },
                Err(_) => continue,
            }
        }
        warn!(
            shard = self.stats.shard,
            "no Redis Cluster node answered CLUSTER SLOTS; keeping the last slot map"
        );
    }

    /// Makes `map` the one reads and writes follow. Every node it names is connected (and
    /// tracked) first; when a slot changed primary, every row the shard caches may predate
    /// writes it never heard of (the old primary's notices are gone): the cache is flushed.
    async fn install(&self, map: SlotMap) {
        self.stats.cluster_refreshes.inc();
        let old = self.routes.borrow().clone();
        if old.as_ref().is_some_and(|o| o.map == map) {
            return;
        }
        let mut primaries = Vec::with_capacity(map.ranges().len());
        let mut replicas = Vec::with_capacity(map.ranges().len());
        for range in map.ranges() {
            match self.members.get_or_start(&range.primary) {
                Ok(n) => primaries.push(n),
                Err(e) => {
                    warn!(shard = self.stats.shard, node = range.primary, error = %e, "cannot use a cluster node; keeping the last slot map");
                    return;
                }
            }
            let reps = if self.read_from == ReadFrom::ReplicaPreferred {
                range
                    .replicas
                    .iter()
                    .filter_map(|r| self.members.get_or_start_replica(r).ok())
                    .collect()
            } else {
                Vec::new()
            };
            replicas.push(reps);
        }
        // Reads go to new nodes only once their tracking is on, or a write notice could be lost.
        self.members
            .wait_tracked(&map, Duration::from_secs(1))
            .await;
        let moved = old.as_ref().is_none_or(|o| o.map.primaries_differ(&map));
        let first = old.is_none();
        let used: Vec<String> = map
            .ranges()
            .iter()
            .flat_map(|r| {
                let reps = (self.read_from == ReadFrom::ReplicaPreferred).then_some(&r.replicas);
                std::iter::once(r.primary.clone()).chain(reps.into_iter().flatten().cloned())
            })
            .collect();
        let keep: Vec<String> = used.iter().chain(&self.seeds).cloned().collect();
        for (range, reps) in map.ranges().iter().zip(&replicas) {
            for n in reps {
                if let Some(s) = n.node_stats() {
                    s.replica.store(true, Relaxed);
                }
            }
            if let Some(s) = self
                .members
                .get_or_start(&range.primary)
                .ok()
                .and_then(|n| n.node_stats().cloned())
            {
                s.replica.store(false, Relaxed);
            }
        }
        *self.routes.borrow_mut() = Some(Rc::new(Routes {
            map,
            primaries,
            replicas,
        }));
        self.members.show(&used);
        self.members.retain(&keep, &used).await;
        if first {
            info!(shard = self.stats.shard, "Redis Cluster slot map read");
            self.map_ready.notify_waiters();
        } else if moved {
            self.stats.cluster_map_changes.inc();
            info!(
                shard = self.stats.shard,
                "Redis Cluster slot map changed (failover or resharding); hot cache flushed"
            );
            self.members.changed(Change::Everything {
                why: "cluster slot map changed",
            });
        }
    }

    /// The shard's gauges, from all nodes: connected only if every primary is, the breaker
    /// state of the worst primary, tracking armed only if every tracked node has it.
    fn publish_gauges(&self) {
        let routes = self.routes.borrow().clone();
        let primaries: &[Rc<Node>] = routes.as_deref().map_or(&[], |r| &r.primaries);
        let connected = !primaries.is_empty() && primaries.iter().all(|n| n.is_connected());
        self.stats.redis_connected.store(connected, Relaxed);
        let worst = primaries
            .iter()
            .map(|n| n.breaker_state())
            .max_by_key(|s| match s {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            })
            .unwrap_or(BreakerState::Closed);
        self.stats.breaker_state.store(worst.gauge(), Relaxed);
        self.stats
            .tracking_armed
            .store(self.members.all_tracked(), Relaxed);
    }

    /// The node a read of `slot` goes to.
    fn reader_for(&self, routes: &Routes, slot: u16, now: Instant) -> Option<Rc<Node>> {
        let range = routes.map.range(slot)?;
        let primary = &routes.primaries[range];
        let replica = || {
            routes.replicas[range]
                .iter()
                .find(|r| r.admits(now) && self.members.is_readonly(r))
                .cloned()
        };
        match self.read_from {
            ReadFrom::ReplicaPreferred => replica().or_else(|| Some(primary.clone())),
            ReadFrom::Primary => Some(primary.clone()),
        }
        .map(|n| {
            if !n.admits(now) {
                // Stale beats DEGRADED: a replica serves while its primary's breaker is open.
                replica().unwrap_or(n)
            } else {
                n
            }
        })
    }

    fn routes(&self) -> Option<Rc<Routes>> {
        self.routes.borrow().clone()
    }

    async fn read_all(&self, keys: &[ReadKey], timeout: Duration) -> Vec<Fetched> {
        let started = Instant::now();
        let mut out = vec![Fetched::Failed(Failure::Unavailable); keys.len()];
        let Some(routes) = self.routes() else {
            return out;
        };
        // One group per slot: Redis answers CROSSSLOT to an MGET that spans two.
        let mut order: Vec<(u16, usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (slot_of(&k.key), i))
            .collect();
        order.sort_unstable();
        let mut calls = Vec::new();
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let Some(node) = self.reader_for(&routes, group[0].0, started) else {
                self.refresh_soon();
                continue;
            };
            let idx: Vec<usize> = group.iter().map(|g| g.1).collect();
            let sub: Vec<ReadKey> = idx.iter().map(|&i| keys[i].clone()).collect();
            calls.push(async move {
                let r = node.try_read(&sub, timeout).await;
                (idx, sub, r)
            });
        }
        let mut follow = Vec::new();
        for (idx, sub, result) in join_all(calls).await {
            match result {
                Ok(fetched) => {
                    for (i, f) in idx.into_iter().zip(fetched) {
                        out[i] = f;
                    }
                }
                Err(StoreError::Redirected(Redirect::Moved { to, .. })) => {
                    self.refresh_soon();
                    follow.push((idx, sub, to));
                }
                Err(e) => {
                    if matches!(e, StoreError::Timeout(_) | StoreError::Unavailable(_)) {
                        self.refresh_soon();
                    }
                    for i in idx {
                        out[i] = Fetched::Failed(e.failure());
                    }
                }
            }
        }
        // A MOVED is followed once, to the node it names, within what is left of the deadline.
        let left = timeout.saturating_sub(started.elapsed());
        if !follow.is_empty() && left > Duration::from_millis(1) {
            let calls = follow.into_iter().map(|(idx, sub, to)| async move {
                let r = match self.members.get_or_start(&to) {
                    Ok(node) => node.try_read(&sub, left).await,
                    Err(e) => Err(e),
                };
                (idx, r)
            });
            for (idx, result) in join_all(calls).await {
                let fetched = match result {
                    Ok(f) => f,
                    Err(e) => vec![Fetched::Failed(e.failure()); idx.len()],
                };
                for (i, f) in idx.into_iter().zip(fetched) {
                    out[i] = f;
                }
            }
        }
        out
    }

    /// Each primary gets its own rows; Ok only when every one acknowledged. A MOVED sends
    /// that node's rows, once, where the refreshed slot map says.
    async fn write_all(&self, items: Vec<WriteItem>, timeout: Duration) -> Result<(), StoreError> {
        let total = items.len();
        let mut pending = items;
        let mut written = 0;
        let mut last_error = None;
        for attempt in 0..2 {
            let Some(routes) = self.routes() else {
                return Err(StoreError::Unavailable(
                    "no Redis Cluster slot map yet: no seed node answered".into(),
                ));
            };
            let mut groups: Vec<(Rc<Node>, Vec<WriteItem>)> = Vec::new();
            let mut unrouted = Vec::new();
            for item in pending.drain(..) {
                let slot = slot_of(item.key());
                match routes.map.range(slot) {
                    Some(r) => {
                        let node = &routes.primaries[r];
                        match groups.iter_mut().find(|(n, _)| Rc::ptr_eq(n, node)) {
                            Some((_, g)) => g.push(item),
                            None => groups.push((node.clone(), vec![item])),
                        }
                    }
                    None => unrouted.push(item),
                }
            }
            if !unrouted.is_empty() {
                last_error = Some(StoreError::Unavailable(format!(
                    "{} rows hash to slots no cluster node serves",
                    unrouted.len()
                )));
            }
            let calls = groups.into_iter().map(|(node, group)| async move {
                let keep = group.clone();
                (node.write(group, timeout).await, keep)
            });
            let mut redirected = Vec::new();
            for (result, group) in join_all(calls).await {
                match result {
                    Ok(()) => written += group.len(),
                    Err(StoreError::Redirected(r)) if attempt == 0 => {
                        last_error = Some(StoreError::Redirected(r));
                        redirected.extend(group);
                    }
                    Err(e) => {
                        if matches!(e, StoreError::Timeout(_) | StoreError::Unavailable(_)) {
                            self.refresh_soon();
                        }
                        last_error = Some(e);
                    }
                }
            }
            if redirected.is_empty() {
                break;
            }
            // Read the new slot map now, then send those rows where it says.
            self.refresh().await;
            pending = redirected;
        }
        match last_error {
            None => Ok(()),
            Some(e) if written == 0 => Err(e),
            Some(e) => Err(StoreError::Partial {
                written,
                total,
                why: e.to_string(),
            }),
        }
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

    fn read<'a>(
        &'a self,
        keys: &'a [ReadKey],
        timeout: Duration,
    ) -> LocalBoxFuture<'a, Vec<Fetched>> {
        self.read_all(keys, timeout).boxed_local()
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
