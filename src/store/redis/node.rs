//! One Redis server as the proxy uses it from one shard: a fred client (pipelined, connected on
//! the shard's own thread), the circuit breaker in front of it, and the counting of every call.
//! A backend is built from nodes: the standalone backend has one; a cluster has one per server.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fred::prelude::*;
use fred::types::config::ServerConfig;
use fred::types::{ClusterHash, CustomCommand, Expiration, Key, Map};
use futures::future::LocalBoxFuture;
use tracing::{info, warn};

use super::pipe::{self, Pipe};
use super::reads::Group;
use super::tls::RedisTls;
use crate::store::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use crate::store::{Landing, ReadKey, Redirect, StoreError, WriteItem};
use crate::telemetry::counters::{NodeStats, RedirectKind, ShardStats};
use crate::telemetry::histograms::ShardHistograms;

/// Most commands fred queues while the connection is down; past it calls fail at once instead
/// of piling up (fred issue #340).
const MAX_QUEUED_COMMANDS: usize = 50_000;

/// One Redis server behind its breaker.
pub struct Node {
    reads: Pipe,
    client: Client,
    /// "host:port" when the node is one server of a cluster: the shard-wide connection and
    /// breaker gauges are then the cluster's to set, from all its nodes.
    cluster_addr: Option<String>,
    /// The node's own counters, for a cluster node.
    node_stats: Option<Arc<NodeStats>>,
    /// The task that watches the connection; it holds the node, so `quit` stops it.
    watch: Cell<Option<tokio::task::AbortHandle>>,
    command_timeout: Duration,
    breaker: Breaker,
    stats: Arc<ShardStats>,
    histograms: Rc<RefCell<ShardHistograms>>,
}

fn from_fred(e: fred::error::Error, timeout: Duration) -> StoreError {
    match e.kind() {
        fred::error::ErrorKind::Timeout => StoreError::Timeout(timeout),
        _ => match Redirect::parse(e.details()) {
            Some(r) => StoreError::Redirected(r),
            None => StoreError::Unavailable(e.to_string()),
        },
    }
}

impl Node {
    /// Builds the client and starts connecting in the background, on the current runtime (so the
    /// connection lives on this shard's thread). Does not wait: a proxy whose Redis is down still
    /// starts and serves defaults, and reconnects on its own.
    pub fn start(
        url: &str,
        tls: Option<&RedisTls>,
        cluster_addr: Option<String>,
        command_timeout: Duration,
        breaker: BreakerConfig,
        stats: Arc<ShardStats>,
        histograms: Rc<RefCell<ShardHistograms>>,
    ) -> Result<Rc<Node>, StoreError> {
        let config = super::tls::fred_config(url, tls)?;
        let reads = Pipe::start(read_target(&config, url, tls)?);
        let client = Builder::from_config(config)
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(500);
                c.internal_command_timeout = Duration::from_secs(1);
                // A failed read is answered with defaults at once; retrying behind the caller's
                // back would only spend its deadline.
                c.max_command_attempts = 1;
                c.max_command_buffer_len = MAX_QUEUED_COMMANDS;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        client.connect();
        let node = Rc::new(Node {
            reads,
            client,
            node_stats: cluster_addr.as_deref().map(|a| Arc::new(NodeStats::new(a))),
            cluster_addr,
            watch: Cell::new(None),
            command_timeout,
            breaker: Breaker::new(breaker),
            stats,
            histograms,
        });
        let watch = tokio::task::spawn_local(node.clone().watch_connection());
        node.watch.set(Some(watch.abort_handle()));
        Ok(node)
    }

    /// Waits until the first connections are up (for readiness), or fails.
    pub async fn wait_connected(&self) -> Result<(), StoreError> {
        self.client
            .wait_for_connect()
            .await
            .map_err(|e| from_fred(e, self.command_timeout))?;
        self.reads.wait_connected().await;
        Ok(())
    }

