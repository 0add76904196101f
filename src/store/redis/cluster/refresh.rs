//! Keeping a shard's slot map current: CLUSTER SLOTS on a timer, soon after a MOVED or a node
//! failure (rate-limited), and what a new map changes (new nodes connected and tracked first;
//! the hot cache flushed when a slot changed primary).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Cluster, ReadFrom, Routes, SlotMap};
use crate::store::breaker::BreakerState;
use crate::store::redis::node::Node;
use crate::store::Change;

/// How often the slot map is read even when nothing went wrong.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The least time between two reads of the slot map (MOVED storms ask for many).
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// How long one node may take to answer CLUSTER SLOTS before the next is asked.
const SLOTS_TIMEOUT: Duration = Duration::from_millis(500);

impl Cluster {
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
    pub(super) fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Reads CLUSTER SLOTS from the first node that answers (known primaries, then replicas,
    /// then the seeds) and installs it.
    pub(super) async fn refresh(&self) {
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
        // Reads go to new nodes once they are connected and their tracking is on.
        self.members.wait_ready(&map, Duration::from_secs(1)).await;
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
        let mut nodes: Vec<Rc<Node>> = Vec::new();
        for n in primaries.iter().chain(replicas.iter().flatten()) {
            if !nodes.iter().any(|m| Rc::ptr_eq(m, n)) {
                nodes.push(n.clone());
            }
        }
        *self.routes.borrow_mut() = Some(Rc::new(Routes {
            map,
            primaries,
            replicas,
            nodes,
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

    /// The shard's gauges, from all nodes: the breaker state of the worst primary, tracking
    /// armed only if every tracked node has it. (Whether the shard reaches Redis is read from
    /// the nodes' own gauges: [`ShardStats::redis_up`].)
    ///
    /// [`ShardStats::redis_up`]: crate::telemetry::counters::ShardStats::redis_up
    fn publish_gauges(&self) {
        let routes = self.routes.borrow().clone();
        let primaries: &[Rc<Node>] = routes.as_deref().map_or(&[], |r| &r.primaries);
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
}
