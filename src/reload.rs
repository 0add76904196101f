//! What SIGHUP reloads without a restart, and how: the access file and the TLS port's
//! certificate, key and client CA. All of it is read and checked first; only if every part is
//! valid is any of it put in force (each shard takes it from a `watch` channel: new connections
//! at once, open ones at their next request). A file that is unreadable or invalid changes
//! nothing: the log says why, a counter counts it, and what was in force stays.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::access::{AccessError, AccessTable};
use crate::config::registry::Registry;
use crate::config::settings::Settings;
use crate::serving::tls::{server_config, TlsSetupError};
use crate::telemetry::counters::ReloadCounters;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Everything reloadable, as read from the files.
pub struct Loaded {
    pub access: AccessTable,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Reads and checks every reloadable file the settings name.
pub fn load(settings: &Settings, registry: &Registry) -> Result<Loaded, ReloadError> {
    let access = AccessTable::load(
        settings.access_file.as_deref(),
        settings.auth_token.as_deref(),
        registry,
    )?;
    let tls = settings.tls.as_ref().map(server_config).transpose()?;
    Ok(Loaded { access, tls })
}

/// Where the shards take what is in force from.
pub struct InForce {
    pub access: watch::Sender<Arc<AccessTable>>,
    pub tls: Option<watch::Sender<Arc<rustls::ServerConfig>>>,
    pub counters: Arc<ReloadCounters>,
}

impl InForce {
    /// Puts what was loaded at start in force.
    pub fn new(loaded: Loaded) -> InForce {
        let counters = Arc::new(ReloadCounters::default());
        counters.principals.set(loaded.access.len() as u64);
        InForce {
            access: watch::channel(Arc::new(loaded.access)).0,
            tls: loaded.tls.map(|c| watch::channel(c).0),
            counters,
        }
    }

    /// Reads every reloadable file again and puts them in force, or none of them.
    pub fn reload(&self, settings: &Settings, registry: &Registry, signal: &str) {
        let c = &self.counters;
        c.last_unix_ms.set(crate::reading::freshness::now_ms());
        let loaded = match load(settings, registry) {
            Ok(l) => l,
            Err(e) => {
                c.refused.inc();
                c.last_ok.store(false, Relaxed);
                *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                warn!(signal, error = %e, "reload refused: nothing changed, the credentials and certificates in force stay");
                return;
            }
        };
        let mut access = loaded.access;
        access.keep_counts(&self.access.borrow());
        let principals = access.len();
        self.access.send_replace(Arc::new(access));
        if let (Some(tx), Some(config)) = (&self.tls, loaded.tls) {
            tx.send_replace(config);
        }
        c.applied.inc();
        c.principals.set(principals as u64);
        c.generation.inc();
        c.last_ok.store(true, Relaxed);
        c.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        info!(
            signal,
            principals,
            tls = self.tls.is_some(),
            "reloaded the access file and TLS files: new connections use them now, open ones from their next request"
        );
    }
}
