//! The TLS port: its rustls configuration (certificate, key, optional client CA), the handshake
//! of each connection it accepts, and what a failed handshake is counted as.
//!
//! One configuration serves every shard (`Arc`, so a reconnect resumes on any shard); SIGHUP
//! builds a new one from the files and each shard takes it for its next handshake. A peer that
//! speaks plaintext to this port is told so in a plaintext ERROR frame instead of being left to
//! wait for a handshake that never comes.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use featureproxy_protocol::{ProtocolError, Response};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::tls::{ClientCert, ListenerTls, TlsVersion};
use crate::telemetry::counters::Handshake;
use crate::transport::{self, pem, Transport};

/// The first byte of every TLS record carrying a handshake message (a ClientHello first of all).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why the TLS port's settings cannot be used: the proxy does not start, or a reload changes
/// nothing.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("[server.tls] {0}")]
    File(#[from] pem::PemError),
    #[error("[server.tls] cert_file {cert:?} with key_file {key:?}: {source}")]
    CertKey {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: rustls::Error,
    },
    #[error("[server.tls] client_ca_file {path:?}: {detail}")]
    ClientCa {
        path: std::path::PathBuf,
        detail: String,
    },
}

/// The configuration every shard's TLS handshakes use, built from the files `s` names.
pub fn server_config(s: &ListenerTls) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = transport::provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3");
    let builder = match &s.client_ca_file {
        Some(path) => {
            let roots = pem::roots("client_ca_file", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match s.client_cert {
                ClientCert::Required => verifier,
                ClientCert::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsSetupError::ClientCa {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let certs = pem::certificates("cert_file", &s.cert_file)?;
    let key = pem::private_key("key_file", &s.key_file)?;
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsSetupError::CertKey {
                cert: s.cert_file.clone(),
                key: s.key_file.clone(),
                source,
            })?;
    config.alpn_protocols = vec![transport::ALPN.to_vec()];
    // 0-RTT data can be replayed by anyone who saw it: never accepted.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// A connection through its handshake: the transport, and the names in the client's
/// certificate (DNS and URI subjectAltNames; empty without one), which the access file may name.
pub struct Accepted {
    pub transport: Transport,
    pub peer_names: Vec<String>,
    pub took: Duration,
}

/// Runs the TLS handshake of a connection the TLS port accepted, within `timeout` of now.
pub async fn handshake(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<Accepted, Handshake> {
    let started = Instant::now();
    let due = tokio::time::Instant::now() + timeout;
    // Plaintext to a TLS port: say so, rather than leave the peer waiting for a handshake.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(due, tcp.peek(&mut first)).await {
        Err(_) => return Err(Handshake::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => return Err(Handshake::PeerClosed),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
            tell_not_tls(tcp).await;
            return Err(Handshake::NotTls);
        }
        Ok(Ok(_)) => {}
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = match tokio::time::timeout_at(due, acceptor.accept(tcp)).await {
        Err(_) => return Err(Handshake::Timeout),
        Ok(Err(e)) => return Err(failure(&e)),
        Ok(Ok(stream)) => stream,
    };
    let (tcp, conn) = stream.into_inner();
    let peer_names = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(names_of)
        .unwrap_or_default();
    Ok(Accepted {
        transport: Transport::tls(tcp, conn),
        peer_names,
        took: started.elapsed(),
    })
}

/// The DNS and URI subjectAltNames of a certificate rustls already verified.
fn names_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    cert.valid_dns_names()
        .chain(cert.valid_uri_names())
        .map(str::to_string)
        .collect()
}

/// Tells a plaintext peer on the TLS port what is wrong, in the protocol's own ERROR frame.
async fn tell_not_tls(mut tcp: TcpStream) {
    let err = ProtocolError::malformed(
        "this port requires TLS: connect with TLS (the client's TLS options), or to the proxy's plaintext port",
    );
    let mut out = bytes::BytesMut::new();
    Response::Error(err).encode(&mut out, 0);
    let linger = async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await?;
        // Read what the peer sent (its request) until it closes: closing with unread bytes
        // would send a reset, which can destroy the ERROR frame before the peer reads it.
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), linger).await;
}

/// What a failed handshake is counted as.
fn failure(e: &io::Error) -> Handshake {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return Handshake::PeerClosed;
    }
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return Handshake::PeerClosed;
    };
    match tls {
        rustls::Error::NoCertificatesPresented => Handshake::NoClientCert,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Handshake::UnknownCa,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => Handshake::Expired,
        rustls::Error::InvalidCertificate(_) => Handshake::BadCertificate,
        rustls::Error::AlertReceived(_) => Handshake::PeerRefused,
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
            Handshake::Incompatible
        }
        _ => Handshake::Other,
    }
}
