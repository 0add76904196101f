//! The online store layout in Redis and the freshness rules applied to what is read back.
//!
//! Key: `fp:{view}:v{version}:{entity_key}`. Value: `u8 format` (1), `u64 computed_at_ms` (LE),
//! then the row bytes.

use bytes::{BufMut, Bytes, BytesMut};
use featureproxy_protocol::Status;

use crate::registry::View;

/// The only value format v1 writes and reads.
pub const FORMAT_V1: u8 = 1;
/// Bytes before the row in a stored value.
pub const VALUE_HEADER: usize = 9;

/// Appends `view`'s Redis key for `entity` to `buf` and returns it as its own `Bytes`. Building
/// many keys into one buffer costs one allocation per batch instead of one per key.
pub fn key_into(buf: &mut BytesMut, view: &View, entity: &[u8]) -> Bytes {
    buf.reserve(view.key_prefix.len() + entity.len());
    buf.put_slice(&view.key_prefix);
    buf.put_slice(entity);
    buf.split().freeze()
}

/// Appends a stored value to `buf` and returns it as its own `Bytes`.
pub fn value_into(buf: &mut BytesMut, computed_at_ms: u64, row: &[u8]) -> Bytes {
    buf.reserve(VALUE_HEADER + row.len());
    buf.put_u8(FORMAT_V1);
    buf.put_u64_le(computed_at_ms);
    buf.put_slice(row);
    buf.split().freeze()
}

/// A value read back from Redis, judged against its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A readable value: when it was computed and its row (a slice of the read buffer).
    Row { computed_at_ms: u64, row: Bytes },
    /// Wrong format byte or wrong length for the view's rows.
    Invalid,
}

/// Reads a stored value; anything but format 1 with exactly `row_bytes` of row is INVALID.
pub fn parse(value: &Bytes, row_bytes: usize) -> Stored {
    if value.len() != VALUE_HEADER + row_bytes || value[0] != FORMAT_V1 {
        return Stored::Invalid;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&value[1..9]);
    Stored::Row {
        computed_at_ms: u64::from_le_bytes(ts),
        row: value.slice(VALUE_HEADER..),
    }
}

/// The age in ms of a value computed at `computed_at_ms`, seen at `now_ms`. A timestamp from the
/// future (clock skew between writer and proxy) counts as age 0 rather than wrapping around.
pub fn age_ms(now_ms: u64, computed_at_ms: u64) -> u32 {
    now_ms
        .saturating_sub(computed_at_ms)
        .min(u32::MAX as u64 - 1) as u32
}

/// FRESH, STALE or EXPIRED by the view's thresholds.
pub fn freshness(view: &View, age_ms: u32) -> Status {
    let age = age_ms as u128;
    if age > view.max_staleness.as_millis() {
        Status::Expired
    } else if age > view.stale_after.as_millis() {
        Status::Stale
    } else {
        Status::Fresh
    }
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn view() -> View {
        let r = Registry::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/features.toml"
        ))
        .unwrap();
        r.by_name("user_features").unwrap().clone()
    }

    #[test]
    fn value_round_trips_and_wrong_lengths_are_invalid() {
        let v = view();
        let row = vec![7u8; 64];
        let mut buf = BytesMut::new();
        let value = value_into(&mut buf, 1234, &row);
        assert_eq!(value.len(), 73);
        assert_eq!(
            parse(&value, 64),
            Stored::Row {
                computed_at_ms: 1234,
                row: Bytes::from(row)
            }
        );
        assert_eq!(parse(&value, 60), Stored::Invalid);
        assert_eq!(parse(&value.slice(..72), 64), Stored::Invalid);
        let mut bad = value.to_vec();
        bad[0] = 2;
        assert_eq!(parse(&Bytes::from(bad), 64), Stored::Invalid);
        assert_eq!(
            &key_into(&mut buf, &v, b"u1")[..],
            b"fp:user_features:v1:u1"
        );
    }

    #[test]
    fn freshness_thresholds() {
        let v = view();
        assert_eq!(freshness(&v, 0), Status::Fresh);
        assert_eq!(freshness(&v, 120_000), Status::Fresh);
        assert_eq!(freshness(&v, 120_001), Status::Stale);
        assert_eq!(freshness(&v, 600_000), Status::Stale);
        assert_eq!(freshness(&v, 600_001), Status::Expired);
        assert_eq!(age_ms(1000, 2000), 0);
        assert_eq!(age_ms(5000, 2000), 3000);
    }
}
