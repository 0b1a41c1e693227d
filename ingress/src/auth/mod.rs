//! Authentication and authorisation.
//!
//! A request presents either the admin token (from the environment; it manages tenants) or an API
//! key, as `x-api-key`, `Authorization: Bearer <key>` or a raw `Authorization` value (the seeds
//! use all three). Keys are looked up by SHA-256 digest and cached. Revocation reaches every
//! replica through the control exchange: any control message empties the cache, and while the
//! subscription is down the cache is not used at all, so a revoked key fails everywhere within
//! the broker's delivery time. Last use is recorded in memory and written in batches.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use switchyard_common::catalog::api_keys::{self, ApiKey, Scope};

use crate::AppState;
use crate::error::ApiError;

pub mod keys;
pub mod sessions;

use self::keys::{KeyCache, Usage};

/// SHA-256 of a token, so comparisons are constant-time over equal lengths.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The operator's admin token: every tenant, tenant management, no runs of its own.
    Admin,
    /// An API key of one tenant.
    Key(Arc<ApiKey>),
}

/// What a caller may touch inside one tenant's management API.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None`: every project of the tenant.
    projects: Option<Vec<String>>,
}

impl Access {
    /// The projects this caller is limited to, if any.
    pub fn projects(&self) -> Option<&[String]> {
        self.projects.as_deref()
    }

    /// A project outside the caller's reach does not exist for it: 404.
    pub fn project(&self, project_id: &str) -> Result<(), ApiError> {
        match &self.projects {
            Some(allowed) if !allowed.iter().any(|p| p == project_id) => Err(ApiError::not_found(
                format!("project `{project_id}` was not found"),
            )),
            _ => Ok(()),
        }
    }

    /// Tenant-wide resources (API keys, credentials, new projects) need an unrestricted key.
    pub fn tenant_wide(&self) -> Result<(), ApiError> {
        if self.projects.is_some() {
            return Err(ApiError::forbidden(
                "this API key is limited to some projects; tenant-wide resources need an unrestricted key",
            ));
        }
        Ok(())
    }
}

impl Principal {
    /// The caller may manage `tenant_id`. Another tenant's key gets 404, as if it did not exist;
    /// a key of this tenant without the `manage` scope gets 403.
    pub fn manage(&self, tenant_id: &str) -> Result<Access, ApiError> {
        match self {
            Self::Admin => Ok(Access { projects: None }),
            Self::Key(key) if key.tenant_id != tenant_id => Err(ApiError::not_found(format!(
                "tenant `{tenant_id}` was not found"
            ))),
            Self::Key(key) if !key.scopes.contains(&Scope::Manage) => {
                Err(ApiError::forbidden("this API key lacks the `manage` scope"))
            }
            Self::Key(key) => Ok(Access {
                projects: key.project_ids.clone(),
            }),
        }
    }

    /// Only the admin token may change or delete `tenant_id`; another tenant's key gets 404, as
    /// everywhere, and the tenant's own key 403.
    pub fn admin_of(&self, tenant_id: &str) -> Result<(), ApiError> {
        match self {
            Self::Key(key) if key.tenant_id != tenant_id => Err(ApiError::not_found(format!(
                "tenant `{tenant_id}` was not found"
            ))),
            _ => self.admin(),
        }
    }

    /// Only the admin token may do this (create and list tenants).
    pub fn admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            Self::Key(_) => Err(ApiError::forbidden(
                "only the admin token (SWITCHYARD_ADMIN_TOKEN) may manage tenants",
            )),
        }
    }

    /// Whether the caller may hand out `scopes` (a key cannot mint a key stronger than itself).
    pub fn may_grant(&self, scopes: &[Scope]) -> Result<(), ApiError> {
        match self {
            Self::Key(key) if !scopes.iter().all(|s| key.scopes.contains(s)) => Err(
                ApiError::forbidden("a key can only create keys with scopes it holds itself"),
            ),
            _ => Ok(()),
        }
    }

    /// The API key's id (a console session's key's), or `None` for the admin token.
    pub fn key_id(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Admin => None,
            Self::Key(key) => Some(key.id),
        }
    }

    /// Whether the caller may see where a run's result is delivered (its `webhookUrl`, often a
    /// Slack hook or a URL with a token): the admin and keys with the `manage` scope, who may read
    /// the triggers those URLs come from anyway.
    pub fn sees_destinations(&self) -> bool {
        match self {
            Self::Admin => true,
            Self::Key(key) => key.scopes.contains(&Scope::Manage),
        }
    }

    /// The API key, holding `scope`, for the runs and trigger APIs.
    pub fn key_with(&self, scope: Scope) -> Result<&ApiKey, ApiError> {
        match self {
            Self::Admin => Err(ApiError::forbidden(
                "the admin token acts for no tenant; use an API key",
            )),
            Self::Key(key) if !key.scopes.contains(&scope) => Err(ApiError::forbidden(format!(
                "this API key lacks the `{}` scope",
                scope.as_str()
            ))),
            Self::Key(key) => Ok(key),
        }
    }
}

/// The credential a request presents, from `x-api-key` or `Authorization`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let raw = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        _ => Some(raw),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(presented) = presented(&parts.headers).filter(|p| !p.is_empty()) else {
            // The console's session cookie stands for the key it was opened with.
            if let Some(key) = sessions::principal_of(parts, state).await? {
                state.auth.usage.touch(key.id);
                return Ok(Self::Key(key));
            }
            return Err(ApiError::unauthorized(
                "send an API key as `x-api-key: <key>` or `Authorization: Bearer <key>`",
            ));
        };
        let hash = digest(presented);
        if let Some(admin) = &state.auth.admin_digest
            && bool::from(hash.ct_eq(admin))
        {
            return Ok(Self::Admin);
        }
        if !api_keys::looks_like_key(presented) {
            return Err(ApiError::unauthorized("the API key is not valid"));
        }
        let key = keys::resolve(&state.auth.keys, &state.pool, &hash).await?;
        state.auth.usage.touch(key.id);
        Ok(Self::Key(key))
    }
}

/// Everything authentication shares across requests.
pub struct Auth {
    pub admin_digest: Option<[u8; 32]>,
    pub keys: Arc<KeyCache>,
    pub usage: Arc<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid"));
        }
        h
    }

    #[test]
    fn keys_are_read_from_all_three_places() {
        assert_eq!(presented(&headers(&[("x-api-key", "sy_a")])), Some("sy_a"));
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer sy_b")])),
            Some("sy_b")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "bearer  sy_c ")])),
            Some("sy_c")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "sy_d")])),
            Some("sy_d")
        );
        assert_eq!(presented(&headers(&[])), None);
    }
}
