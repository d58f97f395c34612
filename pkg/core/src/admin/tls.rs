//! The admin API over TLS: `--admin-tls-cert-file` and
//! `--admin-tls-key-file` (PEM) make the listener speak HTTPS, so that the
//! bearer token of `drain`, `check` and pushed assignments never crosses
//! the network in clear; `--admin-ca-file` is the bundle peers and the CLI
//! trust for it. The certificate and key are re-read like every secret
//! file (`crate::reload`): a renewed certificate is served to the next
//! connection, no restart.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The listener's TLS configuration, replaced when its files change.
pub type ServerTls = crate::reload::Live<rustls::ServerConfig>;

/// Why a certificate and key do not make a configuration, by the file at
/// fault (a key that does not match its certificate is the key's). The
/// text says what is wrong, never the content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// A server configuration from a PEM certificate chain (the leaf first)
/// and its PEM private key.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, PairError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PairError::Cert("the certificate file is not PEM".into()))?;
    if certs.is_empty() {
        return Err(PairError::Cert(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| PairError::Key("the key file holds no PEM private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PairError::Cert(e.to_string()))?
        .with_no_client_auth()
        // rustls' errors name the problem (a key that does not match the
        // certificate, an unsupported algorithm), never key material.
        .with_single_cert(certs, key)
        .map_err(|e| {
            PairError::Key(format!(
                "the certificate and key are not usable together: {e}"
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The certificates of a PEM bundle (`--admin-ca-file`).
pub fn ca_certs(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|_| "not a PEM certificate bundle".to_string())?;
    if certs.is_empty() {
        return Err("the bundle holds no certificate".into());
    }
    Ok(certs)
}
