//! Server settings: the `[server]` table of the config file, overridden by command-line flags.
//!
//! Each setting is declared once: its field below (with what it means), its default in
//! [`defaults`] and, for the few that need it, a check in [`Settings::validate`]. The TOML keys
//! are the field names; durations are written as text ("50ms", "2s").

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::tls::{ListenerTls, RedisTls};
use crate::store::breaker::BreakerConfig;
use crate::store::redis::cluster::{self, ReadFrom};

/// The default of every setting, by the setting's name.
pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    /// Default: `127.0.0.1:7070`, loopback only; listen on `0.0.0.0:7070` to serve other hosts.
    pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7070);
    /// Default: `127.0.0.1:7071`.
    pub const STATS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7071);
    /// Default: one shard per core the process may run on.
    pub fn shards() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    /// Default: 4 MiB.
    pub const MAX_FRAME: u32 = featureproxy_protocol::DEFAULT_MAX_FRAME;
    /// Default: 4096 entities per GET or PUT.
    pub const MAX_BATCH: u32 = featureproxy_protocol::DEFAULT_MAX_BATCH;
    /// Default: 50 ms.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);
    /// Default: 1 s.
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default: 10,000 connections per shard.
    pub const MAX_CONNECTIONS_PER_SHARD: usize = 10_000;
    /// Default: 128 requests in flight per connection.
    pub const MAX_INFLIGHT_PER_CONNECTION: usize = 128;
    /// Default: 1024 keys per read batch.
    pub const REDIS_BATCH_CAP: usize = 1024;
    /// Default: 64 MiB for the whole process.
    pub const HOT_CACHE_BYTES: usize = 64 * 1024 * 1024;
    /// Default: on.
    pub const CLIENT_TRACKING: bool = true;
    /// Default: 5 s.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default: 10 s.
    pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default: 10 ms, a fifth of the default GET deadline, so that a request that waited that
    /// long still has most of its budget (benches/overload.sh measures the effect).
    pub const SHED_QUEUE_DELAY: Duration = Duration::from_millis(10);
    /// Default: 10 s.
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
    /// Default: 5 failures.
    pub const BREAKER_MIN_FAILURES: u32 = 5;
    /// Default: half of the window's calls.
    pub const BREAKER_FAILURE_RATIO: f64 = 0.5;
    /// Default: 500 ms.
    pub const BREAKER_RESET_TIMEOUT: Duration = Duration::from_millis(500);
    /// Default: 3 probes.
    pub const BREAKER_PROBES: u32 = 3;
    /// Default: 10 minutes, as training-vs-serving checks usually look at; at the 1% default
    /// sample rate a view needs ~170 entities/s for the window to hold the 1,000 samples PSI
    /// is published from.
    pub const VALUE_WINDOW: Duration = Duration::from_secs(600);
    /// Default: 500 (view, feature) pairs, 2,500 series at five each: 10 views of 50 features.
    pub const VALUE_METRICS_MAX_FEATURES: usize = 500;
}

