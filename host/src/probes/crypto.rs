//! Sealing probe-target API keys at rest, and showing them only as fingerprints.
//!
//! ChaCha20-Poly1305 with a random 96-bit nonce per seal; the target id is the associated data,
//! so a sealed key copied onto another target's row fails to open instead of leaking there.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{WharfError, WharfResult};

const NONCE_LEN: usize = 12;
/// Version byte in front of each sealed value, so the scheme can change without guessing.
const SCHEME_V1: u8 = 1;
/// Where a generated key lives when the config names none.
pub const KEY_FILE: &str = "probe.key";

/// The sealing key. Holds the only copy in memory; never printed.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// The configured key (64 hex characters) or, without one, the key in
    /// `<data_dir>/probe.key`, generated on first use with mode 0600.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(text) = configured {
            let key = parse_key(text)
                .map_err(|why| anyhow::anyhow!("probes.encryption_key / WHARF_PROBE_KEY: {why}"))?;
            return Ok(Self::from_key(&key));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key =
                    parse_key(&text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
                Ok(Self::from_key(&key))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir)?;
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private(&path, hex::encode(key).as_bytes())?;
                tracing::info!(path = %path.display(), "generated the probe key-sealing key");
                Ok(Self::from_key(&key))
            }
            Err(err) => Err(anyhow::anyhow!("reading {}: {err}", path.display())),
        }
    }

    /// `version || nonce || ciphertext+tag`, bound to `context` (the target id).
    pub fn seal(&self, plaintext: &str, context: &str) -> WharfResult<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| WharfError::internal("sealing a key failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SCHEME_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> WharfResult<String> {
        // The message never says more than "cannot open": no key material, no plaintext.
        let fail = || {
            WharfError::internal(
                "a stored target key cannot be opened (was the probe encryption key changed?)",
            )
        };
        let (&version, rest) = sealed.split_first().ok_or_else(fail)?;
        if version != SCHEME_V1 || rest.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "expected 64 hex characters".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "expected 64 hex characters (32 bytes)".to_string())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// What may be shown of a secret: its first 4 characters and a sha256 prefix.
pub fn fingerprint(secret: &str) -> String {
    let visible: String = secret.chars().take(4).collect();
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("{visible}…{}", &digest[..8])
}

/// Replaces every occurrence of `secret` (and of its `Bearer` form) in `text`.
pub fn redact(text: &str, secret: &str) -> String {
    // Short secrets would redact ordinary words; such keys are refused at the API anyway.
    if secret.len() < 4 {
        return text.to_string();
    }
    text.replace(secret, "[redacted]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_bound_to_context() {
        let sb = SecretBox::from_key(&[7u8; 32]);
        let sealed = sb.seal("sk-secret-value-123", "tgt_a").unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "plaintext must not be visible"
        );
        assert_eq!(sb.open(&sealed, "tgt_a").unwrap(), "sk-secret-value-123");
        assert!(
            sb.open(&sealed, "tgt_b").is_err(),
            "another row's context must not open it"
        );
        let other = SecretBox::from_key(&[8u8; 32]);
        let err = other.open(&sealed, "tgt_a").unwrap_err();
        assert!(!err.message.contains("sk-"), "{}", err.message);
        // Two seals of the same value differ (fresh nonce).
        assert_ne!(sealed, sb.seal("sk-secret-value-123", "tgt_a").unwrap());
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = SecretBox::load(None, dir.path()).unwrap();
        let sealed = first.seal("k-123456", "t").unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = SecretBox::load(None, dir.path()).unwrap();
        assert_eq!(second.open(&sealed, "t").unwrap(), "k-123456");
        assert!(
            SecretBox::load(Some("nothex"), dir.path())
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
    }

    #[test]
    fn fingerprint_and_redact_hide_the_secret() {
        let fp = fingerprint("sk-abcdefghijklmnop");
        assert!(fp.starts_with("sk-a…") && !fp.contains("bcdefgh"), "{fp}");
        assert_eq!(
            redact("key sk-abcdefghijklmnop!", "sk-abcdefghijklmnop"),
            "key [redacted]!"
        );
    }
}
