//! Starting and stopping the whole proxy: registry, shards, stats endpoint, signals.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::registry::Registry;
use crate::config::registry::MAX_VIEW_IDS;
use crate::config::settings::{Settings, SettingsError};
use crate::ops;
use crate::ops::Sources;
use crate::reading::freshness::now_ms;
use crate::reload::{self, ConfigSource, ReloadError, Reloader};
use crate::serving::accept::{claim_port, reuseport_listener};
use crate::shard::{self, ShardSpec, TlsSpec};
use crate::store::redis::child::{RedisChild, RedisChildError};
use crate::store::redis::tls::{RedisTls, RedisTlsError};
use crate::store::redis::{self, url};
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms;
use crate::telemetry::value_window::ValueWindows;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid setting {0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Redis(#[from] RedisChildError),
    #[error(transparent)]
    Reloadable(#[from] ReloadError),
    #[error(transparent)]
    RedisTls(#[from] RedisTlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: another process already listens there; stop it or choose another address ({setting}); the shards share the port only among themselves")]
    PortTaken { addr: String, setting: &'static str },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns. Must be called on the main
/// thread when `settings.redis` is unset: the private redis-server it starts is tied to the
/// thread that starts it (see `store::redis::child`).
///
/// `source` is the config file a reload reads again (SIGHUP, `POST /admin/reload`); without it a
/// reload re-reads only the access and TLS files.
pub fn run(
    settings: Settings,
    registry: Registry,
    source: Option<ConfigSource>,
) -> Result<(), StartError> {
    settings.validate()?;
    let loaded = reload::load(&settings, &registry)?;
    if settings.access_file.is_some() {
        info!(
            principals = loaded.access.len(),
            "access file read: a token no entry holds is refused"
        );
    }
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
    let redis_tls = redis_tls(&redis_url, &settings)?;
    let settings = Arc::new(settings);
    let registry = Arc::new(registry);
    info!(views = %registry.names(), "registry loaded");
    let (swaps, swapped): (Vec<_>, Vec<_>) = (0..settings.shards)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    let reloader = Arc::new(Reloader::new(
        source,
        settings.clone(),
        registry.clone(),
        loaded,
        swaps,
    ));

    // Per-view counters have a slot for every id a reload may give.
    let stats: Vec<Arc<ShardStats>> = (0..settings.shards)
        .map(|i| Arc::new(ShardStats::new(i as u16, MAX_VIEW_IDS)))
        .collect();
    let (intervals, aggregate) = histograms::aggregator(
        settings.shards,
        registry.max_id() as usize,
        ValueWindows::new(settings.value_window, settings.value_metrics_max_features),
    );
    let sources = Sources {
        shards: stats.clone(),
        histograms: aggregate,
        started_unix_s: now_ms() / 1000,
        reloads: reloader.counters.clone(),
        access_table: reloader.access(),
        reloader: reloader.clone(),
    };
    // The stats endpoint is up before the protocol port, so whoever sees the port open can
    // watch the proxy.
    let stats_addr =
        ops::start(settings.stats_listen, sources).map_err(|source| StartError::Listen {
            addr: settings.stats_listen.to_string(),
            source,
        })?;

    let plaintext = settings.tls.as_ref().is_none_or(|t| t.plaintext);
    let mut plain = match plaintext {
        true => Some(Port::open(
            settings.listen,
            "`listen` in [server], or --listen",
            settings.shards,
        )?),
        false => None,
    };
    let mut tls = match &settings.tls {
        Some(t) => Some(Port::open(
            t.listen,
            "`listen` in [server.tls]",
            settings.shards,
        )?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let (peers, receivers) = crate::reading::coherence::channels(settings.shards);
    let mut plain_listeners = plain
        .as_mut()
        .map(|p| std::mem::take(&mut p.listeners))
        .unwrap_or_default()
        .into_iter();
    let mut tls_listeners = tls
        .as_mut()
        .map(|p| std::mem::take(&mut p.listeners))
        .unwrap_or_default()
        .into_iter();
    let mut threads = Vec::new();
    let per_shard = peers.into_iter().zip(receivers).zip(swapped);
    for (i, ((peers, invalidations), swaps)) in per_shard.enumerate() {
        let tls = match (reloader.tls(), tls_listeners.next(), &settings.tls) {
            (Some(config), Some(listener), Some(t)) => Some(TlsSpec {
                listener,
                config,
                handshake_timeout: t.handshake_timeout,
            }),
            _ => None,
        };
        let spec = ShardSpec {
            shard: i as u16,
            listener: plain_listeners.next(),
            tls,
            settings: settings.clone(),
            registry: registry.clone(),
            stats: stats[i].clone(),
            redis_url: redis_url.clone(),
            redis_tls: redis_tls.clone(),
            shutdown: stop_rx.clone(),
            access: reloader.access(),
            peers,
            invalidations,
            intervals: intervals.clone(),
            swaps,
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
        listen = plain.as_ref().map_or("off ([server.tls] plaintext = false)".to_string(), |p| p.addr.to_string()),
        tls_listen = tls.as_ref().map_or("off".to_string(), |p| p.addr.to_string()),
        stats = %stats_addr,
        shards = settings.shards,
        redis = %url::redacted(&redis_url),
        redis_tls = redis_tls.is_some(),
        "featureproxy serving"
    );

    loop {
        match signals.next() {
            Asked::Stop(signal) => {
                info!(signal, drain_timeout = ?settings.drain_timeout, "shutting down: no new connections, finishing requests in flight");
                break;
            }
            // Logged and counted by the reloader, applied or refused.
            Asked::Reload(signal) => {
                let _ = reloader.reload(signal);
            }
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

/// TLS to Redis for a `rediss://` URL: the settings' files read, and one handshake tried so that
/// a CA or name that does not fit stops the start with the reason. None for a plaintext URL.
fn redis_tls(url: &str, settings: &Settings) -> Result<Option<Arc<RedisTls>>, StartError> {
    if !url.starts_with("rediss://") && !url.starts_with("rediss-cluster://") {
        return Ok(None);
    }
    let tls = RedisTls::load(&settings.redis_tls.clone().unwrap_or_default())?;
    if let Some(addr) = redis::first_address(url) {
        tls.probe(&addr)?;
    }
    Ok(Some(Arc::new(tls)))
}

/// A port every shard listens on (SO_REUSEPORT): its address, and one listener per shard.
struct Port {
    addr: std::net::SocketAddr,
    listeners: Vec<std::net::TcpListener>,
}

impl Port {
    /// Claims `addr` (it must be ours alone; port 0 settles one), then opens every shard's
    /// listener on it. `setting` names where the address comes from, for the error.
    fn open(
        addr: std::net::SocketAddr,
        setting: &'static str,
        shards: usize,
    ) -> Result<Port, StartError> {
        let addr = claim_port(addr).map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => StartError::PortTaken {
                addr: addr.to_string(),
                setting,
            },
            _ => StartError::Listen {
                addr: addr.to_string(),
                source,
            },
        })?;
        let listeners = (0..shards)
            .map(|_| {
                reuseport_listener(addr).map_err(|source| StartError::Listen {
                    addr: addr.to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Port { addr, listeners })
    }
}

/// What a caught signal asks of the proxy. Every signal whose default action ends the process is
/// either caught here or left to its default on purpose; README.md, "Signals", says which and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// SIGTERM, SIGINT: no new connections, finish the requests in flight, exit 0.
    Stop(&'static str),
    /// SIGHUP: read the configuration again (see `reload`).
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
