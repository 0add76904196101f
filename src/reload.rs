//! Reloading without a restart (SIGHUP, or `POST /admin/reload` on the stats port): the config
//! file given at start (its views), the access file, and the TLS port's certificate, key and
//! client CA.
//!
//! Everything is read and checked first, as `featureproxy check` does, plus the rules of a
//! change (`config::changes`: a packed view's features change only with its version; `[server]`
//! settings need a restart). Then all of it is put in force, or none of it: a bad file changes
//! nothing, and the answer, a log line and a counter say why. A good one reaches every shard
//! between two of its turns (`Swap`), and the reload answers only once every shard has it.
//! Requests in flight finish on the registry they started with.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::access::{AccessError, AccessTable};
use crate::config::changes::Changes;
use crate::config::registry::Registry;
use crate::config::settings::Settings;
use crate::config::ConfigFile;
use crate::serving::tls::{server_config, TlsSetupError};
use crate::telemetry::counters::ReloadCounters;

/// How long a reload waits for every shard to take the new registry.
const SHARD_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {}", .problems.join("; "))]
    Refused { path: String, problems: Vec<String> },
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("a shard did not take the new registry within {0:?}; the reload may be applied on some shards only: reload again")]
    ShardTimeout(Duration),
    #[error("another reload is under way; try again when it is done")]
    Busy,
}

/// A new registry for one shard, put in force between two of its turns; `done` is told once it
/// is.
pub struct Swap {
    pub registry: Arc<Registry>,
    /// Drop the shard's hot cache (a view removed, re-versioned, or given a shorter TTL).
    pub flush_cache: bool,
    pub done: std::sync::mpsc::Sender<()>,
}

/// The access table and TLS configuration, as read from their files.
pub struct Loaded {
    pub access: AccessTable,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Reads and checks the access file and the TLS files the settings name, against `registry`.
pub fn load(settings: &Settings, registry: &Registry) -> Result<Loaded, ReloadError> {
    let access = AccessTable::load(
        settings.access_file.as_deref(),
        settings.auth_token.as_deref(),
        registry,
    )?;
    let tls = settings.tls.as_ref().map(server_config).transpose()?;
    Ok(Loaded { access, tls })
}

/// The config file a reload reads again, and its `[server]` table as it was at start (what a
/// reload compares against: flags given at start override the file, and are not a change).
pub struct ConfigSource {
    pub path: PathBuf,
    pub server_table: toml::Table,
}

impl ConfigSource {
    /// The file at `path`, whose text was `text` at start.
    pub fn new(path: impl Into<PathBuf>, text: &str) -> ConfigSource {
        ConfigSource {
            path: path.into(),
            server_table: server_table(text),
        }
    }
}

/// The `[server]` table of config text (empty when absent or unreadable).
fn server_table(text: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("server"))
        .and_then(|v| v.as_table().cloned())
        .unwrap_or_default()
}

/// What a reload put in force.
#[derive(Debug, Clone)]
pub struct Report {
    pub generation: u64,
    pub changes: Changes,
}

/// Everything in force that a reload replaces, and where the shards take it from.
pub struct Reloader {
    source: Option<ConfigSource>,
    settings: Arc<Settings>,
    registry: RwLock<Arc<Registry>>,
    access: watch::Sender<Arc<AccessTable>>,
    tls: Option<watch::Sender<Arc<rustls::ServerConfig>>>,
    swaps: Vec<mpsc::UnboundedSender<Swap>>,
    pub counters: Arc<ReloadCounters>,
    /// One reload at a time.
    busy: Mutex<()>,
}

impl Reloader {
    /// What was loaded at start, in force; `swaps` reach the shards.
    pub fn new(
        source: Option<ConfigSource>,
        settings: Arc<Settings>,
        registry: Arc<Registry>,
        loaded: Loaded,
        swaps: Vec<mpsc::UnboundedSender<Swap>>,
    ) -> Reloader {
        let counters = Arc::new(ReloadCounters::default());
        counters.principals.set(loaded.access.len() as u64);
        Reloader {
            source,
            settings,
            registry: RwLock::new(registry),
            access: watch::channel(Arc::new(loaded.access)).0,
            tls: loaded.tls.map(|c| watch::channel(c).0),
            swaps,
            counters,
            busy: Mutex::new(()),
        }
    }

    /// The registry in force (for the stats endpoint; shards hold their own).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where connections take the access table from.
    pub fn access(&self) -> watch::Receiver<Arc<AccessTable>> {
        self.access.subscribe()
    }

    /// Where a shard's TLS port takes its configuration from.
    pub fn tls(&self) -> Option<watch::Receiver<Arc<rustls::ServerConfig>>> {
        self.tls.as_ref().map(watch::Sender::subscribe)
    }

