//! Starting and stopping the whole proxy: registry, shards, stats endpoint, signals.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::access::{AccessError, AccessTable};
use crate::config::registry::Registry;
use crate::config::settings::{Settings, SettingsError};
use crate::ops;
use crate::ops::Sources;
use crate::reading::freshness::now_ms;
use crate::serving::accept::{claim_port, reuseport_listener};
use crate::shard::{self, ShardSpec};
use crate::store::redis::child::{RedisChild, RedisChildError};
use crate::store::redis::url;
use crate::telemetry::counters::{AccessCounters, ShardStats};
use crate::telemetry::histograms;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid setting {0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Redis(#[from] RedisChildError),
    #[error(transparent)]
    Access(#[from] AccessError),
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

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns. Must be called on the main
/// thread when `settings.redis` is unset: the private redis-server it starts is tied to the
/// thread that starts it (see `store::redis::child`).
pub fn run(settings: Settings, registry: Registry) -> Result<(), StartError> {
    settings.validate()?;
    let access = AccessTable::load(
        settings.access_file.as_deref(),
        settings.auth_token.as_deref(),
        &registry,
    )?;
    let access_counters = Arc::new(AccessCounters::default());
    access_counters.principals.set(access.len() as u64);
    if settings.access_file.is_some() {
        info!(
            principals = access.len(),
            "access file read: a token no entry holds is refused"
        );
    }
    let (access_tx, access_rx) = watch::channel(Arc::new(access));
    // Signal handlers go in first: a SIGTERM during start-up must drain, not kill.
    let mut signals = Signals::install()?;
    let mut redis_child = None;
    let redis_url = match &settings.redis {
        Some(url) => url.clone(),
        None => {
            let child = RedisChild::start()?;
            info!(
                port = child.port,
                pid = child.pid(),
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
        access: access_counters.clone(),
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
            access: access_rx.clone(),
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

    loop {
        match signals.next() {
            Asked::Stop(signal) => {
                info!(signal, drain_timeout = ?settings.drain_timeout, "shutting down: no new connections, finishing requests in flight");
                break;
            }
            // Views and settings are not reloaded yet (the reload issue): only the access file.
            Asked::Reload(signal) => match settings.access_file.as_deref() {
                Some(path) => {
                    reload_access(path, &settings, &registry, &access_tx, &access_counters)
                }
                None => warn!(
                    signal,
                    "reload is not supported yet: serving on with the configuration read at start"
                ),
            },
            Asked::Nothing(signal) => warn!(
                signal,
                "this signal has no meaning for featureproxy: ignored, serving on"
            ),
        }
    }
    let _ = stop_tx.send(true);
    for t in threads {
        let _ = t.join();
    }
    drop(redis_child);
    info!("stopped");
    Ok(())
}

/// Reads the access file again and, if it is valid as a whole, puts it in force: new connections
/// are checked against it at once, open ones at their next request. An invalid file changes
/// nothing; the log says why and a counter counts it.
fn reload_access(
    path: &std::path::Path,
    settings: &Settings,
    registry: &Registry,
    access: &watch::Sender<Arc<AccessTable>>,
    counters: &AccessCounters,
) {
    match AccessTable::load(Some(path), settings.auth_token.as_deref(), registry) {
        Ok(table) => {
            let principals = table.len();
            access.send_replace(Arc::new(table));
            counters.applied.inc();
            counters.principals.set(principals as u64);
            info!(
                principals,
                "access file reloaded (SIGHUP): new connections use it now, open ones from their next request"
            );
        }
        Err(e) => {
            counters.refused.inc();
            warn!(error = %e, "access file refused on SIGHUP: nothing changed, the credentials in force stay");
        }
    }
}

/// What a caught signal asks of the proxy. Every signal whose default action ends the process is
/// either caught here or left to its default on purpose; README.md, "Signals", says which and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// SIGTERM, SIGINT: no new connections, finish the requests in flight, exit 0.
    Stop(&'static str),
    /// SIGHUP: read the configuration again (not built yet: logged, and the proxy serves on).
    Reload(&'static str),
    /// SIGUSR1, SIGUSR2: no meaning; caught so that a stray one (log rotation tools send them to
    /// daemons) is logged instead of killing the proxy.
    Nothing(&'static str),
}

/// The signals caught, each with its name and what it asks. A signal given a meaning later is one
/// more row here and one more arm where `run` matches on [`Asked`].
fn caught() -> [(tokio::signal::unix::SignalKind, Asked); 5] {
    use tokio::signal::unix::SignalKind;
    [
        (SignalKind::terminate(), Asked::Stop("SIGTERM")),
        (SignalKind::interrupt(), Asked::Stop("SIGINT")),
        (SignalKind::hangup(), Asked::Reload("SIGHUP")),
        (SignalKind::user_defined1(), Asked::Nothing("SIGUSR1")),
        (SignalKind::user_defined2(), Asked::Nothing("SIGUSR2")),
    ]
}

/// The caught signals, received on the main thread. From `install` on, each of them is queued
/// for [`Signals::next`] instead of taking its default action, for the rest of the process's life
/// (during the drain too, when nothing reads them any more: they are then ignored).
struct Signals {
    rt: tokio::runtime::Runtime,
    streams: Vec<(tokio::signal::unix::Signal, Asked)>,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let streams = rt.block_on(async {
            caught()
                .into_iter()
                .map(|(kind, asked)| Ok((tokio::signal::unix::signal(kind)?, asked)))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        Ok(Signals { rt, streams })
    }

    /// Waits for the next caught signal (one that arrived before this call is returned at once;
    /// several of the same kind that arrived together count once).
    fn next(&mut self) -> Asked {
        let streams = &mut self.streams;
        self.rt.block_on(std::future::poll_fn(|cx| {
            for (stream, asked) in streams.iter_mut() {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*asked);
                }
            }
            std::task::Poll::Pending
        }))
    }
}
