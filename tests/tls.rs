//! Clients against the proxy's TLS port ([server.tls]), with the committed test certificates
//! (tests/fixtures/tls): rows written and read over TLS by the Rust client and loadgen; each
//! certificate problem failing `Client::connect` with an `Error::Tls` that names it, and counted
//! by the proxy; plaintext on the TLS port and TLS on the plaintext port told apart; client
//! certificates naming principals of the access file; certificates rotated by SIGHUP.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::toml_path;
use common::{eventually, flat_row, free_port, now_ms, wait_port, Proxy, RawConn, Redis};
use featureproxy_client::{Client, ClientOptions, Error, ErrorCode, TlsOptions};
use featureproxy_protocol::{Hello, Request, Response, VERSION};

fn fixture(name: &str) -> String {
    toml_path(name)
}

/// `[server.tls]` on a free port serving `cert` (server, expired-server, other-server); with
/// `client_ca`, client certificates from ca.crt are asked for (`client_cert` = required or
/// optional). Returns the TOML and the port.
fn tls_toml(cert: &str, key: &str, client_cert: Option<&str>) -> (String, u16) {
    let port = free_port();
    let mut toml = format!(
        "[server.tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n"
    );
    if let Some(mode) = client_cert {
        toml += &format!(
            "client_ca_file = \"{}\"\nclient_cert = \"{mode}\"\n",
            fixture("ca.crt")
        );
    }
    (toml, port)
}

/// A proxy with a TLS listener serving fixture `cert`, requiring client certificates from
/// ca.crt when `mtls`; returns it and the TLS port.
fn tls_proxy(redis: &Redis, cert: &str, mtls: bool) -> (Proxy, u16) {
    let (toml, port) = tls_toml(
        &fixture(&format!("{cert}.crt")),
        &fixture(&format!("{cert}.key")),
        mtls.then_some("required"),
    );
    let proxy = Proxy::start(redis, 2, &toml);
    wait_port(port);
    (proxy, port)
}

fn handshakes(proxy: &Proxy, reason: &str) -> f64 {
    proxy.metric("featureproxy_tls_handshakes_total", &[("reason", reason)])
}

fn opts(tls: TlsOptions) -> ClientOptions {
    ClientOptions {
        tls: Some(tls),
        ..Default::default()
    }
}

fn ca() -> TlsOptions {
    TlsOptions::new(fixture("ca.crt"))
}

