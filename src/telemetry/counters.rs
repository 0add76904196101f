//! Per-shard counters. Each shard writes only its own (relaxed atomics, no locks shared with
//! another shard); the stats endpoint reads all shards and adds them up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};

use featureproxy_protocol::{ErrorCode, Op, Status};

/// A monotonically increasing count, or a gauge, written by one shard.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    /// For a gauge: its value now.
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Every op, in the order of the per-op counters.
pub const OPS: [Op; 5] = [Op::Hello, Op::Ping, Op::Schema, Op::Get, Op::Put];

/// One counter per op.
#[derive(Debug, Default)]
pub struct PerOp([Counter; OPS.len()]);

impl PerOp {
    /// The counter of `op`.
    pub fn of(&self, op: Op) -> &Counter {
        let i = OPS.iter().position(|o| *o == op).unwrap_or(0);
        &self.0[i]
    }

    /// The sum over all ops.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

/// Why a connection's credentials were refused (UNAUTHORIZED), never naming the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The first frame was not a HELLO (or could not be read) on a server that asks for a token.
    NoHello,
    /// HELLO carried no token.
    Missing,
    /// No principal holds the token.
    Unknown,
    /// The connection's principal was removed from the access file while it was open.
    Removed,
    /// The token's principal names client certificates, and the connection has none of them.
    CertificateMismatch,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::NoHello,
        AuthFailure::Missing,
        AuthFailure::Unknown,
        AuthFailure::Removed,
        AuthFailure::CertificateMismatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AuthFailure::NoHello => "no_hello",
            AuthFailure::Missing => "missing_token",
            AuthFailure::Unknown => "unknown_token",
            AuthFailure::Removed => "principal_removed",
            AuthFailure::CertificateMismatch => "cert_mismatch",
        }
    }
}

/// How a TLS handshake on the TLS port ended, or a TLS ClientHello that came to the plaintext
/// port. Refusals name the side at fault, never a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Done: the connection is served.
    Ok,
    /// The peer spoke plaintext to the TLS port (told so in an ERROR frame).
    NotTls,
    /// Not done within `handshake_timeout`.
    Timeout,
    /// The peer closed or reset the connection mid-handshake.
    PeerClosed,
    /// mTLS: the client showed no certificate.
    NoClientCert,
    /// mTLS: the client's certificate is not signed by `client_ca_file`.
    UnknownCa,
    /// mTLS: the client's certificate has expired (or is not valid yet).
    Expired,
    /// mTLS: the client's certificate is unusable for another reason (wrong use, bad signature).
    BadCertificate,
    /// The client refused the server's certificate (its alert: it trusts another CA, or the
    /// name or dates do not fit).
    PeerRefused,
    /// No TLS version, cipher suite or ALPN protocol in common.
    Incompatible,
    /// Any other TLS error.
    Other,
    /// A TLS ClientHello on the plaintext port (refused there as FRAME_TOO_LARGE).
    TlsOnPlaintextPort,
}

impl Handshake {
    pub const ALL: [Handshake; 12] = [
        Handshake::Ok,
        Handshake::NotTls,
        Handshake::Timeout,
        Handshake::PeerClosed,
        Handshake::NoClientCert,
        Handshake::UnknownCa,
        Handshake::Expired,
        Handshake::BadCertificate,
        Handshake::PeerRefused,
        Handshake::Incompatible,
        Handshake::Other,
        Handshake::TlsOnPlaintextPort,
    ];

    /// The `result` label: ok, or refused.
    pub fn result(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            _ => "refused",
        }
    }

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::NotTls => "not_tls",
            Handshake::Timeout => "timeout",
            Handshake::PeerClosed => "peer_closed",
            Handshake::NoClientCert => "no_client_cert",
            Handshake::UnknownCa => "unknown_ca",
            Handshake::Expired => "expired",
            Handshake::BadCertificate => "bad_certificate",
            Handshake::PeerRefused => "peer_refused_server_cert",
            Handshake::Incompatible => "incompatible",
            Handshake::Other => "other",
            Handshake::TlsOnPlaintextPort => "tls_on_plaintext_port",
        }
    }
}

