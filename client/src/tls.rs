//! TLS to the proxy: the settings a caller gives ([`TlsOptions`]), resolved once per client into a
//! [`TlsConnector`] (certificates read, the name to verify chosen), and the translation of rustls'
//! failures into messages that say what went wrong and what to change.
//!
//! The crypto provider is aws-lc-rs, passed explicitly: relying on rustls' process-wide default
//! would panic at first use in a program that links a second provider (ring) through some other
//! dependency, since rustls cannot choose between them.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{Error, TlsError, TlsFailure};

/// The ALPN protocol id of featureproxy's wire protocol v1, offered in every handshake so that a
/// proxy serving more than one protocol on a port can tell this one apart.
pub const ALPN_PROTOCOL: &[u8] = b"featureproxy/1";

/// How a [`crate::Client`] connects over TLS: which CA to trust for the proxy's certificate,
/// optionally a client certificate (when the proxy requires one, mTLS), and the name to verify.
///
/// Built from PEM files with [`TlsOptions::new`], or from a rustls configuration of the caller's
/// own with [`TlsOptions::from_config`]. Files are read once, by [`crate::Client::connect`] (a
/// client made afterwards picks up rotated files); a file that cannot be used fails the connect
/// with [`Error::Tls`] naming it.
///
/// ```no_run
/// use featureproxy_client::{Client, ClientOptions, TlsOptions};
/// # async fn f() -> Result<(), featureproxy_client::Error> {
/// let opts = ClientOptions {
///     tls: Some(TlsOptions::new("ca.crt").client_cert("client.crt", "client.key")),
///     ..Default::default()
/// };
/// let client = Client::connect("proxy.internal:7443", opts).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsOptions {
    source: Source,
    server_name: Option<String>,
}

#[derive(Clone)]
enum Source {
    Files {
        ca_file: PathBuf,
        client_cert: Option<(PathBuf, PathBuf)>,
    },
    Config(Arc<ClientConfig>),
}

impl TlsOptions {
    /// Trust the CA certificates in the PEM file `ca_file` (one or more) for the proxy's
    /// certificate, and only them: the system's roots are not consulted, since a proxy's
    /// certificate comes from an internal CA.
    pub fn new(ca_file: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            source: Source::Files {
                ca_file: ca_file.into(),
                client_cert: None,
            },
            server_name: None,
        }
    }

    /// Present the certificate chain in `cert_file` (PEM, leaf first) with the private key in
    /// `key_file` (PEM: PKCS#8, PKCS#1 or SEC1), for a proxy that requires client certificates.
    ///
    /// Has no effect on options made by [`TlsOptions::from_config`], whose configuration decides
    /// its client certificate itself.
    pub fn client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        if let Source::Files { client_cert, .. } = &mut self.source {
            *client_cert = Some((cert_file.into(), key_file.into()));
        }
        self
    }

    /// Verify the proxy's certificate against this name (a DNS name or an IP address) and send
    /// it as SNI, instead of the host part of the address connected to: for connecting by an
    /// address the certificate does not name (an IP, a load balancer's name).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Use a rustls configuration of the caller's own (roots, client certificate resolver,
    /// provider). If it offers no ALPN protocol, a copy offering [`ALPN_PROTOCOL`] is used; its
    /// own ALPN list is left alone otherwise.
    pub fn from_config(config: Arc<ClientConfig>) -> TlsOptions {
        TlsOptions {
            source: Source::Config(config),
            server_name: None,
        }
    }

    /// Reads the files and chooses the name to verify for a connection to `addr` (`host:port`):
    /// what a [`crate::Client`] does once, at connect. For programs that open connections of
    /// their own and want the same checks and error messages.
    pub fn connector(&self, addr: &str) -> Result<TlsConnector, Error> {
        let (config, ca, client_cert) = match &self.source {
            Source::Files {
                ca_file,
                client_cert,
            } => {
                let config = load_config(ca_file, client_cert.as_ref())?;
                let ca = format!("the CA file {}", ca_file.display());
                let cert = client_cert.as_ref().map(|(c, _)| c.display().to_string());
                (Arc::new(config), ca, cert)
            }
            Source::Config(c) => {
                let config = if c.alpn_protocols.is_empty() {
                    let mut copy = (**c).clone();
                    copy.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
                    Arc::new(copy)
                } else {
                    c.clone()
                };
                let cert = config
                    .client_auth_cert_resolver
                    .has_certs()
                    .then(|| "the client certificate of the given ClientConfig".to_string());
                (
                    config,
                    "the roots of the given ClientConfig".to_string(),
                    cert,
                )
            }
        };
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            tls_error(
                TlsFailure::Settings,
                format!(
                    "TLS to {addr}: {name:?} is neither a DNS name nor an IP address, so no \
                     certificate can be verified against it; set the name to verify to one the \
                     proxy's certificate holds"
                ),
                e.to_string(),
            )
        })?;
        Ok(TlsConnector {
            inner: Arc::new(Resolved {
                connector: tokio_rustls::TlsConnector::from(config.clone()),
                config,
                server_name,
                name,
                ca,
                client_cert,
            }),
        })
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TlsOptions");
        match &self.source {
            Source::Files {
                ca_file,
                client_cert,
            } => {
                d.field("ca_file", ca_file);
                d.field("client_cert", client_cert);
            }
            Source::Config(_) => {
                d.field("config", &"<rustls::ClientConfig>");
            }
        }
        d.field("server_name", &self.server_name).finish()
    }
}

