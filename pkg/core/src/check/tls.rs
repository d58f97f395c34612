//! Per-cluster TLS: the API server is verified against the CA bundle of the
//! cluster document, never the system roots. `insecureSkipTLSVerify` is
//! honoured (the caller counts and logs it) but signatures are still checked.
//!
//! A cluster's entry remembers the last server certificate chain verified
//! for it ([`ChainMemo`]): a later handshake that presents the very same
//! chain, for the same name, within the window in which every certificate
//! of the chain is valid, skips path building and the chain's signature
//! (webpki's verdict would be the same: it depends on nothing else, with no
//! revocation lists configured). The handshake's own signature
//! (CertificateVerify, proof that the server holds the key) is checked on
//! every connection. The memo lives in the entry of one document version, so
//! a new CA bundle starts without one.
//!
//! A check whose cluster has a memo does not parse the CA bundle either: the
//! bundle is the one that chain was verified with (same document version),
//! so it parsed then. Its roots are built only if the handshake presents
//! another chain (`MemoVerifier::roots_built`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::model::Credentials;

/// ring's provider with TLS 1.3's AES-128-GCM-SHA256 first: the
/// handshake's transcript hash and key schedule run on SHA-256, which CPUs
/// compute in hardware (SHA-NI), where the default first suite's SHA-384
/// does not (measured: 3.9% of a monitor's CPU in SHA-512 blocks on
/// healthz checks). The server picks among the same suites; both are
/// TLS 1.3's mandatory or recommended ones. Built once.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = ring::default_provider();
            p.cipher_suites
                .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            Arc::new(p)
        })
        .clone()
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in PEM"));
    }
    Ok(certs)
}

/// A server certificate chain that was verified: a digest of the chain, the
/// name and the CA bundle it was verified for, and the window (Unix
/// seconds) in which every certificate of the chain is valid. The default
/// matches nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifiedChain {
    digest: [u8; 16],
    /// The latest `notBefore` of the chain's certificates.
    from: i64,
    /// The earliest `notAfter` of the chain's certificates.
    until: i64,
}

impl VerifiedChain {
    fn holds(&self, digest: &[u8; 16], now: i64) -> bool {
        self.digest == *digest && self.from <= now && now < self.until
    }
}

/// The last chain verified for one cluster version: 40 bytes in its entry.
#[derive(Default)]
pub struct ChainMemo(Mutex<VerifiedChain>);