/// Everything a running proxy needs besides the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where inference servers connect (wire protocol v1).
    #[serde(deserialize_with = "addr")]
    pub listen: SocketAddr,
    /// Where operators scrape `/metrics`, read `/stats` and probe `/health` and `/ready`.
    #[serde(deserialize_with = "addr")]
    pub stats_listen: SocketAddr,
    /// `redis://host:port` (one server), or
    /// `redis-cluster://host:port?node=host:port&node=host:port` (a Redis Cluster, by seed
    /// nodes); None: start a private redis-server child.
    pub redis: Option<String>,
    /// On a Redis Cluster, where reads go: `primary`, or `replica_preferred` (a healthy replica
    /// of the slot, else its primary).
    pub read_from: ReadFrom,
    /// Shards: threads, each with its own runtime, listener, Redis connection and cache.
    pub shards: usize,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame: u32,
    /// Most entities in one GET or PUT.
    pub max_batch: u32,
    /// Deadline of a GET that sets none; also the Redis read timeout.
    #[serde(deserialize_with = "duration")]
    pub default_deadline: Duration,
    /// How long a PUT may wait for Redis to acknowledge its writes.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// Past this many open connections, a shard refuses new ones with OVERLOADED.
    pub max_connections_per_shard: usize,
    /// Past this many requests in flight on one connection, the proxy stops reading from it.
    pub max_inflight_per_connection: usize,
    /// Most keys in one read batch (one MGET).
    pub redis_batch_cap: usize,
    /// Hot-cache memory for the whole process (split evenly across shards); 0 turns it off.
    pub hot_cache_bytes: usize,
    /// Redis client-side caching (RESP3 tracking): writes made behind the proxy's back drop the
    /// cached rows at once instead of after the view's hot-cache TTL.
    pub client_tracking: bool,
    /// A connection must HELLO with this token first when set: the simple case of one
    /// principal (`auth_token`) that reads and writes every view.
    pub auth_token: Option<String>,
    /// Principals, their token hashes and the views each may read and write (see
    /// `config::access`); once given, access is denied by default. Re-read on SIGHUP.
    pub access_file: Option<std::path::PathBuf>,
    /// `[server.tls]`: a TLS port for clients (see `config::tls`). Unset: plaintext only.
    pub tls: Option<ListenerTls>,
    /// `[server.redis_tls]`: CA, client certificate and name for `rediss://` URLs (see
    /// `config::tls`). Unset with a `rediss://` URL: the system's roots, no client certificate.
    pub redis_tls: Option<RedisTls>,
    /// How long shutdown waits for requests in flight.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// A frame that stays incomplete this long after its first bytes closes its connection (a
    /// peer that sends a byte now and then does not restart it).
    #[serde(deserialize_with = "duration")]
    pub frame_timeout: Duration,
    /// While the requests waiting on a connection would take longer than this to serve, or
    /// while even the quickest GET that waited on Redis over the last 100 ms took longer than
    /// this (a queue stands in the shard; it stands on while the limit that follows turns GETs
    /// away in each 100 ms), the shard has as many waiting as it answers in half
    /// the default deadline and the connection has more than 16 in flight, its GETs are
    /// answered OVERLOADED instead of queueing (see `serving::overload`); "0s" never sheds.
    #[serde(deserialize_with = "duration")]
    pub shed_queue_delay: Duration,
    /// The circuit breaker counts failures over this sliding window.
    #[serde(deserialize_with = "duration")]
    pub breaker_window: Duration,
    /// It opens only with at least this many failures in the window...
    pub breaker_min_failures: u32,
    /// ...making up at least this share (0 to 1) of the window's calls.
    pub breaker_failure_ratio: f64,
    /// How long it stays open before probing.
    #[serde(deserialize_with = "duration")]
    pub breaker_reset_timeout: Duration,
    /// Probe calls allowed while half-open; all must succeed to close it.
    pub breaker_probes: u32,
    /// The sliding window served-value statistics and drift are computed over (cut into at
    /// most 60 slots of whole seconds).
    #[serde(deserialize_with = "duration")]
    pub value_window: Duration,
    /// Most (view, feature) pairs whose value metrics `/metrics` shows (in registry order), so
    /// that series stay bounded; `/stats` shows every feature.
    pub value_metrics_max_features: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: defaults::LISTEN,
            stats_listen: defaults::STATS_LISTEN,
            redis: None,
            read_from: ReadFrom::default(),
            shards: defaults::shards(),
            max_frame: defaults::MAX_FRAME,
            max_batch: defaults::MAX_BATCH,
            default_deadline: defaults::DEFAULT_DEADLINE,
            write_timeout: defaults::WRITE_TIMEOUT,
            max_connections_per_shard: defaults::MAX_CONNECTIONS_PER_SHARD,
            max_inflight_per_connection: defaults::MAX_INFLIGHT_PER_CONNECTION,
            redis_batch_cap: defaults::REDIS_BATCH_CAP,
            hot_cache_bytes: defaults::HOT_CACHE_BYTES,
            client_tracking: defaults::CLIENT_TRACKING,
            auth_token: None,
            access_file: None,
            tls: None,
            redis_tls: None,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            frame_timeout: defaults::FRAME_TIMEOUT,
            shed_queue_delay: defaults::SHED_QUEUE_DELAY,
            breaker_window: defaults::BREAKER_WINDOW,
            breaker_min_failures: defaults::BREAKER_MIN_FAILURES,
            breaker_failure_ratio: defaults::BREAKER_FAILURE_RATIO,
            breaker_reset_timeout: defaults::BREAKER_RESET_TIMEOUT,
            breaker_probes: defaults::BREAKER_PROBES,
            value_window: defaults::VALUE_WINDOW,
            value_metrics_max_features: defaults::VALUE_METRICS_MAX_FEATURES,
        }
    }
}