/// TLS settings resolved for one proxy address: certificates read and the name to verify chosen
/// ([`TlsOptions::connector`]). Cheap to clone. It makes handshakes ([`TlsConnector::connect`])
/// and explains their failures as [`Error::Tls`].
#[derive(Clone)]
pub struct TlsConnector {
    inner: Arc<Resolved>,
}

struct Resolved {
    config: Arc<ClientConfig>,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    /// The name verified, as given or taken from the address (for messages).
    name: String,
    /// Where the trusted roots came from (for messages).
    ca: String,
    /// The client certificate presented, if any (for messages).
    client_cert: Option<String>,
}

impl TlsConnector {
    /// The rustls configuration handshakes use (with [`ALPN_PROTOCOL`] offered).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.inner.config
    }

    /// The name the proxy's certificate is verified against, also sent as SNI.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.inner.server_name
    }

    /// Runs the TLS handshake on a connected socket. A failure rustls reports (the proxy's
    /// certificate not trusted, not valid for the name, expired; an alert from the proxy; a peer
    /// not speaking TLS) is an [`Error::Tls`] that says so; plain I/O failures are
    /// [`Error::Connect`]. `addr` is the address dialled, for messages.
    ///
    /// In TLS 1.3 a client certificate the proxy refuses is not reported here but at the first
    /// read: pass what that read fails with through [`TlsConnector::explain`].
    pub async fn connect(&self, tcp: TcpStream, addr: &str) -> Result<TlsStream<TcpStream>, Error> {
        self.inner
            .connector
            .connect(self.inner.server_name.clone(), tcp)
            .await
            .map_err(|e| self.explain_handshake(e, addr))
    }

    /// Turns an I/O error from a TLS stream to `addr` into an [`Error`]: [`Error::Tls`] with an
    /// explanation when rustls failed (for instance the proxy's alert refusing the client
    /// certificate, which TLS 1.3 delivers at the first read after the handshake), else
    /// [`Error::Connect`].
    pub fn explain(&self, e: io::Error, addr: &str) -> Error {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => Error::Tls(self.describe(tls, addr)),
            None => Error::Connect {
                addr: addr.to_string(),
                source: e,
            },
        }
    }

    /// [`TlsConnector::explain`] for the handshake, where a bare end of stream (or a reset) most
    /// often means a server that dropped the ClientHello it could not read: say so. Still
    /// [`Error::Connect`], since a server restarting mid-handshake looks the same and a retry may
    /// succeed; its source holds a [`TlsError`] of kind [`TlsFailure::Closed`].
    fn explain_handshake(&self, e: io::Error, addr: &str) -> Error {
        let kind = e.kind();
        if matches!(
            kind,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ) && e.get_ref().is_none_or(|i| !i.is::<rustls::Error>())
        {
            let closed = TlsError::new(
                TlsFailure::Closed,
                format!(
                    "the server closed the connection during the TLS handshake ({e}): is this \
                     the proxy's TLS port ([server.tls] listen)?"
                ),
                e.to_string(),
            );
            return Error::Connect {
                addr: addr.to_string(),
                source: io::Error::new(kind, closed),
            };
        }
        self.explain(e, addr)
    }

    /// The [`TlsError`] for what rustls reported: its case, and a message naming the proxy, what
    /// happened and what to change. (Worded for any program: no API of this crate is named,
    /// since the Python client's native core and loadgen report them too.)
    fn describe(&self, e: &rustls::Error, addr: &str) -> TlsError {
        let r = &self.inner;
        let name = &r.name;
        let (kind, what) = match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => (
                    TlsFailure::UntrustedServer,
                    format!(
                        "the proxy's certificate (for {name}) is not signed by a CA this client \
                         trusts ({}): trust the CA that issued the proxy's certificate (the CA \
                         file; loadgen: --tls-ca)",
                        r.ca
                    ),
                ),
                CertificateError::NotValidForName => (
                    TlsFailure::HostnameMismatch,
                    format!(
                        "the proxy's certificate is not valid for the name {name}: connect by a \
                         name the certificate holds, or set the name to verify to one it holds"
                    ),
                ),
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => (
                    TlsFailure::HostnameMismatch,
                    format!(
                        "the proxy's certificate is not valid for the name {}: it holds {}; \
                         connect by one of those names, or set the name to verify to one of \
                         them (loadgen: --tls-server-name)",
                        expected.to_str(),
                        names(presented, "no names")
                    ),
                ),
                CertificateError::Expired => (
                    TlsFailure::Expired,
                    format!(
                        "the proxy's certificate (for {name}) has expired: the proxy needs a \
                         renewed certificate"
                    ),
                ),
                CertificateError::ExpiredContext { time, not_after } => (
                    TlsFailure::Expired,
                    format!(
                        "the proxy's certificate (for {name}) expired at {} (it is now {}): the \
                         proxy needs a renewed certificate",
                        utc(*not_after),
                        utc(*time)
                    ),
                ),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                    TlsFailure::NotYetValid,
                    format!(
                        "the proxy's certificate (for {name}) is not valid yet: check the clocks \
                         of this machine and of the CA"
                    ),
                ),
                other => (
                    TlsFailure::Verification,
                    format!("the proxy's certificate (for {name}) was refused: {other:?}"),
                ),
            },
            rustls::Error::AlertReceived(alert) => self.describe_alert(*alert),
            rustls::Error::InvalidMessage(_) => (
                TlsFailure::NotTls,
                format!(
                    "the server at {addr} does not speak TLS here (is this the proxy's plaintext \
                     port? The TLS port is the proxy's [server.tls] listen)"
                ),
            ),
            rustls::Error::NoApplicationProtocol => (
                TlsFailure::Alpn,
                format!(
                    "the server at {addr} does not accept the ALPN protocol {}",
                    String::from_utf8_lossy(ALPN_PROTOCOL)
                ),
            ),
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13
                | rustls::PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
                | rustls::PeerIncompatible::SupportedVersionsExtensionRequired
                | rustls::PeerIncompatible::Tls12NotOffered
                | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
            ) => (
                TlsFailure::Version,
                format!(
                    "no TLS version in common with the server at {addr} ({e}); this client \
                     speaks TLS 1.2 and 1.3"
                ),
            ),
            other => (TlsFailure::Other, other.to_string()),
        };
        TlsError::new(
            kind,
            format!("TLS with featureproxy at {addr} failed: {what}"),
            detail(e),
        )
    }

    fn describe_alert(&self, alert: AlertDescription) -> (TlsFailure, String) {
        let cert = self.inner.client_cert.as_deref();
        let refusal = matches!(
            alert,
            AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied
                | AlertDescription::DecryptError
        );
        match (alert, cert) {
            // Without a certificate, a refusal can only be of its absence.
            (AlertDescription::CertificateRequired, _)
            | (AlertDescription::HandshakeFailure, None) => (
                TlsFailure::ClientCertRequired,
                "the proxy requires a client certificate signed by its CA: give one, with its \
                 key (loadgen: --tls-cert and --tls-key)"
                    .to_string(),
            ),
            (_, None) if refusal => (
                TlsFailure::ClientCertRequired,
                format!(
                    "the proxy refused the handshake ({alert:?}), as a proxy requiring a client \
                     certificate does: give one signed by its CA, with its key (loadgen: \
                     --tls-cert and --tls-key)"
                ),
            ),
            (AlertDescription::UnknownCA, Some(cert)) => (
                TlsFailure::ClientCertRefused,
                format!(
                    "the proxy does not trust this client certificate ({cert}): unknown CA; it \
                     must be signed by the CA in the proxy's client_ca_file"
                ),
            ),
            (_, Some(cert)) if refusal => (
                TlsFailure::ClientCertRefused,
                format!(
                    "the proxy refused this client certificate ({cert}): {alert:?}; it must be \
                     a valid client certificate signed by the CA in the proxy's client_ca_file"
                ),
            ),
            (AlertDescription::ProtocolVersion, _) => (
                TlsFailure::Version,
                format!(
                    "the proxy sent the alert {alert:?}: no TLS version in common; this client \
                     speaks TLS 1.2 and 1.3"
                ),
            ),
            (AlertDescription::NoApplicationProtocol, _) => (
                TlsFailure::Alpn,
                format!(
                    "the proxy does not accept the ALPN protocol {} ({alert:?})",
                    String::from_utf8_lossy(ALPN_PROTOCOL)
                ),
            ),
            (alert, _) => (
                TlsFailure::Other,
                format!("the proxy sent the alert {alert:?}"),
            ),
        }
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.inner.name)
            .field("ca", &self.inner.ca)
            .field("client_cert", &self.inner.client_cert)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((h, _)) = rest.split_once(']') {
            return h;
        }
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => addr,
    }
}

