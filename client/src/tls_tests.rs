//! TLS end to end: real rustls handshakes between the client and the mock server behind a TLS
//! acceptor, with the committed test certificates (tests/fixtures/tls, see remake.sh there).
//! Each certificate problem must fail `Client::connect` with an `Error::Tls` saying what is wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::mock_tests::{expect_row, serve, MockState};
use crate::{Client, ClientOptions, Error, TlsError, TlsFailure, TlsOptions, Value, ALPN_PROTOCOL};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tls")
        .join(name)
}

fn certs(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(fixture(name))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What the server saw of one handshake.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    client_cert: bool,
    resumed: bool,
    /// The acceptor's error, for handshakes that failed.
    error: Option<String>,
}

/// The mock protocol server behind a TLS acceptor.
struct TlsMock {
    addr: SocketAddr,
    state: Arc<MockState>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Server<'a> {
    /// Certificate and key file stem: "server", "expired-server", "other-server".
    cert: &'a str,
    /// Require client certificates signed by this CA (mTLS).
    client_ca: Option<&'a str>,
    versions: &'a [&'static SupportedProtocolVersion],
    token: Option<&'a str>,
}

impl Default for Server<'_> {
    fn default() -> Self {
        Server {
            cert: "server",
            client_ca: None,
            versions: rustls::DEFAULT_VERSIONS,
            token: None,
        }
    }
}

impl TlsMock {
    async fn start(s: Server<'_>) -> TlsMock {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(s.versions)
            .unwrap();
        let builder = match s.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs(ca) {
                    roots.add(c).unwrap();
                }
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .unwrap(),
                )
            }
        };
        let key = PrivateKeyDer::from_pem_file(fixture(&format!("{}.key", s.cert))).unwrap();
        let mut config = builder
            .with_single_cert(certs(&format!("{}.crt", s.cert)), key)
            .unwrap();
        // The server insists on the protocol's ALPN id: a client that does not offer it fails.
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::new(s.token));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, sn) = (state.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, st, sn) = (acceptor.clone(), st.clone(), sn.clone());
                tokio::spawn(async move {
                    match acceptor.accept(sock).await {
                        Ok(tls) => {
                            let (_, c) = tls.get_ref();
                            sn.lock().unwrap().push(Seen {
                                sni: c.server_name().map(str::to_string),
                                alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                                client_cert: c.peer_certificates().is_some_and(|p| !p.is_empty()),
                                resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
                                error: None,
                            });
                            serve(tls, st).await;
                        }
                        Err(e) => sn.lock().unwrap().push(Seen {
                            sni: None,
                            alpn: None,
                            client_cert: false,
                            resumed: false,
                            error: Some(e.to_string()),
                        }),
                    }
                });
            }
        });
        TlsMock { addr, state, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn opts(tls: TlsOptions) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        pool_size: 1,
        tls: Some(tls),
        ..Default::default()
    }
}

fn ca() -> TlsOptions {
    TlsOptions::new(fixture("ca.crt"))
}

/// `Client::connect`'s error, which must be an `Error::Tls` of `kind`: its message.
async fn connect_tls_error(addr: &str, o: ClientOptions, kind: TlsFailure) -> String {
    match Client::connect(addr, o).await {
        Err(e @ Error::Tls(_)) => {
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.code(), None);
            let Error::Tls(t) = &e else { unreachable!() };
            assert_eq!(t.kind(), kind, "{e}");
            assert_eq!(t.message(), e.to_string());
            assert!(!t.detail().is_empty(), "{e}");
            e.to_string()
        }
        Err(other) => panic!("expected Error::Tls, got {other:?}: {other}"),
        Ok(_) => panic!("connect succeeded"),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{p:?} not in the message: {msg}");
    }
}

#[tokio::test]
async fn get_and_put_over_tls() {
    let mock = TlsMock::start(Server {
        token: Some("s3cret"),
        ..Default::default()
    })
    .await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            token: Some("s3cret".into()),
            pool_size: 2,
            ..opts(ca())
        },
    )
    .await
    .unwrap();
    assert_eq!(mock.state.hellos(), 2);
    client.ping().await.unwrap();
    let now = SystemTime::now();
    let written = client
        .put(
            "emb",
            &[
                ("a", now, [Value::F32(1.0), Value::F32(2.0)]),
                ("b", now, [Value::F32(3.0), Value::F32(4.0)]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(written, 2);
    let b = client.get("emb", &["abc", "zz", "q"]).await.unwrap();
    assert_eq!(b.len(), 3);
    for (i, k) in ["abc", "zz", "q"].iter().enumerate() {
        assert_eq!(b.row(i), expect_row(k), "row {i}");
    }
    // Connected by IP: verified against the certificate's IP SAN, and no SNI (rustls sends none
    // for an IP address). ALPN agreed on the protocol's id. The second connection did not
    // resume the first one's session: each is verified in full.
    let seen = mock.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.error, None);
        assert_eq!(s.alpn.as_deref(), Some(ALPN_PROTOCOL));
        assert_eq!(s.sni, None);
        assert!(!s.client_cert);
        assert!(!s.resumed);
    }
}

