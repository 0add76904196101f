//! TLS settings: `[server.tls]`, the port clients reach over TLS, and `[server.redis_tls]`, how
//! the proxy reaches Redis over TLS. Files named here are relative to the config file's folder,
//! and are read again on SIGHUP (certificates rotate without a restart).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[server.tls]`: the TLS port for clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Where clients connect over TLS, beside the plaintext `listen`.
    #[serde(deserialize_with = "super::settings::addr")]
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Mutual TLS: client certificates must be signed by a CA in this file. Unset: clients show
    /// no certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default; a client without a certificate fails the
    /// handshake) or `optional` (one without may still HELLO with a token).
    #[serde(default)]
    pub client_cert: ClientCert,
    /// The oldest TLS version accepted: "1.3" (default) or "1.2" (for clients whose TLS stack
    /// has no 1.3).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Whether the plaintext `listen` port stays open beside the TLS one. Default true, so
    /// clients can move to TLS one by one; false once they all have.
    #[serde(default = "yes")]
    pub plaintext: bool,
    /// A handshake not done this long after the connection was accepted is dropped (and
    /// counted), so a peer that connects and says nothing holds nothing for long.
    #[serde(
        default = "handshake_timeout",
        deserialize_with = "super::settings::duration"
    )]
    pub handshake_timeout: Duration,
}

fn yes() -> bool {
    true
}

fn handshake_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Whether a TLS client must show a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCert {
    #[default]
    Required,
    Optional,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[server.redis_tls]`: how the proxy's connections to Redis (every one: reads, writes,
/// tracking, each cluster node and replica) do TLS when the URL is `rediss://` or
/// `rediss-cluster://`. Certificates are always verified.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// CAs that sign Redis's certificates. Unset: the system's roots (as `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR` or the OS store give them); a managed Redis with its own CA needs it set.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate for Redis servers that ask for one (`tls-auth-clients yes`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name Redis's certificates are checked against. Unset: the host of each address (an
    /// IP address then needs an IP subjectAltName in the certificate).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl ListenerTls {
    /// Makes its files relative to `folder` (the config file's).
    pub fn resolve(&mut self, folder: &Path) {
        resolve(&mut self.cert_file, folder);
        resolve(&mut self.key_file, folder);
        if let Some(ca) = &mut self.client_ca_file {
            resolve(ca, folder);
        }
    }
}

impl RedisTls {
    /// Makes its files relative to `folder` (the config file's).
    pub fn resolve(&mut self, folder: &Path) {
        for f in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            resolve(f, folder);
        }
    }
}

/// A relative path made relative to `folder`.
pub fn resolve(path: &mut PathBuf, folder: &Path) {
    if path.is_relative() {
        *path = folder.join(&*path);
    }
}
