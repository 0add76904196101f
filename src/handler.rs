//! What each request does, once decoded: HELLO, PING and SCHEMA are answered on the spot; GET
//! goes through the coalescer; PUT writes through the guarded backend.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{
    encode_get_response, get_response_len, EntityStatus, ErrorCode, GetRequest, HelloReply,
    ProtocolError, PutRequest, Response, Status, AGE_UNKNOWN, GET_FLAG_BYPASS_CACHE, VERSION,
};

use crate::backend::BackendError;
use crate::cache::{CachedRow, HotCache};
use crate::coalescer::{Coalescer, Pending};
use crate::config::Settings;
use crate::guarded::GuardedRedis;
use crate::histograms::ShardHistograms;
use crate::invalidation::Peers;
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
    pub cache: RefCell<HotCache>,
    pub histograms: Rc<RefCell<ShardHistograms>>,
    /// The other shards, for invalidating their caches on PUT.
    pub peers: Peers,
}

/// Where one entity's answer comes from.
enum Source {
    Cached(CachedRow),
    Redis(Pending),
    /// The breaker is open: defaults without asking.
    Unavailable,
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
    /// `started` is when the request was read, for the latency histogram.
    pub async fn get(
        &self,
        req: GetRequest,
        started: Instant,
    ) -> Result<GetReply<'_>, ProtocolError> {
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

        let use_cache = req.flags & GET_FLAG_BYPASS_CACHE == 0 && !view.hot_cache_ttl.is_zero();
        let (keys, sources) = self.lookup(view, &req.keys, use_cache, deadline);
        wait_until(&sources, deadline).await;