/// A setting that cannot be used, by its name.
#[derive(Debug, thiserror::Error)]
#[error("[server] {field}: {message}")]
pub struct SettingsError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        field: field.to_string(),
        message: message.into(),
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"50ms\""
        ))
    })
}

pub(crate) fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_addr(&text).map_err(serde::de::Error::custom)
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP:port address, e.g. 127.0.0.1:7070"))
}

impl Settings {
    /// Reads the `[server]` table of a config file's text (defaults where absent). A whole
    /// config file is read by [`crate::config::ConfigFile`]; this is its `[server]` part alone.
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        #[derive(Deserialize)]
        struct ServerOnly {
            #[serde(default)]
            server: Settings,
        }
        let file: ServerOnly = super::parse_toml(text).map_err(|e| e.into_settings_error())?;
        Ok(file.server)
    }

    /// Sets an address from a command-line flag; `flag` names it in the error.
    pub fn set_addr(target: &mut SocketAddr, flag: &str, text: &str) -> Result<(), SettingsError> {
        *target = parse_addr(text).map_err(|m| bad(flag, m))?;
        Ok(())
    }

    /// Makes the files the settings name (access file, TLS certificates and keys) relative to
    /// `folder`, the config file's, when they are relative.
    pub fn resolve_files(&mut self, folder: &std::path::Path) {
        if let Some(f) = &mut self.access_file {
            super::tls::resolve(f, folder);
        }
        if let Some(t) = &mut self.tls {
            t.resolve(folder);
        }
        if let Some(t) = &mut self.redis_tls {
            t.resolve(folder);
        }
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            window: self.breaker_window,
            min_failures: self.breaker_min_failures,
            failure_ratio: self.breaker_failure_ratio,
            reset_timeout: self.breaker_reset_timeout,
            probes: self.breaker_probes,
        }
    }

    /// Checks the settings make sense together; names the setting that does not.
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
        if self.max_inflight_per_connection == 0 {
            return Err(bad("max_inflight_per_connection", "must be at least 1"));
        }
        if self.max_connections_per_shard == 0 {
            return Err(bad("max_connections_per_shard", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.breaker_failure_ratio) {
            return Err(bad("breaker_failure_ratio", "must be between 0 and 1"));
        }
        if self.breaker_probes == 0 {
            return Err(bad("breaker_probes", "must be at least 1"));
        }
        if self.value_window < std::time::Duration::from_secs(1) {
            return Err(bad("value_window", "must be at least 1s"));
        }
        let tls_url = match self.redis.as_deref() {
            Some(url) => check_redis_scheme(url)?,
            None => false,
        };
        if let Some(t) = &self.redis_tls {
            if !tls_url {
                return Err(bad(
                    "redis_tls",
                    "is set but the Redis URL does not ask for TLS: write rediss:// (or rediss-cluster://) to reach Redis over TLS, or remove [server.redis_tls]",
                ));
            }
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(bad(
                    "redis_tls",
                    "cert_file and key_file go together: give both (a client certificate for Redis) or neither",
                ));
            }
        }
        if let Some(url) = self.redis.as_deref().filter(|u| cluster::is_cluster_url(u)) {
            cluster::seeds_of(url).map_err(|e| bad("redis", e.to_string()))?;
        } else if self.read_from != ReadFrom::Primary {
            return Err(bad(
                "read_from",
                "replica_preferred is for a Redis Cluster (redis = \"redis-cluster://...\"); a standalone Redis is read from the server given",
            ));
        }
        Ok(())
    }
}

