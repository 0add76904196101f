//! A shard: one OS thread with its own current_thread tokio runtime, wired from one of each
//! stage: its listener and connections (serving), its cache and coalescer (reading), its Redis
//! connection and breaker (store), its counters and histograms (telemetry). Nothing on the
//! request path is shared with another shard. This file only wires; the stages do the work.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::config::access::AccessTable;
use crate::config::current::Current;
use crate::config::registry::Registry;
use crate::config::settings::Settings;
use crate::reading::cache::HotCache;
use crate::reading::coalescer::Coalescer;
use crate::reading::coherence::{Invalidation, Peers};
use crate::reading::Reader;
use crate::reload::Swap;
use crate::serving::overload::Pressure;
use crate::serving::{accept, Serving};
use crate::store::redis;
use crate::store::redis::tls::RedisTls;
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms::{Interval, ShardHistograms};
use crate::telemetry::values::ShardValues;
use crate::telemetry::Recorders;

/// What a shard thread needs to start.
pub struct ShardSpec {
    pub shard: u16,
    /// The shard's listener on the plaintext port; None when it is off.
    pub listener: Option<std::net::TcpListener>,
    /// The shard's listener on the TLS port, when there is one.
    pub tls: Option<TlsSpec>,
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    pub stats: Arc<ShardStats>,
    pub redis_url: String,
    /// TLS to Redis, for a `rediss://` URL.
    pub redis_tls: Option<Arc<RedisTls>>,
    pub shutdown: watch::Receiver<bool>,
    /// Who may do what; replaced on SIGHUP.
    pub access: watch::Receiver<Arc<AccessTable>>,
    /// The other shards' invalidation channels, and this shard's own.
    pub peers: Peers,
    pub invalidations: mpsc::UnboundedReceiver<Invalidation>,
    /// Where the shard ships its histograms once a second.
    pub intervals: crossbeam::channel::Sender<Interval>,
    /// New registries from reloads.
    pub swaps: mpsc::UnboundedReceiver<Swap>,
}

/// The TLS port as a shard gets it.
pub struct TlsSpec {
    pub listener: std::net::TcpListener,
    /// The handshakes' configuration in force (replaced on SIGHUP).
    pub config: watch::Receiver<Arc<rustls::ServerConfig>>,
    pub handshake_timeout: Duration,
}

/// Runs a shard on the calling thread until shutdown and drain. A local runtime runs the shard's
/// tasks and fred's on one queue: no LocalSet inside `block_on`, whose second scheduler costs an
/// extra event-loop poll whenever one wakes the other.
pub fn run(spec: ShardSpec) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build_local(tokio::runtime::LocalOptions::default())?;
    rt.block_on(serve(spec))
}

