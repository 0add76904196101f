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
    let mut buf = Vec::new();
    f.read_key_into(&mut buf, entity).map(|_| Bytes::from(buf))
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
    let ReadCommand::Fields(asked) = d.read_key_into(&mut Vec::new(), b"1001").unwrap() else {
        panic!("a Feast read is an HMGET")
    };
    assert_eq!(asked.fields().len(), 4);
    let reply = Fetched::Fields(fields.iter().map(|(_, v)| Some(v.clone())).collect());
    assert_eq!(
        d.decode(&reply),
        Stored::Row {
            computed_at_ms: 1_767_323_045_678,
            row: row(0.5, -3, true).into()
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
    // Which feature made the row INVALID, for the per-field counts.
    assert_eq!(d.invalid_field(&with(0, None)), Some(0));
    assert_eq!(d.invalid_field(&with(1, Some(&[0x20]))), Some(1));
    assert_eq!(d.invalid_field(&with(2, Some(&[]))), Some(2));
    assert_eq!(
        d.invalid_field(&with(3, Some(&[0x08]))),
        None,
        "_ts is no feature"
    );
    assert!(matches!(
        d.decode(&Fetched::Fields(good)),
        Stored::Row {
            computed_at_ms: 1_000,
            ..
        }
    ));
}

/// Every row the real `feast` package (0.67, serialization version 3) wrote to a real Redis,
/// from tests/data/feast_vectors.json (made by python/tests/feast/make_vectors.py): our key is
/// Feast's key, our HSET is Feast's HSET byte for byte, and Feast's hash decodes to the values
/// Feast was given.
#[test]
fn what_the_real_feast_package_wrote_is_what_we_read_and_write() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/feast_vectors.json"
    ))
    .unwrap();
    let vectors: serde_json::Value = serde_json::from_str(&text).unwrap();
    let unhex = |s: &serde_json::Value| -> Vec<u8> {
        let s = s.as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let rows = vectors["rows"].as_array().unwrap();
    assert!(rows.len() >= 10, "the vectors hold {} rows", rows.len());
    for r in rows {
        let view = r["view"].as_str().unwrap();
        let join_keys: Vec<JoinKey> = r["join_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| join_key(&j["name"], &j["dtype"]))
            .collect();
        let entity: Vec<u8> = r["join_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| entity_text(&j["value"]))
            .collect::<Vec<_>>()
            .join(&SEPARATOR);
        let features = r["features"].as_array().unwrap();
        let dtypes: Vec<(&str, Dtype)> = features
            .iter()
            .map(|f| {
                let dtype = match f["dtype"].as_str().unwrap() {
                    "Float32" => Dtype::F32,
                    "Float64" => Dtype::F64,
                    "Int32" => Dtype::I32,
                    "Int64" => Dtype::I64,
                    "Bool" => Dtype::Bool,
                    other => panic!("feature dtype {other}"),
                };
                (f["name"].as_str().unwrap(), dtype)
            })
            .collect();
        let ttl = r["ttl_seconds"].as_u64().map(Duration::from_secs);
        let layout = Feast::new(
            view,
            r["project"].as_str().unwrap(),
            join_keys,
            &dtypes,
            ttl,
        );
        let what = format!("{view} {}", String::from_utf8_lossy(&entity));

        let key_hex = unhex(&r["key_hex"]);
        assert_eq!(
            key(&layout, &entity).as_deref(),
            Some(&key_hex[..]),
            "key of {what}"
        );
        assert_eq!(
            layout.entity_of(&key_hex).as_deref(),
            Some(&entity[..]),
            "{what}"
        );

        // The row as a PUT carries it: each value in its dtype, little-endian.
        let mut row = Vec::new();
        for (f, (_, dtype)) in features.iter().zip(&dtypes) {
            let v = &f["value"];
            match dtype {
                Dtype::F32 => row.extend_from_slice(&(v.as_f64().unwrap() as f32).to_le_bytes()),
                Dtype::F64 => row.extend_from_slice(&v.as_f64().unwrap().to_le_bytes()),
                Dtype::I32 => row.extend_from_slice(&(v.as_i64().unwrap() as i32).to_le_bytes()),
                Dtype::I64 => row.extend_from_slice(&v.as_i64().unwrap().to_le_bytes()),
                Dtype::Bool => row.push(v.as_bool().unwrap() as u8),
            }
        }
        let ts = r["event_ts_ms"].as_u64().unwrap();
        let (mut kb, mut vb) = (BytesMut::new(), BytesMut::new());
        let item = layout.write(&mut kb, &mut vb, &entity, ts, &row).unwrap();
        let WriteItem::Fields { expire, .. } = &item else {
            unreachable!()
        };
        assert_eq!(*expire, ttl, "{what}");
        let mut want: Vec<(Vec<u8>, Vec<u8>)> = features
            .iter()
            .map(|f| (unhex(&f["field_hex"]), unhex(&f["value_hex"])))
            .collect();
        want.push((
            r["ts_field"].as_str().unwrap().as_bytes().to_vec(),
            unhex(&r["ts_value_hex"]),
        ));
        let ours: Vec<(Vec<u8>, Vec<u8>)> = fields_of(&item)
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(ours, want, "HSET of {what}");

        let reply = Fetched::Fields(
            want.iter()
                .map(|(_, v)| Some(Bytes::from(v.clone())))
                .collect(),
        );
        assert_eq!(
            layout.decode(&reply),
            Stored::Row {
                computed_at_ms: ts,
                row: row.into()
            },
            "decode of {what}"
        );
    }
    for k in vectors["direct"]["keys"].as_array().unwrap() {
        let jks = k["join_keys"].as_array().unwrap();
        let join_keys = jks
            .iter()
            .map(|j| join_key(&j["name"], &j["dtype"]))
            .collect();
        let entity = jks
            .iter()
            .map(|j| entity_text(&j["value"]))
            .collect::<Vec<_>>()
            .join(&SEPARATOR);
        let layout = Feast::new("v", k["project"].as_str().unwrap(), join_keys, &[], None);
        assert_eq!(
            key(&layout, &entity).as_deref(),
            Some(&unhex(&k["key_hex"])[..]),
            "{k}"
        );
    }
    for f in vectors["direct"]["fields"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        assert_eq!(
            murmur3_32(name.as_bytes()).to_le_bytes().to_vec(),
            unhex(&f["field_hex"]),
            "{name}"
        );
    }
}

fn join_key(name: &serde_json::Value, dtype: &serde_json::Value) -> JoinKey {
    JoinKey {
        name: name.as_str().unwrap().into(),
        dtype: match dtype.as_str().unwrap() {
            "Int64" => JoinKeyType::Int64,
            "Int32" => JoinKeyType::Int32,
            "String" => JoinKeyType::String,
            "Bytes" => JoinKeyType::Bytes,
            other => panic!("join key dtype {other}"),
        },
    }
}

/// A join key value as a GET names it: a string as is, an integer in decimal.
fn entity_text(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        v => v.to_string().into_bytes(),
    }
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever Redis holds, decoding answers a status and never panics.
        #[test]
        fn any_reply_decodes_without_panicking(
            fields in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)), 0..6)
        ) {
            let reply = Fetched::Fields(fields.into_iter().map(|f| f.map(Bytes::from)).collect());
            let _ = driver_view().decode(&reply);
        }

        /// A key that maps back to an entity is exactly the key that entity reads: a notice of a
        /// write never drops another entity's row.
        #[test]
        fn a_key_maps_back_only_to_the_entity_that_reads_it(
            tail in proptest::collection::vec(any::<u8>(), 0..40),
            id in any::<i32>(),
            rider in "[a-z]{0,6}",
        ) {
            for f in [driver_view(), trip_view()] {
                let good = key(&f, format!("{rider}\u{1f}{id}").as_bytes())
                    .or_else(|| key(&f, id.to_string().as_bytes()))
                    .unwrap();
                for k in [good.to_vec(), [&good[..good.len() / 2], &tail[..]].concat(), tail.clone()] {
                    if let Some(entity) = f.entity_of(&k) {
                        let back = key(&f, &entity);
                        prop_assert_eq!(back.as_deref(), Some(&k[..]));
                    }
                }
            }
        }
    }
}