/// Refuses a Redis URL whose scheme the proxy cannot use; true for one that asks for TLS.
fn check_redis_scheme(url: &str) -> Result<bool, SettingsError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme {
        "redis" | "redis-cluster" => Ok(false),
        "rediss" | "rediss-cluster" => Ok(true),
        _ => Err(bad(
            "redis",
            format!(
                "{:?} is not a Redis URL this proxy can use; write redis://[USER:PASSWORD@]HOST:PORT[/DB] or redis-cluster://HOST:PORT?node=HOST:PORT (rediss:// and rediss-cluster:// for TLS)",
                crate::store::redis::url::redacted(url)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_and_redis_tls_must_agree() {
        use crate::config::tls::RedisTls;
        let with = |url: &str, tls: Option<RedisTls>| Settings {
            redis: Some(url.to_string()),
            redis_tls: tls,
            ..Settings::default()
        };
        for url in [
            "redis://h:1",
            "redis://:pw@h:1/2",
            "redis-cluster://h:1?node=h:2",
            "rediss://:secret@redis.internal:6380",
            "rediss-cluster://10.0.0.1:6379?node=10.0.0.2:6379",
        ] {
            with(url, None).validate().unwrap();
        }
        with("rediss://h:1", Some(RedisTls::default()))
            .validate()
            .unwrap();
        // TLS settings for a plaintext URL: refused, never ignored.
        let e = with("redis://h:1", Some(RedisTls::default()))
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "redis_tls");
        assert!(e.message.contains("rediss://"), "{}", e.message);
        let half = RedisTls {
            cert_file: Some("proxy.crt".into()),
            ..RedisTls::default()
        };
        let e = with("rediss://h:1", Some(half)).validate().unwrap_err();
        assert!(e.message.contains("go together"), "{}", e.message);
        let e = with("memcached://:secret@h:1", None)
            .validate()
            .unwrap_err();
        assert!(e.message.contains("redis://"), "{}", e.message);
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn server_table_overrides_defaults() {
        let s = Settings::from_toml(
            "[server]\nlisten = \"0.0.0.0:9000\"\ndefault_deadline = \"20ms\"\nbreaker_probes = 5\n",
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.default_deadline, Duration::from_millis(20));
        assert_eq!(s.breaker().probes, 5);
        assert_eq!(s.max_batch, 4096);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Settings::from_toml("[server]\ndefault_deadline = \"soon\"\n").unwrap_err();
        assert_eq!(e.field, "default_deadline");
        let e = Settings::from_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(e.field, "listen");
    }

    #[test]
    fn unknown_and_mistyped_settings_name_the_field() {
        let e = Settings::from_toml("[server]\nmax_batchh = 3\n").unwrap_err();
        assert!(e.message.contains("max_batchh"), "{e}");
        let e = Settings::from_toml("[server]\nshards = \"two\"\n").unwrap_err();
        assert_eq!(e.field, "shards", "{e}");
    }

    #[test]
    fn each_zero_limit_is_reported_under_its_own_name() {
        let zero_conns = Settings {
            max_connections_per_shard: 0,
            ..Settings::default()
        };
        assert_eq!(
            zero_conns.validate().unwrap_err().field,
            "max_connections_per_shard"
        );
        let zero_inflight = Settings {
            max_inflight_per_connection: 0,
            ..Settings::default()
        };
        assert_eq!(
            zero_inflight.validate().unwrap_err().field,
            "max_inflight_per_connection"
        );
        assert!(Settings::default().validate().is_ok());
    }
}
