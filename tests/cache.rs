//! The hot cache never makes the proxy lie: coherent across shards after a PUT, expiring at its
//! TTL for writes that bypass the proxy, never caching defaults, and bounded in bytes.

mod common;

use std::time::{Duration, Instant};

use common::{block, eventually, flat_row, now_ms, read_until_cached, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions, GetOptions, Status, Value};

/// The stored value for `flat_row(v)`: format 1, computed_at, 16 f32.
fn stored(v: f32, computed_at: u64) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&computed_at.to_le_bytes());
    for _ in 0..16 {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Server settings for tests that check the rows served: a deadline that a starved 2-core CI
/// machine (two shards, Redis and the test on its cores) still meets, so a slow read is not
/// answered with DEGRADED defaults that the test would take for a wrong row.
const PATIENT: &str = "default_deadline = \"10s\"";

async fn one_conn(proxy: &Proxy) -> Client {
    let opts = ClientOptions {
        pool_size: 1,
        // Beyond the patient server deadline, so the server answers first.
        timeout: Duration::from_secs(15),
        ..Default::default()
    };
    Client::connect(proxy.addr(), opts).await.unwrap()
}

/// One single-connection client per shard (connections land on shards by the kernel's hash).
async fn client_per_shard(proxy: &Proxy, shards: u16) -> Vec<Client> {
    let mut found: Vec<Option<Client>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let c = one_conn(proxy).await;
        let shard = c.hello_info().await.unwrap().shard as usize;
        if found[shard].is_none() {
            found[shard] = Some(c);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("200 connections never reached all {shards} shards");
}

#[tokio::test]
async fn second_read_comes_from_the_cache_with_its_bit_and_true_age() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, PATIENT);
    // Arming tracking flushes the cache (writes may have been missed before it): armed first,
    // so that flush cannot drop the row between the reads below.
    eventually(Duration::from_secs(10), "tracking armed", || {
        (proxy.metric("featureproxy_cache_tracking", &[]) == 1.0).then_some(())
    });
    let c = one_conn(&proxy).await;
    let computed = now_ms() - 3 * 60_000; // STALE by user_features' 2 min
    c.put("user_features", &[("u1", computed, flat_row(1.5))])
        .await
        .unwrap();

    let first = c.get("user_features", &["u1"]).await.unwrap();
    assert_eq!(
        (first.status(0).status, first.status(0).cached),
        (Status::Stale, false)
    );
    let second = read_until_cached(&c, "user_features", "u1").await;
    assert_eq!(
        (second.status(0).status, second.status(0).cached),
        (Status::Stale, true)
    );
    assert_eq!(second.row(0), flat_row(1.5));
    let age = second.age(0).unwrap().as_millis();
    assert!(
        (180_000..185_000).contains(&age),
        "a cached row keeps its computed_at: age {age}"
    );

    let bypass = GetOptions {
        bypass_cache: true,
        deadline: None,
    };
    let third = c.get_with("user_features", &["u1"], bypass).await.unwrap();
    assert!(
        !third.status(0).cached,
        "bit 0 of get_flags bypasses the cache"
    );
    assert_eq!(
        proxy.metric(
            "featureproxy_cache_hits_total",
            &[("view", "user_features")]
        ),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "featureproxy_entities_cached_total",
            &[("view", "user_features")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_shard_is_seen_at_once_through_every_shard() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, PATIENT);
    let clients = client_per_shard(&proxy, 2).await;
    for version in 1..=40 {
        let writer = &clients[version % 2];
        writer
            .put(
                "user_features",
                &[("hot", now_ms(), flat_row(version as f32))],
            )
            .await
            .unwrap();
        // Every shard reads it twice: the first read may fill its cache, the second hits it.
        for c in &clients {
            for _ in 0..2 {
                let b = c.get("user_features", &["hot"]).await.unwrap();
                assert_eq!(
                    b.row(0),
                    flat_row(version as f32),
                    "old row served after PUT {version} was acknowledged"
                );
            }
        }
    }
    assert!(
        proxy.metric("featureproxy_cache_hits_total", &[]) >= 40.0,
        "the cache was in play"
    );
    assert!(proxy.metric("featureproxy_cache_invalidations_total", &[]) >= 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_behind_the_proxy_show_within_the_hot_cache_ttl() {
    let redis = Redis::start();
    // The TTL is the backstop when Redis client tracking is off (or lost).
    let proxy = Proxy::start(&redis, 1, &format!("{PATIENT}\nclient_tracking = false"));
    let c = one_conn(&proxy).await;
    c.put("user_features", &[("u9", now_ms(), flat_row(1.0))])
        .await
        .unwrap();
    c.get("user_features", &["u9"]).await.unwrap();
    let cached = c.get("user_features", &["u9"]).await.unwrap();
    assert!(cached.status(0).cached);

    // A writer that bypasses the proxy.
    let written = Instant::now();
    redis.command(&[b"SET", b"fp:user_features:v1:u9", &stored(2.0, now_ms())]);
    let still = c.get("user_features", &["u9"]).await.unwrap();
    assert_eq!(
        (still.row(0), still.status(0).cached),
        (flat_row(1.0), true),
        "served from the cache until its TTL"
    );
    let fresh = eventually(Duration::from_secs(5), "the new row", || {
        let c = c.clone();
        let b = block(async move { c.get("user_features", &["u9"]).await.unwrap() });
        (b.row(0) == flat_row(2.0)).then_some(b)
    });
    assert!(!fresh.status(0).cached);
    let took = written.elapsed();
    assert!(
        took <= Duration::from_millis(3000),
        "picked up after {took:?}; hot_cache_ttl is 1s"
    );
    assert!(proxy.metric("featureproxy_cache_expirations_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_are_never_cached() {
    let mut redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, PATIENT);
    let c = one_conn(&proxy).await;
    redis.command(&[b"SET", b"fp:user_features:v1:bad", b"xyz"]);
    let old = now_ms() - 11 * 60_000;
    c.put("user_features", &[("old", old, flat_row(3.0))])
        .await
        .unwrap();
    for _ in 0..3 {
        let b = c
            .get("user_features", &["nope", "bad", "old"])
            .await
            .unwrap();
        let got: Vec<(Status, bool)> = (0..3)
            .map(|i| (b.status(i).status, b.status(i).cached))
            .collect();
        assert_eq!(
            got,
            [
                (Status::Missing, false),
                (Status::Invalid, false),
                (Status::Expired, false)
            ]
        );
    }
    assert_eq!(proxy.metric("featureproxy_cache_entries", &[]), 0.0);

    redis.kill();
    let b = c.get("user_features", &["nope"]).await.unwrap();
    assert_eq!(b.status(0).status, Status::Degraded);
    redis.restart();
    let b = eventually(Duration::from_secs(10), "Redis back", || {
        let c = c.clone();
        block(async move {
            c.put("user_features", &[("nope", now_ms(), flat_row(4.0))])
                .await
                .ok()?;
            let b = c.get("user_features", &["nope"]).await.unwrap();
            (b.status(0).status == Status::Fresh).then_some(b)
        })
    });
    assert_eq!(
        b.row(0),
        flat_row(4.0),
        "no DEGRADED defaults were cached for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_holds_under_churn() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, &format!("{PATIENT}\nhot_cache_bytes = 131072"));
    let clients = client_per_shard(&proxy, 2).await;
    let rows: Vec<(String, u64, Vec<Value>)> = (0..4000)
        .map(|i| (format!("k{i}"), now_ms(), flat_row(i as f32)))
        .collect();
    for chunk in rows.chunks(500) {
        clients[0].put("user_features", chunk).await.unwrap();
    }
    for c in &clients {
        for round in 0..3 {
            for chunk in rows.chunks(200) {
                let keys: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
                let b = c.get("user_features", &keys).await.unwrap();
                for (i, r) in chunk.iter().enumerate() {
                    assert_eq!(b.row(i), r.2, "round {round}");
                }
            }
        }
    }
    for shard in ["0", "1"] {
        let bytes = proxy.metric("featureproxy_cache_bytes", &[("shard", shard)]);
        let cap = proxy.metric("featureproxy_cache_capacity_bytes", &[("shard", shard)]);
        assert_eq!(cap, 65536.0);
        assert!(
            bytes <= cap && bytes > cap / 2.0,
            "shard {shard}: {bytes} bytes of {cap}"
        );
    }
    let dropped = proxy.metric("featureproxy_cache_rejections_total", &[])
        + proxy.metric("featureproxy_cache_evictions_total", &[]);
    assert!(dropped > 1000.0, "{dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_redis_cli_invalidate_every_shard_at_once() {
    let redis = Redis::start();
    // A long hot-cache TTL, so only client tracking can explain a prompt invalidation.
    let registry =
        common::example_registry().replacen("hot_cache_ttl = \"1s\"", "hot_cache_ttl = \"10m\"", 1);
    let proxy = Proxy::start_custom(&redis.url(), 2, PATIENT, &registry, &[]);
    eventually(
        Duration::from_secs(10),
        "tracking armed on both shards",
        || (proxy.metric("featureproxy_cache_tracking", &[]) == 2.0).then_some(()),
    );
    let clients = client_per_shard(&proxy, 2).await;
    clients[0]
        .put("user_features", &[("t1", now_ms(), flat_row(1.0))])
        .await
        .unwrap();
    for c in &clients {
        c.get("user_features", &["t1"]).await.unwrap();
        let b = read_until_cached(c, "user_features", "t1").await;
        assert!(b.status(0).cached, "cached before the write");
    }
    redis.cli_set("fp:user_features:v1:t1", &stored(2.0, now_ms()));
    for c in &clients {
        let b = eventually(
            Duration::from_secs(5),
            "the row written by redis-cli",
            || {
                let c = c.clone();
                let b = block(async move { c.get("user_features", &["t1"]).await.unwrap() });
                (b.row(0) == flat_row(2.0)).then_some(b)
            },
        );
        assert_eq!(b.status(0).status, Status::Fresh);
    }
    assert!(proxy.metric("featureproxy_cache_invalidations_total", &[]) >= 2.0);
}
