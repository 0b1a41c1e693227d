//! `/manage/tenants/{tenantId}/credentials`: values go in, only metadata comes out.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::credentials::{self, Credential, CredentialPatch, NewCredential};

use super::{Data, Errors, PageQuery, TenantItemPath, TenantPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

/// List credentials (metadata only).
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/credentials", tag = "Credentials",
    params(TenantPath, PageQuery),
    responses((status = 200, description = "A page of credentials", body = Paginated<Credential>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<Credential>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(credentials::list(&client, &p.tenant_id, page).await?))
}

/// Create a credential. The value is sealed with the master key and never returned.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/credentials", tag = "Credentials",
    params(TenantPath), request_body = NewCredential,
    responses((status = 201, description = "The credential's metadata", body = Data<Credential>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    JsonBody(body): JsonBody<NewCredential>,
) -> Result<(StatusCode, Json<Data<Credential>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    let created = credentials::create(&client, &state.master_key, &p.tenant_id, body).await?;
    Ok((StatusCode::CREATED, data(created)))
}

/// Get a credential's metadata.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/credentials/{id}", tag = "Credentials",
    params(TenantItemPath),
    responses((status = 200, description = "The credential's metadata", body = Data<Credential>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<Json<Data<Credential>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(credentials::get(&client, &p.tenant_id, &p.id).await?))
}

/// Update a credential; a new `value` rotates the secret.
#[utoipa::path(patch, path = "/manage/tenants/{tenantId}/credentials/{id}", tag = "Credentials",
    params(TenantItemPath), request_body = CredentialPatch,
    responses((status = 200, description = "The credential's metadata", body = Data<Credential>), Errors))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
    JsonBody(body): JsonBody<CredentialPatch>,
) -> Result<Json<Data<Credential>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        credentials::update(&client, &state.master_key, &p.tenant_id, &p.id, body).await?,
    ))
}

/// Delete a credential; 409 while an agent or trigger names it.
#[utoipa::path(delete, path = "/manage/tenants/{tenantId}/credentials/{id}", tag = "Credentials",
    params(TenantItemPath), responses((status = 204, description = "Deleted"), Errors))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<StatusCode, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    credentials::delete(&client, &p.tenant_id, &p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
