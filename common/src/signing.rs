//! Standard Webhooks v1 (symmetric, HMAC-SHA256) signing and verification.
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`; the key is the
//! base64-decoded secret (the `whsec_` prefix is optional). Verification compares in constant time,
//! accepts any matching `v1` entry of a space-separated list, and rejects timestamps outside the
//! tolerance in either direction.

use base64::prelude::*;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The default tolerance for `webhook-timestamp`, as in the reference libraries.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// A webhook signing secret: the raw key bytes. Its `Debug` never prints them.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret or a signature was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the secret is empty or not base64")]
    InvalidSecret,
    #[error("a webhook-id, webhook-timestamp or webhook-signature header is missing")]
    MissingHeader,
    #[error("webhook-timestamp is not an integer")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TimestampTooOld,
    #[error("webhook-timestamp is too far in the future")]
    TimestampTooNew,
    #[error("no signature matches")]
    NoMatch,
}

impl Secret {
    /// Parses `whsec_<base64>` or bare base64 (padded or not).
    pub fn parse(raw: &str) -> Result<Self, SignatureError> {
        let encoded = raw.trim().strip_prefix("whsec_").unwrap_or(raw.trim());
        let bytes = BASE64_STANDARD
            .decode(encoded)
            .or_else(|_| BASE64_STANDARD_NO_PAD.decode(encoded.trim_end_matches('=')))
            .map_err(|_| SignatureError::InvalidSecret)?;
        if bytes.is_empty() {
            return Err(SignatureError::InvalidSecret);
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret of 32 bytes.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(bytes.to_vec())
    }

    /// The key's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a parsed or generated secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw key, to seal it at rest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A secret from its raw key (as unsealed).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SignatureError> {
        if bytes.is_empty() {
            return Err(SignatureError::InvalidSecret);
        }
        Ok(Self(bytes))
    }

    /// A secret sealed with `key` for `context` (see [`crate::secrets`]); `None` when it does not
    /// open.
    pub fn unseal(key: &crate::secrets::MasterKey, context: &str, sealed: &[u8]) -> Option<Self> {
        key.open(context, sealed)
            .ok()
            .and_then(|raw| Self::from_bytes(raw).ok())
    }

    /// The `whsec_…` form, to show to the user.
    pub fn to_whsec(&self) -> String {
        format!("whsec_{}", BASE64_STANDARD.encode(&self.0))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for one attempt: `v1,<base64>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64_STANDARD.encode(tag))
    }

    /// Verifies a delivery as a receiver would, with `now` in Unix seconds.
    pub fn verify(
        &self,
        msg_id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), SignatureError> {
        let (Some(msg_id), Some(timestamp), Some(signatures)) = (msg_id, timestamp, signatures)
        else {
            return Err(SignatureError::MissingHeader);
        };
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::InvalidTimestamp)?;
        if ts < now - tolerance_secs {
            return Err(SignatureError::TimestampTooOld);
        }
        if ts > now + tolerance_secs {
            return Err(SignatureError::TimestampTooNew);
        }
        let mac = self.mac(msg_id, ts, body);
        let matched = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| BASE64_STANDARD.decode(sig).ok())
            .any(|sig| mac.clone().verify_slice(&sig).is_ok());
        if matched {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const V1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const V1_TS: i64 = 1_614_265_330;
    const V1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const V1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> Secret {
        Secret::parse(V1_SECRET).expect("vector secret parses")
    }

    fn verify(sig: &str, ts: i64, now: i64) -> Result<(), SignatureError> {
        secret().verify(
            Some(V1_ID),
            Some(&ts.to_string()),
            Some(sig),
            V1_BODY,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    #[test]
    fn signs_official_vector_one() {
        assert_eq!(secret().sign(V1_ID, V1_TS, V1_BODY), V1_SIG);
    }

    #[test]
    fn signs_official_vector_two() {
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("parses");
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            secret.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn verifies_vector_within_tolerance() {
        assert_eq!(verify(V1_SIG, V1_TS, V1_TS), Ok(()));
        assert_eq!(verify(V1_SIG, V1_TS, V1_TS + 300), Ok(()));
        assert_eq!(verify(V1_SIG, V1_TS, V1_TS - 300), Ok(()));
    }

    #[test]
    fn rejects_timestamps_beyond_tolerance() {
        assert_eq!(
            verify(V1_SIG, V1_TS, V1_TS + 301),
            Err(SignatureError::TimestampTooOld)
        );
        assert_eq!(
            verify(V1_SIG, V1_TS, V1_TS - 301),
            Err(SignatureError::TimestampTooNew)
        );
    }

    #[test]
    fn rejects_missing_headers() {
        let s = secret();
        assert_eq!(
            s.verify(None, Some("1"), Some(V1_SIG), V1_BODY, V1_TS, 300),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            s.verify(Some(V1_ID), None, Some(V1_SIG), V1_BODY, V1_TS, 300),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            s.verify(Some(V1_ID), Some("1"), None, V1_BODY, V1_TS, 300),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            s.verify(
                Some(V1_ID),
                Some("yesterday"),
                Some(V1_SIG),
                V1_BODY,
                V1_TS,
                300
            ),
            Err(SignatureError::InvalidTimestamp)
        );
    }

    #[test]
    fn rejects_empty_truncated_and_tampered_signatures() {
        assert_eq!(verify("v1,", V1_TS, V1_TS), Err(SignatureError::NoMatch));
        assert_eq!(
            verify(&V1_SIG[..V1_SIG.len() - 4], V1_TS, V1_TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                V1_TS,
                V1_TS
            ),
            Err(SignatureError::NoMatch)
        );
        let other_body = secret().verify(
            Some(V1_ID),
            Some(&V1_TS.to_string()),
            Some(V1_SIG),
            b"{}",
            V1_TS,
            300,
        );
        assert_eq!(other_body, Err(SignatureError::NoMatch));
        let other_id = secret().verify(
            Some("msg_other"),
            Some(&V1_TS.to_string()),
            Some(V1_SIG),
            V1_BODY,
            V1_TS,
            300,
        );
        assert_eq!(other_id, Err(SignatureError::NoMatch));
    }

    #[test]
    fn accepts_when_one_of_several_signatures_matches() {
        let list = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,abc {V1_SIG}");
        assert_eq!(verify(&list, V1_TS, V1_TS), Ok(()));
        let none = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,bm9wZQ==";
        assert_eq!(verify(none, V1_TS, V1_TS), Err(SignatureError::NoMatch));
    }

    #[test]
    fn rejects_empty_secrets_and_accepts_any_padding() {
        assert_eq!(Secret::parse("").err(), Some(SignatureError::InvalidSecret));
        assert_eq!(
            Secret::parse("whsec_").err(),
            Some(SignatureError::InvalidSecret)
        );
        assert_eq!(
            Secret::parse("whsec_!!!").err(),
            Some(SignatureError::InvalidSecret)
        );
        // 3, 2 and 1 bytes need 0, 1 and 2 padding characters; unpadded forms parse too.
        for (padded, unpadded) in [("YWJj", "YWJj"), ("YWI=", "YWI"), ("YQ==", "YQ")] {
            let a = Secret::parse(padded).expect("padded parses");
            let b = Secret::parse(unpadded).expect("unpadded parses");
            assert_eq!(a.sign("m", 1, b"x"), b.sign("m", 1, b"x"));
        }
        // Without the prefix the same key signs the same way.
        let bare = Secret::parse(V1_SECRET.trim_start_matches("whsec_")).expect("parses");
        assert_eq!(bare.sign(V1_ID, V1_TS, V1_BODY), V1_SIG);
    }

    #[test]
    fn generated_secrets_round_trip_through_whsec() {
        let generated = Secret::generate();
        let reparsed = Secret::parse(&generated.to_whsec()).expect("round trip");
        let sig = generated.sign("msg_1", 10, b"body");
        assert_eq!(
            reparsed.verify(Some("msg_1"), Some("10"), Some(&sig), b"body", 10, 300),
            Ok(())
        );
        assert_ne!(Secret::generate().to_whsec(), generated.to_whsec());
    }
}
