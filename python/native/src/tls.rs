//! TLS for the native core: the Python client's TLS arguments (`ca_file`, `client_cert`,
//! `client_key`, `server_hostname`) made into the rustls configuration the Rust client connects
//! with, so a TLS client runs on the native core as a plaintext one does.
//!
//! The configuration follows what `featureproxy._tls.config` asks of OpenSSL: the proxy's
//! certificate verified against the CAs of `ca_file` only, or against the system's trusted roots
//! without one; verified against `server_hostname` (else the host; an IP address against the
//! certificate's IP names); TLS 1.2 or newer; ALPN `featureproxy/1`; the client certificate and
//! its key from PEM files (the key may be in the certificate's file). As in the Rust client,
//! sessions are not resumed: a client keeps a few connections open for long, and each is
//! verified in full.
//!
//! A ready `ssl.SSLContext` (`tls=ctx`) cannot be carried over (its settings live inside
//! OpenSSL), so such a client stays on the Python core.
//!
//! Files are read once, when the client is made, as the Python core reads them into its
//! SSLContext. The Python layer has already loaded them with OpenSSL by then (same checks and
//! messages on both cores); a file OpenSSL takes and rustls does not fails here with the same
//! `TLSError` reasons (`ca_file`, `client_cert`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use featureproxy_client::rustls::{self, ClientConfig, RootCertStore};
use featureproxy_client::{TlsError, TlsFailure, TlsOptions, ALPN_PROTOCOL};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::failure::TlsShown;

/// A Python client's TLS arguments.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM file of the CAs to trust for the proxy's certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain (leaf first), for a proxy that requires one.
    pub client_cert: Option<PathBuf>,
    /// PEM file of its private key; `None`: in `client_cert`'s file.
    pub client_key: Option<PathBuf>,
    /// The name the proxy's certificate is verified against (and sent as SNI).
    pub server_hostname: String,
    /// The same, as messages quote them.
    pub shown: TlsShown,
}

impl TlsSettings {
    /// The Rust client's TLS options for these settings: files read, configuration built. An
    /// unusable file fails with [`TlsFailure::CaFile`] or [`TlsFailure::ClientCert`].
    pub fn options(&self) -> Result<TlsOptions, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &self.ca_file {
            Some(path) => ca_roots(path)?,
            None => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                TlsError::new(
                    TlsFailure::Settings,
                    format!("TLS settings: {e}"),
                    e.to_string(),
                )
            })?
            .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(cert) => {
                let key_file = self.client_key.as_deref().unwrap_or(cert);
                let chain = certs(cert, TlsFailure::ClientCert)?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
                    rustls::pki_types::pem::Error::NoItemsFound => client_cert_error(
                        key_file,
                        "no private key (PEM: PKCS#8, PKCS#1 or SEC1) found".into(),
                    ),
                    e => client_cert_error(key_file, pem_why(e)),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| client_cert_error(key_file, format!("unusable key: {e}")))?
            }
        };
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsOptions::from_config(Arc::new(config)).server_name(self.server_hostname.clone()))
    }
}

/// The CAs of a PEM file; the file must hold at least one.
fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, TlsFailure::CaFile)? {
        roots.add(cert).map_err(|e| {
            TlsError::new(
                TlsFailure::CaFile,
                format!(
                    "TLS settings: a certificate of {} cannot be used as a CA: {e}",
                    path.display()
                ),
                format!("not usable as a CA: {e}"),
            )
        })?;
    }
    Ok(roots)
}

/// The system's trusted roots (as OpenSSL's defaults: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// system's bundle). Certificates that cannot be parsed are skipped, as OpenSSL skips them; with
/// none at all every proxy certificate is untrusted, which the handshake then reports.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// Every certificate of a PEM file; a [`TlsError`] of `kind` when there is none or the file
/// cannot be read.
fn certs(path: &Path, kind: TlsFailure) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |why: String| {
        TlsError::new(
            kind,
            format!("TLS settings: cannot use {}: {why}", path.display()),
            why,
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(pem_why(e)))?;
    if certs.is_empty() {
        return Err(file_error(
            "no certificate (PEM \"BEGIN CERTIFICATE\") found".into(),
        ));
    }
    Ok(certs)
}

fn client_cert_error(path: &Path, why: String) -> TlsError {
    TlsError::new(
        TlsFailure::ClientCert,
        format!("TLS settings: cannot use {}: {why}", path.display()),
        why,
    )
}

/// Why a PEM file could not be read, as `OSError.strerror` or the parser says it.
fn pem_why(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => crate::failure::strerror(&io),
        other => format!("not valid PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tls")
            .join(name)
    }

    fn settings(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsSettings {
        TlsSettings {
            ca_file: ca.map(fixture),
            client_cert: cert.map(fixture),
            client_key: key.map(fixture),
            server_hostname: "127.0.0.1".into(),
            shown: TlsShown::default(),
        }
    }

    fn failure_of(s: TlsSettings) -> TlsError {
        match s.options() {
            Ok(o) => panic!("expected a failure, got {o:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn usable_files_make_options() {
        let o = settings(Some("ca.crt"), Some("client.crt"), Some("client.key"))
            .options()
            .unwrap();
        let shown = format!("{o:?}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
        // What a connection gets: ALPN featureproxy/1, the name given, no session resumption.
        let c = o.connector("127.0.0.1:7443").unwrap();
        assert_eq!(c.config().alpn_protocols, vec![ALPN_PROTOCOL.to_vec()]);
        assert!(c.config().client_auth_cert_resolver.has_certs());
        assert_eq!(
            format!("{:?}", c.server_name()),
            "IpAddress(V4(Ipv4Addr([127, 0, 0, 1])))"
        );
        // System roots: whatever this machine trusts, the options are made.
        settings(None, None, None).options().unwrap();
    }

    #[test]
    fn unusable_files_fail_with_the_file_reasons() {
        let e = failure_of(settings(Some("no-such-ca.crt"), None, None));
        assert_eq!(e.kind(), TlsFailure::CaFile);
        assert_eq!(e.detail(), "No such file or directory");
        assert!(e.message().contains("no-such-ca.crt"), "{e}");

        let e = failure_of(settings(Some("ca.key"), None, None));
        assert_eq!(e.kind(), TlsFailure::CaFile);
        assert!(e.detail().starts_with("no certificate"), "{e}");

        // A certificate where the key goes, then another certificate's key.
        let e = failure_of(settings(
            Some("ca.crt"),
            Some("client.crt"),
            Some("client.crt"),
        ));
        assert_eq!(e.kind(), TlsFailure::ClientCert);
        assert!(e.detail().starts_with("no private key"), "{e}");
        let e = failure_of(settings(
            Some("ca.crt"),
            Some("client.crt"),
            Some("other-client.key"),
        ));
        assert_eq!(e.kind(), TlsFailure::ClientCert);
        assert!(e.detail().contains("KeyMismatch"), "{e}");
        assert!(e.message().contains("other-client.key"), "{e}");
    }
}
