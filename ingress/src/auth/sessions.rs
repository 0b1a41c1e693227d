//! Console sessions: a random token in an HTTP-only cookie (`__Host-` prefixed when `Secure`),
//! found by its SHA-256, that stands for the API key it was opened with. A request that may
//! change something must also carry the session's CSRF token. Revoking the key ends it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use switchyard_common::catalog::api_keys::ApiKey;

use crate::AppState;
use crate::auth::digest;
use crate::error::ApiError;

/// The session cookie's name over plain HTTP.
pub const COOKIE: &str = "sy_console";
/// Its name when it is `Secure`: the `__Host-` prefix makes browsers refuse it unless it was set
/// over TLS, for this host only (no `Domain`) and for the whole site (`Path=/`), so a sibling
/// subdomain or a plain-HTTP page cannot plant or shadow it.
pub const SECURE_COOKIE: &str = "__Host-sy_console";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's token, if the request carries one.
/// Over TLS (`secure`) only the `__Host-` cookie counts: a plain one may have been planted by a
/// sibling subdomain or a plain-HTTP page.
pub(crate) fn cookie_token(headers: &HeaderMap, secure: bool) -> Option<&str> {
    let named = |wanted: &str| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| value)
            .filter(|v| !v.is_empty())
    };
    match named(SECURE_COOKIE) {
        Some(token) => Some(token),
        None if secure => None,
        None => named(COOKIE),
    }
}

/// The session token of a request, as [`cookie_token`] reads it for this deployment.
pub(crate) fn session_token<'a>(headers: &'a HeaderMap, state: &AppState) -> Option<&'a str> {
    cookie_token(headers, state.console_secure_cookie || over_tls(headers))
}

/// A live session: the key it acts as, its CSRF token and its tenant.
pub(crate) struct Session {
    pub(crate) key: Arc<ApiKey>,
    pub(crate) csrf: String,
    pub(crate) expires_at: time::OffsetDateTime,
}

/// Whether `token` has the form of a session token (32 bytes, URL-safe base64), so that garbage
/// costs no query.
pub(crate) fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) async fn session(state: &AppState, token: &str) -> Result<Option<Session>, ApiError> {
    if !well_formed(token) {
        return Ok(None);
    }
    // The connection goes back before the key is resolved, which may need one of its own.
    let row = {
        let client = state.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT key_hash, csrf_token, expires_at FROM console_sessions \
                 WHERE digest = $1 AND expires_at > now()",
            )
            .await?;
        client
            .query_opt(&stmt, &[&digest(token).as_slice()])
            .await?
    };
    let Some(row) = row else { return Ok(None) };
    let key_hash: Vec<u8> = row.get(0);
    let Ok(key_hash) = <[u8; 32]>::try_from(key_hash.as_slice()) else {
        return Ok(None);
    };
    // Through the key cache: a revoked key ends its sessions too. Only "not valid or revoked"
    // ends the session; a database that does not answer is a 503, as anywhere.
    let key = match crate::auth::keys::resolve_digest(state, &key_hash).await {
        Ok(key) => key,
        Err(err) if err.code() == switchyard_common::problem::ErrorCode::Unauthorized => {
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    Ok(Some(Session {
        key,
        csrf: row.get(1),
        expires_at: row.get(2),
    }))
}

/// The API key a request's session cookie stands for, when it sent no key itself. A request that
/// may change something must carry the session's CSRF token.
pub(crate) async fn principal_of(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<Arc<ApiKey>>, ApiError> {
    let Some(token) = session_token(&parts.headers, state) else {
        return Ok(None);
    };
    let Some(session) = session(state, token).await? else {
        return Err(ApiError::unauthorized(
            "the console session has ended; sign in again",
        ));
    };
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let sent = parts
        .headers
        .get("x-csrf-token")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !safe && !bool::from(sent.ct_eq(session.csrf.as_bytes())) {
        return Err(ApiError::forbidden(
            "send the console session's CSRF token in `x-csrf-token`",
        ));
    }
    Ok(Some(session.key))
}

/// Whether the request reached the proxy in front of us over TLS: `X-Forwarded-Proto: https`
/// (its first value) or `Forwarded: proto=https`.
pub(crate) fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(k, v)| {
            k.eq_ignore_ascii_case("proto") && v.trim_matches('"').eq_ignore_ascii_case("https")
        });
    forwarded_proto || forwarded
}

pub(crate) fn cookie(
    headers: &HeaderMap,
    value: &str,
    max_age: u64,
    always_secure: bool,
) -> HeaderValue {
    let (name, secure) = if always_secure || over_tls(headers) {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// 32 random bytes, URL-safe base64.
pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Deletes expired sessions.
pub async fn purge_expired(
    client: &deadpool_postgres::Client,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM console_sessions WHERE expires_at <= now()",
            &[],
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sy_console=tok123; b=2"),
        );
        assert_eq!(cookie_token(&headers, false), Some("tok123"));
        assert_eq!(
            cookie_token(&headers, true),
            None,
            "over TLS a plain cookie does not count"
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("sy_console="));
        assert_eq!(cookie_token(&headers, false), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("sy_console=planted; __Host-sy_console=tok456"),
        );
        assert_eq!(cookie_token(&headers, false), Some("tok456"));
        assert_eq!(cookie_token(&headers, true), Some("tok456"));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let plain = cookie(&HeaderMap::new(), "t", 60, false);
        let plain = plain.to_str().expect("ascii");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let mut tls = HeaderMap::new();
        tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let secure = |headers: &HeaderMap, always: bool| {
            cookie(headers, "t", 60, always)
                .to_str()
                .expect("ascii")
                .ends_with("; Secure")
        };
        assert!(secure(&tls, false));
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(secure(&forwarded, false));
        assert!(secure(&HeaderMap::new(), true));
        assert!(plain.starts_with("sy_console="));
        let prefixed = cookie(&HeaderMap::new(), "t", 60, true);
        let prefixed = prefixed.to_str().expect("ascii");
        assert!(prefixed.starts_with("__Host-sy_console=t; Path=/;"));
        assert!(!prefixed.contains("Domain"));
        assert!(!well_formed("short") && well_formed(&random_token()));
    }
}
