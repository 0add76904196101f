//! Scoped credentials from outside: an access file of principals with token hashes and grants;
//! FORBIDDEN (14) for a view or op not granted, on a connection that stays usable; UNAUTHORIZED
//! (9) and a close for a missing or unknown token; and a token rotated with SIGHUP while a holder
//! of the old token keeps reading, with no failed request.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, flat_row, now_ms, Proxy, RawConn, Redis};
use featureproxy::config::access::token_hash;
use featureproxy_client::{Client, ClientOptions, Status, Value};
use featureproxy_protocol::{ErrorCode, Hello, PutEntry, PutRequest, Request, Response, VERSION};

fn hex(token: &str) -> String {
    token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An `[[access]]` entry.
fn entry(name: &str, tokens: &[&str], read: &str, write: &str) -> String {
    let hashes: Vec<String> = tokens.iter().map(|t| format!("\"{}\"", hex(t))).collect();
    format!(
        "[[access]]\nname = \"{name}\"\ntoken_sha256 = [{}]\nread = [{read}]\nwrite = [{write}]\n\n",
        hashes.join(", ")
    )
}

fn hello(c: &mut RawConn, token: &str) -> Response {
    c.call(&Request::Hello(Hello {
        version: VERSION,
        token: token.into(),
        client_name: "access-test".into(),
    }))
}

async fn client(proxy: &Proxy, token: &str) -> Client {
    let opts = ClientOptions {
        token: Some(token.into()),
        pool_size: 1,
        ..Default::default()
    };
    Client::connect(proxy.addr(), opts).await.unwrap()
}

fn start(redis: &Redis, access: &Path) -> Proxy {
    Proxy::start(redis, 2, &format!("access_file = \"{}\"", access.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_principal_may_do_what_its_grants_say_and_nothing_else() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.toml");
    std::fs::write(
        &file,
        entry("ranker", &["tok-ranker"], "\"user_*\"", "")
            + &entry("pipeline", &["tok-pipeline"], "\"*\"", "\"*\""),
    )
    .unwrap();
    let proxy = start(&redis, &file);
    assert_eq!(proxy.metric("featureproxy_access_principals", &[]), 2.0);

    // The writer writes; the reader reads what it wrote.
    let writer = client(&proxy, "tok-pipeline").await;
    let now = now_ms();
    let rows = [("u1", now, flat_row(1.5)), ("u2", now, flat_row(2.5))];
    assert_eq!(writer.put("user_features", &rows).await.unwrap(), 2);
    let reader = client(&proxy, "tok-ranker").await;
    let got = reader.get("user_features", &["u1", "u2"]).await.unwrap();
    assert_eq!(
        (got.status(0).status, got.row(0)[0]),
        (Status::Fresh, Value::F32(1.5))
    );
    assert_eq!(
        (got.status(1).status, got.row(1)[0]),
        (Status::Fresh, Value::F32(2.5))
    );

    // On one raw connection: PUT and another view are FORBIDDEN, and the connection serves on.
    let mut c = RawConn::connect(proxy.port);
    assert!(matches!(hello(&mut c, "tok-ranker"), Response::Hello(_)));
    let user = c.schema("user_features");
    let other = a_view_other_than("user_features");
    let e = c.expect_error(&Request::Schema {
        view: other.clone(),
    });
    assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);
    assert!(
        e.message.contains("ranker") && e.message.contains(&other),
        "{}",
        e.message
    );
    let entry = PutEntry {
        key: Bytes::from_static(b"u9"),
        computed_at_ms: now,
        row: Bytes::from(vec![0u8; user.row_bytes as usize]),
    };
    let put = Request::Put(PutRequest::new(user.view_id, user.schema_id, &[entry]));
    let e = c.expect_error(&put);
    assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);
    assert!(e.message.contains("PUT"), "{}", e.message);
    assert!(
        matches!(c.call(&Request::Ping), Response::Pong),
        "the connection serves on"
    );
    assert_eq!(
        proxy.metric("featureproxy_errors_total", &[("code", "forbidden")]),
        2.0
    );

    // No token, and a token no entry holds: UNAUTHORIZED, then the connection closes.
    for token in ["", "tok-guess"] {
        let mut c = RawConn::connect(proxy.port);
        match hello(&mut c, token) {
            Response::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unauthorized);
                assert!(
                    !e.message.contains("tok-"),
                    "no token in the answer: {}",
                    e.message
                );
            }
            other => panic!("token {token:?}: {other:?}"),
        }
        assert!(c.is_closed());
    }
    assert!(!proxy.logs().contains("tok-"), "no token in the logs");
    let failures = |reason| proxy.metric("featureproxy_auth_failures_total", &[("reason", reason)]);
    assert_eq!(
        (failures("missing_token"), failures("unknown_token")),
        (1.0, 1.0)
    );
}