fn load_config(
    ca_file: &Path,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    let ca = TlsFailure::CaFile;
    for (i, cert) in read_certs(ca_file, "CA file", ca)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            tls_error(
                ca,
                format!(
                    "TLS settings: certificate {} of the CA file {} cannot be used as a CA: {e}",
                    i + 1,
                    ca_file.display()
                ),
                e.to_string(),
            )
        })?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            tls_error(
                TlsFailure::Settings,
                format!("TLS settings: {e}"),
                e.to_string(),
            )
        })?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let cc = TlsFailure::ClientCert;
            let chain = read_certs(cert_file, "client certificate file", cc)?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => tls_error(
                    cc,
                    format!(
                        "TLS settings: no private key (PEM: PKCS#8, PKCS#1 or SEC1) in the \
                         client key file {}",
                        key_file.display()
                    ),
                    "no private key found",
                ),
                e => pem_error("client key file", key_file, e, cc),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                let why = match &e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        "it is the key of another certificate".to_string()
                    }
                    e => e.to_string(),
                };
                tls_error(
                    cc,
                    format!(
                        "TLS settings: the client key file {} does not go with the client \
                         certificate file {}: {why}",
                        key_file.display(),
                        cert_file.display()
                    ),
                    e.to_string(),
                )
            })?
        }
    };
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // A client keeps a few connections open for long, so resuming sessions would save little;
    // without it every connection is verified in full, and a client certificate the proxy has
    // stopped trusting is refused at the next connection rather than honoured through a ticket.
    // (Some servers also fail resumption with client certificates: socat's OpenSSL, without a
    // session id context, answers InternalError.)
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Every certificate in a PEM file; an error (of `kind`) naming the file if it has none.
fn read_certs(
    path: &Path,
    what: &str,
    kind: TlsFailure,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(what, path, e, kind))?;
    if certs.is_empty() {
        return Err(tls_error(
            kind,
            format!(
                "TLS settings: no certificate (PEM \"BEGIN CERTIFICATE\") in the {what} {}",
                path.display()
            ),
            "no certificate found",
        ));
    }
    Ok(certs)
}

