//! The operator console at `/console`: a small front end of plain ES modules (served from the
//! binary, no CDN, no build step) over the JSON API. Signing in exchanges an API key with the
//! `manage` scope for a session cookie (HTTP-only, `SameSite=Strict`, `Secure` behind TLS); the
//! cookie then stands for that key on every API route. A request that changes anything with the
//! cookie must also send the session's CSRF token in `x-csrf-token`. Sessions end after
//! `SESSION_TTL`, on sign-out, or when their key is revoked (`auth::sessions`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use switchyard_common::catalog::api_keys::{self, ApiKey, Scope};

use crate::AppState;
use crate::auth::digest;
use crate::auth::sessions::{SESSION_TTL, cookie, random_token, session, session_token};
use crate::error::ApiError;
use crate::extract::JsonBody;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    key: String,
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
    let key = crate::auth::keys::resolve_digest(&state, &key_hash).await?;
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
