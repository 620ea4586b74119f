//! Secrets at rest: what the runner must keep but never show (app environment secrets, registry
//! passwords, webhook signing keys) is sealed with XChaCha20-Poly1305 before it reaches the
//! database, so a database dump or backup holds no secret. The key comes from
//! `RUNNER_SECRETS_KEY` (or is generated into `<data_dir>/secrets-key`, mode 0600), never from
//! the database. Each sealed value is bound to what it belongs to (the app's name) as associated
//! data, so a value copied onto another row does not open.
//!
//! Stored form: `sealed:v1:<hex of 24-byte nonce ++ ciphertext and tag>`. A value without the
//! prefix is a legacy plaintext row; it is read as is and sealed at the next start.

use anyhow::{bail, Context};
use chacha20poly1305::{
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
    XChaCha20Poly1305, XNonce,
};
use sha2::{Digest, Sha256};

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box keyed by the operator's key material (any string; a long random one, such as the
    /// generated default, `openssl rand -hex 32`).
    pub fn new(key_material: &str) -> SecretBox {
        let mut h = Sha256::new();
        h.update(b"exercise-runner secrets v1\0");
        h.update(key_material.as_bytes());
        let key = h.finalize();
        SecretBox { cipher: XChaCha20Poly1305::new(&key) }
    }

    /// Whether a stored value is sealed (else it is a legacy plaintext value).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Seals `plaintext`, bound to `context` (what it belongs to).
    pub fn seal(&self, context: &str, plaintext: &str) -> anyhow::Result<String> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: context.as_bytes() })
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", hex::encode(out)))
    }

    /// Opens a stored value sealed for `context`; a legacy plaintext value is returned as is.
    pub fn open(&self, context: &str, stored: &str) -> anyhow::Result<String> {
        let Some(body) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
        let bytes = hex::decode(body).context("a sealed secret is damaged")?;
        if bytes.len() < NONCE_LEN {
            bail!("a sealed secret is damaged");
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: context.as_bytes() })
            .map_err(|_| {
                anyhow::anyhow!(
                    "the secrets of {context:?} do not open with this runner's key \
                     (was RUNNER_SECRETS_KEY or <data_dir>/secrets-key changed?)"
                )
            })?;
        String::from_utf8(plain).context("a sealed secret is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let a = SecretBox::new("key-a");
        let sealed = a.seal("course", r#"{"env":{"K":"v"}}"#).unwrap();
        assert!(SecretBox::is_sealed(&sealed));
        assert!(!sealed.contains("\"K\""));
        assert_eq!(a.open("course", &sealed).unwrap(), r#"{"env":{"K":"v"}}"#);
        // Fresh nonce each time.
        assert_ne!(sealed, a.seal("course", r#"{"env":{"K":"v"}}"#).unwrap());
        assert!(a.open("other-app", &sealed).is_err(), "bound to its app");
        assert!(SecretBox::new("key-b").open("course", &sealed).is_err(), "bound to its key");
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(a.open("course", &tampered).is_err(), "tampering is detected");
        assert!(a.open("course", "sealed:v1:zz").is_err());
        assert_eq!(a.open("course", "{}").unwrap(), "{}", "legacy plaintext passes through");
    }
}
