//! The storage seam: how the reading stage and PUT talk to the online store without knowing
//! what it is.
//!
//! Two things plug in beneath it:
//! - a [`Layout`] (in [`layout`]) says how a view's rows sit in the store: the key of an entity,
//!   the command that reads it, how a reply decodes into a [`Stored`] row, what a PUT writes;
//! - a [`Backend`] (in [`redis`]) runs reads and writes against real servers: a batch of
//!   [`ReadKey`]s in, one [`Fetched`] per key out, so that a failure degrades only the keys it
//!   touched. Each backend node has its own circuit breaker, asked per key.
//!
//! The coalescer and the hot cache see only these types: a Redis Cluster backend or Feast's
//! layout is a new implementation here, not a change there.

pub mod breaker;
pub mod keys;
pub mod layout;
pub mod redis;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::LocalBoxFuture;

pub use keys::{KeyBlock, StoreKey};
pub use layout::Layout;

/// A view's id: its 1-based position in the registry file, as GET and PUT carry it.
pub type ViewId = u16;

/// One read the backend can run, made by a view's layout for one entity. Two equal read keys are
/// the same read: the coalescer sends it once (single-flight).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadKey {
    /// The key in the store.
    pub key: StoreKey,
    pub command: ReadCommand,
}

/// What to ask the store for under a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReadCommand {
    /// The whole value (GET; many of them go out as one MGET).
    Value,
    /// These fields of a hash (HMGET), answered as [`Fetched::Fields`].
    Fields(FieldSet),
}

/// The hash fields a layout reads for every entity of a view. Built once per view and shared
/// by its reads; two sets are the same read only when they are the same set (compared by
/// identity, so a lookup hashes a pointer, not every field name).
#[derive(Debug, Clone)]
pub struct FieldSet(Arc<[Bytes]>);

impl FieldSet {
    pub fn new(fields: Vec<Bytes>) -> FieldSet {
        FieldSet(Arc::from(fields))
    }

    pub fn fields(&self) -> &[Bytes] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for FieldSet {
    fn eq(&self, other: &FieldSet) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FieldSet {}

impl std::hash::Hash for FieldSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0) as *const u8, state)
    }
}

/// The store's answer for one [`ReadKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The stored bytes: a slice of the backend's read buffer, not a copy.
    Value(Bytes),
    /// The asked fields of a hash, in the order asked; None where a field (or the whole hash)
    /// is absent.
    Fields(Vec<Option<Bytes>>),
    /// Nothing is stored under the key.
    Absent,
    /// Something else than the read expects is stored under the key (Redis said WRONGTYPE).
    WrongType,
    /// No answer for this key; the entity is served its defaults as DEGRADED.
    Failed(Failure),
}

/// Why one key got no answer. Copy, so a failed batch costs no allocation per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The node did not answer within the read's deadline.
    Timeout,
    /// The node's connection is down or it answered with an error.
    Unavailable,
    /// The node's circuit breaker is open: not asked at all.
    BreakerOpen,
}

/// A row as the layout decoded it from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored<'a> {
    /// A readable row: when it was computed (Unix ms) and its bytes (borrowed from the read
    /// buffer where the layout stores rows as we serve them, else decoded into a copy).
    Row {
        computed_at_ms: u64,
        row: Cow<'a, [u8]>,
    },
    /// Something is stored but it is not a row of this view (wrong format or length).
    Invalid,
    /// No row of this view is stored for the entity.
    Absent,
}

/// One write of a PUT, as the view's layout encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteItem {
    /// Store `value` under `key`, expiring after `ttl` (SET PX).
    Value {
        key: Bytes,
        value: Bytes,
        ttl: Duration,
    },
    /// Set these fields of the hash under `key` (HSET), then, when `expire` is given, make the
    /// whole hash expire after it (EXPIRE, in whole seconds).
    Fields {
        key: Bytes,
        fields: Vec<(Bytes, Bytes)>,
        expire: Option<Duration>,
    },
}

impl WriteItem {
    /// The store key the item writes.
    pub fn key(&self) -> &[u8] {
        match self {
            WriteItem::Value { key, .. } | WriteItem::Fields { key, .. } => key,
        }
    }
}

/// Why a write was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("Redis is unavailable: circuit breaker open: Redis failed recently; retry after it recovers")]
    BreakerOpen,
    /// A cluster node said another node serves the key, or the cluster cannot serve it now.
    #[error("Redis Cluster redirected the call: {0}")]
    Redirected(Redirect),
    /// Some nodes acknowledged their rows and some did not.
    #[error("{written} of {total} rows acknowledged; the others failed ({why}): the write may be partial")]
    Partial {
        written: usize,
        total: usize,
        why: String,
    },
}

