//! The Feast layout against hand-checked bytes (the worked example of Feast's format) and its
//! own round trips; tests/data/feast_vectors.json holds what the real `feast` package wrote.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::Dtype;

use super::*;
use crate::store::{Fetched, ReadCommand, Stored, WriteItem};

fn driver_view() -> Feast {
    Feast::new(
        "driver_hourly_stats",
        "feature_repo",
        vec![JoinKey {
            name: "driver_id".into(),
            dtype: JoinKeyType::Int64,
        }],
        &[
            ("conv_rate", Dtype::F32),
            ("trips", Dtype::I64),
            ("active", Dtype::Bool),
        ],
        Some(Duration::from_secs(3600)),
    )
}

/// A compound key, declared in another order than Feast's (by name).
fn trip_view() -> Feast {
    Feast::new(
        "trips",
        "p",
        vec![
            JoinKey {
                name: "rider".into(),
                dtype: JoinKeyType::String,
            },
            JoinKey {
                name: "city_id".into(),
                dtype: JoinKeyType::Int32,
            },
        ],
        &[("fare", Dtype::F64)],
        None,
    )
}

fn key(f: &Feast, entity: &[u8]) -> Option<Bytes> {
    f.read_key(&mut BytesMut::new(), entity).map(|k| k.key)
}

#[test]
fn keys_are_feasts_serialized_entity_keys_plus_the_project() {
    let k = key(&driver_view(), b"1001").unwrap();
    let mut want = Vec::new();
    for part in [
        &1u32.to_le_bytes()[..],
        &2u32.to_le_bytes(),
        &9u32.to_le_bytes(),
        b"driver_id",
        &4u32.to_le_bytes(),
        &8u32.to_le_bytes(),
        &1001i64.to_le_bytes(),
        b"feature_repo",
    ] {
        want.extend_from_slice(part);
    }
    assert_eq!(&k[..], &want[..]);
    assert!(k.starts_with(driver_view().tracking_prefix().as_bytes()));

    // city_id sorts before rider: its value comes first, whatever the view's order.
    let k = key(&trip_view(), b"ann\x1f-7").unwrap();
    let mut want = Vec::new();
    for part in [
        &2u32.to_le_bytes()[..],
        &2u32.to_le_bytes(),
        &7u32.to_le_bytes(),
        b"city_id",
        &2u32.to_le_bytes(),
        &5u32.to_le_bytes(),
        b"rider",
        &3u32.to_le_bytes(),
        &4u32.to_le_bytes(),
        &(-7i32).to_le_bytes(),
        &2u32.to_le_bytes(),
        &3u32.to_le_bytes(),
        b"ann",
        b"p",
    ] {
        want.extend_from_slice(part);
    }
    assert_eq!(&k[..], &want[..]);
}

