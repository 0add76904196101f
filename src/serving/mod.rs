//! The serving stage: client connections in, replies out. A connection ([`connection`]) reads
//! frames and writes replies through its [`outbox`]; each frame passes the [`session`]'s
//! handshake and is routed by [`dispatch`]: HELLO, PING and SCHEMA are answered on the spot,
//! [`get`] asks the reading stage, [`put`] writes through the store; requests that wait on the
//! store wait in the connection's [`inflight`]. [`accept`] takes new
//! connections on the shard's listener.

pub mod accept;
pub mod connection;
pub mod dispatch;
pub mod get;
pub mod inflight;
pub mod outbox;
pub mod overload;
pub mod put;
pub mod session;
pub mod tls;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use featureproxy_protocol::{ErrorCode, HelloReply, ProtocolError, Response, VERSION};

use crate::config::access::AccessTable;
use crate::config::current::Current;
use crate::config::registry::{Registry, View};
use crate::config::settings::Settings;
use crate::reading::coherence::Peers;
use crate::reading::Reader;
use crate::store::{Backend, ViewId};
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms::ShardHistograms;

/// The name and version this server gives in HELLO.
pub const SERVER_NAME: &str = concat!("featureproxy/", env!("CARGO_PKG_VERSION"));

/// What one shard's connections and requests share. Built by the shard, owned by its thread;
/// the cache, coalescer and Redis connections sit behind `reader` and `backend`.
pub struct Serving {
    pub shard: u16,
    pub settings: Arc<Settings>,
    /// The views served now (a reload replaces them between turns).
    pub registry: Rc<Current>,
    pub stats: Arc<ShardStats>,
    pub histograms: Rc<RefCell<ShardHistograms>>,
    /// GETs go here.
    pub reader: Rc<Reader>,
    /// PUTs write here.
    pub backend: Rc<dyn Backend>,
    /// The other shards, for invalidating their caches on PUT.
    pub peers: Peers,
    /// Who may do what: each connection's session checks its requests against it.
    pub access: tokio::sync::watch::Receiver<Arc<AccessTable>>,
    /// Whether a queue stands in this shard (GETs waiting on the store too long): connections
    /// with many requests in flight shed while it does.
    pub pressure: RefCell<overload::Pressure>,
}

impl Serving {
    fn hello_reply(&self) -> Response {
        Response::Hello(HelloReply {
            version: VERSION,
            shard: self.shard,
            max_frame: self.settings.max_frame,
            max_batch: self.settings.max_batch,
            server: SERVER_NAME.to_string(),
        })
    }

    fn schema(&self, name: &str) -> Result<Response, ProtocolError> {
        let registry = self.registry.pin();
        let view = registry.by_name(name).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnknownView,
                format!(
                    "unknown view {name:?}; this server serves: {}",
                    registry.names()
                ),
            )
        })?;
        Ok(Response::Schema(view.schema_reply()))
    }
}

/// The view of `registry` a GET or PUT names, checked against the schema the client last saw.
fn checked_view(
    registry: &Registry,
    view_id: ViewId,
    schema_id: u32,
) -> Result<&View, ProtocolError> {
    let view = registry.by_id(view_id).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::UnknownView,
            format!(
                "no view has id {view_id}; ask SCHEMA by name for a view's id (views: {})",
                registry.names()
            ),
        )
    })?;
    if schema_id != 0 && schema_id != view.schema_id {
        return Err(ProtocolError::new(
            ErrorCode::SchemaMismatch,
            format!(
                "view {}: request has schema_id {schema_id:#010x} but the view's schema is now {:#010x}; fetch SCHEMA again",
                view.name, view.schema_id
            ),
        ));
    }
    Ok(view)
}