/// Why a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it.
    Peer,
    /// A protocol error that ends the connection (MALFORMED, FRAME_TOO_LARGE, UNAUTHORIZED, ...).
    ProtocolError,
    /// Part of a frame arrived and the rest never did.
    FrameTimeout,
    /// Reading or writing the socket failed (reset, broken pipe).
    Io,
    /// The proxy is shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Peer,
        CloseReason::ProtocolError,
        CloseReason::FrameTimeout,
        CloseReason::Io,
        CloseReason::Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::Io => "io_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Redis Cluster answers about where a key lives, counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    Moved,
    Ask,
    TryAgain,
    ClusterDown,
}

impl RedirectKind {
    pub const ALL: [RedirectKind; 4] = [
        RedirectKind::Moved,
        RedirectKind::Ask,
        RedirectKind::TryAgain,
        RedirectKind::ClusterDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RedirectKind::Moved => "moved",
            RedirectKind::Ask => "ask",
            RedirectKind::TryAgain => "tryagain",
            RedirectKind::ClusterDown => "clusterdown",
        }
    }
}

/// One Redis Cluster node as one shard uses it. Written by that shard only (relaxed atomics);
/// the shard adds and removes nodes in [`ShardStats::nodes`] when the slot map changes.
#[derive(Debug)]
pub struct NodeStats {
    /// "host:port".
    pub addr: String,
    /// True while the slot map lists the node as a replica (read from with READONLY).
    pub replica: AtomicBool,
    pub connected: AtomicBool,
    /// The node's breaker, as [`ShardStats::breaker_state`] encodes it.
    pub breaker_state: AtomicU8,
    /// Keys read or written on the node, and the calls that failed (timeouts, connection down).
    pub keys: Counter,
    pub errors: Counter,
}

impl NodeStats {
    pub fn new(addr: &str) -> NodeStats {
        NodeStats {
            addr: addr.to_string(),
            replica: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            breaker_state: AtomicU8::new(0),
            keys: Counter::default(),
            errors: Counter::default(),
        }
    }
}

/// Counters of one view on one shard.
#[derive(Debug, Default)]
pub struct ViewStats {
    /// Entities served, by [`Status`] (index = status byte).
    pub entities: [Counter; 6],
    /// Entities served from the hot cache.
    pub cached: Counter,
    /// Hot-cache lookups that found the entity, and those that did not (bypassed ones excluded).
    pub cache_hits: Counter,
    pub cache_misses: Counter,
}

impl ViewStats {
    /// Adds what one request served (one atomic add per status seen, not one per entity).
    pub fn add_served(&self, served: &Served) {
        for (counter, &n) in self.entities.iter().zip(&served.by_status) {
            if n > 0 {
                counter.add(n);
            }
        }
        if served.cached > 0 {
            self.cached.add(served.cached);
        }
    }
}

/// What one request served, in plain integers, for [`ViewStats::add_served`].
#[derive(Debug, Default)]
pub struct Served {
    by_status: [u64; 6],
    cached: u64,
}

impl Served {
    pub fn count(&mut self, status: Status, cached: bool) {
        self.by_status[status as usize] += 1;
        self.cached += cached as u64;
    }
}

