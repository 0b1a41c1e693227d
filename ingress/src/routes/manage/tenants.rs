//! `/manage/tenants`: admin token only, except that a tenant's own unrestricted `manage` key may
//! read it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::tenants::{self, NewTenant, Tenant, TenantPatch};

use super::{Data, Errors, PageQuery, TenantPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

/// List tenants (admin).
#[utoipa::path(get, path = "/manage/tenants", tag = "Tenants", params(PageQuery),
    responses((status = 200, description = "A page of tenants", body = Paginated<Tenant>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<Tenant>>, ApiError> {
    principal.admin()?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(tenants::list(&client, page).await?))
}

/// Create a tenant (admin).
#[utoipa::path(post, path = "/manage/tenants", tag = "Tenants", request_body = NewTenant,
    responses((status = 201, description = "The tenant", body = Data<Tenant>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<Data<Tenant>>), ApiError> {
    principal.admin()?;
    let client = state.pool.get().await?;
    Ok((
        StatusCode::CREATED,
        data(tenants::create(&client, &state.master_key, body).await?),
    ))
}

/// Get a tenant.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}", tag = "Tenants", params(TenantPath),
    responses((status = 200, description = "The tenant", body = Data<Tenant>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
) -> Result<Json<Data<Tenant>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(tenants::get(&client, &p.tenant_id).await?))
}

/// Update a tenant (admin).
#[utoipa::path(patch, path = "/manage/tenants/{tenantId}", tag = "Tenants", params(TenantPath),
    request_body = TenantPatch,
    responses((status = 200, description = "The tenant", body = Data<Tenant>), Errors))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    JsonBody(body): JsonBody<TenantPatch>,
) -> Result<Json<Data<Tenant>>, ApiError> {
    principal.admin_of(&p.tenant_id)?;
    let client = state.pool.get().await?;
    let tenant = tenants::update(&client, &p.tenant_id, body).await?;
    // Cached keys carry the tenant's rate limit.
    state
        .announce_change(&switchyard_common::control::Control::TenantUpdated)
        .await?;
    Ok(data(tenant))
}

/// Delete a tenant and everything it owns (admin).
#[utoipa::path(delete, path = "/manage/tenants/{tenantId}", tag = "Tenants", params(TenantPath),
    responses((status = 204, description = "Deleted"), Errors))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
) -> Result<StatusCode, ApiError> {
    principal.admin_of(&p.tenant_id)?;
    let client = state.pool.get().await?;
    tenants::delete(&client, &p.tenant_id).await?;
    // Its keys are gone: drop them from every replica's cache.
    let message = switchyard_common::control::Control::TenantDeleted {
        tenant_id: p.tenant_id.clone(),
    };
    state.announce_change(&message).await?;
    Ok(StatusCode::NO_CONTENT)
}
