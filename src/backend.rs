//! The Redis backend behind a narrow interface: a batch of keys in, values or a failure out.
//!
//! The coalescer and the PUT path only see [`Backend::read`] and [`Backend::write`], so a Redis
//! Cluster backend (one MGET per hash slot, per node) or read replicas can replace this one
//! without touching them.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use fred::types::{Expiration, Key};

/// How a batch failed. The coalescer serves DEGRADED defaults on either; the breaker counts both.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
}

impl BackendError {
    fn from_fred(e: fred::error::Error, timeout: Duration) -> BackendError {
        match e.kind() {
            fred::error::ErrorKind::Timeout => BackendError::Timeout(timeout),
            _ => BackendError::Unavailable(e.to_string()),
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Timeout(_) => "timeout",
            BackendError::Unavailable(_) => "unavailable",
        }
    }
}

/// One shard's connection to Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Backend {
    client: Client,
    command_timeout: Duration,
}

impl Backend {
    /// Builds the client and starts connecting in the background, on the current runtime (so the
    /// connection lives on this shard's thread). Does not wait: a proxy whose Redis is down still
    /// starts and serves defaults, and reconnects on its own.
    pub fn start(url: &str, command_timeout: Duration) -> Result<Backend, BackendError> {
        let config = Config::from_url(url)
            .map_err(|e| BackendError::Unavailable(format!("bad Redis URL {url:?}: {e}")))?;
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
                // Bounded queue while disconnected (fred issue #340): overflow fails fast.
                c.max_command_buffer_len = 50_000;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(2)),
                    interval: Duration::from_millis(500),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        client.connect();
        Ok(Backend {
            client,
            command_timeout,
        })
    }

    /// Waits until the first connection is up (for readiness), or fails.
    pub async fn wait_connected(&self) -> Result<(), BackendError> {
        self.client
            .wait_for_connect()
            .await
            .map_err(|e| BackendError::from_fred(e, self.command_timeout))
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Reads a batch of keys with one MGET, giving up after `timeout`. Values are slices of fred's read buffer (no copy);
    /// `None` where the key does not exist.
    pub async fn read(
        &self,
        keys: &[Bytes],
        timeout: Duration,
    ) -> Result<Vec<Option<Bytes>>, BackendError> {
        // Cloning a `Bytes` bumps a reference count; the key bytes are not copied.
        let keys: Vec<Key> = keys.iter().cloned().map(Key::from).collect();
        let opts = Options {
            fail_fast: true,
            timeout: Some(timeout),
            ..Default::default()
        };
        self.client
            .with_options(&opts)
            .mget::<Vec<Option<Bytes>>, _>(keys)
            .await
            .map_err(|e| BackendError::from_fred(e, timeout))
    }

    /// Writes every `(key, value)` with expiry `ttl`, all queued at once so they leave in one
    /// write. Ok only once Redis acknowledged every one.
    pub async fn write(
        &self,
        items: Vec<(Bytes, Bytes)>,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let px = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let opts = Options {
            fail_fast: true,
            timeout: Some(timeout),
            ..Default::default()
        };
        let client = self.client.with_options(&opts);
        let writes = items.into_iter().map(|(k, v)| {
            client.set::<(), _, _>(Key::from(k), v, Some(Expiration::PX(px)), None, false)
        });
        for r in futures::future::join_all(writes).await {
            r.map_err(|e| BackendError::from_fred(e, timeout))?;
        }
        Ok(())
    }

    /// Drops and reopens the connection: used when the breaker opens on a server that stopped
    /// answering, which fred's own checks miss under steady traffic.
    pub async fn reconnect(&self) {
        let _ = self.client.force_reconnection().await;
    }

    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}
