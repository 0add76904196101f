//! What each request does, once decoded: HELLO, PING and SCHEMA are answered on the spot; GET
//! goes through the coalescer; PUT writes through the guarded backend.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{
    encode_get_response, get_response_len, EntityStatus, ErrorCode, GetRequest, HelloReply,
    ProtocolError, PutRequest, Response, Status, AGE_UNKNOWN, VERSION,
};

use crate::backend::BackendError;
use crate::coalescer::{Coalescer, Pending};
use crate::config::Settings;
use crate::guarded::GuardedRedis;
use crate::registry::{Registry, View};
use crate::stats::ShardStats;
use crate::store::{self, Stored};

/// What a shard's request handlers share. One per shard, owned by its thread.
pub struct ShardCtx {
    pub shard: u16,
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    pub stats: Arc<ShardStats>,
    pub redis: Rc<GuardedRedis>,
    pub coalescer: Rc<Coalescer>,
}

pub const SERVER_NAME: &str = concat!("featureproxy/", env!("CARGO_PKG_VERSION"));

impl ShardCtx {
    pub fn hello_reply(&self) -> Response {
        Response::Hello(HelloReply {
            version: VERSION,
            shard: self.shard,
            max_frame: self.settings.max_frame,
            max_batch: self.settings.max_batch,
            server: SERVER_NAME.to_string(),
        })
    }

    pub fn schema(&self, name: &str) -> Result<Response, ProtocolError> {
        let view = self.registry.by_name(name).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnknownView,
                format!(
                    "unknown view {name:?}; this server serves: {}",
                    self.registry.names()
                ),
            )
        })?;
        Ok(Response::Schema(view.schema_reply()))
    }

    fn view(&self, view_id: u16, schema_id: u32) -> Result<&View, ProtocolError> {
        let view = self.registry.by_id(view_id).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnknownView,
                format!(
                    "no view has id {view_id}; ask SCHEMA by name for a view's id (views: {})",
                    self.registry.names()
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

    /// GET: every entity gets a row and a status; only a bad request fails as a whole.
    pub async fn get(&self, req: GetRequest) -> Result<GetReply<'_>, ProtocolError> {
        let view = self.view(req.view_id, req.schema_id)?;
        let n = req.keys.len();
        let reply_len = get_response_len(n, view.row_bytes);
        if reply_len > self.settings.max_frame as usize {
            return Err(ProtocolError::new(
                ErrorCode::BatchTooLarge,
                format!(
                    "view {}: a reply for {n} rows of {} bytes would be {reply_len} bytes, above max_frame {}; ask for fewer entities",
                    view.name, view.row_bytes, self.settings.max_frame
                ),
            ));
        }
        let deadline = Instant::now()
            + match req.deadline_us {
                0 => self.settings.default_deadline,
                us => Duration::from_micros(us as u64),
            };
        self.stats.entities_requested.add(n as u64);

        let pending = self.lookup(view, &req.keys);
        wait_until(&pending, deadline).await;

        let now = store::now_ms();
        let mut statuses = Vec::with_capacity(n);
        let mut ages = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        let view_stats = self.stats.view(view.id);
        for p in &pending {
            let (status, age, row) = resolve(view, p.as_ref(), now);
            if let Some(vs) = view_stats {
                vs.served(status, false);
            }
            statuses.push(EntityStatus::new(status, false));
            ages.push(age);
            rows.push(row);
        }
        Ok(GetReply {
            view,
            statuses,
            ages,
            rows,
        })
    }

    /// Where each entity's value will come from; None when the breaker says not to ask Redis.
    fn lookup(&self, view: &View, keys: &[Bytes]) -> Vec<Option<Pending>> {
        if self.redis.rejects() {
            return vec![None; keys.len()];
        }
        let mut buf =
            BytesMut::with_capacity(keys.iter().map(|k| view.key_prefix.len() + k.len()).sum());
        keys.iter()
            .map(|k| Some(self.coalescer.enqueue(store::key_into(&mut buf, view, k))))
            .collect()
    }

    /// PUT: all rows validated first (nothing written on a bad one), then written; acknowledged
    /// only once Redis acknowledged every write.
    pub async fn put(&self, req: PutRequest) -> Result<Response, ProtocolError> {
        let view = self.view(req.view_id, req.schema_id)?;
        let entries = req.entries(&view.name, view.row_bytes)?;
        if entries.is_empty() {
            return Ok(Response::Put { written: 0 });
        }
        let mut kbuf = BytesMut::new();
        let mut vbuf =
            BytesMut::with_capacity(entries.len() * (store::VALUE_HEADER + view.row_bytes));
        let items: Vec<(Bytes, Bytes)> = entries
            .iter()
            .map(|e| {
                (
                    store::key_into(&mut kbuf, view, &e.key),
                    store::value_into(&mut vbuf, e.computed_at_ms, &e.row),
                )
            })
            .collect();
        let keys: Vec<Bytes> = items.iter().map(|(k, _)| k.clone()).collect();
        let written = items.len() as u32;
        let result = self
            .redis
            .write(items, view.ttl, self.settings.write_timeout)
            .await;
        // Reads that were in flight during the write may carry the old rows: later requests must
        // not join them.
        self.coalescer.forget(&keys);
        match result {
            Ok(()) => Ok(Response::Put { written }),
            Err(BackendError::Timeout(after)) => Err(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "view {}: Redis did not acknowledge the {written} writes within {after:?}; none is acknowledged (some may have landed): retry the PUT, it is idempotent",
                    view.name
                ),
            )),
            Err(BackendError::Unavailable(why)) => Err(ProtocolError::new(
                ErrorCode::BackendUnavailable,
                format!("view {}: nothing acknowledged, {why}", view.name),
            )),
        }
    }
}

