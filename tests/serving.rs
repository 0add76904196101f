//! The client against the real proxy binary and a real redis-server: the protocol's operations,
//! rows, statuses, defaults and freshness.

mod common;

use std::time::Duration;

use common::{now_ms, Proxy, RawConn, Redis};
use featureproxy_client::{Client, ClientOptions, Error, ErrorCode, GetOptions, Status, Value};
use featureproxy_protocol::{PutRequest, Request};

fn user_row(base: f32) -> Vec<Value> {
    (0..16)
        .map(|j| Value::F32(base + j as f32 / 100.0))
        .collect()
}

async fn client(proxy: &Proxy) -> Client {
    Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn hello_ping_schema_and_unknown_view() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, "");
    let c = client(&proxy).await;
    let hello = c.hello_info().await.unwrap();
    assert_eq!(hello.version, 1);
    assert!(
        hello.server.starts_with("featureproxy/"),
        "{}",
        hello.server
    );
    assert_eq!((hello.max_batch, hello.max_frame), (4096, 4 * 1024 * 1024));
    assert!(hello.shard < 2);
    c.ping().await.unwrap();

    let s = c.schema("user_features").await.unwrap();
    assert_eq!(s.row_bytes(), 64);
    assert_eq!(s.features().len(), 16);
    assert_eq!(s.features()[3].name, "f3");
    assert_eq!(s.stale_after(), Duration::from_secs(120));
    assert_ne!(s.schema_id(), 0);

    let fraud = c.schema("fraud_features").await.unwrap();
    let names: Vec<&str> = fraud.features().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names[..2], ["tx_count_1h", "tx_sum_1h"]);
    assert_eq!(
        fraud.feature("avg_tx_amount_30d").unwrap().default,
        Value::F64(42.5)
    );

    match c.schema("no_such_view").await {
        Err(Error::Server {
            code: ErrorCode::UnknownView,
            message,
        }) => {
            assert!(
                message.contains("no_such_view") && message.contains("user_features"),
                "{message}"
            )
        }
        other => panic!("expected UNKNOWN_VIEW, got {other:?}"),
    }
    // The connection survives the error.
    c.ping().await.unwrap();
}

#[tokio::test]
async fn put_then_get_returns_rows_fresh_and_defaults_for_missing() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, "");
    let c = client(&proxy).await;
    let now = now_ms();
    let rows: Vec<(String, u64, Vec<Value>)> = (0..300)
        .map(|i| (format!("u{i}"), now, user_row(i as f32)))
        .collect();
    assert_eq!(c.put("user_features", &rows).await.unwrap(), 300);

    let keys: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    let b = c.get("user_features", &keys).await.unwrap();
    assert_eq!(b.len(), 300);
    for i in 0..300 {
        assert_eq!(b.status(i).status, Status::Fresh, "entity {i}");
        assert_eq!(b.row(i), user_row(i as f32), "entity {i}");
        assert!(b.age(i).unwrap() < Duration::from_secs(5));
    }
    let m = b.as_f32_matrix().expect("all-f32 view as a matrix");
    assert_eq!(m.len(), 300 * 16);
    assert_eq!(m[7 * 16 + 2], 7.02);

    let b = c
        .get("user_features", &["nope-1", "u1", "nope-2"])
        .await
        .unwrap();
    let st: Vec<Status> = (0..3).map(|i| b.status(i).status).collect();
    assert_eq!(st, [Status::Missing, Status::Fresh, Status::Missing]);
    assert_eq!(b.row(0), vec![Value::F32(0.0); 16]);
    assert_eq!(b.age(0), None);
    assert_eq!(b.age(2), None);

    // The stored layout: format byte, computed_at, row.
    let raw = redis.command(&[b"GET", b"fp:user_features:v1:u7"]);
    assert!(raw.starts_with(b"$73\r\n\x01"), "{raw:?}");
    let ttl = redis.command(&[b"TTL", b"fp:user_features:v1:u7"]);
    let ttl: i64 = std::str::from_utf8(&ttl[1..ttl.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "ttl {ttl}");
}

#[tokio::test]
async fn mixed_dtype_view_round_trips_typed_values() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let c = client(&proxy).await;
    let row = vec![
        Value::I64(-17),
        Value::F32(12.5),
        Value::F64(1e-9),
        Value::I32(400),
        Value::I32(3),
        Value::Bool(true),
        Value::F32(0.25),
    ];
    c.put("fraud_features", &[("card-9", now_ms(), row.clone())])
        .await
        .unwrap();
    let b = c
        .get("fraud_features", &["card-9", "card-0"])
        .await
        .unwrap();
    assert_eq!(b.row(0), row);
    assert_eq!(b.value(0, "is_premium"), Some(Value::Bool(true)));
    assert_eq!(b.status(1).status, Status::Missing);
    assert_eq!(b.value(1, "avg_tx_amount_30d"), Some(Value::F64(42.5)));
    assert_eq!(b.value(1, "tx_count_1h"), Some(Value::I64(0)));
    assert!(
        b.as_f32_matrix().is_none(),
        "mixed view is not an f32 matrix"
    );
}

