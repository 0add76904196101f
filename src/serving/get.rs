//! GET: every entity gets a row and a status; only a bad request fails as a whole. A GET whose
//! rows are all at hand (hot cache, defaults) is answered in the connection's own turn; one that
//! waits on the store finishes when its batches land or its deadline passes.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use featureproxy_protocol::{
    encode_get_response, get_response_len, ErrorCode, GetRequest, Keys, ProtocolError, Response,
    GET_FLAG_BYPASS_CACHE,
};

use super::{checked_view, Serving};
use crate::config::current::Pinned;
use crate::reading::Lookup;
use crate::store::ViewId;

/// A checked GET whose read has started. It holds the registry it started with: a reload that
/// lands while it waits does not change the view it answers for.
pub struct GetWork {
    registry: Pinned,
    view: ViewId,
    entities: Keys,
    lookup: Lookup,
    deadline: Instant,
    started: Instant,
}

impl GetWork {
    /// True when the answer needs nothing more from the store.
    pub fn is_ready(&self) -> bool {
        self.lookup.is_ready()
    }

    /// Waits for the store's answers, up to the request's deadline.
    pub async fn wait(&self) {
        self.lookup.wait(self.deadline).await
    }
}

impl Serving {
    /// Checks the request and starts reading its entities. `started` is when the request was
    /// read: the deadline and the latency histogram count from there.
    pub fn begin_get(&self, req: GetRequest, started: Instant) -> Result<GetWork, ProtocolError> {
        let registry = self.registry.pin();
        let view = checked_view(&registry, req.view_id, req.schema_id)?;
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
        let deadline = started
            + match req.deadline_us {
                0 => self.settings.default_deadline,
                us => Duration::from_micros(us as u64),
            };
        self.stats.entities_requested.add(n as u64);
        let use_cache = req.flags & GET_FLAG_BYPASS_CACHE == 0 && !view.hot_cache_ttl.is_zero();
        let lookup = self
            .reader
            .start(view, &req.keys, use_cache, started, deadline);
        Ok(GetWork {
            view: view.id,
            registry: registry.clone(),
            entities: req.keys,
            lookup,
            deadline,
            started,
        })
    }

    /// Answers a started GET with what has arrived (what has not is DEGRADED) and encodes the
    /// reply into `out`, for the view of the registry the GET started with.
    pub fn finish_get(&self, work: GetWork, out: &mut BytesMut, request_id: u32) {
        let registry = work.registry.clone();
        let Some(view) = registry.by_id(work.view) else {
            let err = ProtocolError::new(
                ErrorCode::Internal,
                format!("view id {} is no longer served", work.view),
            );
            Response::Error(err).encode(out, request_id);
            return;
        };
        let answers = self.reader.finish(view, &work.entities, work.lookup);
        self.histograms
            .borrow_mut()
            .record_get(view.id, work.started.elapsed());
        encode_get_response(
            out,
            request_id,
            view.id,
            view.schema_id,
            view.row_bytes as u32,
            answers.statuses(),
            answers.ages(),
            answers.rows(view),
        );
        self.reader.recycle(answers);
    }
}