async fn serve(spec: ShardSpec) -> std::io::Result<()> {
    let ShardSpec {
        shard,
        listener,
        tls,
        settings,
        registry,
        stats,
        redis_url,
        redis_tls,
        shutdown,
        access,
        peers,
        mut invalidations,
        intervals,
        swaps,
    } = spec;
    let histograms = Rc::new(RefCell::new(ShardHistograms::new(
        registry.max_id() as usize
    )));
    let values = Rc::new(RefCell::new(ShardValues::default()));
    let current = Rc::new(Current::new(registry.clone()));
    let ports = accept::Ports {
        plain: listener
            .map(tokio::net::TcpListener::from_std)
            .transpose()?,
        tls: match tls {
            Some(t) => Some(accept::TlsPort {
                listener: tokio::net::TcpListener::from_std(t.listener)?,
                config: t.config,
                handshake_timeout: t.handshake_timeout,
            }),
            None => None,
        },
    };

    // Store: a standalone Redis or a Redis Cluster, behind the storage seam.
    let tracking = (settings.client_tracking && settings.hot_cache_bytes > 0).then(|| {
        registry
            .views()
            .iter()
            .map(|v| v.layout.tracking_prefix())
            .collect()
    });
    let store = redis::connect(redis::Connect {
        url: redis_url.clone(),
        tls: redis_tls,
        read_from: settings.read_from,
        command_timeout: settings.default_deadline,
        breaker: settings.breaker(),
        tracking,
        stats: stats.clone(),
        histograms: histograms.clone(),
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let backend = store.backend.clone();

    // Reading: coalescer and hot cache in front of the backend.
    let coalescer = Coalescer::new(backend.clone(), stats.clone(), settings.redis_batch_cap);
    tokio::task::spawn_local(coalescer.clone().run_flusher());
    let cache = HotCache::new(settings.hot_cache_bytes / settings.shards.max(1));
    let reader = Rc::new(Reader::new(
        shard,
        current.clone(),
        cache,
        coalescer,
        backend.clone(),
        stats.clone(),
        Recorders {
            histograms: histograms.clone(),
            values: values.clone(),
        },
    ));

    // Coherence: writes on other shards, and writes behind the proxy's back.
    let on_peer_write = reader.clone();
    tokio::task::spawn_local(async move {
        while let Some(inv) = invalidations.recv().await {
            on_peer_write.invalidate(inv.view, &inv.entities);
            let _ = inv.done.send(());
        }
    });
    let on_change = reader.clone();
    store.on_change(move |change| on_change.apply(change));

    // Reloads: a new registry between two turns.
    tokio::task::spawn_local(take_swaps(
        swaps,
        current.clone(),
        reader.clone(),
        histograms.clone(),
    ));

    // Telemetry: histograms and value tallies to the stats thread once a second.
    tokio::task::spawn_local(ship_intervals(
        shard,
        histograms.clone(),
        values,
        stats.clone(),
        intervals,
    ));

    // Serving.
    let serving = Rc::new(Serving {
        shard,
        settings: settings.clone(),
        registry: current,
        stats,
        histograms,
        reader,
        backend: backend.clone(),
        peers,
        access,
        // Admitted requests may queue for half the default deadline while a queue stands; the
        // store's own time and the reply take the rest.
        pressure: RefCell::new(Pressure::new(
            settings.shed_queue_delay,
            settings.default_deadline / 2,
        )),
    });
    // Give Redis a moment before taking clients (they queue in the listen backlog meanwhile), so
    // the first requests after start do not get defaults for nothing. A Redis that is down stays
    // down: start anyway and serve defaults until it comes.
    if tokio::time::timeout(Duration::from_secs(2), backend.ready())
        .await
        .is_err()
    {
        warn!(shard, redis = %redis::url::redacted(&redis_url), "Redis did not answer within 2s of start; serving defaults until it does");
    }
    accept::run(ports, serving, shutdown).await;
    backend.close().await;
    Ok(())
}

/// Puts each reload's registry in force: requests from the next turn on use it (those in flight
/// finish on theirs), histograms grow for added views, and the hot cache goes when a view's rows
/// moved or went.
async fn take_swaps(
    mut swaps: mpsc::UnboundedReceiver<Swap>,
    current: Rc<Current>,
    reader: Rc<Reader>,
    histograms: Rc<RefCell<ShardHistograms>>,
) {
    while let Some(swap) = swaps.recv().await {
        histograms
            .borrow_mut()
            .grow(swap.registry.max_id() as usize);
        current.replace(swap.registry);
        if swap.flush_cache {
            reader.flush("a reload removed a view or moved its rows");
        }
        let _ = swap.done.send(());
    }
}

/// Sends the shard's histograms and value tallies to the stats thread once a second and starts
/// a new interval. If the stats thread falls behind, an interval is dropped rather than queued
/// without bound, and counted (`intervals_dropped`).
async fn ship_intervals(
    shard: u16,
    histograms: Rc<RefCell<ShardHistograms>>,
    values: Rc<RefCell<ShardValues>>,
    stats: Arc<ShardStats>,
    intervals: crossbeam::channel::Sender<Interval>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let interval = Interval {
            shard,
            histograms: histograms.borrow_mut().take(),
            values: values.borrow_mut().take(),
        };
        if intervals.try_send(interval).is_err() {
            stats.intervals_dropped.inc();
        }
    }
}
