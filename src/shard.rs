//! A shard: one OS thread, its own current_thread tokio runtime, its own listener on the shared
//! port (SO_REUSEPORT), its own Redis connection, coalescer, breaker and counters. Nothing on the
//! request path is shared with another shard.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use featureproxy_protocol::{ErrorCode, ProtocolError, Response};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use crate::backend::Backend;
use crate::breaker::Breaker;
use crate::cache::HotCache;
use crate::coalescer::Coalescer;
use crate::config::Settings;
use crate::guarded::GuardedRedis;
use crate::handler::ShardCtx;
use crate::histograms::{Interval, ShardHistograms};
use crate::invalidation::{Invalidation, Peers};
use crate::registry::Registry;
use crate::socket;
use crate::stats::ShardStats;

/// Opens a listening socket with SO_REUSEPORT, so every shard can bind the same address and the
/// kernel spreads new connections across them.
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// What a shard thread needs to start.
pub struct ShardSpec {
    pub shard: u16,
    pub listener: std::net::TcpListener,
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    pub stats: Arc<ShardStats>,
    pub redis_url: String,
    pub shutdown: watch::Receiver<bool>,
    /// The other shards' invalidation channels, and this shard's own.
    pub peers: Peers,
    pub invalidations: mpsc::UnboundedReceiver<Invalidation>,
    /// Where the shard ships its histograms once a second.
    pub intervals: crossbeam::channel::Sender<Interval>,
}

/// Runs a shard on the calling thread until shutdown and drain.
pub fn run(spec: ShardSpec) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(spec))
}

async fn serve(spec: ShardSpec) -> std::io::Result<()> {
    let ShardSpec {
        shard,
        listener,
        settings,
        registry,
        stats,
        redis_url,
        mut shutdown,
        peers,
        mut invalidations,
        intervals,
    } = spec;
    let histograms = Rc::new(RefCell::new(ShardHistograms::new(registry.views().len())));
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let backend = Backend::start(&redis_url, settings.default_deadline)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let redis = Rc::new(GuardedRedis::new(
        backend.clone(),
        Breaker::new(settings.breaker.clone()),
        stats.clone(),
        histograms.clone(),
    ));
    let coalescer = Coalescer::new(redis.clone(), stats.clone(), settings.redis_batch_cap);
    tokio::task::spawn_local(coalescer.clone().run_flusher());
    tokio::task::spawn_local(watch_redis(backend.clone(), stats.clone()));

    let ctx = Rc::new(ShardCtx {
        shard,
        settings: settings.clone(),
        registry,
        stats: stats.clone(),
        redis,
        coalescer,
        cache: RefCell::new(HotCache::new(
            settings.hot_cache_bytes / settings.shards.max(1),
        )),
        histograms: histograms.clone(),
        peers,
    });
    tokio::task::spawn_local(ship_histograms(shard, histograms, intervals));
    if settings.client_tracking && settings.hot_cache_bytes > 0 {
        tokio::task::spawn_local(crate::tracking::run(redis_url.clone(), ctx.clone()));
    }
    let listener_ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        while let Some(inv) = invalidations.recv().await {
            listener_ctx.invalidate_local(&inv.keys);
            let _ = inv.done.send(());
        }
    });
    // Give Redis a moment before taking clients (they queue in the listen backlog meanwhile), so
    // the first requests after start do not get defaults for nothing. A Redis that is down stays
    // down: start anyway and serve defaults until it comes.
    if tokio::time::timeout(Duration::from_secs(2), backend.wait_connected())
        .await
        .is_err()
    {
        warn!(shard, redis = %redis_url, "Redis did not answer within 2s of start; serving defaults until it does");
    }
    let open = Rc::new(OpenConnections::default());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (mut stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(shard, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections_accepted.inc();
        if open.count.get() >= settings.max_connections_per_shard {
            stats.connections_refused.inc();
            let err = ProtocolError::new(
                ErrorCode::Overloaded,
                format!(
                    "this shard already serves {} connections (max_connections_per_shard); retry later or reuse connections",
                    settings.max_connections_per_shard
                ),
            );
            tokio::task::spawn_local(async move {
                let mut out = bytes::BytesMut::new();
                Response::Error(err).encode(&mut out, 0);
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), stream.write_all(&out)).await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = open.enter(&stats);
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::task::spawn_local(async move {
            socket::serve(stream, ctx, shutdown).await;
            drop(guard);
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, open.drained())
        .await
        .is_err()
    {
        warn!(
            shard,
            still_open = open.count.get(),
            "drain timeout passed with requests in flight; closing them"
        );
    }
    backend.quit().await;
    Ok(())
}

/// Sends the shard's histograms to the stats thread once a second and starts a new interval. If
/// the stats thread falls behind, an interval is dropped rather than queued without bound.
async fn ship_histograms(
    shard: u16,
    histograms: Rc<RefCell<ShardHistograms>>,
    intervals: crossbeam::channel::Sender<Interval>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let taken = histograms.borrow_mut().take();
        let _ = intervals.try_send(Interval {
            shard,
            histograms: taken,
        });
    }
}

/// Keeps `redis_connected` current and logs when Redis goes away and comes back.
async fn watch_redis(backend: Backend, stats: Arc<ShardStats>) {
    let shard = stats.shard;
    let mut was = None;
    loop {
        let now = backend.is_connected();
        stats.redis_connected.store(now, Relaxed);
        if was != Some(now) {
            match (was, now) {
                (_, true) => info!(shard, "connected to Redis"),
                (Some(true), false) => warn!(
                    shard,
                    "lost the Redis connection; reconnecting, reads get defaults meanwhile"
                ),
                (None, false) => info!(shard, "connecting to Redis"),
                _ => {}
            }
            was = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts this shard's open connections so shutdown can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: Cell<usize>,
    zero: Notify,
}

struct OpenGuard {
    open: Rc<OpenConnections>,
    stats: Arc<ShardStats>,
}

impl OpenConnections {
    fn enter(self: &Rc<Self>, stats: &Arc<ShardStats>) -> OpenGuard {
        self.count.set(self.count.get() + 1);
        stats.connections_open.inc();
        OpenGuard {
            open: self.clone(),
            stats: stats.clone(),
        }
    }

    async fn drained(&self) {
        while self.count.get() > 0 {
            self.zero.notified().await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.count.set(self.open.count.get() - 1);
        self.stats.connections_open.dec();
        if self.open.count.get() == 0 {
            self.open.zero.notify_waiters();
        }
    }
}
