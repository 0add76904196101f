//! How a view's rows sit in the store: everything about keys, read commands and value formats in
//! one place. A view names its layout in the registry; the reading stage and PUT only call the
//! methods here.
//!
//! Today there is one layout, [`Packed`]: one key per entity holding our packed row. A layout for
//! Feast's hashes is a new variant of [`Layout`], implemented in a file of its own beside it.

mod packed;

use bytes::{Bytes, BytesMut};

pub use packed::Packed;

use super::{ReadKey, Stored, WriteItem};

/// A view's layout in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `fp:{view}:v{version}:{entity}` holding a format byte, computed_at and the packed row.
    Packed(Packed),
}

impl Layout {
    /// The read that fetches `entity`'s row. The key is built into `buf` so that one request's
    /// keys share one allocation.
    pub fn read_key(&self, buf: &mut BytesMut, entity: &[u8]) -> ReadKey {
        match self {
            Layout::Packed(p) => p.read_key(buf, entity),
        }
    }

    /// Decodes what the store holds for one entity.
    pub fn decode(&self, value: &Bytes) -> Stored {
        match self {
            Layout::Packed(p) => p.decode(value),
        }
    }

    /// The write that stores `row` for `entity`. Keys go into `keys`, values into `values`.
    pub fn write(
        &self,
        keys: &mut BytesMut,
        values: &mut BytesMut,
        entity: &[u8],
        computed_at_ms: u64,
        row: &[u8],
    ) -> WriteItem {
        match self {
            Layout::Packed(p) => p.write(keys, values, entity, computed_at_ms, row),
        }
    }

    /// Bytes a write of one row takes in the store, for sizing buffers.
    pub fn value_len(&self) -> usize {
        match self {
            Layout::Packed(p) => p.value_len(),
        }
    }

    /// The key prefix that Redis client tracking watches for writes to this view's rows.
    pub fn tracking_prefix(&self) -> &'static str {
        match self {
            Layout::Packed(_) => packed::TRACKING_PREFIX,
        }
    }

    /// The entity whose row `key` holds, when `key` is one of this view's keys.
    pub fn entity_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        match self {
            Layout::Packed(p) => p.entity_of(key),
        }
    }
}
