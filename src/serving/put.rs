//! PUT: all rows validated first (nothing written on a bad one), then written through the store;
//! acknowledged only once the store acknowledged every write and every shard dropped what it
//! cached for those rows.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{ErrorCode, ProtocolError, PutRequest, Response};

use super::{checked_view, Serving};
use crate::store::{StoreError, WriteItem};

impl Serving {
    pub async fn put(&self, req: PutRequest, started: Instant) -> Result<Response, ProtocolError> {
        let registry = self.registry.pin();
        let view = checked_view(&registry, req.view_id, req.schema_id)?;
        let entries = req.entries(&view.name, view.row_bytes)?;
        if entries.is_empty() {
            return Ok(Response::Put { written: 0 });
        }
        let mut keys = BytesMut::new();
        let mut values = BytesMut::with_capacity(entries.len() * view.layout.value_len());
        let items = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                view.layout
                    .write(&mut keys, &mut values, &e.key, e.computed_at_ms, &e.row)
                    .map_err(|why| {
                        ProtocolError::new(
                            ErrorCode::BadRow,
                            format!(
                                "view {}: entry {i}: entity key {:?} {why}; nothing was written",
                                view.name,
                                String::from_utf8_lossy(&e.key)
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<WriteItem>, ProtocolError>>()?;
        let entities: Arc<[Bytes]> = entries.iter().map(|e| e.key.clone()).collect();
        let written = items.len() as u32;
        let result = self.backend.write(items, self.settings.write_timeout).await;
        // Whatever the store did, cached rows and reads in flight may now be older than what it
        // holds: drop them here and on every other shard before answering, so that a GET that
        // starts after the acknowledgement reads the new rows.
        self.reader.invalidate(view.id, &entities);
        if let Err(e) = self
            .peers
            .invalidate(view.id, entities, self.settings.write_timeout)
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
            Err(StoreError::Timeout(after)) => Err(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "view {}: Redis did not acknowledge the {written} writes within {after:?}; none is acknowledged (some may have landed): retry the PUT, it is idempotent",
                    view.name
                ),
            )),
            Err(StoreError::Unavailable(why)) => Err(ProtocolError::new(
                ErrorCode::BackendUnavailable,
                format!("view {}: nothing acknowledged, {why}", view.name),
            )),
            Err(StoreError::Partial {
                written: acked,
                total,
                why,
            }) => Err(ProtocolError::new(
                ErrorCode::BackendUnavailable,
                format!(
                    "view {}: the write may be partial: {acked} of {total} rows acknowledged, the rest failed ({why}); retry the PUT, it is idempotent",
                    view.name
                ),
            )),
            Err(StoreError::Redirected(r)) => Err(ProtocolError::new(
                ErrorCode::BackendUnavailable,
                format!(
                    "view {}: nothing acknowledged, Redis Cluster redirected the write ({r}); retry the PUT",
                    view.name
                ),
            )),
            Err(StoreError::BreakerOpen) => Err(ProtocolError::new(
                ErrorCode::BackendUnavailable,
                format!(
                    "view {}: nothing acknowledged, circuit breaker open: Redis failed recently; retry after it recovers",
                    view.name
                ),
            )),
        }
    }
}