impl ChainMemo {
    pub fn get(&self) -> VerifiedChain {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn set(&self, v: VerifiedChain) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// SHA-256 of the CA bundle it was verified against, the name and the chain
/// (each part length-prefixed), cut to 128 bits: finding another chain with
/// the digest of one that was verified is a second preimage, 2^128 work.
fn chain_digest(
    bundle: &[u8; 32],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
) -> [u8; 16] {
    let hash = TLS13_SHA256.common.hash_provider;
    let mut h = hash.start();
    let name = name.to_str();
    for part in [&bundle[..], name.as_bytes(), end_entity.as_ref()]
        .into_iter()
        .chain(intermediates.iter().map(|c| c.as_ref()))
    {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let out = h.finish();
    let mut d = [0u8; 16];
    d.copy_from_slice(&out.as_ref()[..16]);
    d
}

/// The window in which every certificate of the chain is valid, or `None`
/// when one does not parse (then nothing is remembered).
fn validity_window(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(i64, i64)> {
    let (mut from, mut until) = (i64::MIN, i64::MAX);
    for c in std::iter::once(end_entity).chain(intermediates) {
        let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
        from = from.max(cert.validity().not_before.timestamp());
        until = until.min(cert.validity().not_after.timestamp());
    }
    Some((from, until))
}

static TLS13_SHA256: &rustls::Tls13CipherSuite = match ring::cipher_suite::TLS13_AES_128_GCM_SHA256
{
    rustls::SupportedCipherSuite::Tls13(s) => s,
    _ => unreachable!(),
};

/// Server chains checked in this process: taken from a memo, and verified
/// in full (`monitor.tls.chains`).
static CHAINS_REMEMBERED: AtomicU64 = AtomicU64::new(0);
static CHAINS_VERIFIED: AtomicU64 = AtomicU64::new(0);

/// (remembered, verified) since the process started.
pub fn chain_counts() -> (u64, u64) {
    (
        CHAINS_REMEMBERED.load(Ordering::Relaxed),
        CHAINS_VERIFIED.load(Ordering::Relaxed),
    )
}

/// What one check's verifier did with the memo it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoUse {
    /// No certificate was verified (no handshake got that far).
    #[default]
    Unused,
    /// The chain was the remembered one: not verified again.
    Hit,
    /// The chain was verified in full; remember this.
    Learned(VerifiedChain),
}

/// The per-cluster verifier: webpki against the cluster's CA bundle, with
/// the memo of the last chain verified.
#[derive(Debug)]
pub struct MemoVerifier {
    /// webpki's verifier of the CA bundle: built with the configuration
    /// when nothing is remembered, else on the first chain the memo does
    /// not hold (from `pem`).
    inner: OnceLock<Arc<dyn ServerCertVerifier>>,
    /// The CA bundle's text while its roots are not built.
    pem: Option<String>,
    /// SHA-256 of the CA bundle's text: a memo is only ever taken by a
    /// verifier of the bundle it was made with.
    bundle: [u8; 32],
    known: VerifiedChain,
    used: Mutex<MemoUse>,
}

impl MemoVerifier {
    /// What the handshakes made of the memo (the last one wins).
    pub fn used(&self) -> MemoUse {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the CA bundle's roots were built (parsed), for a full
    /// verification or because nothing was remembered.
    pub fn roots_built(&self) -> bool {
        self.inner.get().is_some()
    }

    fn webpki(&self) -> Result<&Arc<dyn ServerCertVerifier>, rustls::Error> {
        if let Some(v) = self.inner.get() {
            return Ok(v);
        }
        let pem = self.pem.as_deref().unwrap_or_default();
        let built = webpki_verifier(pem).map_err(rustls::Error::General)?;
        Ok(self.inner.get_or_init(|| built))
    }
}

/// SHA-256 of a CA bundle's text.
fn bundle_digest(pem: &[u8]) -> [u8; 32] {
    let mut h = TLS13_SHA256.common.hash_provider.start();
    h.update(pem);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(h.finish().as_ref());
    digest
}

/// webpki's verifier with the certificates of a CA bundle as its roots.
fn webpki_verifier(pem: &str) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(pem, "caBundle")? {
        roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
    }
    let v =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("caBundle: {e}"))?;
    Ok(v)
}

impl ServerCertVerifier for MemoVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = chain_digest(&self.bundle, end_entity, intermediates, server_name);
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if self.known.holds(&digest, secs) {
            *used = MemoUse::Hit;
            CHAINS_REMEMBERED.fetch_add(1, Ordering::Relaxed);
            return Ok(ServerCertVerified::assertion());
        }
        CHAINS_VERIFIED.fetch_add(1, Ordering::Relaxed);
        let verified =
            self.webpki()?
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if let Some((from, until)) = validity_window(end_entity, intermediates) {
            *used = MemoUse::Learned(VerifiedChain {
                digest,
                from,
                until,
            });
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // As webpki's verifier does, with the same algorithms: no roots needed.
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration for one cluster.
pub fn client_config(creds: &Credentials, https: bool) -> Result<ClientConfig, String> {
    client_config_with_memo(creds, https, VerifiedChain::default()).map(|(c, _)| c)
}

/// The rustls client configuration for one cluster, with the chain last
/// verified for it (`known`), and the verifier to ask afterwards what became
/// of it (`None` when nothing is verified: `insecureSkipTLSVerify`).
pub fn client_config_with_memo(
    creds: &Credentials,
    https: bool,
    known: VerifiedChain,
) -> Result<(ClientConfig, Option<Arc<MemoVerifier>>), String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut memo = None;
    let builder = if creds.insecure_skip_tls_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(
                provider().signature_verification_algorithms,
            )))
    } else {
        match &creds.ca_bundle {
            Some(pem) => {
                // With nothing remembered the bundle is parsed now, so that a
                // bad one fails the check as a configuration error; a memo
                // means this very text parsed before (module docs).
                let (inner, kept) = if known == VerifiedChain::default() {
                    (OnceLock::from(webpki_verifier(pem)?), None)
                } else {
                    (OnceLock::new(), Some(pem.clone()))
                };
                let v = Arc::new(MemoVerifier {
                    inner,
                    pem: kept,
                    bundle: bundle_digest(pem.as_bytes()),
                    known,
                    used: Mutex::new(MemoUse::Unused),
                });
                memo = Some(v.clone());
                builder.dangerous().with_custom_certificate_verifier(v)
            }
            None if https => {
                return Err(
                    "https API server without caBundle (and without insecureSkipTLSVerify)".into(),
                )
            }
            // Plain HTTP: no handshake will ask.
            None => builder.with_root_certificates(RootCertStore::empty()),
        }
    };
    let mut config = match (&creds.client_certificate, &creds.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert, "clientCertificate")?;
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|_| "clientKey: not a PEM private key".to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("clientCertificate and clientKey go together".into()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One configuration serves one check's connection: a session cache
    // (rustls allocates one of 256 entries by default, ~14 KB, and stores
    // each TLS 1.3 ticket with a copy of the certificate chain) could never
    // be reused. Measured with massif: 22% of an in-flight check's memory.
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config, memo))
}

