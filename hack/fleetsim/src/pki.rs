//! The simulator's own certificate authority: a CA, the API servers' serving
//! certificates (one valid for a year, one expiring in 5 days for the
//! `cert-expiring` fault) and a client certificate per cluster.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    der: CertificateDer<'static>,
}

/// A certificate and its key, PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn err(e: rcgen::Error) -> String {
    format!("certificate generation: {e}")
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

impl Ca {
    pub fn new() -> Result<Self, String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "fleetsim CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(3650);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for 127.0.0.1 and localhost, valid for `days`;
    /// its key RSA-2048 when `rsa`, else ECDSA P-256.
    pub fn server(&self, cn: &str, days: i64, rsa: bool) -> Result<Issued, String> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(days);
        let key = if rsa {
            rsa_2048()?
        } else {
            KeyPair::generate().map_err(err)?
        };
        self.issue_with(params, key)
    }

    /// A client certificate for one cluster's monitoring identity.
    pub fn client(&self, cn: &str) -> Result<Issued, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(365);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, String> {
        self.issue_with(params, KeyPair::generate().map_err(err)?)
    }

    fn issue_with(&self, params: CertificateParams, key: KeyPair) -> Result<Issued, String> {
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// The TLS server configuration for one listener: `serving` as its
    /// certificate, client certificates from this CA optional (bearer-token
    /// clusters send none; the server matches the certificate per cluster).
    pub fn server_config(&self, serving: &Issued) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).map_err(|e| e.to_string())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving.key_der.clone()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![serving.cert_der.clone(), self.der.clone()], key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An RSA-2048 key (ring signs with RSA keys but does not make them):
/// `openssl genpkey`, PKCS#8 PEM on its stdout.
fn rsa_2048() -> Result<KeyPair, String> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .map_err(|e| format!("--serving-key rsa-2048 runs openssl genpkey: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl genpkey failed: {}", out.status));
    }
    let pem = String::from_utf8(out.stdout).map_err(|_| "openssl genpkey: not PEM".to_string())?;
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).map_err(err)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both serving keys make a certificate rustls serves: ECDSA P-256 (the
    /// default) and RSA-2048 (`openssl genpkey`, as `--serving-key rsa-2048`).
    #[test]
    fn serving_certificates_of_both_key_types_load() {
        let ca = Ca::new().unwrap();
        for rsa in [false, true] {
            let serving = ca.server("test", 1, rsa).unwrap();
            assert!(ca.server_config(&serving).is_ok(), "rsa: {rsa}");
            let header = serving.key_pem.lines().next().unwrap_or("");
            assert_eq!(header, "-----BEGIN PRIVATE KEY-----", "rsa: {rsa}");
            // An RSA-2048 key's PKCS#8 DER is ~1.2 KB, a P-256 one's ~138 B.
            assert_eq!(serving.key_der.len() > 1_000, rsa, "rsa: {rsa}");
        }
    }
}