#[tokio::test]
async fn stale_expired_and_invalid_values() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let c = client(&proxy).await;
    let now = now_ms();
    c.put(
        "user_features",
        &[
            ("fresh", now - 60_000, user_row(1.0)),
            ("stale", now - 3 * 60_000, user_row(2.0)),
            ("expired", now - 11 * 60_000, user_row(3.0)),
        ],
    )
    .await
    .unwrap();
    // Written behind the proxy's back: too short, and the right length with an unknown format.
    redis.command(&[b"SET", b"fp:user_features:v1:short", b"xyz"]);
    let mut bad_format = vec![9u8; 73];
    bad_format[0] = 2;
    redis.command(&[b"SET", b"fp:user_features:v1:badfmt", &bad_format]);

    let keys = ["fresh", "stale", "expired", "short", "badfmt"];
    let b = c
        .get_with(
            "user_features",
            &keys,
            GetOptions {
                bypass_cache: true,
                deadline: None,
            },
        )
        .await
        .unwrap();
    let st: Vec<Status> = (0..5).map(|i| b.status(i).status).collect();
    assert_eq!(
        st,
        [
            Status::Fresh,
            Status::Stale,
            Status::Expired,
            Status::Invalid,
            Status::Invalid
        ]
    );
    assert_eq!(b.row(1), user_row(2.0), "STALE still serves the value");
    assert_eq!(
        b.row(2),
        vec![Value::F32(0.0); 16],
        "EXPIRED serves defaults"
    );
    let stale_age = b.age(1).unwrap().as_millis();
    assert!((180_000..185_000).contains(&stale_age), "{stale_age}");
    assert!(b.age(2).unwrap() > Duration::from_secs(660));
    assert_eq!(b.row(3), vec![Value::F32(0.0); 16]);
    assert_eq!(
        proxy.metric(
            "featureproxy_entities_total",
            &[("view", "user_features"), ("status", "invalid")]
        ),
        2.0
    );
}

#[tokio::test]
async fn protocol_errors_keep_the_connection_usable() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let c = client(&proxy).await;
    let s = c.schema("user_features").await.unwrap();
    // A row of the wrong length: BAD_ROW naming the entity, nothing written.
    let bad = featureproxy_client::PutEntry {
        key: "u1".into(),
        computed_at_ms: now_ms(),
        row: vec![0u8; 10].into(),
    };
    c.put("user_features", &[("u1", now_ms(), user_row(5.0))])
        .await
        .unwrap();
    // The client catches it before sending...
    assert!(matches!(
        c.put_raw("user_features", std::slice::from_ref(&bad)).await,
        Err(Error::BadRow(_))
    ));
    // ...and the server refuses it too when it gets there.
    let mut raw = RawConn::connect(proxy.port);
    let put = PutRequest::new(s.view_id(), s.schema_id(), &[bad]);
    let e = raw.expect_error(&Request::Put(put));
    assert_eq!(e.code, ErrorCode::BadRow);
    assert!(
        e.message.contains("\"u1\"") && e.message.contains("10") && e.message.contains("64"),
        "{}",
        e.message
    );
    raw.call(&Request::Ping);
    let b = c.get("user_features", &["u1"]).await.unwrap();
    assert_eq!(b.row(0), user_row(5.0), "the bad PUT wrote nothing");
    assert_eq!(s.row_bytes(), 64);
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_gets_over_a_hundred_connections() {
    let redis = Redis::start();
    // This checks rows under concurrency, not latency: a debug build on a loaded CI machine may
    // well pass the 50 ms default deadline, and DEGRADED defaults would then be right.
    let proxy = Proxy::start(&redis, 2, "default_deadline = \"10s\"");
    let seed = client(&proxy).await;
    let rows: Vec<(String, u64, Vec<Value>)> = (0..1000)
        .map(|i| (format!("e{i}"), now_ms(), user_row(i as f32)))
        .collect();
    for chunk in rows.chunks(250) {
        seed.put("user_features", chunk).await.unwrap();
    }
    let mut clients = Vec::new();
    for _ in 0..100 {
        let opts = ClientOptions {
            pool_size: 1,
            timeout: Duration::from_secs(20),
            ..Default::default()
        };
        clients.push(Client::connect(proxy.addr(), opts).await.unwrap());
    }
    let mut tasks = Vec::with_capacity(10_000);
    for i in 0..10_000usize {
        let c = clients[i % 100].clone();
        tasks.push(tokio::spawn(async move {
            let k = (i * 7919) % 1000;
            let keys = [format!("e{k}"), format!("e{}", (k + 1) % 1000)];
            let b = c.get("user_features", &keys).await.unwrap();
            assert_eq!(b.status(0).status, Status::Fresh);
            assert_eq!(b.row(0), user_row(k as f32), "request {i}");
            assert_eq!(b.row(1), user_row(((k + 1) % 1000) as f32), "request {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        proxy.metric(
            "featureproxy_requests_total",
            &[("op", "get"), ("outcome", "ok")]
        ),
        10_000.0
    );
    assert_eq!(
        proxy.metric("featureproxy_entities_total", &[("status", "fresh")]),
        20_000.0
    );
}