    /// Reads everything again and puts it in force, or nothing; `trigger` names what asked, for
    /// the log. Counted, logged, and kept for the stats endpoint either way.
    pub fn reload(&self, trigger: &str) -> Result<Report, ReloadError> {
        let Ok(_one) = self.busy.try_lock() else {
            return Err(ReloadError::Busy);
        };
        let c = &self.counters;
        c.last_unix_ms.set(crate::reading::freshness::now_ms());
        match self.try_reload() {
            Ok(changes) => {
                c.applied.inc();
                c.generation.inc();
                c.last_ok.store(true, Relaxed);
                c.last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                let generation = c.generation.get();
                info!(
                    trigger,
                    generation,
                    changes = %changes.summary(),
                    "reloaded: new requests use it now, those in flight finish as they began"
                );
                Ok(Report {
                    generation,
                    changes,
                })
            }
            Err(e) => {
                c.refused.inc();
                c.last_ok.store(false, Relaxed);
                *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                warn!(trigger, error = %e, "reload refused: nothing changed, what was in force stays");
                Err(e)
            }
        }
    }

    fn try_reload(&self) -> Result<Changes, ReloadError> {
        let older = self.registry();
        let (registry, changes) = match &self.source {
            Some(source) => {
                let (registry, changes) = self.read_registry(source, &older)?;
                (Arc::new(registry), changes)
            }
            None => (older, Changes::default()),
        };
        let mut loaded = load(&self.settings, &registry)?;
        loaded.access.keep_counts(&self.access.borrow());
        let principals = loaded.access.len();

        // Grants first: they already know the new ids, which a request can only name once the
        // registry below is in force.
        self.access.send_replace(Arc::new(loaded.access));
        if let (Some(tx), Some(config)) = (&self.tls, loaded.tls) {
            tx.send_replace(config);
        }
        let (done, acks) = std::sync::mpsc::channel();
        for shard in &self.swaps {
            let _ = shard.send(Swap {
                registry: registry.clone(),
                flush_cache: changes.flush_cache,
                done: done.clone(),
            });
        }
        for _ in &self.swaps {
            acks.recv_timeout(SHARD_ACK_TIMEOUT)
                .map_err(|_| ReloadError::ShardTimeout(SHARD_ACK_TIMEOUT))?;
        }
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
        self.counters.principals.set(principals as u64);
        Ok(changes)
    }

    /// The config file's views, numbered against `older`, after every check.
    fn read_registry(
        &self,
        source: &ConfigSource,
        older: &Registry,
    ) -> Result<(Registry, Changes), ReloadError> {
        let path = source.path.display().to_string();
        let text = std::fs::read_to_string(&source.path)
            .map_err(|e| ReloadError::Config(format!("cannot read the config file {path}: {e}")))?;
        let file =
            ConfigFile::from_toml(&text, &path).map_err(|e| ReloadError::Config(e.to_string()))?;
        let mut problems = restart_needed(&source.server_table, &server_table(&text));
        let renumbered = file.registry.renumbered(older);
        match renumbered {
            Ok(r) if problems.is_empty() => Ok(r),
            Ok(_) => Err(ReloadError::Refused { path, problems }),
            Err(more) => {
                problems.extend(more);
                Err(ReloadError::Refused { path, problems })
            }
        }
    }
}

/// The `[server]` settings that differ between the table at start and now: none of them is
/// reloaded (listeners, shards, Redis and the rest are built at start), so each is named.
fn restart_needed(at_start: &toml::Table, now: &toml::Table) -> Vec<String> {
    let mut keys: Vec<&String> = at_start.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| at_start.get(*k) != now.get(*k))
        .map(|k| {
            format!("[server] {k} changed: it needs a restart (a reload changes views, and re-reads the access and TLS files; put {k} back to reload)")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_server_setting_is_named_as_needing_a_restart() {
        let start = server_table("[server]\nshards = 2\nlisten = \"127.0.0.1:7070\"\n");
        let now =
            server_table("[server]\nshards = 4\nlisten = \"127.0.0.1:7070\"\nmax_batch = 9\n");
        let problems = restart_needed(&start, &now);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("[server] max_batch changed: it needs a restart"));
        assert!(problems[1].starts_with("[server] shards changed"));
        assert!(restart_needed(&start, &start).is_empty());
        // Tables nested in [server] compare whole.
        let tls = server_table("[server.tls]\nlisten = \"127.0.0.1:1\"\n");
        let moved = server_table("[server.tls]\nlisten = \"127.0.0.1:2\"\n");
        assert_eq!(restart_needed(&tls, &moved).len(), 1);
    }
}