/// A GET's answer, ready to encode: one status, age and row per entity.
pub struct GetReply<'a> {
    view: &'a View,
    statuses: Vec<EntityStatus>,
    ages: Vec<u32>,
    /// Slices of Redis' read buffers or the view's default row: no row bytes copied until encode.
    rows: Vec<Bytes>,
}

impl GetReply<'_> {
    pub fn encode(&self, out: &mut BytesMut, request_id: u32) {
        encode_get_response(
            out,
            request_id,
            self.view.id,
            self.view.schema_id,
            self.view.row_bytes as u32,
            &self.statuses,
            &self.ages,
            self.rows.iter().map(|r| &r[..]),
        );
    }
}

/// Waits for every batch the request depends on, up to the deadline. Past it, whatever has not
/// landed is served as DEGRADED.
async fn wait_until(pending: &[Option<Pending>], deadline: Instant) {
    let mut last: Option<&Rc<crate::coalescer::Batch>> = None;
    for p in pending.iter().flatten() {
        if last.is_some_and(|b| Rc::ptr_eq(b, &p.batch)) || p.batch.result().is_some() {
            continue;
        }
        last = Some(&p.batch);
        if tokio::time::timeout_at(deadline.into(), p.batch.wait())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The status, age and row served for one entity.
fn resolve(view: &View, pending: Option<&Pending>, now_ms: u64) -> (Status, u32, Bytes) {
    let degraded = (Status::Degraded, AGE_UNKNOWN, view.default_row.clone());
    let Some(p) = pending else { return degraded };
    let Some(result) = p.batch.result() else {
        return degraded;
    };
    let Ok(values) = &*result else {
        return degraded;
    };
    match values.get(p.index) {
        None => degraded,
        Some(None) => (Status::Missing, AGE_UNKNOWN, view.default_row.clone()),
        Some(Some(value)) => match store::parse(value, view.row_bytes) {
            Stored::Invalid => (Status::Invalid, AGE_UNKNOWN, view.default_row.clone()),
            Stored::Row {
                computed_at_ms,
                row,
            } => {
                let age = store::age_ms(now_ms, computed_at_ms);
                match store::freshness(view, age) {
                    Status::Expired => (Status::Expired, age, view.default_row.clone()),
                    status => (status, age, row),
                }
            }
        },
    }
}