#[tokio::test]
async fn many_concurrent_calls_on_one_tls_connection() {
    let mock = TlsMock::start(Server::default()).await;
    let client = Client::connect(mock.addr, opts(ca())).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..400 {
        let c = client.clone();
        tasks.spawn(async move {
            // Long keys: coalesced writes and replies span several TLS records.
            let keys: Vec<String> = (0..8)
                .map(|j| format!("{i}-{j}-{}", "k".repeat(900)))
                .collect();
            let b = c.get("emb", &keys).await.unwrap();
            for (j, k) in keys.iter().enumerate() {
                assert_eq!(b.row(j), expect_row(k));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(mock.state.hellos(), 1);
}

#[tokio::test]
async fn a_closed_tls_connection_is_reopened() {
    let mock = TlsMock::start(Server::default()).await;
    let client = Client::connect(mock.addr, opts(ca())).await.unwrap();
    // "drop": the server closes the connection (close_notify) instead of answering. No reply
    // had begun, so the GET is sent once more, on a new connection, which the server closes too.
    match client.get("emb", &["drop"]).await {
        Err(Error::ConnectionClosed { reason, .. }) => {
            assert_contains(&reason, &["the server closed the connection"])
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    assert_eq!(mock.state.hellos(), 2);
    let b = client.get("emb", &["again"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("again"));
    assert_eq!(mock.state.hellos(), 3);
}

#[tokio::test]
async fn the_name_verified_is_the_host_or_the_one_given() {
    let mock = TlsMock::start(Server::default()).await;
    let port = mock.addr.port();
    // By DNS name: sent as SNI and matched against the certificate's DNS SAN.
    let c = Client::connect(format!("localhost:{port}"), opts(ca()))
        .await
        .unwrap();
    c.ping().await.unwrap();
    // By IP, verifying another name the certificate holds.
    let c = Client::connect(mock.addr, opts(ca().server_name("localhost")))
        .await
        .unwrap();
    c.ping().await.unwrap();
    let sni: Vec<_> = mock.seen().into_iter().map(|s| s.sni).collect();
    assert_eq!(
        sni,
        [Some("localhost".to_string()), Some("localhost".to_string())]
    );

    // A name the certificate does not hold.
    let msg = connect_tls_error(
        &mock.addr.to_string(),
        opts(ca().server_name("proxy.example.test")),
        TlsFailure::HostnameMismatch,
    )
    .await;
    assert_contains(
        &msg,
        &[
            "not valid for the name proxy.example.test",
            "localhost",
            "127.0.0.1",
            "set the name to verify",
        ],
    );
    assert!(!msg.contains("TlsOptions"), "{msg}");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    // The client trusts another CA than the one that signed the server's certificate.
    let mock = TlsMock::start(Server::default()).await;
    let msg = connect_tls_error(
        &mock.addr.to_string(),
        opts(TlsOptions::new(fixture("other-ca.crt"))),
        TlsFailure::UntrustedServer,
    )
    .await;
    assert_contains(
        &msg,
        &[
            &mock.addr.to_string(),
            "not signed by a CA this client trusts",
            "other-ca.crt",
        ],
    );
    // And a server whose certificate comes from the other CA, to a client trusting ca.crt.
    let other = TlsMock::start(Server {
        cert: "other-server",
        ..Default::default()
    })
    .await;
    let msg = connect_tls_error(
        &other.addr.to_string(),
        opts(ca()),
        TlsFailure::UntrustedServer,
    )
    .await;
    assert_contains(&msg, &["not signed by a CA this client trusts", "ca.crt"]);
    assert_eq!(other.state.hellos(), 0);
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let mock = TlsMock::start(Server {
        cert: "expired-server",
        ..Default::default()
    })
    .await;
    let msg = connect_tls_error(&mock.addr.to_string(), opts(ca()), TlsFailure::Expired).await;
    assert_contains(
        &msg,
        &[
            "certificate (for 127.0.0.1) expired at 2020-01-01 00:00:00 UTC",
            "renewed",
        ],
    );
    assert_eq!(mock.state.hellos(), 0);
}

const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn mtls(versions: &'static [&'static SupportedProtocolVersion]) -> Server<'static> {
    Server {
        client_ca: Some("ca.crt"),
        versions,
        ..Default::default()
    }
}

#[tokio::test]
async fn mtls_without_a_client_certificate_fails_at_connect() {
    // TLS 1.3, where the refusal arrives after the client's side of the handshake is done, and
    // TLS 1.2, where it arrives during the handshake: the same error either way.
    for versions in [TLS13, TLS12] {
        let mock = TlsMock::start(mtls(versions)).await;
        let msg = connect_tls_error(
            &mock.addr.to_string(),
            opts(ca()),
            TlsFailure::ClientCertRequired,
        )
        .await;
        assert_contains(
            &msg,
            &[
                "requires a client certificate signed by its CA",
                "give one, with its key",
            ],
        );
        assert_eq!(mock.state.hellos(), 0, "{versions:?}");
    }
}

#[tokio::test]
async fn mtls_with_a_client_certificate_from_another_ca_fails_at_connect() {
    for versions in [TLS13, TLS12] {
        let mock = TlsMock::start(mtls(versions)).await;
        let tls = ca().client_cert(fixture("other-client.crt"), fixture("other-client.key"));
        let msg = connect_tls_error(
            &mock.addr.to_string(),
            opts(tls),
            TlsFailure::ClientCertRefused,
        )
        .await;
        assert_contains(
            &msg,
            &[
                "does not trust this client certificate",
                "other-client.crt",
                "unknown CA",
                "client_ca_file",
            ],
        );
        assert_eq!(mock.state.hellos(), 0, "{versions:?}");
    }
}

#[tokio::test]
async fn mtls_with_the_right_client_certificate_works() {
    let mock = TlsMock::start(mtls(rustls::DEFAULT_VERSIONS)).await;
    let tls = ca().client_cert(fixture("client.crt"), fixture("client.key"));
    let client = Client::connect(mock.addr, opts(tls)).await.unwrap();
    let b = client.get("emb", &["u1"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("u1"));
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].client_cert, "{seen:?}");
}

#[tokio::test]
async fn a_config_of_ones_own_gets_the_alpn_id() {
    let mock = TlsMock::start(Server::default()).await;
    let mut roots = RootCertStore::empty();
    roots.add(certs("ca.crt").remove(0)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(config.alpn_protocols.is_empty());
    let client = Client::connect(mock.addr, opts(TlsOptions::from_config(Arc::new(config))))
        .await
        .unwrap();
    client.ping().await.unwrap();
    assert_eq!(mock.seen()[0].alpn.as_deref(), Some(ALPN_PROTOCOL));
}

#[tokio::test]
async fn a_plaintext_server_is_not_mistaken_for_tls() {
    // A plain TCP server that answers the ClientHello with bytes that are no TLS record, as the
    // proxy's plaintext port answers with an ERROR frame.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"\x0b\x00\x00\x00\x01\xff\x00\x00\x00\x00\x0d\x00\x00\x00\x00")
                .await;
        }
    });
    let msg = connect_tls_error(&addr.to_string(), opts(ca()), TlsFailure::NotTls).await;
    assert_contains(&msg, &["does not speak TLS here", "plaintext port"]);
}

#[tokio::test]
async fn a_server_closing_during_the_handshake_is_a_retryable_connect_error() {
    // A server that reads the ClientHello and closes, as the mock (and a proxy's plaintext port
    // that cannot frame it) does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    match Client::connect(addr, opts(ca())).await {
        Err(e @ Error::Connect { .. }) => {
            assert!(e.is_retryable());
            assert_contains(
                &e.to_string(),
                &["closed the connection during the TLS handshake", "TLS port"],
            );
            // The case is there for programs that tell it apart (the Python client's native
            // core reports it as TLSError reason "closed").
            let Error::Connect { source, .. } = &e else {
                unreachable!()
            };
            let tls = source.get_ref().and_then(|i| i.downcast_ref::<TlsError>());
            assert_eq!(tls.map(TlsError::kind), Some(TlsFailure::Closed), "{e}");
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn unusable_certificate_files_are_named() {
    let addr = "127.0.0.1:1"; // never dialled: the files are read first
    let missing = fixture("no-such-ca.crt");
    let ca_file = TlsFailure::CaFile;
    let msg = connect_tls_error(addr, opts(TlsOptions::new(&missing)), ca_file).await;
    assert_contains(
        &msg,
        &["cannot read the CA file", "no-such-ca.crt", "No such file"],
    );

    // A key file where the CA file goes: no certificate in it.
    let msg = connect_tls_error(addr, opts(TlsOptions::new(fixture("ca.key"))), ca_file).await;
    assert_contains(&msg, &["no certificate", "CA file", "ca.key"]);

    // A certificate where the key goes.
    let tls = ca().client_cert(fixture("client.crt"), fixture("client.crt"));
    let msg = connect_tls_error(addr, opts(tls), TlsFailure::ClientCert).await;
    assert_contains(&msg, &["no private key", "client key file", "client.crt"]);

    // A certificate with another certificate's key.
    let tls = ca().client_cert(fixture("client.crt"), fixture("other-client.key"));
    let msg = connect_tls_error(addr, opts(tls), TlsFailure::ClientCert).await;
    assert_contains(
        &msg,
        &["other-client.key", "does not go with", "client.crt"],
    );

    let tls = ca().client_cert(fixture("client.crt"), fixture("no-such.key"));
    let msg = connect_tls_error(addr, opts(tls), TlsFailure::ClientCert).await;
    assert_contains(&msg, &["cannot read the client key file", "no-such.key"]);
}

#[test]
fn options_show_the_tls_files() {
    let o = opts(ca().client_cert("c.crt", "c.key").server_name("proxy"));
    let d = format!("{o:?}");
    assert_contains(&d, &["ca.crt", "c.crt", "c.key", "proxy"]);
}
