//! A batch split by hash slot, every slot bound for one node sent in one call, every node at
//! once, each node's keys landing as it answers; a PUT split per primary. One failed node fails
//! only its own keys.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::{slot_of, Cluster, ReadFrom, Routes};
use crate::store::redis::node::Node;
use crate::store::redis::reads::{self, Group};
use crate::store::{Failure, Landing, ReadKey, Redirect, StoreError, WriteItem};

impl Cluster {
    /// The node a read of `slot` goes to: its primary, or with `replica_preferred` a replica
    /// whose connection accepted READONLY and whose breaker is closed; a primary whose breaker
    /// is open hands its reads to such a replica when there is one.
    pub(super) fn reader_for(&self, routes: &Routes, slot: u16, now: Instant) -> Option<Rc<Node>> {
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

    /// Reads every key: each slot's keys go to the node that serves the slot, and every slot
    /// bound for one node goes in one call, one write ([`Node::read_groups`]); the nodes are
    /// asked all at once and each node's keys land as soon as it answers, so a frozen node holds
    /// back only its own keys. A key whose node failed, timed out or redirected twice is
    /// [`Fetched::Failed`](crate::store::Fetched::Failed), alone.
    pub(super) async fn read_all(
        &self,
        keys: &[ReadKey],
        timeout: Duration,
        landing: &dyn Landing,
    ) {
        let started = Instant::now();
        let Some(routes) = self.routes() else {
            Group::Whole(keys.len()).fail(landing, Failure::Unavailable);
            landing.landed();
            return;
        };
        // One group per slot: Redis answers CROSSSLOT to an MGET that spans two.
        let mut order: Vec<(u16, usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (slot_of(&k.key), i))
            .collect();
        order.sort_unstable();
        let mut by_node: Vec<(Rc<Node>, Vec<Group<'_>>)> = Vec::new();
        for entries in order.chunk_by(|a, b| a.0 == b.0) {
            let group = Group::Slot(entries);
            let Some(node) = self.reader_for(&routes, entries[0].0, started) else {
                self.refresh_soon();
                group.fail(landing, Failure::Unavailable);
                continue;
            };
            match by_node.iter_mut().find(|(n, _)| Rc::ptr_eq(n, &node)) {
                Some((_, groups)) => groups.push(group),
                None => by_node.push((node, vec![group])),
            }
        }
        // The slots no node serves, failed above.
        landing.landed();
        let calls = by_node
            .iter()
            .map(|(node, groups)| self.read_node(node, keys, groups, started, timeout, landing));
        join_all(calls).await;
    }

    /// One node's slot groups, in one call; lands their keys on its own. A slot that MOVED is
    /// sent once more, alone with the other slots that moved to the same node, where the
    /// redirection says, within what is left of the read's time.
    async fn read_node(
        &self,
        node: &Node,
        keys: &[ReadKey],
        groups: &[Group<'_>],
        started: Instant,
        timeout: Duration,
        landing: &dyn Landing,
    ) {
        let failed = match node.read_groups(keys, groups, timeout, landing).await {
            Ok(failed) => failed,
            Err(e) => {
                if matches!(e, StoreError::Timeout(_) | StoreError::Unavailable(_)) {
                    self.refresh_soon();
                }
                reads::fail_unlanded(groups, &Err(e), landing);
                landing.landed();
                return;
            }
        };
        let mut moved: Vec<(String, Vec<Group<'_>>)> = Vec::new();
        for (n, e) in failed {
            match e {
                StoreError::Redirected(Redirect::Moved { to, .. }) => {
                    match moved.iter_mut().find(|(addr, _)| *addr == to) {
                        Some((_, gs)) => gs.push(groups[n]),
                        None => moved.push((to, vec![groups[n]])),
                    }
                }
                e => groups[n].fail(landing, e.failure()),
            }
        }
        landing.landed();
        if moved.is_empty() {
            return;
        }
        self.refresh_soon();
        let left = timeout.saturating_sub(started.elapsed());
        for (to, groups) in moved {
            let outcome = match self.members.get_or_start(&to) {
                Ok(_) if left <= Duration::from_millis(1) => Err(StoreError::Timeout(timeout)),
                Ok(node) => node.read_groups(keys, &groups, left, landing).await,
                Err(e) => Err(e),
            };
            // Redirected again, or failed: those keys are DEGRADED for this read.
            reads::fail_unlanded(&groups, &outcome, landing);
            landing.landed();
        }
    }

    /// Each primary gets its own rows; Ok only when every one acknowledged. A MOVED sends
    /// that node's rows, once, where the refreshed slot map says.
    pub(super) async fn write_all(
        &self,
        items: Vec<WriteItem>,
        timeout: Duration,
    ) -> Result<(), StoreError> {
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
