//! Server settings: the `[server]` table of the registry file, overridden by command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::breaker::BreakerConfig;

/// Everything a running proxy needs besides the registry.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub stats_listen: SocketAddr,
    /// `redis://host:port`; None: start a private redis-server child.
    pub redis: Option<String>,
    pub shards: usize,
    pub max_frame: u32,
    pub max_batch: u32,
    /// Deadline of a GET that sets none; also the Redis read timeout.
    pub default_deadline: Duration,
    /// How long a PUT may wait for Redis to acknowledge its writes.
    pub write_timeout: Duration,
    pub max_connections_per_shard: usize,
    /// Past this many requests in flight on one connection, the proxy stops reading from it.
    pub max_inflight_per_connection: usize,
    /// Most keys in one MGET.
    pub redis_batch_cap: usize,
    /// Hot-cache memory for the whole process (split evenly across shards); 0 turns it off.
    pub hot_cache_bytes: usize,
    /// Redis client-side caching (RESP3 tracking): writes made behind the proxy's back drop the
    /// cached rows at once instead of after the view's hot-cache TTL.
    pub client_tracking: bool,
    /// A connection must HELLO with this token first when set.
    pub auth_token: Option<String>,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// A frame that stays incomplete this long closes its connection.
    pub frame_timeout: Duration,
    pub breaker: BreakerConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:7070".parse().expect("literal address"),
            stats_listen: "127.0.0.1:7071".parse().expect("literal address"),
            redis: None,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_frame: featureproxy_protocol::DEFAULT_MAX_FRAME,
            max_batch: featureproxy_protocol::DEFAULT_MAX_BATCH,
            default_deadline: Duration::from_millis(50),
            write_timeout: Duration::from_secs(1),
            max_connections_per_shard: 10_000,
            max_inflight_per_connection: 128,
            redis_batch_cap: 1024,
            hot_cache_bytes: 64 * 1024 * 1024,
            client_tracking: true,
            auth_token: None,
            drain_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("[server] {field}: {message}")]
pub struct SettingsError {
    pub field: &'static str,
    pub message: String,
}

/// The optional `[server]` table; every field may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    stats_listen: Option<String>,
    redis: Option<String>,
    shards: Option<usize>,
    max_frame: Option<u32>,
    max_batch: Option<u32>,
    default_deadline: Option<String>,
    write_timeout: Option<String>,
    max_connections_per_shard: Option<usize>,
    max_inflight_per_connection: Option<usize>,
    redis_batch_cap: Option<usize>,
    hot_cache_bytes: Option<usize>,
    client_tracking: Option<bool>,
    auth_token: Option<String>,
    drain_timeout: Option<String>,
    frame_timeout: Option<String>,
    breaker_window: Option<String>,
    breaker_min_failures: Option<u32>,
    breaker_failure_ratio: Option<f64>,
    breaker_reset_timeout: Option<String>,
    breaker_probes: Option<u32>,
}

#[derive(Deserialize)]
struct FileWithServer {
    #[serde(default)]
    server: Option<RawServer>,
}

fn bad(field: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        message: message.into(),
    }
}

fn duration(field: &'static str, text: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(text).map_err(|e| {
        bad(
            field,
            format!("{text:?} is not a duration ({e}); write e.g. \"50ms\""),
        )
    })
}

pub fn parse_addr(field: &'static str, text: &str) -> Result<SocketAddr, SettingsError> {
    text.parse().map_err(|_| {
        bad(
            field,
            format!("{text:?} is not an IP:port address, e.g. 127.0.0.1:7070"),
        )
    })
}

impl Settings {
    /// Reads the `[server]` table of a registry file's text (defaults where absent).
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        let file: FileWithServer =
            toml::from_str(text).map_err(|e| bad("server", e.message().to_string()))?;
        let raw = file.server.unwrap_or_default();
        let mut s = Settings::default();
        if let Some(v) = raw.listen {
            s.listen = parse_addr("listen", &v)?;
        }
        if let Some(v) = raw.stats_listen {
            s.stats_listen = parse_addr("stats_listen", &v)?;
        }
        s.redis = raw.redis.or(s.redis);
        s.shards = raw.shards.unwrap_or(s.shards);
        s.max_frame = raw.max_frame.unwrap_or(s.max_frame);
        s.max_batch = raw.max_batch.unwrap_or(s.max_batch);
        if let Some(v) = raw.default_deadline {
            s.default_deadline = duration("default_deadline", &v)?;
        }
        if let Some(v) = raw.write_timeout {
            s.write_timeout = duration("write_timeout", &v)?;
        }
        s.max_connections_per_shard = raw
            .max_connections_per_shard
            .unwrap_or(s.max_connections_per_shard);
        s.max_inflight_per_connection = raw
            .max_inflight_per_connection
            .unwrap_or(s.max_inflight_per_connection);
        s.redis_batch_cap = raw.redis_batch_cap.unwrap_or(s.redis_batch_cap);
        s.hot_cache_bytes = raw.hot_cache_bytes.unwrap_or(s.hot_cache_bytes);
        s.client_tracking = raw.client_tracking.unwrap_or(s.client_tracking);
        s.auth_token = raw.auth_token.or(s.auth_token);
        if let Some(v) = raw.drain_timeout {
            s.drain_timeout = duration("drain_timeout", &v)?;
        }
        if let Some(v) = raw.frame_timeout {
            s.frame_timeout = duration("frame_timeout", &v)?;
        }
        if let Some(v) = raw.breaker_window {
            s.breaker.window = duration("breaker_window", &v)?;
        }
        s.breaker.min_failures = raw.breaker_min_failures.unwrap_or(s.breaker.min_failures);
        s.breaker.failure_ratio = raw.breaker_failure_ratio.unwrap_or(s.breaker.failure_ratio);
        if let Some(v) = raw.breaker_reset_timeout {
            s.breaker.reset_timeout = duration("breaker_reset_timeout", &v)?;
        }
        s.breaker.probes = raw.breaker_probes.unwrap_or(s.breaker.probes);
        Ok(s)
    }

    /// Checks the settings make sense together; names the field that does not.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.shards == 0 || self.shards > 1024 {
            return Err(bad(
                "shards",
                format!("{} shards; use 1 to 1024", self.shards),
            ));
        }
        if self.max_frame < 1024 {
            return Err(bad(
                "max_frame",
                format!("{} bytes is too small; use at least 1024", self.max_frame),
            ));
        }
        if self.max_batch == 0 {
            return Err(bad("max_batch", "must be at least 1"));
        }
        if self.default_deadline.is_zero() {
            return Err(bad("default_deadline", "must be more than 0"));
        }
        if self.max_inflight_per_connection == 0 || self.max_connections_per_shard == 0 {
            return Err(bad(
                "max_inflight_per_connection",
                "limits must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_ratio) {
            return Err(bad("breaker_failure_ratio", "must be between 0 and 1"));
        }
        if self.breaker.probes == 0 {
            return Err(bad("breaker_probes", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_table_overrides_defaults() {
        let s = Settings::from_toml(
            "[server]\nlisten = \"0.0.0.0:9000\"\ndefault_deadline = \"20ms\"\nbreaker_probes = 5\n",
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.default_deadline, Duration::from_millis(20));
        assert_eq!(s.breaker.probes, 5);
        assert_eq!(s.max_batch, 4096);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Settings::from_toml("[server]\ndefault_deadline = \"soon\"\n").unwrap_err();
        assert_eq!(e.field, "default_deadline");
        let e = Settings::from_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(e.field, "listen");
    }
}
