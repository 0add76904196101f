//! Feast views end to end: a real redis-server holding exactly the hashes the real `feast`
//! package wrote (tests/data/feast_vectors.json, made by python/tests/feast/make_vectors.py),
//! served through the real proxy. (python/tests/test_feast_e2e.py does the same with Feast
//! itself writing and reading beside us.)

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use common::{block, eventually, now_ms, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions, Status, Value};
use serde_json::Value as Json;

fn vectors() -> Json {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/feast_vectors.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The rows of the vectors' main project (another project reuses a view name, for its TTL).
fn rows(v: &Json) -> impl Iterator<Item = &Json> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["project"] == "vec_project")
}

fn unhex(s: &Json) -> Vec<u8> {
    let s = s.as_str().unwrap();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn dtype(feast: &str) -> &'static str {
    match feast {
        "Float32" => "f32",
        "Float64" => "f64",
        "Int32" => "i32",
        "Int64" => "i64",
        "Bool" => "bool",
        "String" => "string",
        other => panic!("dtype {other}"),
    }
}

fn join_dtype(feast: &str) -> &'static str {
    match feast {
        "Int64" => "int64",
        "Int32" => "int32",
        "String" => "string",
        "Bytes" => "bytes",
        other => panic!("join key dtype {other}"),
    }
}

/// A default no Feast row holds, so that defaults are told apart from values.
fn default_of(dtype: &str) -> &'static str {
    match dtype {
        "f32" | "f64" => "-99.5",
        "i32" | "i64" => "-99",
        _ => "true",
    }
}

/// A GET's entity key: the join key values in the view's order, joined by 0x1F.
fn entity(row: &Json) -> String {
    let parts: Vec<String> = row["join_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| match &j["value"] {
            Json::String(s) => s.clone(),
            v => v.to_string(),
        })
        .collect();
    parts.join("\u{1f}")
}

/// One `[[view]]` per Feast view of the vectors, features in Feast's order; `extra` is added
/// to every view's table.
fn registry(v: &Json, extra: &str) -> String {
    let mut views: BTreeMap<String, &Json> = BTreeMap::new();
    for r in rows(v) {
        views
            .entry(r["view"].as_str().unwrap().to_string())
            .or_insert(r);
    }
    let mut out = String::new();
    for (name, r) in views {
        let jks: Vec<String> = r["join_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                format!(
                    "{{ name = {}, dtype = \"{}\" }}",
                    j["name"],
                    join_dtype(j["dtype"].as_str().unwrap())
                )
            })
            .collect();
        let feats: Vec<String> = r["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let d = dtype(f["dtype"].as_str().unwrap());
                format!(
                    "  {{ name = {}, dtype = \"{d}\", default = {} }},",
                    f["name"],
                    default_of(d)
                )
            })
            .collect();
        writeln!(
            out,
            "[[view]]\nname = \"{name}\"\nlayout = \"feast\"\nstale_after = \"1h\"\nmax_staleness = \"1d\"\nhot_cache_ttl = \"1h\"\n{extra}\nfeast = {{ project = {}, join_keys = [{}] }}\nfeatures = [\n{}\n]\n",
            r["project"],
            jks.join(", "),
            feats.join("\n")
        )
        .unwrap();
    }
    out
}

/// A serialized google.protobuf.Timestamp (what Feast stores in `_ts:<view>`).
fn timestamp(unix_ms: u64) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = vec![0x08];
    varint(&mut out, unix_ms / 1000);
    if unix_ms % 1000 != 0 {
        out.push(0x10);
        varint(&mut out, unix_ms % 1000 * 1_000_000);
    }
    out
}

/// Loads every hash Feast wrote, with each `_ts:` moved to `event_ms` (the vectors are old).
fn load(redis: &Redis, v: &Json, event_ms: u64) {
    for h in v["hashes"].as_array().unwrap() {
        let key = unhex(&h["key_hex"]);
        let mut args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), key];
        for pair in h["fields"].as_array().unwrap() {
            let field = unhex(&pair[0]);
            let value = if field.starts_with(b"_ts:") {
                timestamp(event_ms)
            } else {
                unhex(&pair[1])
            };
            args.push(field);
            args.push(value);
        }
        let args: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        assert!(redis.command(&args).starts_with(b":"), "HSET");
    }
}

