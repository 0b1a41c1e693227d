//! Secrets at rest: XChaCha20-Poly1305 under a master key from the environment. Each sealed value
//! carries its own random 24-byte nonce, and the associated data names the owner (tenant and
//! resource id), so a ciphertext copied onto another row does not open.

use base64::prelude::*;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

const NONCE_LEN: usize = 24;

/// The key that seals every credential. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Why a master key or a sealed value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the master key must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("the sealed value does not open under this master key")]
    Unsealable,
}

impl MasterKey {
    /// Parses a base64 (standard or URL-safe) encoding of 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, SecretError> {
        let encoded = encoded.trim();
        let bytes = BASE64_STANDARD
            .decode(encoded)
            .or_else(|_| BASE64_URL_SAFE_NO_PAD.decode(encoded))
            .map_err(|_| SecretError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| SecretError::BadKey)
    }

    /// Encrypts `plaintext` for the owner named by `context`: nonce, then ciphertext and tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption fails only for messages beyond 256 GiB.
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`MasterKey::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Unsealable);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unsealable)
    }
}

/// The associated data of a credential: its tenant and id.
pub fn credential_context(tenant_id: &str, id: &str) -> String {
    format!("credential\0{tenant_id}\0{id}")
}

/// The associated data of a tenant's default webhook signing secret.
pub fn tenant_webhook_context(tenant_id: &str) -> String {
    format!("tenant-webhook\0{tenant_id}")
}

/// The associated data of a webhook endpoint's signing secret: its tenant and id.
pub fn endpoint_context(tenant_id: &str, id: &str) -> String {
    format!("webhook-endpoint\0{tenant_id}\0{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&BASE64_STANDARD.encode([7u8; 32])).expect("valid key")
    }

    #[test]
    fn sealed_values_open_only_in_their_context() {
        let key = key();
        let sealed = key.seal("credential\0a\0x", b"sk-live-123");
        assert!(!sealed.windows(11).any(|w| w == b"sk-live-123"));
        assert_eq!(
            key.open("credential\0a\0x", &sealed).as_deref(),
            Ok(&b"sk-live-123"[..])
        );
        assert_eq!(
            key.open("credential\0b\0x", &sealed),
            Err(SecretError::Unsealable)
        );
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let key = key();
        assert_ne!(key.seal("c", b"same"), key.seal("c", b"same"));
    }

    #[test]
    fn a_tampered_value_or_another_key_does_not_open() {
        let key = key();
        let mut sealed = key.seal("c", b"secret");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(key.open("c", &sealed), Err(SecretError::Unsealable));
        let other = MasterKey::from_base64(&BASE64_STANDARD.encode([8u8; 32])).expect("valid");
        assert_eq!(
            other.open("c", &key.seal("c", b"secret")),
            Err(SecretError::Unsealable)
        );
    }

    #[test]
    fn master_keys_must_be_32_bytes() {
        assert_eq!(
            MasterKey::from_base64("c2hvcnQ=").err(),
            Some(SecretError::BadKey)
        );
        assert_eq!(
            MasterKey::from_base64("not base64!").err(),
            Some(SecretError::BadKey)
        );
    }
}
