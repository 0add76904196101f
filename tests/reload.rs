//! Reloading the registry without a restart, from outside: SIGHUP re-reads the config file
//! while loadgen keeps reading; a view added is served on every shard, a changed default and
//! threshold apply at once, a bad file changes nothing and says why, a removed view answers
//! UNKNOWN_VIEW while the others keep their ids and rows; a packed view whose features change
//! without a version bump, and a `[server]` change, are refused.

mod common;

use std::time::Duration;

use common::{eventually, flat_row, now_ms, Proxy, RawConn, Redis};
use featureproxy_client::{Client, ClientOptions, ErrorCode, Status, Value};
use featureproxy_protocol::{GetRequest, Hello, Keys, Request, Response, SchemaReply, VERSION};

/// examples/features.toml, with `promo_features` (a copy of user_features) appended.
fn with_promo(registry: &str) -> String {
    let start = registry.find("\n[[view]]").unwrap() + 1;
    let end = registry
        .find("[[view]]\nname = \"fraud_features\"")
        .unwrap();
    let user = &registry[start..end];
    format!(
        "{registry}\n{}",
        user.replacen("name = \"user_features\"", "name = \"promo_features\"", 1)
    )
}

fn rewrite(proxy: &Proxy, server_toml: &str, registry: &str) {
    // Written aside, then renamed over: a reload never reads half a file.
    let path = proxy.config_path();
    let aside = path.with_extension("new");
    std::fs::write(&aside, format!("[server]\n{server_toml}\n\n{registry}")).unwrap();
    std::fs::rename(aside, path).unwrap();
}

/// HELLO, then SCHEMA of `view`, on a new connection: the shard it landed on, and the answer.
fn schema_on_new_connection(proxy: &Proxy, view: &str, token: &str) -> (u16, Response) {
    let mut c = RawConn::connect(proxy.port);
    let Response::Hello(h) = c.call(&Request::Hello(Hello {
        version: VERSION,
        token: token.into(),
        client_name: "reload-test".into(),
    })) else {
        panic!("no HELLO reply")
    };
    let answer = c.call(&Request::Schema { view: view.into() });
    (h.shard, answer)
}

fn gen(proxy: &Proxy) -> f64 {
    proxy.metric("featureproxy_config_generation", &[])
}