/// Accepts any server certificate; still verifies handshake signatures.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Days until the certificate's notAfter (negative once expired), and its subject.
pub fn expiry(der: &[u8], now_unix: i64) -> Result<(i64, String), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("peer certificate: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    Ok((
        (not_after - now_unix).div_euclid(86_400),
        cert.subject().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Secret;

    #[test]
    fn https_requires_a_ca_bundle_unless_insecure() {
        let e = client_config(&Credentials::default(), true).unwrap_err();
        assert!(e.contains("caBundle"), "{e}");
        assert!(client_config(&Credentials::default(), false).is_ok());
        let insecure = Credentials {
            insecure_skip_tls_verify: true,
            ..Default::default()
        };
        assert!(client_config(&insecure, true).is_ok());
    }

    #[test]
    fn tls13_aes128_sha256_is_offered_first() {
        let p = provider();
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            p.cipher_suites.len(),
            ring::default_provider().cipher_suites.len()
        );
        assert!(Arc::ptr_eq(&p, &provider()), "built once");
    }

    #[test]
    fn no_session_cache_per_check() {
        let c = client_config(&Credentials::default(), false).unwrap();
        let r = format!("{:?}", c.resumption);
        assert!(r.contains("NoClientSessionStorage"), "{r}");
    }

    #[test]
    fn bad_pem_is_a_clear_error_without_the_secret() {
        let c = Credentials {
            ca_bundle: Some("not pem".into()),
            ..Default::default()
        };
        assert!(client_config(&c, true).unwrap_err().contains("caBundle"));
        let c = Credentials {
            insecure_skip_tls_verify: true,
            client_certificate: Some("x".into()),
            client_key: Some(Secret::new("super-secret-key-material")),
            ..Default::default()
        };
        let e = client_config(&c, true).unwrap_err();
        assert!(!e.contains("super-secret"), "{e}");
        let c = Credentials {
            insecure_skip_tls_verify: true,
            client_key: Some(Secret::new("k")),
            ..Default::default()
        };
        assert!(client_config(&c, true).unwrap_err().contains("go together"));
    }

    mod memo {
        use super::super::*;
        use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        struct Ca {
            der: CertificateDer<'static>,
            pem: String,
            issuer: Issuer<'static, KeyPair>,
        }

        fn params(names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> CertificateParams {
            let mut p =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.not_before = date_time_ymd(from.0, from.1, from.2);
            p.not_after = date_time_ymd(until.0, until.1, until.2);
            p
        }

        fn ca() -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut p = params(&[], (2020, 1, 1), (2100, 1, 1));
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = p.self_signed(&key).unwrap();
            Ca {
                der: cert.der().clone(),
                pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        /// An intermediate CA valid from `from` to `until`, issued by `ca`.
        fn intermediate(ca: &Ca, from: (i32, u8, u8), until: (i32, u8, u8)) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut p = params(&[], from, until);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = p.signed_by(&key, &ca.issuer).unwrap();
            Ca {
                der: cert.der().clone(),
                pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        fn leaf(ca: &Ca, from: (i32, u8, u8), until: (i32, u8, u8)) -> CertificateDer<'static> {
            let key = KeyPair::generate().unwrap();
            params(&["localhost"], from, until)
                .signed_by(&key, &ca.issuer)
                .unwrap()
                .der()
                .clone()
        }

        /// The webpki verifier of `ca`, counting full verifications.
        #[derive(Debug)]
        struct Counting {
            inner: Arc<dyn ServerCertVerifier>,
            calls: AtomicUsize,
        }

        impl ServerCertVerifier for Counting {
            fn verify_server_cert(
                &self,
                e: &CertificateDer<'_>,
                i: &[CertificateDer<'_>],
                n: &ServerName<'_>,
                o: &[u8],
                now: UnixTime,
            ) -> Result<ServerCertVerified, rustls::Error> {
                self.calls.fetch_add(1, Ordering::Relaxed);
                self.inner.verify_server_cert(e, i, n, o, now)
            }
            fn verify_tls12_signature(
                &self,
                m: &[u8],
                c: &CertificateDer<'_>,
                d: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                self.inner.verify_tls12_signature(m, c, d)
            }
            fn verify_tls13_signature(
                &self,
                m: &[u8],
                c: &CertificateDer<'_>,
                d: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                self.inner.verify_tls13_signature(m, c, d)
            }
            fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
                self.inner.supported_verify_schemes()
            }
        }

        /// A memo verifier of `ca` that knows `known`; the count of its
        /// full verifications.
        fn verifier(ca: &Ca, known: VerifiedChain) -> (MemoVerifier, Arc<Counting>) {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            let counting = Arc::new(Counting {
                inner: webpki,
                calls: AtomicUsize::new(0),
            });
            // A digest per CA, as `client_config_with_memo` digests its text.
            let v = MemoVerifier {
                inner: OnceLock::from(counting.clone() as Arc<dyn ServerCertVerifier>),
                pem: None,
                bundle: bundle_digest(&ca.der),
                known,
                used: Mutex::new(MemoUse::Unused),
            };
            (v, counting)
        }

        fn at(y: i32) -> UnixTime {
            let t = date_time_ymd(y, 6, 1).unix_timestamp() as u64;
            UnixTime::since_unix_epoch(Duration::from_secs(t))
        }

        fn name(n: &str) -> ServerName<'static> {
            ServerName::try_from(n.to_string()).unwrap()
        }

        /// Verifies `chain` (end entity first) with a verifier of `ca` that
        /// knows `known`: the verdict, what the memo became and how many
        /// full verifications ran.
        fn verify(
            ca: &Ca,
            known: VerifiedChain,
            chain: &[CertificateDer<'static>],
            host: &str,
            now: UnixTime,
        ) -> (bool, MemoUse, usize) {
            let (v, counting) = verifier(ca, known);
            let ok = v
                .verify_server_cert(&chain[0], &chain[1..], &name(host), &[], now)
                .is_ok();
            (ok, v.used(), counting.calls.load(Ordering::Relaxed))
        }

        #[test]
        fn a_chain_verified_once_is_taken_again_without_verifying_and_nothing_else_is() {
            let root = ca();
            let inter = intermediate(&root, (2021, 1, 1), (2090, 1, 1));
            let a = vec![leaf(&inter, (2022, 1, 1), (2080, 1, 1)), inter.der.clone()];
            let (ok, used, calls) =
                verify(&root, VerifiedChain::default(), &a, "localhost", at(2030));
            assert!(ok);
            assert_eq!(calls, 1, "nothing known: verified in full");
            let MemoUse::Learned(m) = used else {
                panic!("learned: {used:?}")
            };
            // The window is where every certificate of the chain is valid.
            assert_eq!(m.from, date_time_ymd(2022, 1, 1).unix_timestamp());
            assert_eq!(m.until, date_time_ymd(2080, 1, 1).unix_timestamp());

            // The same chain, name and a time in the window: not verified again.
            assert_eq!(
                verify(&root, m, &a, "localhost", at(2050)),
                (true, MemoUse::Hit, 0)
            );

            // Another leaf of the same CA: verified in full, and learned.
            let b = vec![leaf(&inter, (2022, 1, 1), (2080, 1, 1)), inter.der.clone()];
            let (ok, used, calls) = verify(&root, m, &b, "localhost", at(2030));
            assert!(ok && calls == 1, "{used:?}");
            assert!(matches!(used, MemoUse::Learned(n) if n != m));

            // The same leaf without its intermediate: another chain, refused.
            assert_eq!(
                verify(&root, m, &a[..1], "localhost", at(2030)),
                (false, MemoUse::Unused, 1)
            );
            // Another name: verified, and refused.
            assert_eq!(
                verify(&root, m, &a, "elsewhere.example", at(2030)),
                (false, MemoUse::Unused, 1)
            );
            // Outside the window, before or after: verified, and refused.
            assert_eq!(
                verify(&root, m, &a, "localhost", at(2081)),
                (false, MemoUse::Unused, 1)
            );
            assert_eq!(
                verify(&root, m, &a, "localhost", at(2021)),
                (false, MemoUse::Unused, 1)
            );
            // A chain of another CA presented to this memo: refused.
            let other = ca();
            let c = vec![leaf(&other, (2022, 1, 1), (2080, 1, 1))];
            assert_eq!(
                verify(&root, m, &c, "localhost", at(2030)),
                (false, MemoUse::Unused, 1)
            );
            // The memo given to a verifier of another CA bundle (a new
            // caBundle is a new entry, so this should not happen): not
            // taken, the chain is verified against that bundle and refused.
            assert_eq!(
                verify(&other, m, &a, "localhost", at(2030)),
                (false, MemoUse::Unused, 1)
            );
        }

        /// A check whose cluster has a memo builds no roots from its CA
        /// bundle unless the server shows another chain; the memo of one
        /// bundle's text is not taken by a verifier of another.
        #[test]
        fn with_a_memo_the_bundle_is_parsed_only_for_another_chain() {
            let root = ca();
            let creds = |ca: &Ca| Credentials {
                ca_bundle: Some(ca.pem.clone()),
                ..Default::default()
            };
            let memo = |c: &Credentials, known| {
                client_config_with_memo(c, true, known).unwrap().1.unwrap()
            };
            let a = leaf(&root, (2022, 1, 1), (2080, 1, 1));
            let check = |v: &MemoVerifier, leaf: &CertificateDer<'_>| {
                v.verify_server_cert(leaf, &[], &name("localhost"), &[], at(2030))
                    .is_ok()
            };
            // Nothing known: built with the configuration, then learned.
            let v = memo(&creds(&root), VerifiedChain::default());
            assert!(v.roots_built());
            assert!(check(&v, &a));
            let MemoUse::Learned(m) = v.used() else {
                panic!("{:?}", v.used())
            };
            // Known: the remembered chain is taken, no roots built.
            let v = memo(&creds(&root), m);
            assert!(!v.roots_built());
            assert!(check(&v, &a));
            assert_eq!(v.used(), MemoUse::Hit);
            assert!(!v.roots_built(), "a hit parses nothing");
            // Another leaf of the same CA: built now, verified, learned.
            let b = leaf(&root, (2022, 1, 1), (2080, 1, 1));
            assert!(check(&v, &b));
            assert!(v.roots_built());
            assert!(matches!(v.used(), MemoUse::Learned(n) if n != m));
            // A leaf of another CA, shown to a verifier with the memo: refused.
            let other = ca();
            let v = memo(&creds(&root), m);
            assert!(!check(&v, &leaf(&other, (2022, 1, 1), (2080, 1, 1))));
            // The memo handed to a verifier of another bundle's text is not
            // taken: the remembered chain is verified against that bundle.
            let v = memo(&creds(&other), m);
            assert!(!check(&v, &a));
            assert_ne!(v.used(), MemoUse::Hit);
        }

        #[test]
        fn an_expired_intermediate_ends_the_window() {
            let root = ca();
            let inter = intermediate(&root, (2021, 1, 1), (2040, 1, 1));
            let a = vec![leaf(&inter, (2022, 1, 1), (2080, 1, 1)), inter.der.clone()];
            let (ok, used, _) = verify(&root, VerifiedChain::default(), &a, "localhost", at(2030));
            let MemoUse::Learned(m) = used else {
                panic!("{ok} {used:?}")
            };
            assert_eq!(m.until, date_time_ymd(2040, 1, 1).unix_timestamp());
            assert_eq!(
                verify(&root, m, &a, "localhost", at(2041)),
                (false, MemoUse::Unused, 1)
            );
        }

        #[test]
        fn insecure_and_plain_configurations_have_no_memo() {
            let insecure = Credentials {
                insecure_skip_tls_verify: true,
                ..Default::default()
            };
            assert!(
                client_config_with_memo(&insecure, true, VerifiedChain::default())
                    .unwrap()
                    .1
                    .is_none()
            );
            assert!(client_config_with_memo(
                &Credentials::default(),
                false,
                VerifiedChain::default()
            )
            .unwrap()
            .1
            .is_none());
        }

        #[test]
        fn the_memo_is_small() {
            assert!(std::mem::size_of::<ChainMemo>() <= 40);
        }
    }
}
