//! The engine and the loadgen binary over TLS: real handshakes with the committed test
//! certificates (tests/fixtures/tls) against the echo server behind an in-process TLS terminator.
//! Every request must be answered once, with no error, in open and closed loop, and a refused
//! client certificate must fail the run up front saying so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featureproxy_client::rustls::pki_types::pem::PemObject;
use featureproxy_client::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use featureproxy_client::rustls::server::WebPkiClientVerifier;
use featureproxy_client::rustls::{self, RootCertStore, ServerConfig};
use featureproxy_client::TlsOptions;
use loadgen::driver::{run, Proto, RunConfig};
use loadgen::selftest::start_echo;
use loadgen::spec::{BatchSpec, Target};
use loadgen::workload::Workload;

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

/// A TLS terminator (server.crt; client certificates from ca.crt required when `mtls`) in front
/// of `backend`, on a thread of its own; returns its address and a count of the handshakes it
/// completed.
fn terminator(backend: SocketAddr, mtls: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        let mut roots = RootCertStore::empty();
        roots.add(certs("ca.crt").remove(0)).unwrap();
        builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let mut config = builder.with_single_cert(certs("server.crt"), key).unwrap();
    config.alpn_protocols = vec![featureproxy_client::ALPN_PROTOCOL.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let done = handshakes.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    done.fetch_add(1, Ordering::SeqCst);
                    let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    (addr, handshakes)
}

fn config(addr: SocketAddr, tls: TlsOptions, rate: Option<f64>) -> RunConfig {
    RunConfig {
        target: Target::Proxy(addr.to_string()),
        tls: Some(tls.connector(&addr.to_string()).unwrap()),
        view: "echo".into(),
        proto: Proto::Fp {
            view_id: 1,
            schema_id: 0,
            get_flags: 0,
            deadline_us: 0,
            dtypes: Vec::new(),
            token: String::new(),
        },
        workload: Arc::new(
            Workload::new(10_000, 0.99, 3, BatchSpec { min: 1, max: 40 }, 0.0, None).unwrap(),
        ),
        key_prefix: b"u:".to_vec(),
        rate,
        burst: None,
        connections: 2,
        inflight: 32,
        threads: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        verify_every: 0,
        progress: false,
        server_pids: Vec::new(),
    }
}

fn ca() -> TlsOptions {
    TlsOptions::new(fixture("ca.crt"))
}

#[test]
fn open_and_closed_loop_over_tls() {
    let (echo, _) = start_echo().unwrap();
    let (addr, handshakes) = terminator(echo, false);
    // Open loop: the schedule is kept and every request answered once.
    let m = run(config(addr, ca(), Some(2000.0))).unwrap();
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert!((1990..=2010).contains(&m.sends), "sends {}", m.sends);
    assert_eq!(m.responses, m.sends);
    // 1..=40 entities per request, every one answered FRESH by the echo server.
    assert_eq!(m.statuses[0], m.entities);
    let mean = m.entities as f64 / m.responses as f64;
    assert!((17.0..24.0).contains(&mean), "mean batch {mean}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);

    // Closed loop: 32 requests outstanding per connection the whole time, so writes queue
    // behind replies and both sides of each session work at once.
    let m = run(config(addr, ca(), None)).unwrap();
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert!(m.responses > 1000, "{}", m.responses);
    assert_eq!(m.statuses[0], m.entities);
    assert_eq!(handshakes.load(Ordering::SeqCst), 4);
}

#[test]
fn mtls_over_the_engine() {
    let (echo, _) = start_echo().unwrap();
    let (addr, handshakes) = terminator(echo, true);
    // Without a client certificate the run fails before it starts, saying what is missing.
    let err = run(config(addr, ca(), Some(500.0))).unwrap_err();
    assert!(
        err.contains("requires a client certificate") && err.contains("--tls-cert"),
        "{err}"
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    let tls = ca().client_cert(fixture("client.crt"), fixture("client.key"));
    let m = run(config(addr, tls, Some(500.0))).unwrap();
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert_eq!(m.responses, m.sends);
    assert!(m.responses >= 490, "{}", m.responses);
}

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_tls_flags_end_to_end() {
    let (echo, _) = start_echo().unwrap();
    let (addr, handshakes) = terminator(echo, true);
    let target = addr.to_string();
    let (ca, cert, key) = (
        fixture("ca.crt"),
        fixture("client.crt"),
        fixture("client.key"),
    );
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    #[rustfmt::skip]
    let (code, out, err) = loadgen(&[
        "run", "--target", &target, "--view", "echo", "--rate", "300", "--duration", "1s",
        "--warmup", "0s", "--connections", "2", "--verify-every", "0", "--slo", "errors=0",
        "--json", json.to_str().unwrap(),
        "--tls-ca", ca.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap(),
        "--tls-key", key.to_str().unwrap(), "--tls-server-name", "localhost",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("(featureproxy GET over TLS)"), "{out}");
    let report = std::fs::read_to_string(&json).unwrap();
    assert!(report.contains("\"tls\": true"), "{report}");
    assert!(report.contains("\"errors_total\": 0"), "{report}");
    let responses: u64 = report
        .split("\"responses\": ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((290..=310).contains(&responses), "{responses}");
    // The schema fetch (one client connection) and the two engine connections.
    assert_eq!(handshakes.load(Ordering::SeqCst), 3);
    let _ = std::fs::remove_dir_all(&dir);

    // No client certificate: exit 2 and the reason, before any load.
    #[rustfmt::skip]
    let (code, _, err) = loadgen(&[
        "run", "--target", &target, "--rate", "100", "--duration", "1s",
        "--tls-ca", ca.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("requires a client certificate"), "{err}");

    // Certificate flags without a CA, and a client certificate without its key.
    let (code, _, err) = loadgen(&[
        "run",
        "--target",
        &target,
        "--rate",
        "100",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("need --tls-ca"), "{err}");
    let (code, _, err) = loadgen(&[
        "run",
        "--target",
        &target,
        "--rate",
        "100",
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--tls-key"), "{err}");
    // TLS is for the proxy only.
    let (code, _, err) = loadgen(&[
        "run",
        "--target",
        "resp://127.0.0.1:1",
        "--rate",
        "100",
        "--tls-ca",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("resp:// target is spoken to in plaintext"),
        "{err}"
    );
}