#[test]
fn views_reload_under_load_and_a_bad_file_changes_nothing() {
    let redis = Redis::start();
    let registry = common::example_registry();
    let server_toml = "default_deadline = \"200ms\"";
    let proxy = Proxy::start_custom(&redis.url(), 2, server_toml, &registry, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(Client::connect(proxy.addr(), ClientOptions::default()))
        .unwrap();
    rt.block_on(client.put("user_features", &[("u1", now_ms(), flat_row(1.0))]))
        .unwrap();
    let user_schema = rt.block_on(client.schema("user_features")).unwrap();

    // loadgen reads user_features throughout, open loop.
    let target = proxy.addr();
    let seeded = rt
        .block_on(loadgen::seed::seed(loadgen::seed::SeedConfig {
            addr: target.clone(),
            view: "user_features".into(),
            entities: 1000,
            cold_fraction: 0.0,
            batch: 200,
            inflight: 4,
            connections: 2,
            seed: 1,
            key_prefix: b"u:".to_vec(),
            token: None,
            verify: 0,
            tls: None,
        }))
        .unwrap();
    assert_eq!(seeded.written, 1000);
    let cfg = common::user_features_load(
        &target,
        None,
        &user_schema,
        1000,
        1000.0,
        4,
        Duration::from_secs(4),
    );
    let load = std::thread::spawn(move || loadgen::driver::run(cfg).unwrap());

    // Add promo_features; give fraud_features a new default and a shorter stale_after.
    let changed = with_promo(&registry)
        .replace(
            "{ name = \"avg_tx_amount_30d\", dtype = \"f64\", default = 42.5 }",
            "{ name = \"avg_tx_amount_30d\", dtype = \"f64\", default = 7.25 }",
        )
        .replace("stale_after = \"30s\"", "stale_after = \"10s\"");
    assert_eq!(gen(&proxy), 1.0);
    rewrite(&proxy, server_toml, &changed);
    proxy.sighup();
    proxy.wait_reloads("applied", 1.0);
    assert_eq!(gen(&proxy), 2.0);
    // The reload answered once every shard had it: any new connection, on either shard, knows
    // promo_features at once (no retry).
    let mut shards = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let (shard, answer) = schema_on_new_connection(&proxy, "promo_features", "");
        let Response::Schema(s) = answer else {
            panic!("shard {shard}: {answer:?}")
        };
        assert_eq!(s.view_id, 3, "a new view gets the next id");
        shards.insert(shard);
        if shards.len() == 2 {
            break;
        }
    }
    assert_eq!(shards.len(), 2, "both shards answered");
    rt.block_on(client.put("promo_features", &[("u1", now_ms(), flat_row(9.0))]))
        .unwrap();
    let b = rt.block_on(client.get("promo_features", &["u1"])).unwrap();
    assert_eq!(b.row(0), flat_row(9.0));
    // The new default, for an entity with no row (the client refetches the schema: new id).
    let b = rt
        .block_on(client.get("fraud_features", &["nobody"]))
        .unwrap();
    assert_eq!(b.status(0).status, Status::Missing);
    assert_eq!(b.row(0)[2], Value::F64(7.25));
    let fraud: SchemaReply = rt
        .block_on(client.schema("fraud_features"))
        .unwrap()
        .reply()
        .clone();
    assert_eq!(fraud.stale_after_ms, 10_000);

    // A file with an error: refused whole, the registry in force serves on, the metric says so.
    rewrite(
        &proxy,
        server_toml,
        &changed.replace("max_staleness = \"5m\"", "max_staleness = \"1s\""),
    );
    proxy.sighup();
    proxy.wait_reloads("refused", 1.0);
    assert_eq!(
        proxy.metric("featureproxy_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(gen(&proxy), 2.0);
    assert!(proxy.logs().contains("reload refused"), "{}", proxy.logs());
    let b = rt.block_on(client.get("promo_features", &["u1"])).unwrap();
    assert_eq!(b.row(0), flat_row(9.0));

    let m = load.join().unwrap();
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert_eq!(m.responses, m.sends);
    assert_eq!(m.verify_bad, 0);

    // Remove user_features: UNKNOWN_VIEW for it; the others keep their ids and their own rows.
    rewrite(
        &proxy,
        server_toml,
        &with_promo(&registry).replacen(
            &registry[..registry
                .find("[[view]]\nname = \"fraud_features\"")
                .unwrap()],
            "",
            1,
        ),
    );
    proxy.sighup();
    proxy.wait_reloads("applied", 2.0);
    assert_eq!(
        proxy.metric("featureproxy_config_last_reload_successful", &[]),
        1.0
    );
    let e = rt
        .block_on(client.get("user_features", &["u1"]))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownView), "{e}");
    let mut raw = RawConn::connect(proxy.port);
    let answer = raw.call(&Request::Get(GetRequest {
        view_id: user_schema.view_id(),
        flags: 0,
        schema_id: 0,
        deadline_us: 0,
        keys: Keys::from_slices(&["u1"]),
    }));
    let Response::Error(e) = answer else {
        panic!("a removed view's id answers UNKNOWN_VIEW, got {answer:?}")
    };
    assert_eq!(e.code, ErrorCode::UnknownView);
    let (_, answer) = schema_on_new_connection(&proxy, "promo_features", "");
    let Response::Schema(s) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(s.view_id, 3);
    let b = rt.block_on(client.get("promo_features", &["u1"])).unwrap();
    assert_eq!(
        b.row(0),
        flat_row(9.0),
        "promo's own row, not user_features'"
    );
    eventually(Duration::from_secs(2), "generation 3", || {
        (gen(&proxy) == 3.0).then_some(())
    });
}

