//! Certificates and keys read from PEM files, each failure naming the file and what to do.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{setting} = {path:?}: cannot read it: {source}")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{setting} = {path:?}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting} = {path:?}: not a PEM certificate file: {detail}")]
    BadCertificate {
        setting: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "{setting} = {path:?}: no usable private key in it (PKCS#8, PKCS#1 or SEC1 PEM): {detail}"
    )]
    BadKey {
        setting: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{setting} = {path:?}: a certificate in it cannot be trusted as a CA: {detail}")]
    BadCa {
        setting: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("cert_file {cert:?} and key_file {key:?} do not belong together ({detail}); give the key the certificate was made for")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// The certificate chain in `path` (leaf first), as `setting` names it.
pub fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::BadCertificate {
            setting,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            setting,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in `path`.
pub fn private_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PemError::BadKey {
        setting,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The CA certificates in `path`, as roots of trust.
pub fn roots(setting: &'static str, path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(setting, path)? {
        roots.add(cert).map_err(|e| PemError::BadCa {
            setting,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Unreadable {
        setting,
        path: path.to_path_buf(),
        source,
    })
}
