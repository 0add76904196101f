//! The proxy's connections to Redis over TLS, against real redis-servers whose plaintext port is
//! off (`--port 0`): a standalone server that asks for a client certificate, and a 3-master
//! Redis Cluster with `tls-cluster yes`. Rows written through the proxy come back FRESH, a write
//! made behind the proxy's back (redis-cli over TLS) reaches its hot cache through client
//! tracking, and a CA that does not match Redis's certificate stops the start with the reason.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::{toml_path, TlsCluster, TlsRedis};
use common::{block, eventually, flat_row, now_ms, read_until_cached, Proxy};
use featureproxy_client::{Client, ClientOptions, GetOptions, Status};

/// A long hot-cache TTL: only client tracking can explain a prompt invalidation.
fn patient_registry() -> String {
    common::example_registry().replacen("hot_cache_ttl = \"1s\"", "hot_cache_ttl = \"10m\"", 1)
}

/// `[server.redis_tls]` with the fixtures' CA and client certificate.
fn redis_tls(ca: &str) -> String {
    format!(
        "default_deadline = \"10s\"\n[server.redis_tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        toml_path(ca),
        toml_path("client.crt"),
        toml_path("client.key")
    )
}

/// A packed user_features row as the proxy stores it: format 1, computed_at, 16 f32s.
fn stored(v: f32, computed_at: u64) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&computed_at.to_le_bytes());
    for _ in 0..16 {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

async fn client(proxy: &Proxy) -> Client {
    let opts = ClientOptions {
        pool_size: 1,
        ..Default::default()
    };
    Client::connect(proxy.addr(), opts).await.unwrap()
}

/// Writes `n` rows through the proxy and reads them back from Redis (not the cache): all FRESH,
/// each with its own value.
async fn round_trip(c: &Client, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("tls-{i}")).collect();
    let rows: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), now_ms(), flat_row(i as f32)))
        .collect();
    c.put("user_features", &rows).await.unwrap();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let opts = GetOptions {
        bypass_cache: true,
        ..Default::default()
    };
    let b = c.get_with("user_features", &refs, opts).await.unwrap();
    for i in 0..n {
        assert_eq!(b.status(i).status, Status::Fresh, "row {i}");
        assert_eq!(b.row(i), flat_row(i as f32), "row {i}");
    }
}

/// Reads `key` until the row written behind the proxy's back (value `v`) is served.
fn until_row(c: &Client, key: &str, v: f32) {
    eventually(
        Duration::from_secs(5),
        "the row written by redis-cli",
        || {
            let (c, key) = (c.clone(), key.to_string());
            let b = block(async move { c.get("user_features", &[key.as_str()]).await.unwrap() });
            (b.row(0) == flat_row(v)).then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_redis_reached_only_over_tls_serves_fresh_rows_and_tracks_writes() {
    let redis = TlsRedis::start("yes");
    let proxy = Proxy::start_custom(
        &redis.url(),
        2,
        &redis_tls("ca.crt"),
        &patient_registry(),
        &[],
    );
    eventually(
        Duration::from_secs(10),
        "tracking armed on both shards",
        || (proxy.metric("featureproxy_cache_tracking", &[]) == 2.0).then_some(()),
    );
    let c = client(&proxy).await;
    round_trip(&c, 300).await;
    assert!(proxy.metric("featureproxy_redis_commands_total", &[]) >= 1.0);

    // Cached, then written behind the proxy's back over TLS: tracking (a TLS connection too)
    // drops the cached row long before its 10-minute TTL.
    read_until_cached(&c, "user_features", "tls-7").await;
    redis.cli(
        &["SET", "fp:user_features:v1:tls-7"],
        Some(&stored(99.0, now_ms())),
    );
    until_row(&c, "tls-7", 99.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_with_tls_cluster_serves_fresh_rows_from_every_master() {
    let cluster = TlsCluster::start();
    let proxy = Proxy::start_custom(
        &cluster.url(),
        2,
        &redis_tls("ca.crt"),
        &patient_registry(),
        &[],
    );
    eventually(
        Duration::from_secs(15),
        "tracking armed on every node",
        || (proxy.metric("featureproxy_cache_tracking", &[]) == 2.0).then_some(()),
    );
    let c = client(&proxy).await;
    // 300 keys land on all three masters.
    round_trip(&c, 300).await;
    for node in &cluster.nodes {
        let keys: usize = node.cli(&["DBSIZE"], None).trim().parse().unwrap();
        assert!(keys > 50, "master {} holds {keys} of 300 rows", node.port);
    }
    read_until_cached(&c, "user_features", "tls-11").await;
    cluster.cli_set("fp:user_features:v1:tls-11", &stored(42.0, now_ms()));
    until_row(&c, "tls-11", 42.0);
}

#[test]
fn a_ca_that_did_not_sign_redis_certificate_stops_the_start_and_says_why() {
    let redis = TlsRedis::start("optional");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("features.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nredis = \"{}\"\nlisten = \"127.0.0.1:0\"\nstats_listen = \"127.0.0.1:0\"\n[server.redis_tls]\nca_file = \"{}\"\n\n{}",
            redis.url(),
            toml_path("other-ca.crt"),
            common::example_registry()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_featureproxy"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the proxy must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("ca_file"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", redis.port)),
        "names the server: {err}"
    );
}
