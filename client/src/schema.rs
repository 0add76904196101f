//! A view's schema: how its rows are laid out and how to read and write them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use featureproxy_protocol::{Dtype, ErrorCode, ProtocolError, SchemaReply};

use crate::{Error, Value};

/// One feature of a view, with where it sits in a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// The feature's name, unique within the view.
    pub name: String,
    /// Its type, and so its width.
    pub dtype: Dtype,
    /// Byte offset of the feature within a row.
    pub offset: usize,
    /// The value the server serves when it has none (statuses missing, expired, degraded,
    /// invalid).
    pub default: Value,
}

/// The schema of one view, as the server described it in its SCHEMA reply.
///
/// Rows are `row_bytes` long and hold the features in schema order, packed with no padding, each
/// little-endian in its dtype's width (`bool` is one byte). The client fetches a view's schema once
/// and caches it ([`crate::Client::schema`]); GETs and PUTs carry its `schema_id` so the server can
/// refuse a request built against an older version of the view instead of returning rows the
/// client would misread.
#[derive(Debug, Clone)]
pub struct Schema {
    name: String,
    reply: SchemaReply,
    features: Vec<Feature>,
    index: HashMap<String, usize>,
    row_bytes: usize,
    all_f32: bool,
}

impl Schema {
    /// Builds a schema from a SCHEMA reply for view `name`.
    ///
    /// Fails with [`Error::Protocol`] when the reply is inconsistent: a `row_bytes` that is not
    /// the sum of the features' widths would make every row misread, so it is refused up front.
    pub fn new(name: impl Into<String>, reply: SchemaReply) -> Result<Schema, Error> {
        let name = name.into();
        let mut features = Vec::with_capacity(reply.features.len());
        let mut index = HashMap::with_capacity(reply.features.len());
        let mut offset = 0usize;
        for (i, f) in reply.features.iter().enumerate() {
            let default = Value::from_le_bytes(f.dtype, &f.default).ok_or_else(|| {
                ProtocolError::malformed(format!("feature {} has a short default", f.name))
            })?;
            features.push(Feature {
                name: f.name.clone(),
                dtype: f.dtype,
                offset,
                default,
            });
            index.entry(f.name.clone()).or_insert(i);
            offset += f.dtype.width();
        }
        if offset != reply.row_bytes as usize {
            return Err(Error::Protocol(ProtocolError::new(
                ErrorCode::Malformed,
                format!(
                    "SCHEMA reply for view {name}: features take {offset} bytes but row_bytes is {}",
                    reply.row_bytes
                ),
            )));
        }
        let all_f32 = features.iter().all(|f| f.dtype == Dtype::F32);
        Ok(Schema {
            name,
            row_bytes: offset,
            features,
            index,
            all_f32,
            reply,
        })
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The view's numeric id, which GET and PUT frames carry instead of the name.
    pub fn view_id(&self) -> u16 {
        self.reply.view_id
    }

    /// Fingerprint of this version of the view (non-zero).
    pub fn schema_id(&self) -> u32 {
        self.reply.schema_id
    }

    /// Length of one row in bytes.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Values older than this are served with status `Stale`.
    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.reply.stale_after_ms as u64)
    }

    /// Values older than this are not served at all: the entity gets the defaults, status
    /// `Expired`.
    pub fn max_staleness(&self) -> Duration {
        Duration::from_millis(self.reply.max_staleness_ms as u64)
    }

    /// The features, in row order.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Number of features (columns of the matrix).
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// True for a view without features.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The position of feature `name` in the row, if the view has it.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The feature called `name`, if the view has it.
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.feature_index(name).and_then(|i| self.features.get(i))
    }

    /// True when every feature is an `f32`: rows then form an n x k `f32` matrix
    /// (see [`crate::Batch::as_f32_matrix`]).
    pub fn all_f32(&self) -> bool {
        self.all_f32
    }

    /// The SCHEMA reply this schema was built from.
    pub fn reply(&self) -> &SchemaReply {
        &self.reply
    }

    /// The default of every feature, in row order: what an entity with no stored value gets.
    pub fn default_row(&self) -> Vec<Value> {
        self.features.iter().map(|f| f.default).collect()
    }

    /// Encodes one row from values in schema order.
    ///
    /// Fails with [`Error::BadRow`] when the number of values differs from the number of features
    /// or a value's type differs from its feature's dtype (the message names the feature). Types
    /// must match exactly: a silently narrowed `f64` would be a wrong feature, not an error.
    pub fn encode_row(&self, values: &[Value]) -> Result<Bytes, Error> {
        let mut out = Vec::with_capacity(self.row_bytes);
        self.encode_row_into(values, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// Like [`Schema::encode_row`], appending to `out` (on error `out` may hold part of the row).
    pub fn encode_row_into(&self, values: &[Value], out: &mut Vec<u8>) -> Result<(), Error> {
        if values.len() != self.features.len() {
            return Err(Error::BadRow(format!(
                "view {} has {} features but the row has {} values",
                self.name,
                self.features.len(),
                values.len()
            )));
        }
        for (f, v) in self.features.iter().zip(values) {
            if v.dtype() != f.dtype {
                return Err(Error::BadRow(format!(
                    "feature {} of view {} is {} but the value given is {v} ({})",
                    f.name,
                    self.name,
                    f.dtype,
                    v.dtype()
                )));
            }
            v.write_le(out);
        }
        Ok(())
    }

    /// Decodes feature `i` of `row`. `None` when the view has no feature `i` or `row` is too short
    /// to hold it.
    pub fn decode_value(&self, row: &[u8], i: usize) -> Option<Value> {
        let f = self.features.get(i)?;
        Value::from_le_bytes(f.dtype, row.get(f.offset..)?)
    }

    /// Decodes a row into one value per feature, in schema order.
    ///
    /// `row` should be [`Schema::row_bytes`] long (rows of a [`crate::Batch`] always are). Features
    /// that a shorter slice cannot hold come back as their defaults rather than panicking.
    pub fn decode_row(&self, row: &[u8]) -> Vec<Value> {
        self.features
            .iter()
            .enumerate()
            .map(|(i, f)| self.decode_value(row, i).unwrap_or(f.default))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use featureproxy_protocol::FeatureSpec;

    pub(crate) fn spec(dtype: Dtype, name: &str, default: Value) -> FeatureSpec {
        let mut d = Vec::new();
        default.write_le(&mut d);
        let mut default = [0u8; 8];
        default[..d.len()].copy_from_slice(&d);
        FeatureSpec {
            dtype,
            name: name.to_string(),
            default,
        }
    }

    pub(crate) fn mixed_reply() -> SchemaReply {
        let features = vec![
            spec(Dtype::F32, "ctr", Value::F32(0.5)),
            spec(Dtype::Bool, "active", Value::Bool(true)),
            spec(Dtype::I64, "clicks", Value::I64(-1)),
            spec(Dtype::F64, "score", Value::F64(0.0)),
            spec(Dtype::I32, "bucket", Value::I32(7)),
        ];
        SchemaReply {
            view_id: 3,
            schema_id: 0xABCD,
            row_bytes: 4 + 1 + 8 + 8 + 4,
            stale_after_ms: 60_000,
            max_staleness_ms: 3_600_000,
            features,
        }
    }

    #[test]
    fn mixed_dtypes_round_trip() {
        let s = Schema::new("user", mixed_reply()).unwrap();
        assert_eq!(s.row_bytes(), 25);
        assert_eq!(
            s.features().iter().map(|f| f.offset).collect::<Vec<_>>(),
            vec![0, 4, 5, 13, 21]
        );
        assert_eq!(s.feature_index("clicks"), Some(2));
        assert_eq!(s.feature_index("nope"), None);
        assert_eq!(s.stale_after(), Duration::from_secs(60));
        assert_eq!(s.max_staleness(), Duration::from_secs(3600));
        assert!(!s.all_f32());
        assert_eq!(
            s.default_row(),
            vec![
                Value::F32(0.5),
                Value::Bool(true),
                Value::I64(-1),
                Value::F64(0.0),
                Value::I32(7)
            ]
        );

        let row = vec![
            Value::F32(1.25),
            Value::Bool(false),
            Value::I64(1 << 40),
            Value::F64(-2.5e-9),
            Value::I32(-3),
        ];
        let bytes = s.encode_row(&row).unwrap();
        assert_eq!(bytes.len(), 25);
        assert_eq!(&bytes[0..4], &1.25f32.to_le_bytes());
        assert_eq!(bytes[4], 0);
        assert_eq!(&bytes[5..13], &(1i64 << 40).to_le_bytes());
        assert_eq!(s.decode_row(&bytes), row);
        assert_eq!(s.decode_value(&bytes, 4), Some(Value::I32(-3)));
        assert_eq!(s.decode_value(&bytes, 5), None);
        // A short slice: no panic, missing features read as defaults.
        let short = s.decode_row(&bytes[..10]);
        assert_eq!(short[0], Value::F32(1.25));
        assert_eq!(short[2], Value::I64(-1));
    }

    #[test]
    fn encode_checks_count_and_types() {
        let s = Schema::new("user", mixed_reply()).unwrap();
        let err = s.encode_row(&[Value::F32(1.0)]).unwrap_err();
        assert!(
            matches!(&err, Error::BadRow(m) if m.contains("5 features")),
            "{err}"
        );
        let err = s
            .encode_row(&[
                Value::F64(1.0),
                Value::Bool(false),
                Value::I64(0),
                Value::F64(0.0),
                Value::I32(0),
            ])
            .unwrap_err();
        assert!(
            matches!(&err, Error::BadRow(m) if m.contains("ctr")),
            "{err}"
        );
        assert_eq!(err.code(), Some(ErrorCode::BadRow));
    }

    #[test]
    fn inconsistent_row_bytes_is_refused() {
        let mut r = mixed_reply();
        r.row_bytes += 1;
        assert!(matches!(Schema::new("user", r), Err(Error::Protocol(_))));
    }
}
