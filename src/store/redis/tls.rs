//! TLS to Redis (`rediss://`, `rediss-cluster://`): one rustls client configuration, built once
//! at start from `[server.redis_tls]`, used by every connection the proxy makes to Redis: fred's
//! (writes, tracking) and the read path's own pipe, on every node and replica of a cluster.
//! Certificates are always verified; there is no way to turn that off.

use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Config;
use fred::types::config::{ServerConfig, TlsConfig, TlsConnector, TlsHostMapping};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use crate::config::tls::RedisTls as RedisTlsSettings;
use crate::store::StoreError;
use crate::transport::{self, pem};

/// Why TLS to Redis cannot be set up; the proxy does not start (it never falls back to
/// plaintext).
#[derive(Debug, thiserror::Error)]
pub enum RedisTlsError {
    #[error("[server.redis_tls] {0}")]
    File(#[from] pem::PemError),
    #[error("[server.redis_tls] no ca_file given and the system has no usable CA certificates ({0}); set ca_file to the CA that signs Redis's certificate")]
    NoSystemRoots(String),
    #[error(
        "[server.redis_tls] cert_file and key_file cannot be used as a client certificate: {0}"
    )]
    ClientCert(rustls::Error),
    #[error("[server.redis_tls] server_name {0:?} is not a DNS name or IP address")]
    BadName(String),
    #[error("TLS to Redis at {addr} failed: {reason}. Check [server.redis_tls]: ca_file must hold the CA that signed Redis's certificate, and the certificate must name {name:?} (or set server_name to a name it holds)")]
    Handshake {
        addr: String,
        name: String,
        reason: String,
    },
}

/// How the proxy's connections reach Redis over TLS.
pub struct RedisTls {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl RedisTls {
    /// Reads the CA, the optional client certificate and key.
    pub fn load(s: &RedisTlsSettings) -> Result<RedisTls, RedisTlsError> {
        let roots = match &s.ca_file {
            Some(path) => pem::roots("ca_file", path)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(transport::provider())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default TLS versions")
            .with_root_certificates(roots);
        let config = match (&s.cert_file, &s.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    pem::certificates("cert_file", cert)?,
                    pem::private_key("key_file", key)?,
                )
                .map_err(RedisTlsError::ClientCert)?,
            _ => builder.with_no_client_auth(),
        };
        if let Some(name) = &s.server_name {
            ServerName::try_from(name.clone()).map_err(|_| RedisTlsError::BadName(name.clone()))?;
        }
        Ok(RedisTls {
            config: Arc::new(config),
            server_name: s.server_name.clone(),
        })
    }

    /// The name `host`'s certificate must hold: `server_name` when set, else the host.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, StoreError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_string()).map_err(|_| {
            StoreError::Unavailable(format!(
                "{name:?} is not a name a TLS certificate can hold; set [server.redis_tls] server_name"
            ))
        })
    }

    /// Connects to `host:port` for the read pipe: TCP, then the handshake.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }

    /// Makes fred's connection to the server of `config` use this TLS.
    pub fn apply(&self, config: &mut Config) {
        if let ServerConfig::Centralized { server } = &mut config.server {
            server.tls_server_name = self.server_name.clone().map(Into::into);
        }
        config.tls = Some(TlsConfig {
            connector: TlsConnector::from(self.connector()),
            hostnames: TlsHostMapping::None,
        });
    }

    /// Tries one handshake with the Redis at `addr` ("host:port"), so that a CA or name that
    /// does not match stops the start with the reason rather than leaving every shard
    /// reconnecting in silence. A Redis that cannot be reached at all passes: the proxy starts
    /// and serves defaults until Redis comes, as it does without TLS.
    pub fn probe(&self, addr: &str) -> Result<(), RedisTlsError> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = self.name_for(host).map_err(|e| RedisTlsError::Handshake {
            addr: addr.to_string(),
            name: host.to_string(),
            reason: e.to_string(),
        })?;
        let Ok(mut tcp) = connect(addr) else {
            return Ok(());
        };
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name.clone())
            .map_err(|e| handshake_error(addr, &name, e.to_string()))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                let reason = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    Some(tls) => tls.to_string(),
                    // Cut or timed out mid-handshake: not a certificate problem to stop for.
                    None => return Ok(()),
                };
                return Err(handshake_error(addr, &name, reason));
            }
        }
        Ok(())
    }
}

fn handshake_error(addr: &str, name: &ServerName<'_>, reason: String) -> RedisTlsError {
    RedisTlsError::Handshake {
        addr: addr.to_string(),
        name: name.to_str().into_owned(),
        reason,
    }
}

fn connect(addr: &str) -> std::io::Result<StdTcpStream> {
    use std::net::ToSocketAddrs;
    let timeout = Duration::from_secs(2);
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let tcp = StdTcpStream::connect_timeout(&target, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    Ok(tcp)
}

/// The system's CA certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else the OS store).
/// Certificates that fail to parse are skipped, as long as some are usable.
fn system_roots() -> Result<RootCertStore, RedisTlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or("none found".to_string(), |e| e.to_string());
        return Err(RedisTlsError::NoSystemRoots(why));
    }
    Ok(roots)
}

/// fred's configuration for `url`: a `rediss://` URL is parsed as `redis://` and given `tls`
/// (fred's own TLS setup from the URL would use the system's roots whatever the settings say).
pub fn fred_config(url: &str, tls: Option<&RedisTls>) -> Result<Config, StoreError> {
    let plain_scheme = url
        .strip_prefix("rediss://")
        .map(|rest| format!("redis://{rest}"));
    let config = Config::from_url(plain_scheme.as_deref().unwrap_or(url));
    let mut config = config.map_err(|e| {
        StoreError::Unavailable(format!(
            "bad Redis URL {:?}: {e}",
            super::url::redacted(url)
        ))
    })?;
    if let Some(tls) = tls {
        tls.apply(&mut config);
    }
    Ok(config)
}
