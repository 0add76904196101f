//! Feast's online-store layout, read and written unchanged, so that featureproxy serves a Redis
//! that Feast's materialization fills (and Feast reads what featureproxy's PUT writes).
//!
//! Key: Feast's serialized entity key (version 3) followed by the project name. Value: one hash
//! per entity, shared by every Feast view with the same join keys: a field per feature named by
//! `murmur3("<view>:<feature>")`, holding a serialized `feast.types.Value`, and `_ts:<view>`
//! holding the row's event time. A read is one HMGET of the view's fields and its `_ts`.
//!
//! A GET names an entity by its join key's value as text ([`entity`] says exactly how); rows are
//! decoded into the view's packed row, so what the client gets is the same as for any view.

mod codec;
mod entity;

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use featureproxy_protocol::Dtype;

pub use codec::{feature_field, murmur3_32, timestamp_field};
pub use entity::{BadEntity, JoinKey, JoinKeyType, MAX_JOIN_KEYS, SEPARATOR};

use crate::store::{Fetched, FieldSet, ReadCommand, Stored, WriteItem};
use codec::{decode_timestamp, decode_value, encode_timestamp, encode_value, EntityKeyWriter};

/// A view stored in Feast's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feast {
    /// Appended to every key: Feast's project name.
    project: Bytes,
    /// In the view's order: the order of the parts of a GET's entity key.
    join_keys: Vec<JoinKey>,
    /// Indexes into `join_keys` in Feast's order (sorted by name), the order of the key's values.
    key_order: Vec<usize>,
    /// The serialized join key names: every key of the view starts with these bytes.
    key_names: Bytes,
    /// Each feature's dtype, in row order.
    dtypes: Vec<Dtype>,
    /// What one HMGET asks for: each feature's field, in row order, then `_ts:<view>`.
    fields: FieldSet,
    /// EXPIRE set on the hash by PUT, as Feast's `key_ttl_seconds` does; None: no expiry.
    ttl: Option<Duration>,
}

impl Feast {
    /// `features` are (name, dtype) in row order; `join_keys` in the order a GET key lists them.
    pub fn new(
        view: &str,
        project: &str,
        join_keys: Vec<JoinKey>,
        features: &[(&str, Dtype)],
        ttl: Option<Duration>,
    ) -> Feast {
        let mut key_order: Vec<usize> = (0..join_keys.len()).collect();
        key_order.sort_by(|&a, &b| join_keys[a].name.cmp(&join_keys[b].name));
        let sorted: Vec<&str> = key_order
            .iter()
            .map(|&i| join_keys[i].name.as_str())
            .collect();
        let mut fields: Vec<Bytes> = features
            .iter()
            .map(|(name, _)| Bytes::copy_from_slice(&feature_field(view, name)))
            .collect();
        fields.push(Bytes::from(timestamp_field(view)));
        Feast {
            project: Bytes::copy_from_slice(project.as_bytes()),
            key_names: Bytes::from(EntityKeyWriter::names(&sorted)),
            join_keys,
            key_order,
            dtypes: features.iter().map(|(_, d)| *d).collect(),
            fields: FieldSet::new(fields),
            ttl,
        }
    }

    /// Appends the Redis key of `entity` (a GET's entity key) to `buf`; nothing when it is not
    /// a key of the view.
    fn key_into(&self, buf: &mut impl BufMut, entity: &[u8]) -> Result<(), BadEntity> {
        let values = entity::parse(&self.join_keys, entity)?;
        buf.put_slice(&self.key_names);
        for &i in &self.key_order {
            let (ty, bytes) = values.get(i);
            EntityKeyWriter::value(buf, ty, bytes);
        }
        buf.put_slice(&self.project);
        Ok(())
    }

    /// The most bytes `entity`'s key takes.
    fn key_len_bound(&self, entity: &[u8]) -> usize {
        self.key_names.len() + 16 * self.join_keys.len() + entity.len() + self.project.len()
    }

    pub(super) fn read_key_into(&self, buf: &mut Vec<u8>, entity: &[u8]) -> Option<ReadCommand> {
        self.key_into(buf, entity).ok()?;
        Some(ReadCommand::Fields(self.fields.clone()))
    }