/// Everything one shard counts.
#[derive(Debug)]
pub struct ShardStats {
    pub shard: u16,
    /// Requests answered successfully, by op.
    pub requests_ok: PerOp,
    /// Requests answered with an ERROR frame, by error code (index = code - 1).
    pub requests_err: [Counter; ErrorCode::ALL.len()],
    pub views: Vec<ViewStats>,
    pub entities_requested: Counter,
    pub redis_commands: Counter,
    pub redis_keys: Counter,
    pub redis_timeouts: Counter,
    pub redis_unavailable: Counter,
    /// Redis calls the open breaker refused (reads served defaults, writes refused).
    pub breaker_rejections: Counter,
    /// Redis Cluster redirections and refusals, by [`RedirectKind`] (index = kind as usize).
    pub cluster_redirects: [Counter; RedirectKind::ALL.len()],
    /// Slot maps read from the cluster (CLUSTER SLOTS), and those that changed the map.
    pub cluster_refreshes: Counter,
    pub cluster_map_changes: Counter,
    pub singleflight_joins: Counter,
    pub breaker_state: AtomicU8,
    pub breaker_transitions: Counter,
    /// The standalone server's connection; on a cluster see [`ShardStats::redis_up`].
    pub redis_connected: AtomicBool,
    /// True while Redis client tracking is on for this shard's cache.
    pub tracking_armed: AtomicBool,
    pub connections_open: Counter,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    /// Connections closed, by [`CloseReason`] (index = reason as usize).
    pub connections_closed: [Counter; CloseReason::ALL.len()],
    /// Credentials refused, by [`AuthFailure`] (index = reason as usize).
    pub auth_failures: [Counter; AuthFailure::ALL.len()],
    /// TLS handshakes, by [`Handshake`] (index = outcome as usize).
    pub tls_handshakes: [Counter; Handshake::ALL.len()],
    /// Time spent in TLS handshakes that succeeded, in microseconds.
    pub tls_handshake_micros: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Requests answered with an ERROR frame, by op (decodable ones only).
    pub requests_failed: PerOp,
    pub inflight_requests: Counter,
    /// GETs answered OVERLOADED because their connection's queue was too long.
    pub requests_shed: Counter,
    /// Seconds of histograms and value tallies dropped because the stats thread fell behind
    /// (its channel was full): counted, so a gap in the statistics is never silent.
    pub intervals_dropped: Counter,
    /// The hot cache's own counts, published by the shard after each request.
    pub cache: CacheGauges,
    /// The Redis Cluster nodes the shard uses (empty on a standalone Redis). The lock is taken
    /// when the slot map changes and by the stats endpoint, never on the request path.
    pub nodes: std::sync::Mutex<Vec<std::sync::Arc<NodeStats>>>,
}

/// Snapshot of one shard's hot cache (plain stores: only its shard writes them).
#[derive(Debug, Default)]
pub struct CacheGauges {
    pub admissions: AtomicU64,
    pub rejections: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub invalidations: AtomicU64,
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
    pub capacity: AtomicU64,
}

