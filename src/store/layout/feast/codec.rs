//! Feast's bytes, exactly as Feast 0.38+ writes them to Redis (read from Feast's Python writer
//! `sdk/python/feast/infra/online_stores/redis.py` and its Go reader; checked byte for byte
//! against what the real `feast` package wrote, in `tests/data/feast_vectors.json`).
//!
//! - field names: `murmur3_32("<view>:<feature>", seed 0)` as 4 little-endian bytes;
//! - entity keys: `serialize_entity_key` version 3 (see [`EntityKeyWriter`]);
//! - values: a serialized `feast.types.Value` protobuf (a oneof; we read and write the five
//!   scalar kinds a packed row can hold);
//! - the row's event time: a serialized `google.protobuf.Timestamp`.
//!
//! The protobuf here is hand-written on purpose: five scalar fields and a timestamp do not
//! justify a code generator and a build step, and a decoder of our own can promise never to
//! panic or allocate on whatever bytes Redis returns.

use featureproxy_protocol::Dtype;

/// `murmur3_32` (x86, 32-bit) of `data` with seed 0: how Feast names a feature's hash field.
pub fn murmur3_32(data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h: u32 = 0;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k: u32 = 0;
        for (i, &byte) in tail.iter().enumerate() {
            k |= (byte as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash field that holds `feature` of `view`.
pub fn feature_field(view: &str, feature: &str) -> [u8; 4] {
    murmur3_32(format!("{view}:{feature}").as_bytes()).to_le_bytes()
}

/// The hash field that holds the event time of `view`'s row.
pub fn timestamp_field(view: &str) -> Vec<u8> {
    format!("_ts:{view}").into_bytes()
}

/// Feast's `ValueType` numbers, as they appear in serialized entity keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum KeyType {
    Bytes = 1,
    String = 2,
    Int32 = 3,
    Int64 = 4,
}

/// Writes a version-3 serialized entity key:
/// `u32 n`, then per join key sorted by name `u32 2 | u32 len | name`, then per value in the
/// same order `u32 type | u32 len | bytes` (integers little-endian: INT32 4 bytes, INT64 8).
/// Feast appends the project name to make the Redis key.
pub struct EntityKeyWriter;

impl EntityKeyWriter {
    /// The part before the values: the same for every entity of a set of join keys.
    /// `sorted_names` must already be sorted (Feast sorts by name).
    pub fn names(sorted_names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(sorted_names.len() as u32).to_le_bytes());
        for name in sorted_names {
            out.extend_from_slice(&(KeyType::String as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    /// One value of the key.
    pub fn value(out: &mut impl bytes::BufMut, ty: KeyType, bytes: &[u8]) {
        out.put_u32_le(ty as u32);
        out.put_u32_le(bytes.len() as u32);
        out.put_slice(bytes);
    }
}

/// Reads one value of a serialized entity key from the front of `input`: its type number and
/// bytes, and what follows. None when `input` is too short.
pub fn read_key_value(input: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    let ty = u32::from_le_bytes(input.get(..4)?.try_into().ok()?);
    let len = u32::from_le_bytes(input.get(4..8)?.try_into().ok()?) as usize;
    let rest = &input[8..];
    if rest.len() < len {
        return None;
    }
    Some((ty, &rest[..len], &rest[len..]))
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The `feast.types.Value` field number of the kind that holds `dtype`.
fn value_field(dtype: Dtype) -> (u64, u8) {
    match dtype {
        Dtype::I32 => (3, VARINT),  // int32_val
        Dtype::I64 => (4, VARINT),  // int64_val
        Dtype::F64 => (5, FIXED64), // double_val
        Dtype::F32 => (6, FIXED32), // float_val
        Dtype::Bool => (7, VARINT), // bool_val
    }
}

/// Why a stored Feast value cannot be served as a feature of the view's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadValue {
    /// Not a well-formed protobuf message.
    Malformed,
    /// A Value with no kind set: Feast's null (a missing or NaN-free null feature).
    Null,
    /// A Value of another kind than the view's dtype (e.g. a double where f32 is declared).
    WrongKind,
}

/// Decodes a serialized `feast.types.Value` of the kind that holds `dtype` into `out` (the
/// feature's little-endian bytes, `dtype.width()` of them). As protobuf says, when a message
/// sets the oneof twice the last one wins; unknown fields are skipped.
pub fn decode_value(bytes: &[u8], dtype: Dtype, out: &mut [u8; 8]) -> Result<(), BadValue> {
    let mut r = ProtoReader { input: bytes };
    let mut last: Option<(u64, Field)> = None;
    while !r.input.is_empty() {
        let (number, field) = r.field().ok_or(BadValue::Malformed)?;
        // Fields 1..=18 and 19 (null_val) and the newer kinds all belong to the oneof.
        last = Some((number, field));
    }
    let Some((number, field)) = last else {
        return Err(BadValue::Null);
    };
    let (want, _) = value_field(dtype);
    if number != want {
        return Err(if number == 19 {
            BadValue::Null
        } else {
            BadValue::WrongKind
        });
    }
    match (dtype, field) {
        (Dtype::F32, Field::Fixed32(v)) => out[..4].copy_from_slice(&v.to_le_bytes()),
        (Dtype::F64, Field::Fixed64(v)) => out[..8].copy_from_slice(&v.to_le_bytes()),
        // proto3 int32: the low 32 bits of the varint (negatives are sign-extended to 10 bytes).
        (Dtype::I32, Field::Varint(v)) => out[..4].copy_from_slice(&(v as u32).to_le_bytes()),
        (Dtype::I64, Field::Varint(v)) => out[..8].copy_from_slice(&v.to_le_bytes()),
        (Dtype::Bool, Field::Varint(v)) => out[0] = u8::from(v != 0),
        _ => return Err(BadValue::WrongKind),
    }
    Ok(())
}

/// Encodes one feature (its little-endian bytes in a packed row) as Feast's writer does:
/// `Value(float_val=..)` and so on, serialized. `le` holds `dtype.width()` bytes (PUT rows are
/// checked against the view's row length before they get here); missing bytes count as zeros.
pub fn encode_value(out: &mut impl bytes::BufMut, dtype: Dtype, le: &[u8]) {
    let mut b = [0u8; 8];
    let n = le.len().min(dtype.width());
    b[..n].copy_from_slice(&le[..n]);
    let (number, wire) = value_field(dtype);
    put_varint(out, number << 3 | wire as u64);
    let [b0, b1, b2, b3, ..] = b;
    match dtype {
        Dtype::F32 => out.put_slice(&b[..4]),
        Dtype::F64 => out.put_slice(&b),
        // proto3 int32: negatives are sign-extended to 64 bits (a 10-byte varint).
        Dtype::I32 => put_varint(out, i32::from_le_bytes([b0, b1, b2, b3]) as i64 as u64),
        Dtype::I64 => put_varint(out, u64::from_le_bytes(b)),
        Dtype::Bool => put_varint(out, u64::from(b0 != 0)),
    }
}

/// Decodes a serialized `google.protobuf.Timestamp` into Unix milliseconds. None when it is
/// malformed, before 1970 or out of range.
pub fn decode_timestamp(bytes: &[u8]) -> Option<u64> {
    let mut r = ProtoReader { input: bytes };
    let (mut seconds, mut nanos) = (0i64, 0i32);
    while !r.input.is_empty() {
        match r.field()? {
            (1, Field::Varint(v)) => seconds = v as i64,
            (2, Field::Varint(v)) => nanos = v as i32,
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    if seconds < 0 || !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    (seconds as u64)
        .checked_mul(1000)?
        .checked_add(nanos as u64 / 1_000_000)
}

/// Encodes Unix milliseconds as a serialized `google.protobuf.Timestamp`, as Python's protobuf
/// does (fields in order, zeros left out): the milliseconds are kept as nanos.
pub fn encode_timestamp(out: &mut impl bytes::BufMut, unix_ms: u64) {
    let seconds = unix_ms / 1000;
    let nanos = (unix_ms % 1000) * 1_000_000;
    if seconds != 0 {
        put_varint(out, 1 << 3 | VARINT as u64);
        put_varint(out, seconds);
    }
    if nanos != 0 {
        put_varint(out, 2 << 3 | VARINT as u64);
        put_varint(out, nanos);
    }
}

fn put_varint(out: &mut impl bytes::BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// One protobuf field's payload.
#[derive(Debug, Clone, Copy)]
enum Field {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited: a string, bytes or a nested message; never served, only skipped.
    Len,
}

struct ProtoReader<'a> {
    input: &'a [u8],
}

impl ProtoReader<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.input.split_first()?;
            self.input = rest;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.input.len() < n {
            return None;
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Some(head)
    }

    /// The next field: its number and payload. None on malformed input.
    fn field(&mut self) -> Option<(u64, Field)> {
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 {
            return None;
        }
        let field = match (tag & 7) as u8 {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            FIXED32 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            LEN => {
                let n = usize::try_from(self.varint()?).ok()?;
                self.take(n)?;
                Field::Len
            }
            _ => return None,
        };
        Some((number, field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn murmur3_matches_the_standard_vectors() {
        assert_eq!(murmur3_32(b""), 0);
        assert_eq!(murmur3_32(b"hello"), 0x248b_fa47);
        assert_eq!(murmur3_32(b"hello, world"), 0x149b_bb7f);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    /// The worked example of the Feast layout (project feature_repo, driver_id INT64 1001).
    #[test]
    fn the_worked_example_encodes_byte_for_byte() {
        let mut key = EntityKeyWriter::names(&["driver_id"]);
        EntityKeyWriter::value(&mut key, KeyType::Int64, &1001i64.to_le_bytes());
        key.extend_from_slice(b"feature_repo");
        let expected = format!(
            "01000000{}{}{}{}{}{}{}",
            "02000000",
            "09000000",
            hex(b"driver_id"),
            "04000000",
            "08000000",
            "e903000000000000",
            hex(b"feature_repo")
        );
        assert_eq!(hex(&key), expected);
        assert_eq!(
            hex(&feature_field("driver_hourly_stats", "conv_rate")),
            "6160e3da"
        );
        let mut v = Vec::new();
        encode_value(&mut v, Dtype::F64, &0.5f64.to_le_bytes());
        assert_eq!(hex(&v), "29000000000000e03f");
        v.clear();
        encode_value(&mut v, Dtype::F32, &0.5f32.to_le_bytes());
        assert_eq!(hex(&v), "350000003f");
        v.clear();
        encode_value(&mut v, Dtype::I64, &308i64.to_le_bytes());
        assert_eq!(hex(&v), "20b402");
        v.clear();
        encode_timestamp(&mut v, 1_700_000_000_000);
        assert_eq!(hex(&v), "0880e2cfaa06");
        assert_eq!(decode_timestamp(&v), Some(1_700_000_000_000));
    }

    #[test]
    fn values_round_trip_and_other_kinds_are_refused() {
        let cases: [(Dtype, Vec<u8>); 7] = [
            (Dtype::F32, (-1.25f32).to_le_bytes().to_vec()),
            (Dtype::F64, f64::MAX.to_le_bytes().to_vec()),
            (Dtype::I32, (-7i32).to_le_bytes().to_vec()),
            (Dtype::I32, i32::MIN.to_le_bytes().to_vec()),
            (Dtype::I64, i64::MIN.to_le_bytes().to_vec()),
            (Dtype::I64, 0i64.to_le_bytes().to_vec()),
            (Dtype::Bool, vec![1]),
        ];
        for (dtype, le) in cases {
            let mut enc = Vec::new();
            encode_value(&mut enc, dtype, &le);
            let mut out = [0u8; 8];
            decode_value(&enc, dtype, &mut out).unwrap();
            assert_eq!(&out[..dtype.width()], &le[..], "{dtype:?}");
        }
        let mut out = [0u8; 8];
        let mut double = Vec::new();
        encode_value(&mut double, Dtype::F64, &0.5f64.to_le_bytes());
        assert_eq!(
            decode_value(&double, Dtype::F32, &mut out),
            Err(BadValue::WrongKind)
        );
        assert_eq!(decode_value(&[], Dtype::F32, &mut out), Err(BadValue::Null));
        assert_eq!(
            decode_value(&[0x98, 0x01, 0x00], Dtype::F32, &mut out),
            Err(BadValue::Null)
        );
        // string_val "ab" where an i64 is declared.
        assert_eq!(
            decode_value(&[0x12, 2, b'a', b'b'], Dtype::I64, &mut out),
            Err(BadValue::WrongKind)
        );
    }

    #[test]
    fn no_bytes_make_the_decoders_panic() {
        // Every prefix of valid messages and a spread of arbitrary bytes: errors, never panics.
        let mut msgs = Vec::new();
        let mut v = Vec::new();
        encode_value(&mut v, Dtype::F64, &1.5f64.to_le_bytes());
        msgs.push(v.clone());
        v.clear();
        encode_value(&mut v, Dtype::I64, &(-1i64).to_le_bytes());
        msgs.push(v.clone());
        v.clear();
        encode_timestamp(&mut v, 1_234_567_890_123);
        msgs.push(v);
        let mut seed: u32 = 1;
        for _ in 0..2000 {
            let len = (seed % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            msgs.push(bytes);
        }
        let mut out = [0u8; 8];
        for m in &msgs {
            for end in 0..=m.len() {
                for dtype in [Dtype::F32, Dtype::F64, Dtype::I32, Dtype::I64, Dtype::Bool] {
                    let _ = decode_value(&m[..end], dtype, &mut out);
                }
                let _ = decode_timestamp(&m[..end]);
                let _ = read_key_value(&m[..end]);
            }
        }
        assert_eq!(decode_timestamp(&[0x08]), None, "truncated varint");
        assert_eq!(
            decode_timestamp(&[0x08, 0x7f, 0x10]),
            None,
            "truncated nanos"
        );
    }
}
