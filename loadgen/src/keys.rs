//! The key space every subcommand agrees on: entity `i` of `n` is the key `{prefix}{i}`, its
//! feature `j` has a value derived from `(i, j)` alone, and the ids from `round(n * (1 - cold))`
//! upwards are never seeded.
//!
//! Because the cold set is the top of the id range, a run over a larger key space than was seeded
//! sees exactly the extra keys as cold: seeding 1,000,000 entities and running with
//! `--entities 1250000 --cold-fraction 0.2` makes ids 1,000,000.. the cold fifth. Popularity ranks
//! are scrambled into ids (see [`crate::scramble`]), so the cold ids are a random set of ranks.

use featureproxy_client::Value;
use featureproxy_protocol::Dtype;

use crate::rng::mix64;

/// The number of seeded ("warm") entities among `n` when a `cold` fraction is left out; ids
/// `0..warm_count` are seeded.
pub fn warm_count(n: u64, cold: f64) -> u64 {
    let cold = cold.clamp(0.0, 1.0);
    ((n as f64) * (1.0 - cold)).round() as u64
}

/// Appends `{prefix}{id}` to `out`.
#[inline]
pub fn write_key(out: &mut Vec<u8>, prefix: &[u8], id: u64) {
    out.extend_from_slice(prefix);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = id;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The entity id of a key `{prefix}{id}`, if it is one.
pub fn parse_key(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The value of feature `j` (of `dtype`) of entity `id`: a pure function of `(id, j)`, exactly
/// representable in its dtype so a reader can compare bytes.
pub fn feature_value(dtype: Dtype, id: u64, j: usize) -> Value {
    let h = mix64(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (j as u64 + 1));
    match dtype {
        // 24 bits / 1024: exact in an f32, in [0, 16384).
        Dtype::F32 => Value::F32((h >> 40) as f32 / 1024.0),
        Dtype::F64 => Value::F64((h >> 11) as f64 / (1u64 << 20) as f64),
        Dtype::I32 => Value::I32((h >> 32) as u32 as i32),
        Dtype::I64 => Value::I64(h as i64),
        Dtype::Bool => Value::Bool(h & 1 == 1),
    }
}

/// Entity `id`'s whole row, as values in schema order.
pub fn row_values(dtypes: &[Dtype], id: u64) -> Vec<Value> {
    dtypes
        .iter()
        .enumerate()
        .map(|(j, d)| feature_value(*d, id, j))
        .collect()
}

/// Entity `id`'s row as packed little-endian bytes (what GET returns for it), appended to `out`.
pub fn write_row(out: &mut Vec<u8>, dtypes: &[Dtype], id: u64) {
    for (j, d) in dtypes.iter().enumerate() {
        feature_value(*d, id, j).write_le(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let mut out = Vec::new();
        for id in [0u64, 7, 10, 999_999, u64::MAX / 2] {
            out.clear();
            write_key(&mut out, b"u:", id);
            assert_eq!(out, format!("u:{id}").into_bytes());
            assert_eq!(parse_key(&out, b"u:"), Some(id));
        }
        assert_eq!(parse_key(b"x:1", b"u:"), None);
        assert_eq!(parse_key(b"u:", b"u:"), None);
        assert_eq!(parse_key(b"u:1a", b"u:"), None);
    }

    #[test]
    fn cold_set_is_the_top_of_the_range() {
        assert_eq!(warm_count(1_000_000, 0.0), 1_000_000);
        assert_eq!(warm_count(1_000_000, 0.1), 900_000);
        assert_eq!(warm_count(1_250_000, 0.2), 1_000_000);
        assert_eq!(warm_count(10, 1.0), 0);
    }

    #[test]
    fn rows_are_deterministic_and_sized() {
        let dtypes = [Dtype::F32, Dtype::I64, Dtype::Bool, Dtype::F64, Dtype::I32];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_row(&mut a, &dtypes, 42);
        write_row(&mut b, &dtypes, 42);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4 + 8 + 1 + 8 + 4);
        b.clear();
        write_row(&mut b, &dtypes, 43);
        assert_ne!(a, b);
        let mut c = Vec::new();
        for v in row_values(&dtypes, 42) {
            v.write_le(&mut c);
        }
        assert_eq!(a, c);
    }
}
