//! Our own layout: one Redis string per entity.
//!
//! Key: `fp:{view}:v{version}:{entity_key}`; two versions of a view live side by side during a
//! migration. Value: `u8 format` (1), `u64 computed_at_ms` (LE), then the row bytes.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::store::{ReadCommand, Stored, WriteItem};

/// The only value format v1 writes and reads.
pub const FORMAT_V1: u8 = 1;
/// Bytes before the row in a stored value.
pub const VALUE_HEADER: usize = 9;
/// Every key of this layout starts with this.
pub const TRACKING_PREFIX: &str = "fp:";

/// A view stored in the packed layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// `fp:{name}:v{version}:`, the prefix of every key of the view.
    key_prefix: Bytes,
    /// Bytes in one row of the view.
    row_bytes: usize,
    /// Redis expiry of rows written by PUT.
    ttl: Duration,
}

impl Packed {
    pub fn new(view: &str, version: u32, row_bytes: usize, ttl: Duration) -> Packed {
        Packed {
            key_prefix: Bytes::from(format!("{TRACKING_PREFIX}{view}:v{version}:")),
            row_bytes,
            ttl,
        }
    }

    /// The prefix of every key of the view.
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }

    fn key_into(&self, buf: &mut impl BufMut, entity: &[u8]) {
        buf.put_slice(&self.key_prefix);
        buf.put_slice(entity);
    }

    pub(super) fn read_key_into(&self, buf: &mut Vec<u8>, entity: &[u8]) -> ReadCommand {
        self.key_into(buf, entity);
        ReadCommand::Value
    }

    /// Anything but format 1 with exactly `row_bytes` of row is INVALID.
    pub(super) fn decode<'a>(&self, value: &'a Bytes) -> Stored<'a> {
        if value.len() != VALUE_HEADER + self.row_bytes || value[0] != FORMAT_V1 {
            return Stored::Invalid;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&value[1..9]);
        Stored::Row {
            computed_at_ms: u64::from_le_bytes(ts),
            row: Cow::Borrowed(&value[VALUE_HEADER..]),
        }
    }

    pub(super) fn write(
        &self,
        keys: &mut BytesMut,
        values: &mut BytesMut,
        entity: &[u8],
        computed_at_ms: u64,
        row: &[u8],
    ) -> WriteItem {
        values.reserve(VALUE_HEADER + row.len());
        values.put_u8(FORMAT_V1);
        values.put_u64_le(computed_at_ms);
        values.put_slice(row);
        keys.reserve(self.key_prefix.len() + entity.len());
        self.key_into(keys, entity);
        WriteItem::Value {
            key: keys.split().freeze(),
            value: values.split().freeze(),
            ttl: self.ttl,
        }
    }

    pub(super) fn value_len(&self) -> usize {
        VALUE_HEADER + self.row_bytes
    }

    pub(super) fn entity_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        key.strip_prefix(&self.key_prefix[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Fetched, KeyBlock, Layout};

    /// user_features of examples/features.toml: 16 f32.
    fn layout() -> Layout {
        Layout::Packed(Packed::new(
            "user_features",
            1,
            64,
            Duration::from_secs(3600),
        ))
    }

    #[test]
    fn value_round_trips_and_wrong_lengths_are_invalid() {
        let v = layout();
        let row = vec![7u8; 64];
        let (mut kbuf, mut vbuf) = (BytesMut::new(), BytesMut::new());
        let Ok(WriteItem::Value { key, value, .. }) =
            v.write(&mut kbuf, &mut vbuf, b"u1", 1234, &row)
        else {
            panic!("a packed write is one value");
        };
        assert_eq!(value.len(), 73);
        // The decoded row borrows the fetched value; keep a copy to compare.
        let decode = |l: &Layout, b: &Bytes| -> Stored<'static> {
            match l.decode(&Fetched::Value(b.clone())) {
                Stored::Row {
                    computed_at_ms,
                    row,
                } => Stored::Row {
                    computed_at_ms,
                    row: Cow::Owned(row.into_owned()),
                },
                Stored::Invalid => Stored::Invalid,
                Stored::Absent => Stored::Absent,
            }
        };
        assert_eq!(
            decode(&v, &value),
            Stored::Row {
                computed_at_ms: 1234,
                row: row.into()
            }
        );
        let short = Layout::Packed(Packed::new("user_features", 1, 60, Duration::from_secs(1)));
        assert_eq!(decode(&short, &value), Stored::Invalid);
        assert_eq!(decode(&v, &value.slice(..72)), Stored::Invalid);
        let mut bad = value.to_vec();
        bad[0] = 2;
        assert_eq!(decode(&v, &Bytes::from(bad)), Stored::Invalid);
        assert_eq!(v.decode(&Fetched::Absent), Stored::Absent);
        assert_eq!(v.decode(&Fetched::WrongType), Stored::Invalid);
        assert_eq!(&key[..], b"fp:user_features:v1:u1");
        let mut reads = KeyBlock::default();
        assert!(reads.push(&v, b"u1"));
        let read = reads.drain().next().unwrap();
        assert_eq!(&read.key[..], b"fp:user_features:v1:u1");
        assert_eq!(read.command, ReadCommand::Value);
        assert_eq!(
            v.entity_of(b"fp:user_features:v1:u1").as_deref(),
            Some(&b"u1"[..])
        );
        assert_eq!(v.entity_of(b"fp:user_features:v2:u1"), None);
    }
}
