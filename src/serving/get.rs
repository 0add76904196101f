//! GET: every entity gets a row and a status; only a bad request fails as a whole.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use featureproxy_protocol::{
    encode_get_response, get_response_len, ErrorCode, GetRequest, ProtocolError,
    GET_FLAG_BYPASS_CACHE,
};

use super::Serving;
use crate::config::registry::View;
use crate::reading::Answers;

impl Serving {
    /// Checks the request, has the reading stage answer every entity by the request's deadline,
    /// and returns the reply ready to encode. `started` is when the request was read, for the
    /// latency histogram.
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
        let answers = self.reader.read(view, &req.keys, use_cache, deadline).await;
        self.histograms
            .borrow_mut()
            .record_get(view.id, started.elapsed());
        Ok(GetReply { view, answers })
    }
}

/// A GET's answer, ready to encode.
pub struct GetReply<'a> {
    view: &'a View,
    answers: Answers,
}

impl GetReply<'_> {
    pub fn encode(&self, out: &mut BytesMut, request_id: u32) {
        let a = &self.answers;
        encode_get_response(
            out,
            request_id,
            self.view.id,
            self.view.schema_id,
            self.view.row_bytes as u32,
            &a.statuses,
            &a.ages,
            a.rows.iter().map(|r| &r[..]),
        );
    }
}