/// A view of the example registry other than `not`.
fn a_view_other_than(not: &str) -> String {
    let registry = common::example_registry();
    registry
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .find(|n| n != not)
        .expect("the example registry has a second view")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_rotated_with_sighup_under_load_without_a_failed_request() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.toml");
    let write_file = |body: String| {
        // Written whole, then renamed into place: a SIGHUP never reads half a file.
        let tmp = dir.path().join("access.toml.new");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write_file(entry("ranker", &["old"], "\"*\"", "\"*\""));
    let proxy = start(&redis, &file);
    let holder = client(&proxy, "old").await;
    let now = now_ms();
    assert_eq!(
        holder
            .put("user_features", &[("r1", now, flat_row(7.0))])
            .await
            .unwrap(),
        1
    );

    // A holder of the old token reads without a pause while the token is rotated.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, done, failed, holder) =
            (stop.clone(), done.clone(), failed.clone(), holder.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                match holder.get("user_features", &["r1"]).await {
                    Ok(b) if b.status(0).status == Status::Fresh => done.fetch_add(1, Relaxed),
                    _ => failed.fetch_add(1, Relaxed),
                };
            }
        })
    };

    // 1. The new token beside the old: both open connections.
    write_file(entry("ranker", &["old", "new"], "\"*\"", "\"*\""));
    proxy.sighup();
    proxy.wait_reloads("applied", 1.0);
    let fresh = client(&proxy, "new").await;
    assert_eq!(
        fresh
            .get("user_features", &["r1"])
            .await
            .unwrap()
            .status(0)
            .status,
        Status::Fresh
    );

    // 2. A broken file changes nothing: both tokens still open connections.
    write_file("[[access]]\nname = \"ranker\"\ntoken_sha256 = [\"not a hash\"]\n".into());
    proxy.sighup();
    proxy.wait_reloads("refused", 1.0);
    assert!(
        proxy.logs().contains("reload refused"),
        "the refusal is logged"
    );
    for token in ["old", "new"] {
        let mut c = RawConn::connect(proxy.port);
        assert!(
            matches!(hello(&mut c, token), Response::Hello(_)),
            "{token}"
        );
    }

    // 3. The old token removed: refused on new connections; the open one reads on.
    write_file(entry("ranker", &["new"], "\"*\"", "\"*\""));
    proxy.sighup();
    proxy.wait_reloads("applied", 2.0);
    let mut c = RawConn::connect(proxy.port);
    assert!(
        matches!(hello(&mut c, "old"), Response::Error(e) if e.code == ErrorCode::Unauthorized)
    );
    let before = done.load(Relaxed);
    eventually(
        Duration::from_secs(5),
        "the holder to read on after the rotation",
        || (done.load(Relaxed) > before + 100).then_some(()),
    );
    stop.store(true, Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Relaxed),
        0,
        "{} reads served",
        done.load(Relaxed)
    );
    assert_eq!(proxy.metric("featureproxy_access_principals", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_new_prints_a_token_and_the_lines_that_grant_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_featureproxy"))
        .args(["token", "new", "--name", "ranker-prod"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find(|l| l.starts_with("fp_"))
        .expect("a token line")
        .to_string();
    assert_eq!(token.len(), 3 + 64, "32 random bytes, hex: {token}");
    assert!(
        text.contains(&hex(&token)),
        "the lines hold the token's hash"
    );
    assert!(
        !text.lines().any(|l| l.contains(&token) && l.contains('=')),
        "the token itself is not in the TOML"
    );
    // The printed lines, with a grant, are an access file the proxy takes.
    let lines: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[[access]]"))
        .map(|l| l.replace("read = []", "read = [\"*\"]") + "\n")
        .collect();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.toml");
    std::fs::write(&file, lines).unwrap();
    let proxy = start(&redis, &file);
    let c = client(&proxy, &token).await;
    assert_eq!(
        c.get("user_features", &["nobody"])
            .await
            .unwrap()
            .status(0)
            .status,
        Status::Missing
    );
    // A second call makes another token.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_featureproxy"))
        .args(["token", "new", "--name", "ranker-prod"])
        .output()
        .unwrap();
    assert!(!String::from_utf8(again.stdout).unwrap().contains(&token));
}