        let now = store::now_ms();
        let mut statuses = Vec::with_capacity(n);
        let mut ages = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        let view_stats = self.stats.view(view.id);
        let mut cache = self.cache.borrow_mut();
        let cache_now = Instant::now();
        let mut histograms = self.histograms.borrow_mut();
        for (key, source) in keys.iter().zip(&sources) {
            let Answer {
                status,
                age,
                row,
                computed_at_ms,
            } = resolve(view, source, now);
            let cached = matches!(source, Source::Cached(_)) && !status.is_default();
            if let (Source::Redis(p), Status::Fresh | Status::Stale) = (source, status) {
                if p.batch.cacheable(p.index) {
                    cache.insert(key, computed_at_ms, &row, view.hot_cache_ttl, cache_now);
                }
            }
            if let Some(vs) = view_stats {
                vs.served(status, cached);
            }
            if computed_at_ms != 0 {
                histograms.record_age(view.id, age);
            }
            statuses.push(EntityStatus::new(status, cached));
            ages.push(age);
            rows.push(row);
        }
        self.stats.cache.publish(&cache);
        histograms.record_get(view.id, started.elapsed());
        Ok(GetReply {
            view,
            statuses,
            ages,
            rows,
        })
    }

    /// The Redis key of each entity, and where its answer will come from: the hot cache, a read
    /// queued in the coalescer, or nowhere while the breaker is open.
    fn lookup(
        &self,
        view: &View,
        entities: &[Bytes],
        use_cache: bool,
        deadline: Instant,
    ) -> (Vec<Bytes>, Vec<Source>) {
        let size = entities
            .iter()
            .map(|k| view.key_prefix.len() + k.len())
            .sum();
        let mut buf = BytesMut::with_capacity(size);
        let keys: Vec<Bytes> = entities
            .iter()
            .map(|k| store::key_into(&mut buf, view, k))
            .collect();
        let rejects = self.redis.rejects();
        let view_stats = self.stats.view(view.id);
        let mut cache = self.cache.borrow_mut();
        let now = Instant::now();
        let sources = keys
            .iter()
            .map(|key| {
                if use_cache {
                    let hit = cache.get(key, now);
                    if let Some(vs) = view_stats {
                        match hit {
                            Some(_) => vs.cache_hits.inc(),
                            None => vs.cache_misses.inc(),
                        }
                    }
                    if let Some(hit) = hit {
                        return Source::Cached(hit);
                    }
                }
                if rejects {
                    Source::Unavailable
                } else {
                    Source::Redis(self.coalescer.enqueue(key.clone(), deadline))
                }
            })
            .collect();
        (keys, sources)
    }

    /// Drops the whole cache: after Redis was flushed, or when writes may have been missed.
    pub fn flush_cache(&self, why: &str) {
        let mut cache = self.cache.borrow_mut();
        let entries = cache.entries();
        cache.clear();
        self.stats.cache.publish(&cache);
        tracing::debug!(shard = self.shard, entries, why, "hot cache flushed");
    }

    /// Drops `keys` from this shard's cache and from its reads in flight.
    pub fn invalidate_local(&self, keys: &[Bytes]) {
        let mut cache = self.cache.borrow_mut();
        for k in keys {
            cache.invalidate(k);
        }
        self.stats.cache.publish(&cache);
        drop(cache);
        self.coalescer.forget(keys);
    }

    /// PUT: all rows validated first (nothing written on a bad one), then written; acknowledged
    /// only once Redis acknowledged every write.
    pub async fn put(&self, req: PutRequest, started: Instant) -> Result<Response, ProtocolError> {
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
        let keys: Arc<[Bytes]> = items.iter().map(|(k, _)| k.clone()).collect();
        let written = items.len() as u32;
        let result = self
            .redis
            .write(items, view.ttl, self.settings.write_timeout)
            .await;
        // Whatever Redis did, cached rows and reads in flight may now be older than what it
        // holds: drop them here and on every other shard before answering, so that a GET that
        // starts after the acknowledgement reads the new rows.
        self.invalidate_local(&keys);
        if let Err(e) = self
            .peers
            .invalidate(keys, self.settings.write_timeout)
            .await
        {
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                format!(
                    "view {}: {e}; the PUT is not acknowledged: retry it",
                    view.name
                ),
            ));
        }
        self.histograms
            .borrow_mut()
            .record_put(view.id, started.elapsed());
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
async fn wait_until(sources: &[Source], deadline: Instant) {
    let mut last: Option<&Rc<crate::coalescer::Batch>> = None;
    for p in sources.iter().filter_map(|s| match s {
        Source::Redis(p) => Some(p),
        _ => None,
    }) {
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

/// What one entity is answered with.
struct Answer {
    status: Status,
    age: u32,
    row: Bytes,
    /// When the stored value was computed; 0 where there is none.
    computed_at_ms: u64,
}

impl Answer {
    fn defaults(view: &View, status: Status) -> Answer {
        Answer {
            status,
            age: AGE_UNKNOWN,
            row: view.default_row.clone(),
            computed_at_ms: 0,
        }
    }
}

/// The status, age and row served for one entity.
fn resolve(view: &View, source: &Source, now_ms: u64) -> Answer {
    let p = match source {
        Source::Unavailable => return Answer::defaults(view, Status::Degraded),
        Source::Cached(hit) => return judge(view, hit.computed_at_ms, hit.row.clone(), now_ms),
        Source::Redis(p) => p,
    };
    let Some(result) = p.batch.result() else {
        return Answer::defaults(view, Status::Degraded);
    };
    let Ok(values) = &*result else {
        return Answer::defaults(view, Status::Degraded);
    };
    match values.get(p.index) {
        None => Answer::defaults(view, Status::Degraded),
        Some(None) => Answer::defaults(view, Status::Missing),
        Some(Some(value)) => match store::parse(value, view.row_bytes) {
            Stored::Invalid => Answer::defaults(view, Status::Invalid),
            Stored::Row {
                computed_at_ms,
                row,
            } => judge(view, computed_at_ms, row, now_ms),
        },
    }
}

/// FRESH or STALE with the row, or EXPIRED with the defaults, by the value's age.
fn judge(view: &View, computed_at_ms: u64, row: Bytes, now_ms: u64) -> Answer {
    let age = store::age_ms(now_ms, computed_at_ms);
    match store::freshness(view, age) {
        Status::Expired => Answer {
            status: Status::Expired,
            age,
            row: view.default_row.clone(),
            computed_at_ms,
        },
        status => Answer {
            status,
            age,
            row,
            computed_at_ms,
        },
    }
}
