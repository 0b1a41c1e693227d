//! Verifying inbound webhooks with a trigger's `signatureVerification` (Inkeep's DSL): where the
//! signature is, which parts of the request were signed and how they join, the HMAC algorithm and
//! the encoding. Configuration alone covers GitHub, Stripe, Slack and Standard Webhooks senders
//! (see the tests). Comparisons are constant-time.

use base64::prelude::*;
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq as _;
use unicode_normalization::UnicodeNormalization as _;

use crate::catalog::triggers::{
    ComponentSource, HmacAlgorithm, SecretEncoding, SignatureEncoding, SignatureSource,
    SignatureVerification,
};

/// The parts of a request a signature can cover. Header names are lowercase.
pub struct Request<'a> {
    pub headers: &'a [(String, String)],
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request was refused; the text is safe to show the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the signature is missing")]
    MissingSignature,
    #[error("the signed component `{0}` is missing")]
    MissingComponent(String),
    #[error("the body is empty")]
    EmptyBody,
    #[error("the timestamp is outside the tolerance")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

fn capture<'a>(value: &'a str, regex: Option<&regex::Regex>) -> Option<&'a str> {
    match regex {
        None => Some(value),
        Some(re) => {
            let caps = re.captures(value)?;
            caps.get(1).or_else(|| caps.get(0)).map(|m| m.as_str())
        }
    }
}

/// Compiles a regex of a trigger's configuration, with the same size limit as the check on write.
fn compile_regex(source: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

/// A trigger's `signatureVerification` with its regexes compiled: built once per trigger
/// version, then used for every request.
#[derive(Debug, Clone)]
pub struct Verifier {
    sv: SignatureVerification,
    signature_regex: Option<regex::Regex>,
    /// One per signed component, in order.
    component_regexes: Vec<Option<regex::Regex>>,
}

impl Verifier {
    /// Compiles `sv`; an error names a regex that does not compile (checked on write already).
    pub fn compile(sv: &SignatureVerification) -> Result<Self, String> {
        let signature_regex = sv
            .signature
            .regex
            .as_deref()
            .map(compile_regex)
            .transpose()?;
        let component_regexes = sv
            .signed_components
            .iter()
            .map(|c| c.regex.as_deref().map(compile_regex).transpose())
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sv: sv.clone(),
            signature_regex,
            component_regexes,
        })
    }

    /// Checks `req` with `secret`, at Unix time `now`.
    pub fn verify(&self, secret: &str, req: &Request<'_>, now: i64) -> Result<(), Refused> {
        verify_with(self, secret, req, now)
    }
}

/// Every candidate signature in the request (a header may carry several, e.g. during rotation).
fn signatures(v: &Verifier, req: &Request<'_>) -> Vec<String> {
    let loc = &v.sv.signature;
    let raw = match loc.source {
        SignatureSource::Header => req.header(&loc.key).map(str::to_owned),
        SignatureSource::Query => req.query(&loc.key).map(str::to_owned),
        SignatureSource::Body => serde_json::from_slice::<serde_json::Value>(req.body)
            .ok()
            .and_then(|b| {
                b.pointer(&loc.key)
                    .and_then(|v| v.as_str().map(str::to_owned))
            }),
    };
    let Some(raw) = raw else {
        return Vec::new();
    };
    let raw = match &loc.prefix {
        Some(prefix) => match raw.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_owned(),
            None => return Vec::new(),
        },
        None => raw,
    };
    match &v.signature_regex {
        None => vec![raw],
        Some(re) => re
            .captures_iter(&raw)
            .filter_map(|c| c.get(1).or_else(|| c.get(0)).map(|m| m.as_str().to_owned()))
            .collect(),
    }
}

fn mac(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        match <M as KeyInit>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(message);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    match algorithm {
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, message),
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, message),
    }
}

fn decode(encoding: SignatureEncoding, text: &str) -> Option<Vec<u8>> {
    match encoding {
        SignatureEncoding::Hex => {
            let text = text.trim();
            if !text.len().is_multiple_of(2) {
                return None;
            }
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        }
        SignatureEncoding::Base64 => BASE64_STANDARD.decode(text.trim()).ok(),
    }
}

/// The HMAC key a secret stands for: its text, or (`base64`, Standard Webhooks) the bytes it
/// encodes after an optional `whsec_` prefix.
pub fn key_bytes(secret: &str, encoding: SecretEncoding) -> Vec<u8> {
    match encoding {
        SecretEncoding::Utf8 => secret.as_bytes().to_vec(),
        SecretEncoding::Base64 => {
            let b = secret.strip_prefix("whsec_").unwrap_or(secret);
            BASE64_STANDARD
                .decode(b)
                .unwrap_or_else(|_| secret.as_bytes().to_vec())
        }
    }
}

/// Checks `req` against `sv` with `secret`, at Unix time `now`, compiling `sv` first (for
/// one-off checks; a server keeps a [`Verifier`]). A regex that does not compile finds nothing.
pub fn verify(
    sv: &SignatureVerification,
    secret: &str,
    req: &Request<'_>,
    now: i64,
) -> Result<(), Refused> {
    let verifier = Verifier::compile(sv).map_err(|_| Refused::MissingSignature)?;
    verifier.verify(secret, req, now)
}

