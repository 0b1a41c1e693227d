//! Authentication and authorisation.
//!
//! A request presents either the admin token (from the environment; it manages tenants) or an API
//! key, as `x-api-key`, `Authorization: Bearer <key>` or a raw `Authorization` value (the seeds
//! use all three). Keys are looked up by SHA-256 digest and cached. Revocation reaches every
//! replica through the control exchange: any control message empties the cache, and while the
//! subscription is down the cache is not used at all, so a revoked key fails everywhere within
//! the broker's delivery time. Last use is recorded in memory and written in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use switchyard_common::amqp::{Broker, ControlEvent};
use switchyard_common::catalog::api_keys::{self, ApiKey, Scope};
use switchyard_common::control::Control;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::cache::ControlledCache;
use crate::error::ApiError;

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
            if let Some(key) = crate::console::principal_of(parts, state).await? {
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
        let key = resolve(&state.auth.keys, &state.pool, &hash).await?;
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

/// API keys by digest.
pub type KeyCache = ControlledCache<[u8; 32], ApiKey>;

/// The active key with this digest: from the cache, else from Postgres (then cached).
/// The live (unrevoked) key whose SHA-256 is `hash`, through the cache.
pub(crate) async fn resolve_digest(
    state: &AppState,
    hash: &[u8; 32],
) -> Result<Arc<ApiKey>, ApiError> {
    resolve(&state.auth.keys, &state.pool, hash).await
}

async fn resolve(keys: &KeyCache, pool: &Pool, hash: &[u8; 32]) -> Result<Arc<ApiKey>, ApiError> {
    if let Some(key) = keys.get(hash) {
        return Ok(key);
    }
    let epoch = keys.epoch();
    let client = pool.get().await.map_err(ApiError::from_pool)?;
    let key = api_keys::authenticate(&client, hash)
        .await
        .map_err(ApiError::from_pg)?
        .map(Arc::new)
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid or was revoked"))?;
    keys.fill(*hash, key.clone(), epoch);
    Ok(key)
}

/// Follows the control exchange until `shutdown`, switching `caches` on and off with the
/// subscription and emptying them on every message; a revoked key's (or deleted tenant's) open
/// streams and waits end.
pub async fn follow_control(
    broker: Broker,
    shutdown: CancellationToken,
    keys: Arc<KeyCache>,
    triggers: Arc<crate::routes::invoke::TriggerCache>,
    streams: Arc<crate::streams::Streams>,
) {
    broker
        .subscribe_control(shutdown, |event| match event {
            ControlEvent::Subscribed => {
                keys.set_live(true);
                triggers.set_live(true);
            }
            ControlEvent::Lost => {
                keys.set_live(false);
                triggers.set_live(false);
            }
            // A cancel is for workers; every other message is a catalog change (one this
            // version cannot read too).
            ControlEvent::Message(body) => match Control::decode(body) {
                Some(Control::RunCancel { .. }) => {}
                message => {
                    keys.invalidate();
                    triggers.invalidate();
                    // A revoked key's streams and waits end here too.
                    if let Some(message) = message {
                        crate::streams::apply_control(&streams, &message);
                    }
                }
            },
        })
        .await;
}

/// The control message sent when a key is revoked.
pub fn revoked_message(key: &ApiKey) -> Control {
    Control::ApiKeyRevoked {
        tenant_id: key.tenant_id.clone(),
        key_id: key.id,
    }
}

/// When each key was last used, held in memory and written in batches.
#[derive(Default)]
pub struct Usage {
    pending: Mutex<HashMap<Uuid, OffsetDateTime>>,
}

impl Usage {
    pub fn touch(&self, key: Uuid) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(key, OffsetDateTime::now_utc());
        }
    }

    async fn flush(&self, pool: &Pool) {
        let batch: Vec<(Uuid, OffsetDateTime)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        let written = match pool.get().await {
            Ok(client) => api_keys::record_use(&client, &batch).await.is_ok(),
            Err(_) => false,
        };
        if !written && let Ok(mut pending) = self.pending.lock() {
            // Keep them for the next round; a newer use wins.
            for (id, at) in batch {
                let slot = pending.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }

    /// Writes the recorded uses every `every`, and once more at `shutdown`.
    pub async fn flush_every(
        self: Arc<Self>,
        pool: Pool,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            self.flush(&pool).await;
        }
        self.flush(&pool).await;
    }
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