    /// No `_ts` field (no hash, or no row of this view in it): absent. A feature field missing,
    /// null, malformed or of another kind than the view's dtype, or a malformed `_ts`: invalid.
    pub(super) fn decode<'a>(&self, fetched: &'a Fetched) -> Stored<'a> {
        let Fetched::Fields(values) = fetched else {
            return match fetched {
                Fetched::Absent => Stored::Absent,
                _ => Stored::Invalid,
            };
        };
        let Some((Some(ts), features)) = values
            .split_last()
            .filter(|_| values.len() == self.fields.len())
        else {
            return if values.last().is_some_and(Option::is_none) {
                Stored::Absent
            } else {
                Stored::Invalid
            };
        };
        let Some(computed_at_ms) = decode_timestamp(ts) else {
            return Stored::Invalid;
        };
        let row_bytes = self.dtypes.iter().map(|d| d.width()).sum();
        let mut row = Vec::with_capacity(row_bytes);
        let mut one = [0u8; 8];
        for (value, &dtype) in features.iter().zip(&self.dtypes) {
            let Some(value) = value else {
                return Stored::Invalid;
            };
            if decode_value(value, dtype, &mut one).is_err() {
                return Stored::Invalid;
            }
            row.extend_from_slice(&one[..dtype.width()]);
        }
        Stored::Row {
            computed_at_ms,
            row: Cow::Owned(row),
        }
    }

    /// The first feature field that is null, missing or does not decode as its dtype.
    pub(super) fn invalid_field(&self, fetched: &Fetched) -> Option<usize> {
        let Fetched::Fields(values) = fetched else {
            return None;
        };
        let mut one = [0u8; 8];
        self.dtypes.iter().enumerate().position(|(i, &dtype)| {
            match values.get(i).and_then(|v| v.as_ref()) {
                Some(v) => decode_value(v, dtype, &mut one).is_err(),
                None => true,
            }
        })
    }

    /// HSET of every feature and `_ts`, exactly as Feast's writer encodes them, then the EXPIRE.
    pub(super) fn write(
        &self,
        keys: &mut BytesMut,
        values: &mut BytesMut,
        entity: &[u8],
        computed_at_ms: u64,
        row: &[u8],
    ) -> Result<WriteItem, BadEntity> {
        keys.reserve(self.key_len_bound(entity));
        self.key_into(keys, entity)?;
        let key = keys.split().freeze();
        let names = self.fields.fields();
        let mut fields = Vec::with_capacity(names.len());
        let mut at = 0;
        for (name, &dtype) in names.iter().zip(&self.dtypes) {
            encode_value(values, dtype, row.get(at..).unwrap_or_default());
            at += dtype.width();
            fields.push((name.clone(), values.split().freeze()));
        }
        encode_timestamp(values, computed_at_ms);
        fields.push((names[names.len() - 1].clone(), values.split().freeze()));
        Ok(WriteItem::Fields {
            key,
            fields,
            expire: self.ttl,
        })
    }

    /// Bytes a write of one row takes: a tag and at most 10 bytes per feature, and the `_ts`.
    pub(super) fn value_len(&self) -> usize {
        11 * self.dtypes.len() + 16
    }

    /// Every key of the view starts with its join key names; the tracking prefix is that much,
    /// cut to valid UTF-8 (a shorter prefix only lets through notices the reader then ignores).
    pub(super) fn tracking_prefix(&self) -> String {
        let valid = match std::str::from_utf8(&self.key_names) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.key_names[..e.valid_up_to()]).unwrap_or_default(),
        };
        valid.to_string()
    }

    /// The GET entity key of the row `key` holds, when `key` is a key of this view.
    pub(super) fn entity_of(&self, key: &[u8]) -> Option<Vec<u8>> {
        let values = key
            .strip_suffix(&self.project[..])?
            .strip_prefix(&self.key_names[..])?;
        entity::text_of(&self.join_keys, &self.key_order, values)
    }

    /// The view's join keys, in the order a GET key lists them.
    pub fn join_keys(&self) -> &[JoinKey] {
        &self.join_keys
    }

    /// Feast's project name.
    pub fn project(&self) -> &[u8] {
        &self.project
    }
}

#[cfg(test)]
mod tests;