fn verify_with(
    verifier: &Verifier,
    secret: &str,
    req: &Request<'_>,
    now: i64,
) -> Result<(), Refused> {
    let sv = &verifier.sv;
    let validation = sv.validation.clone().unwrap_or_default();
    if req.body.is_empty() && !validation.allow_empty_body {
        return Err(Refused::EmptyBody);
    }
    // The body is signed as the bytes that arrived, unless it is to be NFC-normalised first.
    let normalized;
    let body: &[u8] = if validation.normalize_unicode {
        normalized = String::from_utf8_lossy(req.body).nfc().collect::<String>();
        normalized.as_bytes()
    } else {
        req.body
    };
    let body_text = String::from_utf8_lossy(body);
    let tolerance = i64::from(validation.tolerance_seconds.unwrap_or(300));
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for (i, c) in sv.signed_components.iter().enumerate() {
        if c.source == ComponentSource::Body && c.regex.is_none() && !c.timestamp {
            parts.push(body.to_vec());
            continue;
        }
        let raw = match c.source {
            ComponentSource::Header => c.key.as_deref().and_then(|k| req.header(k)),
            ComponentSource::Query => c.key.as_deref().and_then(|k| req.query(k)),
            ComponentSource::Body => Some(body_text.as_ref()),
            ComponentSource::Literal => c.value.as_deref(),
        };
        let regex = verifier.component_regexes.get(i).and_then(Option::as_ref);
        let value = raw.and_then(|v| capture(v, regex));
        let Some(value) = value else {
            if c.required {
                let name = c.key.clone().unwrap_or_else(|| format!("#{i}"));
                return Err(Refused::MissingComponent(name));
            }
            continue;
        };
        if c.timestamp {
            let ts: i64 = value.trim().parse().map_err(|_| Refused::Stale)?;
            if now.abs_diff(ts) > tolerance.unsigned_abs() {
                return Err(Refused::Stale);
            }
        }
        parts.push(value.as_bytes().to_vec());
    }
    let message = if sv.signed_components.is_empty() {
        body.to_vec()
    } else {
        let separator = sv
            .component_join
            .as_ref()
            .map_or("", |j| j.separator.as_str());
        parts.join(separator.as_bytes())
    };
    let key = key_bytes(secret, sv.secret_encoding.unwrap_or(SecretEncoding::Utf8));
    let expected = mac(sv.algorithm, &key, &message);
    let candidates = signatures(verifier, req);
    if candidates.is_empty() {
        return Err(Refused::MissingSignature);
    }
    let matched = candidates.iter().any(|candidate| {
        decode(sv.encoding, candidate).is_some_and(|given| bool::from(given.ct_eq(&expected)))
    });
    if matched {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

/// Lowercase hex of `bytes` (tests and tools sign with it).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC of `message` under the text of `secret` with `algorithm` (for senders in tests and tools).
pub fn sign(algorithm: HmacAlgorithm, secret: &str, message: &[u8]) -> Vec<u8> {
    mac(algorithm, secret.as_bytes(), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sv(v: serde_json::Value) -> SignatureVerification {
        serde_json::from_value(v).expect("parses")
    }

    fn headers(pairs: &[(&str, String)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    }

    const BODY: &[u8] = br#"{"action":"opened","number":1}"#;

    #[test]
    fn github_sha256_header() {
        let config = sv(json!({"algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "header", "key": "X-Hub-Signature-256", "prefix": "sha256="},
            "signedComponents": [{"source": "body"}]}));
        let sig = format!(
            "sha256={}",
            hex(&sign(
                HmacAlgorithm::Sha256,
                "It's a Secret to Everybody",
                BODY
            ))
        );
        let h = headers(&[("X-Hub-Signature-256", sig)]);
        let req = Request {
            headers: &h,
            query: &[],
            body: BODY,
        };
        assert_eq!(
            verify(&config, "It's a Secret to Everybody", &req, 0),
            Ok(())
        );
        assert_eq!(verify(&config, "wrong", &req, 0), Err(Refused::Mismatch));
        let tampered = Request {
            headers: &h,
            query: &[],
            body: br#"{"action":"closed","number":1}"#,
        };
        assert_eq!(
            verify(&config, "It's a Secret to Everybody", &tampered, 0),
            Err(Refused::Mismatch)
        );
    }

    #[test]
    fn githubs_published_test_vector() {
        // docs.github.com: "Hello, World!" with secret "It's a Secret to Everybody".
        let expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            hex(&sign(
                HmacAlgorithm::Sha256,
                "It's a Secret to Everybody",
                b"Hello, World!"
            )),
            expected
        );
    }

    #[test]
    fn stripe_timestamped_header() {
        let config = sv(json!({"algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "header", "key": "Stripe-Signature", "regex": "v1=([0-9a-f]+)"},
            "signedComponents": [
                {"source": "header", "key": "Stripe-Signature", "regex": "t=(\\d+)", "timestamp": true},
                {"source": "body"}],
            "componentJoin": {"strategy": "concatenate", "separator": "."}}));
        let t = 1_700_000_000_i64;
        let signed = format!("{t}.{}", std::str::from_utf8(BODY).expect("utf8"));
        let sig = hex(&sign(
            HmacAlgorithm::Sha256,
            "whsec_stripe_like_secret",
            signed.as_bytes(),
        ));
        let h = headers(&[("Stripe-Signature", format!("t={t},v1={sig},v0=deadbeef"))]);
        let req = Request {
            headers: &h,
            query: &[],
            body: BODY,
        };
        // Stripe secrets start with whsec_ too, but Stripe keys the HMAC with the text.
        assert_eq!(
            verify(&config, "whsec_stripe_like_secret", &req, t + 10),
            Ok(())
        );
        assert_eq!(
            verify(&config, "whsec_stripe_like_secret", &req, t + 301),
            Err(Refused::Stale)
        );
    }

    #[test]
    fn slack_v0_basestring() {
        let config = sv(json!({"algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "header", "key": "X-Slack-Signature", "prefix": "v0="},
            "signedComponents": [
                {"source": "literal", "value": "v0"},
                {"source": "header", "key": "X-Slack-Request-Timestamp", "timestamp": true},
                {"source": "body"}],
            "componentJoin": {"strategy": "concatenate", "separator": ":"}}));
        let ts = 1_531_420_618_i64;
        let base = format!("v0:{ts}:{}", std::str::from_utf8(BODY).expect("utf8"));
        let sig = format!(
            "v0={}",
            hex(&sign(
                HmacAlgorithm::Sha256,
                "8f742231b10e8888abcd99yyyzzz85a5",
                base.as_bytes()
            ))
        );
        let h = headers(&[
            ("X-Slack-Signature", sig),
            ("X-Slack-Request-Timestamp", ts.to_string()),
        ]);
        let req = Request {
            headers: &h,
            query: &[],
            body: BODY,
        };
        assert_eq!(
            verify(&config, "8f742231b10e8888abcd99yyyzzz85a5", &req, ts),
            Ok(())
        );
        let no_ts = headers(&[("X-Slack-Signature", "v0=00".into())]);
        let req = Request {
            headers: &no_ts,
            query: &[],
            body: BODY,
        };
        assert_eq!(
            verify(&config, "8f742231b10e8888abcd99yyyzzz85a5", &req, ts),
            Err(Refused::MissingComponent(
                "X-Slack-Request-Timestamp".into()
            ))
        );
    }

    #[test]
    fn standard_webhooks_with_the_spec_secret() {
        let config = sv(json!({"algorithm": "sha256", "encoding": "base64",
            "signature": {"source": "header", "key": "webhook-signature", "regex": "v1,([A-Za-z0-9+/=]+)"},
            "signedComponents": [
                {"source": "header", "key": "webhook-id"},
                {"source": "header", "key": "webhook-timestamp", "timestamp": true},
                {"source": "body"}],
            "componentJoin": {"strategy": "concatenate", "separator": "."},
            "secretEncoding": "base64"}));
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = crate::signing::Secret::parse(secret).expect("secret");
        let body = br#"{"test": 2432232314}"#;
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            ("webhook-timestamp", "1614265330".into()),
            ("webhook-signature", format!("v1,bm9wZQ== {signature}")),
        ]);
        let req = Request {
            headers: &h,
            query: &[],
            body,
        };
        assert_eq!(
            verify(&config, secret, &req, 1614265330),
            Ok(()),
            "any listed signature may match"
        );
    }

    #[test]
    fn empty_bodies_and_missing_signatures_are_refused() {
        let strict = sv(json!({"algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "query", "key": "sig"}, "validation": {"allowEmptyBody": false}}));
        let req = Request {
            headers: &[],
            query: &[],
            body: b"",
        };
        assert_eq!(verify(&strict, "s", &req, 0), Err(Refused::EmptyBody));
        // By default an empty body is allowed, and its signature checked like any other.
        let config = sv(json!({"algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "query", "key": "sig"}}));
        assert_eq!(
            verify(&config, "s", &req, 0),
            Err(Refused::MissingSignature)
        );
        let q = vec![(
            "sig".to_owned(),
            hex(&sign(HmacAlgorithm::Sha256, "s", b"")),
        )];
        let signed_empty = Request {
            headers: &[],
            query: &q,
            body: b"",
        };
        assert_eq!(verify(&config, "s", &signed_empty, 0), Ok(()));
        let req = Request {
            headers: &[],
            query: &[],
            body: b"{}",
        };
        assert_eq!(
            verify(&config, "s", &req, 0),
            Err(Refused::MissingSignature)
        );
        let q = vec![(
            "sig".to_owned(),
            hex(&sign(HmacAlgorithm::Sha256, "s", b"{}")),
        )];
        let req = Request {
            headers: &[],
            query: &q,
            body: b"{}",
        };
        assert_eq!(verify(&config, "s", &req, 0), Ok(()));
    }
}
