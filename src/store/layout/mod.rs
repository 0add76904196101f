//! How a view's rows sit in the store: everything about keys, read commands and value formats in
//! one place. A view names its layout in the registry; the reading stage and PUT only call the
//! methods here.
//!
//! Two layouts: [`Packed`], ours (one key per entity holding the packed row), and [`Feast`],
//! Feast's online store read and written unchanged (one hash per entity).

pub mod feast;
mod packed;

use std::borrow::Cow;

use bytes::BytesMut;

use super::ReadCommand;

pub use feast::{BadEntity, Feast};
pub use packed::Packed;

use super::{Fetched, Stored, WriteItem};

/// A view's layout in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `fp:{view}:v{version}:{entity}` holding a format byte, computed_at and the packed row.
    Packed(Packed),
    /// Feast's serialized entity key + project, a hash with a field per feature and `_ts`.
    Feast(Feast),
}

impl Layout {
    /// Appends the store key of `entity`'s row to `buf` and says which command reads it; None
    /// when `entity` cannot be a key of this view (a Feast view's integer join key that is not an
    /// integer), and then `buf` may hold part of a key: [`KeyBlock`](super::KeyBlock) builds the
    /// reads of a request with this and cuts such leftovers off.
    pub fn read_key_into(&self, buf: &mut Vec<u8>, entity: &[u8]) -> Option<ReadCommand> {
        match self {
            Layout::Packed(p) => Some(p.read_key_into(buf, entity)),
            Layout::Feast(f) => f.read_key_into(buf, entity),
        }
    }

    /// Decodes what the store answered for one entity (never a [`Fetched::Failed`]: a failed
    /// read is the reader's to judge).
    pub fn decode<'a>(&self, fetched: &'a Fetched) -> Stored<'a> {
        match self {
            Layout::Packed(p) => match fetched {
                Fetched::Value(v) => p.decode(v),
                Fetched::Absent => Stored::Absent,
                Fetched::Fields(_) | Fetched::WrongType | Fetched::Failed(_) => Stored::Invalid,
            },
            Layout::Feast(f) => f.decode(fetched),
        }
    }

    /// Which feature made a row [`Stored::Invalid`], where the layout stores features apart (a
    /// Feast hash: the first field null, missing or of another kind); None for a packed row
    /// (it is whole or not). Asked only on that rare path, so decoding stays as it was.
    pub fn invalid_field(&self, fetched: &Fetched) -> Option<usize> {
        match self {
            Layout::Packed(_) => None,
            Layout::Feast(f) => f.invalid_field(fetched),
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
    ) -> Result<WriteItem, BadEntity> {
        match self {
            Layout::Packed(p) => Ok(p.write(keys, values, entity, computed_at_ms, row)),
            Layout::Feast(f) => f.write(keys, values, entity, computed_at_ms, row),
        }
    }

    /// Bytes a write of one row takes in the store, for sizing buffers.
    pub fn value_len(&self) -> usize {
        match self {
            Layout::Packed(p) => p.value_len(),
            Layout::Feast(f) => f.value_len(),
        }
    }

    /// The key prefix that Redis client tracking watches for writes to this view's rows.
    pub fn tracking_prefix(&self) -> String {
        match self {
            Layout::Packed(_) => packed::TRACKING_PREFIX.to_string(),
            Layout::Feast(f) => f.tracking_prefix(),
        }
    }

    /// The entity (as a GET names it) whose row `key` holds, when `key` is one of this view's
    /// keys.
    pub fn entity_of<'k>(&self, key: &'k [u8]) -> Option<Cow<'k, [u8]>> {
        match self {
            Layout::Packed(p) => p.entity_of(key).map(Cow::Borrowed),
            Layout::Feast(f) => f.entity_of(key).map(Cow::Owned),
        }
    }

    /// "packed" or "feast": for operators' output.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Packed(_) => "packed",
            Layout::Feast(_) => "feast",
        }
    }
}
