//! `/manage/tenants/{tenantId}/api-keys`: the secret is shown once, at creation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::api_keys::{self, ApiKey, CreatedApiKey, NewApiKey};

use super::{Data, Errors, PageQuery, TenantItemPath, TenantPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::auth::keys::revoked_message;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

/// List API keys: name, prefix, scopes, projects, creation, last use and revocation.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/api-keys", tag = "API keys",
    params(TenantPath, PageQuery),
    responses((status = 200, description = "A page of keys", body = Paginated<ApiKey>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<ApiKey>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(api_keys::list(&client, &p.tenant_id, page).await?))
}

/// Create an API key. The answer holds the secret (`key`) this once. A tenant holds at most 10
/// active keys unless configured otherwise; one more is a 409.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/api-keys", tag = "API keys",
    params(TenantPath), request_body = NewApiKey,
    responses((status = 201, description = "The key, with its secret", body = Data<CreatedApiKey>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    JsonBody(body): JsonBody<NewApiKey>,
) -> Result<(StatusCode, Json<Data<CreatedApiKey>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    principal.may_grant(body.scopes.as_deref().unwrap_or(&api_keys::DEFAULT_SCOPES))?;
    let mut client = state.pool.get().await?;
    let created = api_keys::create(&mut client, &p.tenant_id, body, state.max_api_keys).await?;
    Ok((StatusCode::CREATED, data(created)))
}

/// Get an API key (never its secret).
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/api-keys/{id}", tag = "API keys",
    params(TenantItemPath),
    responses((status = 200, description = "The key", body = Data<ApiKey>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<Json<Data<ApiKey>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(api_keys::get(&client, &p.tenant_id, &p.id).await?))
}

/// Revoke an API key. Immediate: every ingress replica drops it from its cache. A 503 means the
/// key is revoked but the other replicas could not be told yet; retry (revoking is idempotent).
#[utoipa::path(delete, path = "/manage/tenants/{tenantId}/api-keys/{id}", tag = "API keys",
    params(TenantItemPath), responses((status = 204, description = "Revoked"), Errors))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<StatusCode, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    let key = api_keys::revoke(&client, &p.tenant_id, &p.id).await?;
    state.announce_change(&revoked_message(&key)).await?;
    Ok(StatusCode::NO_CONTENT)
}
