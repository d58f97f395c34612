//! Credentials at rest: AES-256-GCM with a 32-byte key from
//! `--secrets-key-file`. The sealed form is `v1:` + base64(nonce ‖ ciphertext),
//! with the cluster id as associated data, so a sealed blob copied into
//! another cluster's document does not open. Plaintext is decrypted only for
//! the duration of a check.
//!
//! Key rotation: a key may carry older keys (`--secrets-old-key-file`) that
//! open what was sealed before the rotation and never seal; opens that
//! needed one are counted ([`old_key_opens`]), so operators see when every
//! document has been sealed again with the current key.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::model::Credentials;

const PREFIX: &str = "v1:";

/// The current key (first: it seals) and any older ones (they only open).
#[derive(Clone)]
pub struct SecretsKey(Box<[[u8; 32]]>);

/// Credentials opened, process-wide, by an older key rather than the
/// current one.
static OLD_KEY_OPENS: AtomicU64 = AtomicU64::new(0);

/// How many sealed credentials this process opened with an older key.
pub fn old_key_opens() -> u64 {
    OLD_KEY_OPENS.load(Ordering::Relaxed)
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Box::new([b]))
    }

    /// This key, current, with `older` keys that still open what they
    /// sealed (tried in the order given, after the current one).
    pub fn with_older(self, older: impl IntoIterator<Item = SecretsKey>) -> Self {
        let mut keys = self.0.into_vec();
        for k in older {
            keys.extend_from_slice(&k.0);
        }
        Self(keys.into_boxed_slice())
    }

    /// Reads a key file: exactly 32 bytes, or the base64 of 32 bytes
    /// (surrounding white space ignored). Errors never include the content.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let raw = crate::reload::read_secret_file(path)
            .map_err(|e| format!("cannot read secrets key file {}: {e}", path.display()))?;
        Self::parse(&raw).map_err(|e| format!("secrets key file {}: {e}", path.display()))
    }

    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        if let Ok(b) = <[u8; 32]>::try_from(raw) {
            return Ok(Self::from_bytes(b));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| "expected 32 bytes or their base64".to_string())?;
        let decoded = B64
            .decode(text.trim())
            .map_err(|_| "expected 32 bytes or their base64".to_string())?;
        let b = <[u8; 32]>::try_from(decoded.as_slice())
            .map_err(|_| format!("base64 decodes to {} bytes, expected 32", decoded.len()))?;
        Ok(Self::from_bytes(b))
    }

    fn cipher(key: &[u8; 32]) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]))
    }

    /// Seals `creds` for cluster `id`.
    pub fn seal(&self, id: &str, creds: &Credentials) -> Result<String, String> {
        let plain = serde_json::to_vec(creds).map_err(|e| e.to_string())?;
        let nonce: [u8; 12] = rand::random();
        let ct = Self::cipher(&self.0[0])
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    /// Opens a sealed blob of cluster `id`. The error says why, never what.
    pub fn open(&self, id: &str, sealed: &str) -> Result<Credentials, String> {
        self.open_which(id, sealed).map(|(c, _)| c)
    }

    /// Opens a sealed blob of cluster `id`, and says which key opened it
    /// (0: the current one).
    pub fn open_which(&self, id: &str, sealed: &str) -> Result<(Credentials, usize), String> {
        let b64 = sealed
            .strip_prefix(PREFIX)
            .ok_or("unknown sealed-credentials version")?;
        let raw = B64
            .decode(b64)
            .map_err(|_| "sealed credentials are not base64")?;
        if raw.len() < 12 + 16 {
            return Err("sealed credentials are truncated".into());
        }
        let (nonce, ct) = raw.split_at(12);
        let opened = self.0.iter().enumerate().find_map(|(i, key)| {
            Self::cipher(key)
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: id.as_bytes(),
                    },
                )
                .ok()
                .map(|plain| (plain, i))
        });
        let Some((plain, which)) = opened else {
            return Err(if self.0.len() > 1 {
                "cannot decrypt credentials: no key opens them (current or older), or sealed for another cluster"
            } else {
                "cannot decrypt credentials: wrong key, or sealed for another cluster"
            }
            .to_string());
        };
        let creds = serde_json::from_slice(&plain)
            .map_err(|_| "decrypted credentials are not valid".to_string())?;
        if which > 0 {
            OLD_KEY_OPENS.fetch_add(1, Ordering::Relaxed);
        }
        Ok((creds, which))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Secret;

    fn creds() -> Credentials {
        Credentials {
            token: Some(Secret::new("tok-123")),
            ca_bundle: Some("PEM".into()),
            ..Default::default()
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding_to_the_cluster() {
        let k = SecretsKey::from_bytes([7; 32]);
        let sealed = k.seal("c1", &creds()).unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("tok-123"));
        assert_eq!(k.open("c1", &sealed).unwrap(), creds());
        assert!(k
            .open("c2", &sealed)
            .unwrap_err()
            .contains("another cluster"));
        assert!(SecretsKey::from_bytes([8; 32]).open("c1", &sealed).is_err());
        assert_ne!(
            k.seal("c1", &creds()).unwrap(),
            sealed,
            "fresh nonce per seal"
        );
        assert!(k.open("c1", "v1:AAAA").is_err());
        assert!(k.open("c1", "v2:xx").is_err());
    }

    /// A rotation: the new key seals; the old one still opens what it
    /// sealed, counted; a key that is neither opens nothing, and says so.
    #[test]
    fn older_keys_open_what_they_sealed_and_never_seal() {
        let old = SecretsKey::from_bytes([1; 32]);
        let new = SecretsKey::from_bytes([2; 32]);
        let ring = new.clone().with_older([old.clone()]);
        let by_old = old.seal("c1", &creds()).unwrap();
        let by_ring = ring.seal("c1", &creds()).unwrap();
        let before = old_key_opens();
        assert_eq!(ring.open_which("c1", &by_old).unwrap(), (creds(), 1));
        assert!(old_key_opens() > before, "counted");
        let after = old_key_opens();
        assert_eq!(ring.open_which("c1", &by_ring).unwrap(), (creds(), 0));
        assert_eq!(old_key_opens(), after, "the current key is not counted");
        // The ring seals with the current key only.
        assert!(old.open("c1", &by_ring).is_err());
        assert_eq!(new.open("c1", &by_ring).unwrap(), creds());
        let e = SecretsKey::from_bytes([3; 32])
            .with_older([SecretsKey::from_bytes([4; 32])])
            .open("c1", &by_old)
            .unwrap_err();
        assert!(e.contains("no key opens them"), "{e}");
        assert!(ring.open("c2", &by_old).is_err(), "bound to the cluster");
    }

    #[test]
    fn key_formats() {
        assert!(SecretsKey::parse(&[1u8; 32]).is_ok());
        let b64 = B64.encode([2u8; 32]);
        assert!(SecretsKey::parse(format!("{b64}\n").as_bytes()).is_ok());
        assert!(SecretsKey::parse(b"short").is_err());
        assert!(SecretsKey::parse(B64.encode([2u8; 16]).as_bytes())
            .unwrap_err()
            .contains("16 bytes"));
        assert_eq!(
            format!("{:?}", SecretsKey::from_bytes([3; 32])),
            "SecretsKey(<redacted>)"
        );
    }
}