impl ShardStats {
    pub fn new(shard: u16, n_views: usize) -> ShardStats {
        ShardStats {
            shard,
            requests_ok: Default::default(),
            requests_err: Default::default(),
            views: (0..n_views).map(|_| ViewStats::default()).collect(),
            entities_requested: Counter::default(),
            redis_commands: Counter::default(),
            redis_keys: Counter::default(),
            redis_timeouts: Counter::default(),
            redis_unavailable: Counter::default(),
            breaker_rejections: Counter::default(),
            cluster_redirects: Default::default(),
            cluster_refreshes: Counter::default(),
            cluster_map_changes: Counter::default(),
            singleflight_joins: Counter::default(),
            breaker_state: AtomicU8::new(0),
            breaker_transitions: Counter::default(),
            redis_connected: AtomicBool::new(false),
            tracking_armed: AtomicBool::new(false),
            connections_open: Counter::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            connections_closed: Default::default(),
            auth_failures: Default::default(),
            tls_handshakes: Default::default(),
            tls_handshake_micros: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            requests_failed: Default::default(),
            inflight_requests: Counter::default(),
            requests_shed: Counter::default(),
            intervals_dropped: Counter::default(),
            cache: CacheGauges::default(),
            nodes: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn request_ok(&self, op: Op) {
        self.requests_ok.of(op).inc();
    }

    pub fn request_failed(&self, op: Op) {
        self.requests_failed.of(op).inc();
    }

    pub fn request_err(&self, code: ErrorCode) {
        self.requests_err[code as usize - 1].inc();
    }

    /// The counters of the view with this id (ids are 1-based); None for an unknown id.
    pub fn view(&self, view_id: u16) -> Option<&ViewStats> {
        self.views.get((view_id as usize).checked_sub(1)?)
    }

    /// Counts one cluster redirection of `kind`.
    pub fn redirected(&self, kind: RedirectKind) {
        self.cluster_redirects[kind as usize].inc();
    }

    /// True while the shard reaches its Redis: the one server (`redis_connected`), or on a
    /// cluster every primary it uses (from the nodes' own gauges, which follow their connections
    /// within 100 ms).
    pub fn redis_up(&self) -> bool {
        let nodes = self.node_list();
        if nodes.is_empty() {
            return self.redis_connected.load(Relaxed);
        }
        nodes
            .iter()
            .filter(|n| !n.replica.load(Relaxed))
            .all(|n| n.connected.load(Relaxed))
    }

    /// A snapshot of the cluster nodes' counters.
    pub fn node_list(&self) -> Vec<std::sync::Arc<NodeStats>> {
        self.nodes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Requests answered with an ERROR frame carrying `code`.
    pub fn errors(&self, code: ErrorCode) -> &Counter {
        &self.requests_err[code as usize - 1]
    }
}

/// Reloads of the configuration (SIGHUP, POST /admin/reload) and what they put in force, for
/// the stats endpoint. Written by the thread that reloads, read by the stats threads.
#[derive(Debug)]
pub struct ReloadCounters {
    /// Reloads applied.
    pub applied: Counter,
    /// Reloads refused (a file unreadable or invalid): what was in force stays.
    pub refused: Counter,
    /// Principals in the access table in force.
    pub principals: Counter,
    /// The configuration's generation: 1 at start, one more per applied reload.
    pub generation: Counter,
    /// Whether the last reload was applied (true before any).
    pub last_ok: AtomicBool,
    /// When the last reload was tried, Unix milliseconds (0 before any).
    pub last_unix_ms: Counter,
    /// Why the last reload was refused (empty when it was applied).
    pub last_error: std::sync::Mutex<String>,
}

impl Default for ReloadCounters {
    fn default() -> Self {
        let c = ReloadCounters {
            applied: Counter::default(),
            refused: Counter::default(),
            principals: Counter::default(),
            generation: Counter::default(),
            last_ok: AtomicBool::new(true),
            last_unix_ms: Counter::default(),
            last_error: std::sync::Mutex::new(String::new()),
        };
        c.generation.set(1);
        c
    }
}

/// Slots of a principal's counters: a shard counts in slot `shard % PRINCIPAL_SLOTS`, on a cache
/// line of its own, so shards do not contend (beyond 64 shards, two share a slot).
const PRINCIPAL_SLOTS: usize = 64;

/// One principal's counts (the access file names the principals, so their number is bounded by
/// it). Kept across reloads for a principal whose name stays.
#[derive(Debug)]
pub struct PrincipalCounts {
    slots: Box<[crossbeam::utils::CachePadded<PrincipalSlot>]>,
}

/// What one shard counts for one principal.
#[derive(Debug, Default)]
pub struct PrincipalSlot {
    /// Requests the principal made after its HELLO, whatever their answer.
    pub requests: Counter,
    /// Requests answered FORBIDDEN, by op (index: [`FORBIDDEN_OPS`]).
    pub forbidden: [Counter; FORBIDDEN_OPS.len()],
}

/// The ops a grant decides.
pub const FORBIDDEN_OPS: [Op; 3] = [Op::Get, Op::Put, Op::Schema];

impl Default for PrincipalCounts {
    fn default() -> Self {
        PrincipalCounts {
            slots: (0..PRINCIPAL_SLOTS).map(|_| Default::default()).collect(),
        }
    }
}

impl PrincipalCounts {
    /// The slot shard `shard` counts in.
    pub fn of(&self, shard: u16) -> &PrincipalSlot {
        &self.slots[shard as usize % PRINCIPAL_SLOTS]
    }

    /// Requests over every shard.
    pub fn requests(&self) -> u64 {
        self.slots.iter().map(|s| s.requests.get()).sum()
    }

    /// FORBIDDEN answers to `op` over every shard.
    pub fn forbidden(&self, op: Op) -> u64 {
        let Some(i) = FORBIDDEN_OPS.iter().position(|o| *o == op) else {
            return 0;
        };
        self.slots.iter().map(|s| s.forbidden[i].get()).sum()
    }
}

impl PrincipalSlot {
    /// Counts a FORBIDDEN answer to `op`.
    pub fn forbid(&self, op: Op) {
        if let Some(i) = FORBIDDEN_OPS.iter().position(|o| *o == op) {
            self.forbidden[i].inc();
        }
    }
}
