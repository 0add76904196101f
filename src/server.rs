//! Starting and stopping the whole proxy: registry, shards, stats endpoint, signals.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info};

use crate::config::registry::Registry;
use crate::config::settings::{Settings, SettingsError};
use crate::ops;
use crate::ops::Sources;
use crate::reading::freshness::now_ms;
use crate::serving::accept::{claim_port, reuseport_listener};
use crate::shard::{self, ShardSpec};
use crate::store::redis::child::{RedisChild, RedisChildError};
use crate::store::redis::url;
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid setting {0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Redis(#[from] RedisChildError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: another process already listens there; stop it or choose another address (`listen` in [server], or --listen); the shards share the port only among themselves")]
    PortTaken { addr: String },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns.
pub fn run(settings: Settings, registry: Registry) -> Result<(), StartError> {
    settings.validate()?;
    // Signal handlers go in first: a SIGTERM during start-up must drain, not kill.
    let signals = Signals::install()?;
    let mut redis_child = None;
    let redis_url = match &settings.redis {
        Some(url) => url.clone(),
        None => {
            let child = RedisChild::start()?;
            info!(
                port = child.port,
                "no --redis given: started a private redis-server (stopped on exit)"
            );
            let url = child.url();
            redis_child = Some(child);
            url
        }
    };
    let settings = Arc::new(settings);
    let registry = Arc::new(registry);
    info!(views = %registry.names(), "registry loaded");

    let stats: Vec<Arc<ShardStats>> = (0..settings.shards)
        .map(|i| Arc::new(ShardStats::new(i as u16, registry.views().len())))
        .collect();
    let (intervals, aggregate) = histograms::aggregator(settings.shards, registry.views().len());
    let sources = Sources {
        shards: stats.clone(),
        registry: registry.clone(),
        histograms: aggregate,
        started_unix_s: now_ms() / 1000,
    };
    // The stats endpoint is up before the protocol port, so whoever sees the port open can
    // watch the proxy.
    let stats_addr =
        ops::start(settings.stats_listen, sources).map_err(|source| StartError::Listen {
            addr: settings.stats_listen.to_string(),
            source,
        })?;

    // The port must be ours alone (port 0 settles one); then every shard's listener joins it.
    let addr = claim_port(settings.listen).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => StartError::PortTaken {
            addr: settings.listen.to_string(),
        },
        _ => StartError::Listen {
            addr: settings.listen.to_string(),
            source,
        },
    })?;
    let mut listeners = Vec::new();
    for _ in 0..settings.shards {
        listeners.push(
            reuseport_listener(addr).map_err(|source| StartError::Listen {
                addr: addr.to_string(),
                source,
            })?,
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (peers, receivers) = crate::reading::coherence::channels(settings.shards);
    let mut threads = Vec::new();
    let per_shard = listeners.into_iter().zip(peers).zip(receivers);
    for (i, ((listener, peers), invalidations)) in per_shard.enumerate() {
        let spec = ShardSpec {
            shard: i as u16,
            listener,
            settings: settings.clone(),
            registry: registry.clone(),
            stats: stats[i].clone(),
            redis_url: redis_url.clone(),
            shutdown: stop_rx.clone(),
            peers,
            invalidations,
            intervals: intervals.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if let Err(e) = shard::run(spec) {
                    error!(shard = i, error = %e, "shard stopped with an error");
                }
            })?;
        threads.push(t);
    }
    info!(
        listen = %addr,
        stats = %stats_addr,
        shards = settings.shards,
        redis = %url::redacted(&redis_url),
        "featureproxy serving"
    );

    signals.wait();
    info!(drain_timeout = ?settings.drain_timeout, "shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    for t in threads {
        let _ = t.join();
    }
    drop(redis_child);
    info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, caught on the main thread.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })?;
        Ok(Signals { rt, term, int })
    }

    fn wait(mut self) {
        self.rt.block_on(async {
            tokio::select! {
                _ = self.term.recv() => {},
                _ = self.int.recv() => {},
            }
        });
    }
}
