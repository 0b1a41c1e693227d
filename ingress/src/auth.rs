//! Authentication. For now one static bearer token from the environment acts for the `default`
//! tenant; API keys replace it with the management API.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::error::ApiError;

/// The tenant the static token acts for.
pub const STATIC_TOKEN_TENANT: &str = "default";

/// The authenticated tenant of a request.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// SHA-256 of a token, so comparisons are constant-time over equal lengths.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <token>`"))?;
        if bool::from(digest(presented).ct_eq(&state.token_digest)) {
            Ok(Self(STATIC_TOKEN_TENANT.to_owned()))
        } else {
            Err(ApiError::unauthorized("the token is not valid"))
        }
    }
}