/// A Redis Cluster answer that is about where a key lives, not about the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Redirect {
    /// The slot now lives on `to` ("host:port") for good: follow, and refresh the slot map.
    #[error("MOVED {slot} {to}")]
    Moved { slot: u16, to: String },
    /// The slot is migrating: this one key is on `to` for now.
    #[error("ASK {slot} {to}")]
    Ask { slot: u16, to: String },
    /// A multi-key call met a slot being migrated.
    #[error("TRYAGAIN")]
    TryAgain,
    /// The cluster cannot serve the slot (no master for it).
    #[error("CLUSTERDOWN")]
    ClusterDown,
}

impl Redirect {
    /// Reads a Redis error reply ("MOVED 3999 127.0.0.1:6381", "CLUSTERDOWN ...").
    pub fn parse(reply: &str) -> Option<Redirect> {
        let reply = reply.trim_start_matches("-");
        let mut words = reply.split_whitespace();
        let kind = words.next()?;
        let mut target = || -> Option<(u16, String)> {
            Some((words.next()?.parse().ok()?, words.next()?.to_string()))
        };
        Some(match kind {
            "MOVED" => {
                let (slot, to) = target()?;
                Redirect::Moved { slot, to }
            }
            "ASK" => {
                let (slot, to) = target()?;
                Redirect::Ask { slot, to }
            }
            "TRYAGAIN" => Redirect::TryAgain,
            "CLUSTERDOWN" => Redirect::ClusterDown,
            _ => return None,
        })
    }
}

impl StoreError {
    /// The per-key failure this error means for a read.
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Timeout(_) => Failure::Timeout,
            StoreError::Unavailable(_) => Failure::Unavailable,
            StoreError::BreakerOpen => Failure::BreakerOpen,
            StoreError::Redirected(_) | StoreError::Partial { .. } => Failure::Unavailable,
        }
    }
}

/// A notice from the store of writes made behind the reading stage's back: whatever it holds
/// for those rows (cached rows, reads in flight) may be older than the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These store keys were written; the views' layouts say whose rows they hold.
    Keys(Vec<Bytes>),
    /// Anything may have changed (the store was flushed, or notices of writes were lost).
    Everything { why: &'static str },
}

/// Where a backend puts a read's outcomes while the read is under way (the reading stage's
/// batch). A backend lands each node's part of a read on its own: a key is answered as soon as
/// its node answers, whatever another node in the same read does.
pub trait Landing {
    /// The outcome of `keys[index]` of the read. Each index gets one outcome; a second is ignored.
    fn put(&self, index: usize, fetched: Fetched);

    /// A group of outcomes is in: the requests waiting on any of them may go on. Called after
    /// each node's part (not per key), so that waiters wake once per part.
    fn landed(&self);
}

/// The store's servers, as the reading stage and PUT use them. Implemented per deployment
/// (standalone Redis today); the reading stage holds it as `Rc<dyn Backend>`.
pub trait Backend {
    /// False while a read of `key` would be refused without asking, because the breaker of the
    /// node that holds it is open: the caller serves defaults at once instead of queueing.
    fn admits(&self, key: &ReadKey, now: Instant) -> bool;

    /// True when no node's breaker would refuse a read now: then no key need be asked about
    /// with [`Backend::admits`] (on a cluster, asking hashes the key to its slot, and a batch's
    /// keys are hashed once more where they are split by slot).
    fn admits_all(&self, now: Instant) -> bool;

    /// Reads every key, giving up after `timeout`, and puts each key's outcome into `landing`
    /// as soon as the node that holds it answers: one node's keys never wait for another's, so
    /// a frozen node holds back only its own keys. Every key gets its outcome before the
    /// future completes.
    fn read<'a>(
        &'a self,
        keys: &'a [ReadKey],
        timeout: Duration,
        landing: &'a dyn Landing,
    ) -> LocalBoxFuture<'a, ()>;

    /// Runs every write; Ok only once the store acknowledged each of them.
    fn write(
        &self,
        items: Vec<WriteItem>,
        timeout: Duration,
    ) -> LocalBoxFuture<'_, Result<(), StoreError>>;

    /// Waits until the store can serve (its first connection, or its first slot map).
    fn ready(&self) -> LocalBoxFuture<'_, Result<(), StoreError>>;

    /// Closes every connection, at shutdown.
    fn close(&self) -> LocalBoxFuture<'_, ()>;
}
