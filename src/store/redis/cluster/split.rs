//! A batch split by hash slot, sent to every node at once and put back in order; a PUT split
//! per primary. One failed node fails only its own keys.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::{slot_of, Cluster, ReadFrom, Routes};
use crate::store::redis::node::Node;
use crate::store::{Failure, Fetched, Landing, ReadKey, Redirect, StoreError, WriteItem};

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

    /// Reads every key: each slot's keys go to the node that serves the slot, all slots at once,
    /// and each slot's outcomes land as soon as its node answers, so a frozen node holds back
    /// only its own keys. A key whose node failed, timed out or redirected twice is
    /// [`Fetched::Failed`], alone.
    pub(super) async fn read_all(
        &self,
        keys: &[ReadKey],
        timeout: Duration,
        landing: &dyn Landing,
    ) {
        let started = Instant::now();
        let fail = |idx: &mut dyn Iterator<Item = usize>, why: Failure| {
            for i in idx {
                landing.put(i, Fetched::Failed(why));
            }
        };
        let Some(routes) = self.routes() else {
            fail(&mut (0..keys.len()), Failure::Unavailable);
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
        let mut calls = Vec::new();
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let idx: Vec<usize> = group.iter().map(|g| g.1).collect();
            let Some(node) = self.reader_for(&routes, group[0].0, started) else {
                self.refresh_soon();
                fail(&mut idx.into_iter(), Failure::Unavailable);
                continue;
            };
            let sub: Vec<ReadKey> = idx.iter().map(|&i| keys[i].clone()).collect();
            calls.push(self.read_slot(node, idx, sub, started, timeout, landing));
        }
        // The slots no node serves, failed above.
        landing.landed();
        join_all(calls).await;
    }

    /// One slot's keys (`sub`, at `idx` in the batch) from `node`; lands their outcomes on its
    /// own. A MOVED is followed once, to the node it names, within what is left of the read's
    /// time.
    async fn read_slot(
        &self,
        node: Rc<Node>,
        idx: Vec<usize>,
        sub: Vec<ReadKey>,
        started: Instant,
        timeout: Duration,
        landing: &dyn Landing,
    ) {
        let result = match node.try_read(&sub, timeout).await {
            Err(StoreError::Redirected(Redirect::Moved { to, slot })) => {
                self.refresh_soon();
                let left = timeout.saturating_sub(started.elapsed());
                match self.members.get_or_start(&to) {
                    Ok(node) if left > Duration::from_millis(1) => node.try_read(&sub, left).await,
                    Ok(_) => Err(StoreError::Redirected(Redirect::Moved { to, slot })),
                    Err(e) => Err(e),
                }
            }
            Err(e) => {
                if matches!(e, StoreError::Timeout(_) | StoreError::Unavailable(_)) {
                    self.refresh_soon();
                }
                Err(e)
            }
            ok => ok,
        };
        match result {
            Ok(fetched) => {
                for (i, f) in idx.into_iter().zip(fetched) {
                    landing.put(i, f);
                }
            }
            Err(e) => {
                for i in idx {
                    landing.put(i, Fetched::Failed(e.failure()));
                }
            }
        }
        landing.landed();
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
