//! The cluster's nodes as one shard uses them: for each "host:port", a [`Node`] (connection +
//! breaker), its tracking connection, and for replicas the READONLY state of the connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use super::SlotMap;
use crate::store::breaker::BreakerConfig;
use crate::store::redis::node::Node;
use crate::store::redis::tls::RedisTls;
use crate::store::redis::tracking;
use crate::store::{Change, StoreError};
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms::ShardHistograms;

/// Where notices of changed rows go; set once the reading stage exists.
pub type ChangeSink = Rc<RefCell<Option<Rc<dyn Fn(Change)>>>>;

/// How nodes are started.
pub struct NodeSettings {
    pub command_timeout: Duration,
    pub breaker: BreakerConfig,
    pub stats: Arc<ShardStats>,
    pub histograms: Rc<RefCell<ShardHistograms>>,
    /// Tracking prefixes when client tracking is on, else None.
    pub tracking: Option<Vec<String>>,
    /// TLS for every node (`rediss-cluster://`), else None.
    pub tls: Option<Arc<RedisTls>>,
}

struct Member {
    node: Rc<Node>,
    /// True while this node's tracking connection is armed.
    tracked: Rc<Cell<bool>>,
    /// True while the node's connection accepted READONLY (replicas read from only).
    readonly: Option<Rc<Cell<bool>>>,
    tasks: Vec<AbortHandle>,
}

/// Every node the shard knows, by "host:port".
pub struct Members {
    settings: NodeSettings,
    nodes: RefCell<HashMap<String, Member>>,
    changes: ChangeSink,
}

impl Members {
    pub fn new(settings: NodeSettings) -> Members {
        Members {
            settings,
            nodes: RefCell::new(HashMap::new()),
            changes: Rc::new(RefCell::new(None)),
        }
    }

    /// Where notices of rows written behind the proxy's back, and of slot map changes, go.
    pub fn changes(&self) -> ChangeSink {
        self.changes.clone()
    }

    pub fn changed(&self, change: Change) {
        let sink = self.changes.borrow().clone();
        if let Some(f) = sink {
            f(change);
        }
    }

    /// The node at `addr`, started (connecting in the background, tracked) if new.
    pub fn get_or_start(&self, addr: &str) -> Result<Rc<Node>, StoreError> {
        if let Some(m) = self.nodes.borrow().get(addr) {
            return Ok(m.node.clone());
        }
        let s = &self.settings;
        let node = Node::start(
            &format!("redis://{addr}"),
            s.tls.as_deref(),
            Some(addr.to_string()),
            s.command_timeout,
            s.breaker.clone(),
            s.stats.clone(),
            s.histograms.clone(),
        )?;
        let tracked = Rc::new(Cell::new(false));
        let mut tasks = Vec::new();
        if let Some(prefixes) = &s.tracking {
            let changes = self.changes.clone();
            let task = tokio::task::spawn_local(tracking::run(
                format!("redis://{addr}"),
                s.tls.clone(),
                prefixes.clone(),
                s.stats.clone(),
                tracking::Armed::Node(tracked.clone()),
                move |change| {
                    let sink = changes.borrow().clone();
                    if let Some(f) = sink {
                        f(change);
                    }
                },
            ));
            tasks.push(task.abort_handle());
        }
        self.nodes.borrow_mut().insert(
            addr.to_string(),
            Member {
                node: node.clone(),
                tracked,
                readonly: None,
                tasks,
            },
        );
        Ok(node)
    }

    /// Like [`Members::get_or_start`], for a node read from as a replica: READONLY on each of
    /// its connections.
    pub fn get_or_start_replica(&self, addr: &str) -> Result<Rc<Node>, StoreError> {
        let node = self.get_or_start(addr)?;
        if let Some(m) = self.nodes.borrow_mut().get_mut(addr) {
            if m.readonly.is_none() {
                let armed = Rc::new(Cell::new(false));
                node.read_as_replica(armed.clone());
                m.readonly = Some(armed);
            }
        }
        Ok(node)
    }

    /// True when `node` is a replica whose connection accepted READONLY.
    pub fn is_readonly(&self, node: &Node) -> bool {
        let Some(addr) = node.cluster_addr() else {
            return false;
        };
        self.nodes
            .borrow()
            .get(addr)
            .and_then(|m| m.readonly.as_ref())
            .is_some_and(|r| r.get())
    }

    /// Waits, up to `limit`, until every node of `map` that this shard started is connected
    /// and (when tracking is on) has tracking armed: a read routed to a node before its
    /// connection is up fails for nothing, and one before its tracking is on could cache a row
    /// whose change goes unheard. A node that stays down (a dead master still in the map) only
    /// costs the wait.
    pub async fn wait_ready(&self, map: &SlotMap, limit: Duration) {
        let tracking = self.settings.tracking.is_some();
        let end = Instant::now() + limit;
        loop {
            let all = {
                let nodes = self.nodes.borrow();
                map.ranges().iter().all(|r| {
                    std::iter::once(&r.primary)
                        .chain(r.replicas.iter())
                        .all(|a| {
                            nodes.get(a).is_none_or(|m| {
                                m.node.is_connected() && (!tracking || m.tracked.get())
                            })
                        })
                })
            };
            if all || Instant::now() >= end {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// True when tracking is on and armed on every known node.
    pub fn all_tracked(&self) -> bool {
        self.settings.tracking.is_some()
            && self
                .nodes
                .borrow()
                .values()
                .all(|m| m.tracked.get() || !m.node.is_connected())
    }

    /// Shows the nodes of the slot map to operators (their counters in `/stats`, `/metrics`
    /// and `/health`).
    pub fn show(&self, shown: &[String]) {
        let nodes = self.nodes.borrow();
        if let Ok(mut list) = self.settings.stats.nodes.lock() {
            for addr in shown {
                let Some(n) = nodes.get(addr).and_then(|m| m.node.node_stats()) else {
                    continue;
                };
                if !list.iter().any(|x| x.addr == *addr) {
                    list.push(n.clone());
                }
            }
        }
    }

    /// Closes and forgets every node not in `keep`; only the nodes in `shown` (the slot map's)
    /// are reported to operators.
    pub async fn retain(&self, keep: &[String], shown: &[String]) {
        let gone: Vec<Member> = {
            let mut nodes = self.nodes.borrow_mut();
            let drop: Vec<String> = nodes
                .keys()
                .filter(|a| !keep.contains(a))
                .cloned()
                .collect();
            drop.iter().filter_map(|a| nodes.remove(a)).collect()
        };
        if let Ok(mut list) = self.settings.stats.nodes.lock() {
            list.retain(|n| shown.contains(&n.addr));
        }
        for m in gone {
            for t in &m.tasks {
                t.abort();
            }
            m.node.quit().await;
        }
    }

    pub async fn close_all(&self) {
        self.retain(&[], &[]).await;
    }
}