fn expected(f: &Json) -> Value {
    let v = &f["value"];
    match dtype(f["dtype"].as_str().unwrap()) {
        "f32" => Value::F32(v.as_f64().unwrap() as f32),
        "f64" => Value::F64(v.as_f64().unwrap()),
        "i32" => Value::I32(v.as_i64().unwrap() as i32),
        "i64" => Value::I64(v.as_i64().unwrap()),
        _ => Value::Bool(v.as_bool().unwrap()),
    }
}

/// The last row the vectors wrote for each (view, entity): what the hash holds.
fn latest_rows(v: &Json) -> BTreeMap<(String, String), &Json> {
    let mut out = BTreeMap::new();
    for r in rows(v) {
        out.insert((r["view"].as_str().unwrap().to_string(), entity(r)), r);
    }
    out
}

/// One connection: one shard, so that a second read can be told to come from its cache.
async fn client(proxy: &Proxy) -> Client {
    let opts = ClientOptions {
        pool_size: 1,
        ..Default::default()
    };
    Client::connect(proxy.addr(), opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_feast_wrote_are_served_with_their_values_and_true_ages() {
    let v = vectors();
    let redis = Redis::start();
    let event = now_ms() - 90_000;
    load(&redis, &v, event);
    let both = format!("{}\n{}", registry(&v, ""), common::example_registry());
    let proxy = Proxy::start_custom(&redis.url(), 2, "", &both, &[]);
    let c = client(&proxy).await;
    let rows = latest_rows(&v);

    // Packed and Feast views in one batch to Redis (one connection, requests pipelined): an
    // MGET and HMGETs in one go, each answer back in its place.
    c.put("user_features", &[("u1", now_ms(), common::flat_row(4.5))])
        .await
        .unwrap();
    let (packed, feast) = tokio::join!(
        c.get("user_features", &["u1", "u2"]),
        c.get("driver_daily_stats", &["1001", "1002"])
    );
    let (packed, feast) = (packed.unwrap(), feast.unwrap());
    assert_eq!(
        (packed.status(0).status, packed.status(1).status),
        (Status::Fresh, Status::Missing)
    );
    assert_eq!(packed.row(0)[0], Value::F32(4.5));
    assert_eq!(
        (feast.status(0).status, feast.status(1).status),
        (Status::Fresh, Status::Fresh)
    );
    assert!(rows.len() >= 12, "{} rows", rows.len());
    for ((view, ent), r) in &rows {
        let got = c.get(view, &[ent.as_str(), "424242"]).await.unwrap();
        assert_eq!(got.status(0).status, Status::Fresh, "{view} {ent:?}");
        let age = got.age(0).unwrap();
        assert!(
            age >= Duration::from_secs(89) && age < Duration::from_secs(120),
            "{view} {ent:?}: age {age:?} for an event 90 s old"
        );
        for f in r["features"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap();
            assert_eq!(
                got.value(0, name),
                Some(expected(f)),
                "{view} {ent:?} {name}"
            );
        }
        // Never written: MISSING with the defaults (a compound key needs both parts).
        let (status, first) = (got.status(1).status, got.row(1)[0]);
        if r["join_keys"].as_array().unwrap().len() == 1 {
            assert_eq!(status, Status::Missing, "{view}");
            assert!(
                matches!(
                    first,
                    Value::F32(-99.5)
                        | Value::F64(-99.5)
                        | Value::I32(-99)
                        | Value::I64(-99)
                        | Value::Bool(true)
                ),
                "{view}: {first:?}"
            );
        } else {
            assert_eq!(
                status,
                Status::Invalid,
                "{view}: one part for two join keys"
            );
        }
    }
    // Non-canonical integers name no entity: INVALID, not a silent miss of another key.
    let got = c
        .get("driver_hourly_stats", &["01001", "+1001", "1001"])
        .await
        .unwrap();
    let statuses: Vec<Status> = (0..3).map(|i| got.status(i).status).collect();
    assert_eq!(statuses, [Status::Invalid, Status::Invalid, Status::Fresh]);
    // Served from the cache the second time, with the same values.
    let again = c.get("driver_hourly_stats", &["1001"]).await.unwrap();
    assert!(again.status(0).cached);
    assert_eq!(again.row(0), got.row(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_broken_and_foreign_rows_get_defaults_with_the_right_status() {
    let v = vectors();
    let redis = Redis::start();
    load(&redis, &v, now_ms() - 2 * 86_400_000); // older than max_staleness = 1d
    let latest = latest_rows(&v);
    let key_of = |view: &str, ent: &str| {
        rows(&v)
            .find(|r| r["view"] == view && entity(r) == ent)
            .map(|r| (unhex(&r["key_hex"]), r))
            .unwrap()
    };
    // 1002: one feature field removed; 1003: a feature holding a double where f32 is declared;
    // a plain string where the hash of -7 should be.
    let (k1002, r1002) = key_of("driver_hourly_stats", "1002");
    let conv = unhex(&r1002["features"][0]["field_hex"]);
    redis.command(&[b"HDEL", &k1002, &unhex(&r1002["features"][1]["field_hex"])]);
    let (k1003, _) = key_of("driver_hourly_stats", "1003");
    let double = [0x29u8, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f];
    let fresh = timestamp(now_ms());
    redis.command(&[
        b"HSET",
        &k1003,
        &conv,
        &double,
        b"_ts:driver_hourly_stats",
        &fresh,
    ]);
    redis.command(&[b"HSET", &k1002, b"_ts:driver_hourly_stats", &fresh]);
    let (k7, _) = key_of("driver_hourly_stats", "-7");
    redis.command(&[b"DEL", &k7]);
    redis.command(&[b"SET", &k7, b"not a hash"]);

    let proxy = Proxy::start_custom(&redis.url(), 1, "", &registry(&v, ""), &[]);
    let c = client(&proxy).await;
    let got = c
        .get("driver_hourly_stats", &["1001", "1002", "1003", "-7"])
        .await
        .unwrap();
    let statuses: Vec<Status> = (0..4).map(|i| got.status(i).status).collect();
    assert_eq!(
        statuses,
        [
            Status::Expired,
            Status::Invalid,
            Status::Invalid,
            Status::Invalid
        ]
    );
    for i in 0..4 {
        assert_eq!(
            got.value(i, "conv_rate"),
            Some(Value::F32(-99.5)),
            "entity {i}"
        );
    }
    assert!(got.age(0).unwrap() > Duration::from_secs(86_400));
    assert!(latest.contains_key(&("driver_hourly_stats".into(), "1001".into())));
    // Each INVALID row is counted on the field that made it so (issue 26): 1002's removed
    // field and 1003's double; the foreign string names no field.
    let removed = r1002["features"][1]["name"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "INVALID counted per field", || {
        let (_, body) = proxy.http("/stats");
        let stats: Json = serde_json::from_str(&body).unwrap();
        let view = stats["values"]
            .as_array()?
            .iter()
            .find(|v| v["view"] == "driver_hourly_stats")?
            .clone();
        let invalid = |name: &str| {
            view["features"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["feature"] == name)
                .map(|f| f["invalid_total"].as_u64().unwrap())
        };
        let total: u64 = view["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["invalid_total"].as_u64().unwrap())
            .sum();
        (invalid("conv_rate") == Some(1) && invalid(&removed) == Some(1) && total == 2)
            .then_some(())
    });

    // A view whose join key is declared int32 where Feast wrote int64: the keys differ, so
    // nothing is found (MISSING), never another entity's row.
    let wrong = registry(&v, "").replace(
        "join_keys = [{ name = \"driver_id\", dtype = \"int64\" }]",
        "join_keys = [{ name = \"driver_id\", dtype = \"int32\" }]",
    );
    assert!(wrong.contains("\"int32\""));
    let proxy = Proxy::start_custom(&redis.url(), 1, "", &wrong, &[]);
    let got = client(&proxy)
        .await
        .get("driver_daily_stats", &["1001"])
        .await
        .unwrap();
    assert_eq!(got.status(0).status, Status::Missing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_writes_what_feast_writes_and_writes_behind_the_proxy_invalidate() {
    let v = vectors();
    let redis = Redis::start();
    let proxy = Proxy::start_custom(&redis.url(), 2, "", &registry(&v, "ttl = \"86400s\""), &[]);
    let c = client(&proxy).await;
    // Every row of the vectors, PUT through the proxy with Feast's own event time: each hash
    // field must hold exactly the bytes Feast wrote.
    for ((view, ent), r) in latest_rows(&v) {
        let values: Vec<Value> = r["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(expected)
            .collect();
        let ts = r["event_ts_ms"].as_u64().unwrap();
        c.put(&view, &[(ent.as_str(), ts, values)]).await.unwrap();
        let key = unhex(&r["key_hex"]);
        for f in r["features"].as_array().unwrap() {
            let reply = redis.command(&[b"HGET", &key, &unhex(&f["field_hex"])]);
            let want = unhex(&f["value_hex"]);
            let mut bulk = format!("${}\r\n", want.len()).into_bytes();
            bulk.extend_from_slice(&want);
            bulk.extend_from_slice(b"\r\n");
            assert_eq!(reply, bulk, "{view} {ent:?} {}", f["name"]);
        }
        let ts_reply = redis.command(&[b"HGET", &key, r["ts_field"].as_str().unwrap().as_bytes()]);
        assert!(
            ts_reply.ends_with(&[&unhex(&r["ts_value_hex"])[..], b"\r\n"].concat()),
            "{view} {ent:?} _ts"
        );
        let ttl = redis.command(&[b"TTL", &key]);
        let secs: i64 = std::str::from_utf8(&ttl[1..ttl.len() - 2])
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (86_300..=86_400).contains(&secs),
            "{view} {ent:?}: TTL {secs}"
        );
    }

    // Fresh rows, cached for up to an hour; a write by Feast's materialization (HSET on the
    // hash, behind the proxy's back) reaches every shard through Redis client tracking, armed
    // on both shards first (arming flushes the cache).
    eventually(
        Duration::from_secs(10),
        "tracking armed on both shards",
        || (proxy.metric("featureproxy_cache_tracking", &[]) == 2.0).then_some(()),
    );
    let now = now_ms();
    c.put(
        "user_profile",
        &[(
            "alice",
            now,
            vec![
                Value::F32(1.0),
                Value::I32(1),
                Value::I64(1),
                Value::Bool(true),
            ],
        )],
    )
    .await
    .unwrap();
    let first = c.get("user_profile", &["alice"]).await.unwrap();
    assert_eq!(first.value(0, "score"), Some(Value::F32(1.0)));
    let cached = common::read_until_cached(&c, "user_profile", "alice").await;
    assert!(cached.status(0).cached);
    let r = &latest_rows(&v)[&("user_profile".to_string(), "alice".to_string())];
    let key = unhex(&r["key_hex"]);
    let score_field = unhex(&r["features"][0]["field_hex"]);
    let two = [0x35u8, 0, 0, 0, 0x40]; // float_val 2.0
    redis.command(&[
        b"HSET",
        &key,
        &score_field,
        &two,
        b"_ts:user_profile",
        &timestamp(now + 1),
    ]);
    eventually(
        Duration::from_secs(5),
        "the write behind the proxy to be served",
        || {
            let got = block(c.get("user_profile", &["alice"])).unwrap();
            (got.value(0, "score") == Some(Value::F32(2.0))).then_some(())
        },
    );
}

/// A batch's HMGETs go out together (one pipeline) and each gets its own answer: a key that
/// holds a string answers WRONGTYPE for itself only, and a row never written is MISSING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hmget_of_a_pipelined_batch_gets_its_own_answer() {
    let v = vectors();
    let redis = Redis::start();
    load(&redis, &v, now_ms() - 1_000);
    let (k7, _) = rows(&v)
        .find(|r| r["view"] == "driver_hourly_stats" && entity(r) == "-7")
        .map(|r| (unhex(&r["key_hex"]), r))
        .unwrap();
    redis.command(&[b"DEL", &k7]);
    redis.command(&[b"SET", &k7, b"not a hash"]);
    let proxy = Proxy::start_custom(&redis.url(), 1, "", &registry(&v, ""), &[]);
    let c = client(&proxy).await;
    let keys = ["1001", "1002", "-7", "1003", "31337", "0"];
    let before = proxy.metric("featureproxy_redis_commands_total", &[]);
    let bypass = featureproxy_client::GetOptions {
        bypass_cache: true,
        deadline: None,
    };
    let got = c
        .get_with("driver_hourly_stats", &keys, bypass)
        .await
        .unwrap();
    let statuses: Vec<Status> = (0..keys.len()).map(|i| got.status(i).status).collect();
    assert_eq!(
        statuses,
        [
            Status::Fresh,
            Status::Fresh,
            Status::Invalid,
            Status::Fresh,
            Status::Missing,
            Status::Fresh
        ]
    );
    let latest = latest_rows(&v);
    for (i, key) in keys.iter().enumerate() {
        if let Some(r) = latest.get(&("driver_hourly_stats".to_string(), key.to_string())) {
            if statuses[i] == Status::Fresh {
                assert_eq!(got.row(i)[0], expected(&r["features"][0]), "{key}");
            }
        }
    }
    let commands = proxy.metric("featureproxy_redis_commands_total", &[]) - before;
    assert_eq!(commands, keys.len() as f64, "one HMGET per entity");
}