async fn tls_error(addr: String, o: ClientOptions) -> String {
    match Client::connect(addr, o).await {
        Err(e @ Error::Tls(_)) => {
            assert!(!e.is_retryable());
            e.to_string()
        }
        Err(other) => panic!("expected Error::Tls, got {other:?}: {other}"),
        Ok(_) => panic!("connect succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_over_tls() {
    let redis = Redis::start();
    let (proxy, port) = tls_proxy(&redis, "server", false);
    for host in ["127.0.0.1", "localhost"] {
        let c = Client::connect(format!("{host}:{port}"), opts(ca()))
            .await
            .unwrap();
        let key = format!("tls-{host}");
        let written = c
            .put("user_features", &[(key.as_str(), now_ms(), flat_row(2.5))])
            .await
            .unwrap();
        assert_eq!(written, 1);
        let b = c
            .get("user_features", &[key.as_str(), "nobody"])
            .await
            .unwrap();
        assert_eq!(b.row(0), flat_row(2.5));
        assert_eq!(b.status(1).status, featureproxy_client::Status::Missing);
    }
    // The plaintext listener serves on beside it, and is not mistaken for TLS.
    let plain = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    let b = plain
        .get("user_features", &["tls-localhost"])
        .await
        .unwrap();
    assert_eq!(b.row(0), flat_row(2.5));
    let msg = tls_error(proxy.addr(), opts(ca())).await;
    assert!(msg.contains("does not speak TLS"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_and_expired_server_certificates_are_refused() {
    let redis = Redis::start();
    let (_proxy, port) = tls_proxy(&redis, "server", false);
    let msg = tls_error(
        format!("127.0.0.1:{port}"),
        opts(TlsOptions::new(fixture("other-ca.crt"))),
    )
    .await;
    assert!(
        msg.contains("not signed by a CA this client trusts") && msg.contains("other-ca.crt"),
        "{msg}"
    );

    let (_expired, port) = tls_proxy(&redis, "expired-server", false);
    let msg = tls_error(format!("127.0.0.1:{port}"), opts(ca())).await;
    assert!(msg.contains("expired at 2020-01-01 00:00:00 UTC"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_missing_and_foreign_client_certificates_at_connect() {
    let redis = Redis::start();
    let (_proxy, port) = tls_proxy(&redis, "server", true);
    let addr = format!("127.0.0.1:{port}");
    let msg = tls_error(addr.clone(), opts(ca())).await;
    assert!(msg.contains("requires a client certificate"), "{msg}");
    let msg = tls_error(
        addr.clone(),
        opts(ca().client_cert(fixture("other-client.crt"), fixture("other-client.key"))),
    )
    .await;
    assert!(
        msg.contains("does not trust this client certificate"),
        "{msg}"
    );

    let c = Client::connect(
        addr,
        opts(ca().client_cert(fixture("client.crt"), fixture("client.key"))),
    )
    .await
    .unwrap();
    c.put("user_features", &[("m1", now_ms(), flat_row(7.0))])
        .await
        .unwrap();
    assert_eq!(
        c.get("user_features", &["m1"]).await.unwrap().row(0),
        flat_row(7.0)
    );
}

#[test]
fn loadgen_over_tls_reads_what_seed_wrote() {
    let redis = Redis::start();
    // A patient deadline: the subject is what TLS carries, and on two busy cores (CI beside a
    // build) more than 1% of reads passed the default 50 ms and came back DEGRADED.
    let (toml, port) = tls_toml(
        &fixture("server.crt"),
        &fixture("server.key"),
        Some("required"),
    );
    let _proxy = Proxy::start(&redis, 2, &format!("default_deadline = \"5s\"\n{toml}"));
    wait_port(port);
    let target = format!("127.0.0.1:{port}");
    let tls = ca().client_cert(fixture("client.crt"), fixture("client.key"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seeded = rt
        .block_on(loadgen::seed::seed(loadgen::seed::SeedConfig {
            addr: target.clone(),
            view: "user_features".into(),
            entities: 2000,
            cold_fraction: 0.0,
            batch: 200,
            inflight: 4,
            connections: 2,
            seed: 1,
            key_prefix: b"u:".to_vec(),
            token: None,
            verify: 200,
            tls: Some(tls.clone()),
        }))
        .unwrap();
    assert_eq!(seeded.written, 2000);
    assert!(
        seeded.verify_failures.is_empty(),
        "{:?}",
        seeded.verify_failures
    );
    let schema = rt
        .block_on(async {
            Client::connect(&target, opts(tls.clone()))
                .await
                .unwrap()
                .schema("user_features")
                .await
        })
        .unwrap();
    let cfg = common::user_features_load(
        &target,
        Some(tls.connector(&target).unwrap()),
        &schema,
        2000,
        1000.0,
        2,
        Duration::from_secs(1),
    );
    let m = loadgen::driver::run(cfg).unwrap();
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert_eq!(m.responses, m.sends);
    assert!(
        m.verify_checked > 500 && m.verify_bad == 0,
        "{} {}",
        m.verify_checked,
        m.verify_bad
    );
    assert_eq!(m.statuses[0], m.entities, "all FRESH: {:?}", m.statuses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_the_tls_port_and_tls_on_the_plaintext_port_are_told_and_counted() {
    let redis = Redis::start();
    let (proxy, port) = tls_proxy(&redis, "server", false);

    // A plaintext HELLO to the TLS port: an ERROR frame in plaintext, then the close.
    let mut raw = RawConn::connect(port);
    raw.send(&Request::Hello(Hello {
        version: VERSION,
        token: String::new(),
        client_name: "plaintext".into(),
    }));
    let frame = raw.recv().expect("an ERROR frame before the close");
    assert_eq!(frame.request_id, 0);
    let answer = Response::decode(&frame, &Default::default()).unwrap();
    let Response::Error(e) = answer else {
        panic!("expected an ERROR frame, got {answer:?}")
    };
    assert!(
        e.message.contains("this port requires TLS"),
        "{}",
        e.message
    );
    assert!(raw.is_closed());
    drop(raw);
    eventually(Duration::from_secs(5), "the plaintext peer counted", || {
        (handshakes(&proxy, "not_tls") == 1.0).then_some(())
    });

    // A TLS client on the plaintext port: the client says so, the proxy logs and counts it.
    let msg = tls_error(proxy.addr(), opts(ca())).await;
    assert!(msg.contains("does not speak TLS"), "{msg}");
    eventually(Duration::from_secs(5), "the ClientHello counted", || {
        (handshakes(&proxy, "tls_on_plaintext_port") >= 1.0).then_some(())
    });
    assert!(
        proxy
            .logs()
            .contains("a TLS ClientHello came to the plaintext port"),
        "{}",
        proxy.logs()
    );
    assert_eq!(handshakes(&proxy, "ok"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_counted_by_reason() {
    let redis = Redis::start();
    let (proxy, port) = tls_proxy(&redis, "server", true);
    let addr = format!("127.0.0.1:{port}");
    tls_error(addr.clone(), opts(ca())).await;
    let foreign = ca().client_cert(fixture("other-client.crt"), fixture("other-client.key"));
    tls_error(addr.clone(), opts(foreign)).await;
    let distrustful = TlsOptions::new(fixture("other-ca.crt"))
        .client_cert(fixture("client.crt"), fixture("client.key"));
    tls_error(addr.clone(), opts(distrustful)).await;
    let trusted = ca().client_cert(fixture("client.crt"), fixture("client.key"));
    Client::connect(addr, opts(trusted)).await.unwrap();
    eventually(Duration::from_secs(5), "every handshake counted", || {
        let counted: f64 = [
            "no_client_cert",
            "unknown_ca",
            "peer_refused_server_cert",
            "ok",
        ]
        .iter()
        .map(|r| handshakes(&proxy, r))
        .sum();
        (counted >= 4.0).then_some(())
    });
    assert_eq!(handshakes(&proxy, "no_client_cert"), 1.0);
    assert_eq!(handshakes(&proxy, "unknown_ca"), 1.0);
    assert_eq!(handshakes(&proxy, "peer_refused_server_cert"), 1.0);
    assert!(handshakes(&proxy, "ok") >= 1.0);
    assert!(proxy.metric("featureproxy_tls_handshake_seconds_total", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_principal_and_its_grants_apply() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.toml");
    // ranker: known by its certificate alone. auditor: a token, and only over that certificate.
    std::fs::write(
        &access,
        format!(
            "[[access]]\nname = \"ranker\"\ncert_names = [\"spiffe://test/ranker\"]\nread = [\"user_features\"]\n\n[[access]]\nname = \"auditor\"\ntoken_sha256 = [\"{}\"]\ncert_names = [\"ranker.test\"]\nread = [\"*\"]\n",
            hex("tok-auditor")
        ),
    )
    .unwrap();
    let (tls, port) = tls_toml(
        &fixture("server.crt"),
        &fixture("server.key"),
        Some("optional"),
    );
    let toml = format!("access_file = \"{}\"\n{tls}", access.display());
    let proxy = Proxy::start(&redis, 2, &toml);
    wait_port(port);
    let addr = format!("127.0.0.1:{port}");
    let with_cert = || ca().client_cert(fixture("client.crt"), fixture("client.key"));

    let ranker = Client::connect(addr.clone(), opts(with_cert()))
        .await
        .unwrap();
    let b = ranker.get("user_features", &["nobody"]).await.unwrap();
    assert_eq!(b.status(0).status, featureproxy_client::Status::Missing);
    let e = ranker
        .put("user_features", &[("x", now_ms(), flat_row(1.0))])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    assert!(e.to_string().contains("\"ranker\" may not PUT"), "{e}");
    let e = ranker.get("fraud_features", &["x"]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    // The connection stays usable.
    ranker.get("user_features", &["nobody"]).await.unwrap();

    // No certificate and no token: nobody.
    let e = Client::connect(addr.clone(), opts(ca())).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
    // The auditor's token without its certificate: refused, saying why.
    let token_only = ClientOptions {
        token: Some("tok-auditor".into()),
        ..opts(ca())
    };
    let e = Client::connect(addr.clone(), token_only).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
    assert!(e.to_string().contains("client certificate"), "{e}");
    // Both: in.
    let auditor = ClientOptions {
        token: Some("tok-auditor".into()),
        ..opts(with_cert())
    };
    let auditor = Client::connect(addr, auditor).await.unwrap();
    auditor.get("fraud_features", &["x"]).await.unwrap();

    let forbidden = |op: &str| {
        proxy.metric(
            "featureproxy_forbidden_total",
            &[("principal", "ranker"), ("op", op)],
        )
    };
    assert_eq!(forbidden("put"), 1.0);
    // The client asks SCHEMA before its first GET of a view: that is what was refused.
    assert_eq!(forbidden("schema"), 1.0);
    let requests =
        |p: &str| proxy.metric("featureproxy_principal_requests_total", &[("principal", p)]);
    assert!(requests("ranker") >= 4.0, "{}", requests("ranker"));
    assert!(requests("auditor") >= 1.0);
    assert_eq!(
        proxy.metric(
            "featureproxy_auth_failures_total",
            &[("reason", "cert_mismatch")]
        ),
        1.0
    );
}

/// The hex SHA-256 of a token, as access files hold it.
fn hex(token: &str) -> String {
    featureproxy::config::access::token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_and_a_broken_one_changes_nothing() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let install = |name: &str| {
        std::fs::copy(fixture(&format!("{name}.crt")), &cert).unwrap();
        std::fs::copy(fixture(&format!("{name}.key")), &key).unwrap();
    };
    // Start with a certificate from a CA the clients do not trust.
    install("other-server");
    let (toml, port) = tls_toml(
        &cert.display().to_string(),
        &key.display().to_string(),
        None,
    );
    let proxy = Proxy::start(&redis, 2, &toml);
    wait_port(port);
    let addr = format!("127.0.0.1:{port}");
    let msg = tls_error(addr.clone(), opts(ca())).await;
    assert!(
        msg.contains("not signed by a CA this client trusts"),
        "{msg}"
    );
    let open = Client::connect(addr.clone(), opts(TlsOptions::new(fixture("other-ca.crt"))))
        .await
        .unwrap();

    // The renewed certificate, then SIGHUP: new connections get it.
    install("server");
    proxy.sighup();
    proxy.wait_reloads("applied", 1.0);
    let c = Client::connect(addr.clone(), opts(ca())).await.unwrap();
    c.put("user_features", &[("r1", now_ms(), flat_row(3.0))])
        .await
        .unwrap();
    // A connection made before the rotation serves on with the session it has.
    assert_eq!(
        open.get("user_features", &["r1"]).await.unwrap().row(0),
        flat_row(3.0)
    );

    // A key that does not go with the certificate: refused whole, the renewed one stays.
    std::fs::copy(fixture("other-server.key"), &key).unwrap();
    proxy.sighup();
    proxy.wait_reloads("refused", 1.0);
    assert!(proxy.logs().contains("reload refused"), "{}", proxy.logs());
    let c = Client::connect(addr, opts(ca())).await.unwrap();
    assert_eq!(
        c.get("user_features", &["r1"]).await.unwrap().row(0),
        flat_row(3.0)
    );
    assert_eq!(
        proxy.metric("featureproxy_reloads_total", &[("result", "applied")]),
        1.0
    );
}

#[test]
fn with_plaintext_off_only_the_tls_port_listens() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("features.toml");
    let (tls, port) = tls_toml(&fixture("server.crt"), &fixture("server.key"), None);
    let plain = free_port();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{plain}\"\nstats_listen = \"127.0.0.1:{}\"\nredis = \"{}\"\nshards = 1\n{tls}plaintext = false\n\n{}",
            free_port(),
            redis.url(),
            common::example_registry()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_featureproxy"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    let refused = std::net::TcpStream::connect(("127.0.0.1", plain));
    let _ = child.kill();
    let _ = child.wait();
    assert!(refused.is_err(), "the plaintext port must be closed");
}