#[test]
fn entity_keys_that_name_no_entity_are_refused() {
    let d = driver_view();
    for bad in [
        &b""[..],
        b"007",
        b"+1",
        b"-0",
        b"1.0",
        b"1e3",
        b" 1",
        b"99999999999999999999",
    ] {
        assert_eq!(key(&d, bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(key(&d, b"-9223372036854775808").is_some());
    assert!(key(&d, b"0").is_some());
    let t = trip_view();
    assert_eq!(key(&t, b"ann"), None, "one part of two");
    assert_eq!(key(&t, b"ann\x1f1\x1f2"), None, "three parts of two");
    assert_eq!(key(&t, b"ann\x1f3000000000"), None, "beyond int32");
    assert!(key(&t, b"\x1f1").is_some(), "an empty string is a string");
    let err = entity::parse(
        &[JoinKey {
            name: "driver_id".into(),
            dtype: JoinKeyType::Int64,
        }],
        b"x",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("driver_id") && err.contains("int64"), "{err}");
}

#[test]
fn keys_map_back_to_the_entity_a_get_names() {
    for (f, entity) in [
        (driver_view(), &b"-42"[..]),
        (driver_view(), b"1001"),
        (trip_view(), b"ann\x1f-7"),
        (trip_view(), b"\x1f0"),
    ] {
        let k = key(&f, entity).unwrap();
        assert_eq!(f.entity_of(&k).as_deref(), Some(entity));
    }
    let d = driver_view();
    let k = key(&d, b"5").unwrap();
    assert_eq!(d.entity_of(&k[..k.len() - 1]), None, "another project");
    assert_eq!(trip_view().entity_of(&k), None, "other join keys");
    let int32 = Feast::new(
        "driver_hourly_stats",
        "feature_repo",
        vec![JoinKey {
            name: "driver_id".into(),
            dtype: JoinKeyType::Int32,
        }],
        &[("conv_rate", Dtype::F32)],
        None,
    );
    assert_eq!(
        int32.entity_of(&k),
        None,
        "int64 bytes are not an int32 key"
    );
    assert_ne!(
        key(&int32, b"5"),
        Some(k),
        "an int32 key differs from an int64 one"
    );
}

fn fields_of(item: &WriteItem) -> Vec<(Bytes, Bytes)> {
    match item {
        WriteItem::Fields { fields, .. } => fields.clone(),
        WriteItem::Value { .. } => panic!("a Feast write is a hash"),
    }
}

fn row(conv: f32, trips: i64, active: bool) -> Vec<u8> {
    let mut r = conv.to_le_bytes().to_vec();
    r.extend_from_slice(&trips.to_le_bytes());
    r.push(active as u8);
    r
}

#[test]
fn a_written_row_reads_back_and_carries_its_event_time() {
    let d = driver_view();
    let (mut kb, mut vb) = (BytesMut::new(), BytesMut::new());
    let item = d
        .write(
            &mut kb,
            &mut vb,
            b"1001",
            1_767_323_045_678,
            &row(0.5, -3, true),
        )
        .unwrap();
    let WriteItem::Fields { key: k, expire, .. } = &item else {
        unreachable!()
    };
    assert_eq!(Some(k.clone()), key(&d, b"1001"));
    assert_eq!(*expire, Some(Duration::from_secs(3600)));
    let fields = fields_of(&item);
    let names: Vec<&[u8]> = fields.iter().map(|(n, _)| &n[..]).collect();
    assert_eq!(
        names,
        [
            &feature_field("driver_hourly_stats", "conv_rate")[..],
            &feature_field("driver_hourly_stats", "trips")[..],
            &feature_field("driver_hourly_stats", "active")[..],
            b"_ts:driver_hourly_stats",
        ]
    );
    assert_eq!(&fields[0].1[..], &[0x35, 0, 0, 0, 0x3f]);
    assert_eq!(fields[2].1[..], [0x38, 1]);
    // What an HMGET of the read's fields answers, in the read's order.
    let ReadCommand::Fields(asked) = d.read_key(&mut kb, b"1001").unwrap().command else {
        panic!("a Feast read is an HMGET")
    };
    assert_eq!(asked.fields().len(), 4);
    let reply = Fetched::Fields(fields.iter().map(|(_, v)| Some(v.clone())).collect());
    assert_eq!(
        d.decode(&reply),
        Stored::Row {
            computed_at_ms: 1_767_323_045_678,
            row: Bytes::from(row(0.5, -3, true))
        }
    );
}

#[test]
fn what_is_missing_or_of_the_wrong_kind_decodes_as_the_spec_says() {
    let d = driver_view();
    let (mut kb, mut vb) = (BytesMut::new(), BytesMut::new());
    let item = d
        .write(&mut kb, &mut vb, b"7", 1_000, &row(1.0, 2, false))
        .unwrap();
    let good: Vec<Option<Bytes>> = fields_of(&item).into_iter().map(|(_, v)| Some(v)).collect();
    let with = |i: usize, v: Option<&[u8]>| {
        let mut f = good.clone();
        f[i] = v.map(Bytes::copy_from_slice);
        Fetched::Fields(f)
    };
    assert_eq!(
        d.decode(&Fetched::Fields(vec![None; 4])),
        Stored::Absent,
        "no hash"
    );
    assert_eq!(
        d.decode(&with(3, None)),
        Stored::Absent,
        "no _ts: no row of this view"
    );
    assert_eq!(
        d.decode(&with(0, None)),
        Stored::Invalid,
        "a feature absent"
    );
    assert_eq!(
        d.decode(&with(0, Some(&[]))),
        Stored::Invalid,
        "a null Value"
    );
    let double = [0x29, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f];
    assert_eq!(
        d.decode(&with(0, Some(&double))),
        Stored::Invalid,
        "a double for an f32"
    );
    assert_eq!(
        d.decode(&with(1, Some(&[0x20]))),
        Stored::Invalid,
        "truncated"
    );
    assert_eq!(
        d.decode(&with(3, Some(&[0x08]))),
        Stored::Invalid,
        "a malformed _ts"
    );
    assert_eq!(
        d.decode(&Fetched::Fields(good[..3].to_vec())),
        Stored::Invalid,
        "short reply"
    );
    assert_eq!(d.decode(&Fetched::WrongType), Stored::Invalid);
    assert_eq!(d.decode(&Fetched::Absent), Stored::Absent);
    assert!(matches!(
        d.decode(&Fetched::Fields(good)),
        Stored::Row {
            computed_at_ms: 1_000,
            ..
        }
    ));
}