    /// False while the breaker is open: callers serve defaults without queueing a read.
    pub fn admits(&self, now: Instant) -> bool {
        !self.breaker.rejects(now)
    }

    /// Reads `groups` of a batch's `keys` in one call, unless the breaker is open: every group's
    /// commands (an MGET of its whole values, an HMGET per hash) are encoded into the node's read
    /// connection together and leave in one write, and each group's replies land its keys as
    /// they are decoded (values are slices of the read buffer: no copy). Returns the groups
    /// whose replies were errors, each with its error (a redirection on a cluster node, or
    /// Redis's own message), for the caller to follow or fail; an error of the call itself
    /// (timeout, lost connection, open breaker) is every group's, and lands nothing.
    ///
    /// (Measured and dropped: one EVAL of a script running every HMGET inside Redis cut the
    /// proxy's CPU per entity by a third but more than doubled Redis's, and Redis is the single
    /// thread every shard shares.)
    pub async fn read_groups(
        &self,
        keys: &[ReadKey],
        groups: &[Group<'_>],
        timeout: Duration,
        landing: &dyn Landing,
    ) -> Result<Vec<(usize, StoreError)>, StoreError> {
        let replies: usize = groups.iter().map(|g| g.replies(keys)).sum();
        let count: usize = groups.iter().map(|g| g.len()).sum();
        let encode = |out: &mut BytesMut| {
            for g in groups {
                g.encode(keys, out);
            }
        };
        let frames = self
            .guarded(count, replies, self.reads.call(replies, encode, timeout))
            .await?;
        let mut frames = frames.into_iter();
        let mut failed = Vec::new();
        for (n, g) in groups.iter().enumerate() {
            if let Err(e) = g.decode(keys, &mut frames, landing) {
                self.count_reply_error(&e);
                failed.push((n, e));
            }
        }
        Ok(failed)
    }

    /// Counts an error reply to one group of a call that was answered: the node is up (its
    /// breaker saw the call succeed), the keys are elsewhere, migrating, or refused.
    fn count_reply_error(&self, e: &StoreError) {
        match e {
            StoreError::Redirected(r) => self.stats.redirected(redirect_kind(r)),
            _ => self.stats.redis_unavailable.inc(),
        }
        if !matches!(
            e,
            StoreError::Redirected(Redirect::Moved { .. } | Redirect::Ask { .. })
        ) {
            if let Some(n) = &self.node_stats {
                n.errors.inc();
            }
        }
    }

    /// Runs every write, all queued at once so they leave in one socket write; Ok only once Redis
    /// acknowledged every one. Refused while the breaker is open.
    pub async fn write(&self, items: Vec<WriteItem>, timeout: Duration) -> Result<(), StoreError> {
        let n = items.len();
        self.guarded(n, n, self.raw_write(items, timeout)).await
    }

    async fn raw_write(&self, items: Vec<WriteItem>, timeout: Duration) -> Result<(), StoreError> {
        // A node whose connection is known lost (a killed server: the socket closed, and the
        // reconnects are refused) fails its part at once: fred would hold the commands until
        // it reconnects or the whole write_timeout passes.
        if !self.is_connected() {
            return Err(StoreError::Unavailable(format!(
                "the connection to Redis at {} is lost (reconnecting); nothing was sent to it",
                self.reads.addr()
            )));
        }
        let opts = Options {
            fail_fast: true,
            timeout: Some(timeout),
            ..Default::default()
        };
        let client = self.client.with_options(&opts);
        let mut writes: Vec<LocalBoxFuture<'_, Result<(), fred::error::Error>>> =
            Vec::with_capacity(items.len());
        for item in items {
            match item {
                WriteItem::Value { key, value, ttl } => {
                    let px = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
                    writes.push(Box::pin(client.set::<(), _, _>(
                        Key::from(key),
                        value,
                        Some(Expiration::PX(px)),
                        None,
                        false,
                    )));
                }
                WriteItem::Fields {
                    key,
                    fields,
                    expire,
                } => {
                    let mut map = Map::new();
                    for (field, value) in fields {
                        map.insert(Key::from(field), Value::Bytes(value));
                    }
                    // Queued in this order on the one connection: the EXPIRE follows the HSET.
                    writes.push(Box::pin(
                        client.hset::<(), _, _>(Key::from(key.clone()), map),
                    ));
                    if let Some(ttl) = expire {
                        let secs = ttl.as_secs().clamp(1, i64::MAX as u64) as i64;
                        writes.push(Box::pin(client.expire::<(), _>(Key::from(key), secs, None)));
                    }
                }
            }
        }
        for r in futures::future::join_all(writes).await {
            r.map_err(|e| from_fred(e, timeout))?;
        }
        Ok(())
    }

    /// Runs `call` if the breaker admits it, counting `commands` commands carrying `keys` keys,
    /// its latency and its outcome.
    async fn guarded<T>(
        &self,
        keys: usize,
        commands: usize,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.breaker.try_acquire(Instant::now()) {
            Ok(t) => self.note(t),
            Err(_rejected) => {
                self.stats.breaker_rejections.inc();
                return Err(StoreError::BreakerOpen);
            }
        }
        self.stats.redis_commands.add(commands as u64);
        self.stats.redis_keys.add(keys as u64);
        if let Some(n) = &self.node_stats {
            n.keys.add(keys as u64);
        }
        let started = Instant::now();
        let result = call.await;
        self.histograms.borrow_mut().record_redis(started.elapsed());
        self.finish(result.as_ref().err());
        result
    }

    fn finish(&self, error: Option<&StoreError>) {
        let failed = match error {
            Some(StoreError::Timeout(_)) => {
                self.stats.redis_timeouts.inc();
                true
            }
            Some(StoreError::Unavailable(_)) => {
                self.stats.redis_unavailable.inc();
                true
            }
            // The node answered: it is healthy, the key lives elsewhere (or is migrating).
            // CLUSTERDOWN is the node unable to serve: that counts against it.
            Some(StoreError::Redirected(r)) => {
                self.stats.redirected(redirect_kind(r));
                *r == Redirect::ClusterDown
            }
            Some(StoreError::BreakerOpen) | Some(StoreError::Partial { .. }) | None => false,
        };
        if let (true, Some(n)) = (failed, &self.node_stats) {
            n.errors.inc();
        }
        let t = self.breaker.record(Instant::now(), !failed);
        if let (
            Some(Transition {
                to: BreakerState::Open,
                ..
            }),
            Some(StoreError::Timeout(_)),
        ) = (t, error)
        {
            // A frozen server keeps its connections "up": drop them so that the reconnect logic
            // takes over and the reads waiting behind the frozen ones fail at once.
            self.reads.drop_connection();
            let client = self.client.clone();
            tokio::task::spawn_local(async move {
                let _ = client.force_reconnection().await;
            });
        }
        self.note(t);
    }

    fn note(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        self.stats.breaker_transitions.inc();
        match &self.node_stats {
            Some(n) => n.breaker_state.store(t.to.gauge(), Relaxed),
            None => self.stats.breaker_state.store(t.to.gauge(), Relaxed),
        }
        let shard = self.stats.shard;
        let node = self.cluster_addr.as_deref().unwrap_or("");
        match t.to {
            BreakerState::Open => warn!(
                shard,
                node,
                from = t.from.name(),
                "circuit breaker opened: Redis calls fail; reads get defaults (DEGRADED), writes BACKEND_UNAVAILABLE"
            ),
            BreakerState::HalfOpen => info!(shard, node, "circuit breaker half-open: probing Redis"),
            BreakerState::Closed => info!(shard, node, "circuit breaker closed: Redis answers again"),
        }
    }

    /// Keeps `redis_connected` current and logs when Redis goes away and comes back.
    async fn watch_connection(self: Rc<Self>) {
        let shard = self.stats.shard;
        let node = self.cluster_addr.clone().unwrap_or_default();
        let mut was = None;
        loop {
            let now = self.is_connected();
            match &self.node_stats {
                Some(n) => n.connected.store(now, Relaxed),
                None => self.stats.redis_connected.store(now, Relaxed),
            }
            if was != Some(now) {
                match (was, now) {
                    (_, true) => info!(shard, node, "connected to Redis"),
                    (Some(true), false) => warn!(
                        shard,
                        node,
                        "lost the Redis connection; reconnecting, reads get defaults meanwhile"
                    ),
                    (None, false) => info!(shard, node, "connecting to Redis"),
                    _ => {}
                }
                was = Some(now);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends READONLY on every read connection this node makes, so that a replica serves reads
    /// of its primary's slots; `armed` is true only while the current connection accepted it.
    pub fn read_as_replica(&self, armed: Rc<Cell<bool>>) {
        self.reads.require_readonly(armed);
    }

    /// The counters of a cluster node.
    pub fn node_stats(&self) -> Option<&Arc<NodeStats>> {
        self.node_stats.as_ref()
    }

    /// "host:port" of a cluster node.
    pub fn cluster_addr(&self) -> Option<&str> {
        self.cluster_addr.as_deref()
    }

    /// True while both connections are up.
    pub fn is_connected(&self) -> bool {
        self.reads.is_connected() && self.client.is_connected()
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Asks this node for the cluster's slot map (CLUSTER SLOTS), outside the breaker: a
    /// refresh must not be refused because reads failed.
    pub async fn cluster_slots(&self, timeout: Duration) -> Result<Value, StoreError> {
        let opts = Options {
            fail_fast: true,
            timeout: Some(timeout),
            ..Default::default()
        };
        let cmd = CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
        self.client
            .with_options(&opts)
            .custom::<Value, _>(cmd, vec!["SLOTS"])
            .await
            .map_err(|e| from_fred(e, timeout))
    }

    /// Closes the connection and stops watching it.
    pub async fn quit(&self) {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
        self.reads.close();
        let _ = self.client.quit().await;
    }
}

/// The counter a cluster's answer about where a key lives goes to.
fn redirect_kind(r: &Redirect) -> RedirectKind {
    match r {
        Redirect::Moved { .. } => RedirectKind::Moved,
        Redirect::Ask { .. } => RedirectKind::Ask,
        Redirect::TryAgain => RedirectKind::TryAgain,
        Redirect::ClusterDown => RedirectKind::ClusterDown,
    }
}

/// Where the read connection goes and what it sends first, from the URL fred parsed: the
/// server's address, AUTH with the URL's user and password, SELECT of its database.
fn read_target(
    config: &Config,
    url: &str,
    tls: Option<&RedisTls>,
) -> Result<pipe::Target, StoreError> {
    let ServerConfig::Centralized { server } = &config.server else {
        return Err(StoreError::Unavailable(format!(
            "Redis URL {url:?} names no single server"
        )));
    };
    let mut hello = Vec::new();
    if let Some(password) = &config.password {
        let mut auth = vec![b"AUTH".to_vec()];
        if let Some(user) = &config.username {
            auth.push(user.as_bytes().to_vec());
        }
        auth.push(password.as_bytes().to_vec());
        hello.push(auth);
    }
    if let Some(db) = config.database.filter(|db| *db != 0) {
        hello.push(vec![b"SELECT".to_vec(), db.to_string().into_bytes()]);
    }
    let tls = match tls {
        Some(tls) => Some((tls.connector(), tls.name_for(&server.host)?)),
        None => None,
    };
    Ok(pipe::Target {
        addr: format!("{}:{}", server.host, server.port),
        hello,
        tls,
    })
}