#[test]
fn a_feature_change_without_a_version_bump_and_a_server_change_are_refused() {
    let redis = Redis::start();
    let registry = common::example_registry();
    let server_toml = "default_deadline = \"200ms\"";
    let proxy = Proxy::start_custom(&redis.url(), 1, server_toml, &registry, &[]);

    // f32 -> i32 keeps the row's width: stored rows would be misread in silence.
    let retyped = registry.replacen(
        "{ name = \"tx_sum_1h\", dtype = \"f32\", default = 0.0 }",
        "{ name = \"tx_sum_1h\", dtype = \"i32\", default = 0 }",
        1,
    );
    rewrite(&proxy, server_toml, &retyped);
    proxy.sighup();
    proxy.wait_reloads("refused", 1.0);
    let logs = proxy.logs();
    assert!(
        logs.contains("fraud_features") && logs.contains("bump version"),
        "{logs}"
    );

    // With the version bumped, the same change is a migration, and applies.
    rewrite(
        &proxy,
        server_toml,
        &retyped.replacen(
            "name = \"fraud_features\"\nversion = 1",
            "name = \"fraud_features\"\nversion = 2",
            1,
        ),
    );
    proxy.sighup();
    proxy.wait_reloads("applied", 1.0);

    // [server] settings need a restart: named, refused.
    rewrite(&proxy, "default_deadline = \"50ms\"", &registry);
    proxy.sighup();
    proxy.wait_reloads("refused", 2.0);
    assert!(
        proxy
            .logs()
            .contains("[server] default_deadline changed: it needs a restart"),
        "{}",
        proxy.logs()
    );
    assert_eq!(proxy.metric("featureproxy_config_generation", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_flight_finishes_on_the_registry_it_started_with() {
    let redis = Redis::start();
    let registry = common::example_registry();
    let proxy = Proxy::start_custom(&redis.url(), 1, "", &registry, &[]);
    let client = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    client.schema("user_features").await.unwrap();

    // A GET waits on a frozen Redis (bypassing the cache) while a reload removes its view.
    redis.freeze();
    let c = client.clone();
    let waiting = tokio::spawn(async move {
        let opts = featureproxy_client::GetOptions {
            bypass_cache: true,
            deadline: Some(Duration::from_millis(800)),
        };
        c.get_with("user_features", &["u1"], opts).await
    });
    eventually(Duration::from_secs(5), "the GET in flight", || {
        (proxy.metric("featureproxy_inflight_requests", &[]) >= 1.0).then_some(())
    });
    let start = registry
        .find("[[view]]\nname = \"fraud_features\"")
        .unwrap();
    rewrite(&proxy, "", &registry[start..]);
    proxy.sighup();
    proxy.wait_reloads("applied", 1.0);

    // It is answered for the view it asked for: its defaults at its deadline, not an error.
    let b = waiting.await.unwrap().unwrap();
    assert_eq!(b.status(0).status, Status::Degraded);
    assert_eq!(b.row(0), flat_row(0.0));
    redis.thaw();
    let e = client.get("user_features", &["u1"]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownView), "{e}");
}

#[test]
fn post_admin_reload_answers_what_changed_and_is_guarded() {
    let redis = Redis::start();
    let registry = common::example_registry();
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.toml");
    let hex = |t: &str| -> String {
        featureproxy::config::access::token_hash(t)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    std::fs::write(
        &access,
        format!(
            "[[access]]\nname = \"ops\"\ntoken_sha256 = [\"{}\"]\nadmin = true\n\n[[access]]\nname = \"ranker\"\ntoken_sha256 = [\"{}\"]\nread = [\"*\"]\n",
            hex("tok-ops"),
            hex("tok-ranker")
        ),
    )
    .unwrap();
    let server_toml = format!("access_file = \"{}\"", access.display());
    let proxy = Proxy::start_custom(&redis.url(), 2, &server_toml, &registry, &[]);
    rewrite(&proxy, &server_toml, &with_promo(&registry));

    let post = |headers: &[(&str, &str)]| proxy.http_with("POST", "/admin/reload", headers);
    // The access file names an admin: its token is asked for, and no other.
    let (code, body) = post(&[]);
    assert_eq!(code, 401, "{body}");
    let (code, _) = post(&[("Authorization", "Bearer tok-ranker")]);
    assert_eq!(code, 401);
    // A browser's cross-site request is refused whatever it carries.
    let (code, _) = post(&[
        ("Authorization", "Bearer tok-ops"),
        ("Origin", "http://evil.example"),
    ]);
    assert_eq!(code, 403);
    let (code, _) = proxy.http("/admin/reload");
    assert_eq!(code, 405);
    assert_eq!(gen(&proxy), 1.0, "nothing reloaded so far");

    let (code, body) = post(&[("Authorization", "Bearer tok-ops")]);
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["generation"], 2);
    assert_eq!(answer["added"], serde_json::json!(["promo_features"]));
    let (_, reply) = schema_on_new_connection(&proxy, "promo_features", "tok-ranker");
    assert!(matches!(reply, Response::Schema(_)), "{reply:?}");

    // A bad file: 422 with the reason, nothing changed.
    rewrite(
        &proxy,
        &server_toml,
        &registry.replace("max_staleness = \"5m\"", "max_staleness = \"1s\""),
    );
    let (code, body) = post(&[("Authorization", "Bearer tok-ops")]);
    assert_eq!(code, 422, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["generation"], 2);
    assert!(
        answer["error"].as_str().unwrap().contains("max_staleness"),
        "{body}"
    );
    assert_eq!(
        proxy.metric("featureproxy_config_last_reload_successful", &[]),
        0.0
    );
}