fn pem_error(what: &str, path: &Path, e: rustls::pki_types::pem::Error, kind: TlsFailure) -> Error {
    let e = match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM: {other}"),
    };
    tls_error(
        kind,
        format!(
            "TLS settings: cannot read the {what} {}: {e}",
            path.display()
        ),
        e,
    )
}

fn tls_error(kind: TlsFailure, message: String, detail: impl Into<String>) -> Error {
    Error::Tls(TlsError::new(kind, message, detail))
}

/// What rustls reported, for [`TlsError::detail`]: its own words, but with dates and names as a
/// person writes them where its words are numbers and type names.
fn detail(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            format!(
                "certificate expired at {}, it is now {}",
                utc(*not_after),
                utc(*time)
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            time,
            not_before,
        }) => format!(
            "certificate not valid before {}, it is now {}",
            utc(*not_before),
            utc(*time)
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "certificate not valid for {}: it names {}",
            expected.to_str(),
            names(presented, "nothing")
        ),
        other => other.to_string(),
    }
}

/// The names a certificate presents, as a person reads them, or `none` when it holds none.
fn names(presented: &[String], none: &str) -> String {
    if presented.is_empty() {
        return none.to_string();
    }
    presented
        .iter()
        .map(|p| plain_name(p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `localhost` for rustls' `DnsName("localhost")`, `127.0.0.1` for `IpAddress(127.0.0.1)`: the
/// names a certificate holds, as a person would write them.
fn plain_name(presented: &str) -> &str {
    let inner = presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(presented);
    inner
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(inner)
}

/// `2020-01-01 00:00:00 UTC`, for the validity dates in messages.
fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("proxy.internal:7443"), "proxy.internal");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn plain_names() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("something else"), "something else");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::ZERO)),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                1_577_836_800
            ))),
            "2020-01-01 00:00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                951_825_599
            ))),
            "2000-02-29 11:59:59 UTC"
        );
    }
}
