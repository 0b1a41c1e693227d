//! The operator console at `/console`: a small front end of plain ES modules (served from the
//! binary, no CDN, no build step) over the JSON API. Signing in exchanges an API key with the
//! `manage` scope for a session cookie (HTTP-only, `SameSite=Strict`, `Secure` behind TLS); the
//! cookie then stands for that key on every API route. A request that changes anything with the
//! cookie must also send the session's CSRF token in `x-csrf-token`. Sessions end after
//! [`SESSION_TTL`], on sign-out, or when their key is revoked.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use switchyard_common::catalog::api_keys::{self, ApiKey, Scope};

use crate::AppState;
use crate::auth::digest;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// The session cookie's name over plain HTTP.
pub const COOKIE: &str = "sy_console";
/// Its name when it is `Secure`: the `__Host-` prefix makes browsers refuse it unless it was set
/// over TLS, for this host only (no `Domain`) and for the whole site (`Path=/`), so a sibling
/// subdomain or a plain-HTTP page cannot plant or shadow it.
pub const SECURE_COOKIE: &str = "__Host-sy_console";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// `GET /console`: the page; the front end routes by the URL's fragment.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX,
    )
        .into_response()
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The session cookie's token, if the request carries one.
/// Over TLS (`secure`) only the `__Host-` cookie counts: a plain one may have been planted by a
/// sibling subdomain or a plain-HTTP page.
fn cookie_token(headers: &HeaderMap, secure: bool) -> Option<&str> {
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
fn session_token<'a>(headers: &'a HeaderMap, state: &AppState) -> Option<&'a str> {
    cookie_token(headers, state.console_secure_cookie || over_tls(headers))
}

/// A live session: the key it acts as, its CSRF token and its tenant.
struct Session {
    key: Arc<ApiKey>,
    csrf: String,
    expires_at: time::OffsetDateTime,
}

/// Whether `token` has the form of a session token (32 bytes, URL-safe base64), so that garbage
/// costs no query.
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn session(state: &AppState, token: &str) -> Result<Option<Session>, ApiError> {
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
    let key = match crate::auth::resolve_digest(state, &key_hash).await {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    key: String,
}

/// Whether the request reached the proxy in front of us over TLS: `X-Forwarded-Proto: https`
/// (its first value) or `Forwarded: proto=https`.
fn over_tls(headers: &HeaderMap) -> bool {
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

fn cookie(headers: &HeaderMap, value: &str, max_age: u64, always_secure: bool) -> HeaderValue {
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

fn session_body(key: &ApiKey, csrf: &str, expires_at: time::OffsetDateTime) -> serde_json::Value {
    json!({
        "tenantId": key.tenant_id,
        "keyName": key.name,
        "projectIds": key.project_ids,
        "csrfToken": csrf,
        "expiresAt": expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    })
}

/// `POST /console/session` `{key}`: signs in with an API key that has the `manage` scope.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    let presented = body.key.trim();
    if !api_keys::looks_like_key(presented) {
        return Err(ApiError::unauthorized("that is not a Switchyard API key"));
    }
    let key_hash = digest(presented);
    let key = crate::auth::resolve_digest(&state, &key_hash).await?;
    if !key.scopes.contains(&Scope::Manage) {
        return Err(ApiError::forbidden(
            "the console needs a key with the `manage` scope",
        ));
    }
    let token = random_token();
    let csrf = random_token();
    let client = state.pool.get().await?;
    let expires_at: time::OffsetDateTime = client
        .query_one(
            "INSERT INTO console_sessions (digest, tenant_id, key_hash, csrf_token, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at",
            &[
                &digest(&token).as_slice(),
                &key.tenant_id,
                &key_hash.as_slice(),
                &csrf,
                &SESSION_TTL.as_secs_f64(),
            ],
        )
        .await?
        .get(0);
    // A session this browser already had ends: one sign-in, one session.
    if let Some(old) = session_token(&headers, &state) {
        client
            .execute(
                "DELETE FROM console_sessions WHERE digest = $1",
                &[&digest(old).as_slice()],
            )
            .await?;
    }
    let mut response = (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(session_body(&key, &csrf, expires_at)),
    )
        .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(
            &headers,
            &token,
            SESSION_TTL.as_secs(),
            state.console_secure_cookie,
        ),
    );
    Ok(response)
}

/// `GET /console/session`: who is signed in, and the CSRF token (for a page loaded again).
pub async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = match session_token(&headers, &state) {
        Some(token) => session(&state, token).await?,
        None => None,
    }
    .ok_or_else(|| ApiError::unauthorized("not signed in"))?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(session_body(
            &session.key,
            &session.csrf,
            session.expires_at,
        )),
    )
        .into_response())
}

/// `DELETE /console/session`: signs out (CSRF token required).
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = session_token(&headers, &state) {
        let client = state.pool.get().await?;
        let csrf: Option<String> = client
            .query_opt(
                "SELECT csrf_token FROM console_sessions WHERE digest = $1",
                &[&digest(token).as_slice()],
            )
            .await?
            .map(|r| r.get(0));
        if let Some(csrf) = csrf {
            let sent = headers
                .get("x-csrf-token")
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(csrf.as_bytes())) {
                return Err(ApiError::forbidden(
                    "send the console session's CSRF token in `x-csrf-token`",
                ));
            }
            client
                .execute(
                    "DELETE FROM console_sessions WHERE digest = $1",
                    &[&digest(token).as_slice()],
                )
                .await?;
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    // Both names are cleared: whichever this browser holds.
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&headers, "", 0, state.console_secure_cookie),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("sy_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> String {
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
