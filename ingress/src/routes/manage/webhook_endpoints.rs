//! `/manage/tenants/{tenantId}/webhook-endpoints`: where the tenant's events are delivered. The
//! signing secret is shown only by `GET …/secret`; a rotation keeps the old one signing too for
//! `SWITCHYARD_SECRET_ROTATION_OVERLAP`. Tenant-wide keys only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::webhook_endpoints::{
    self, Endpoint, EndpointEvent, EndpointPatch, EndpointSecret, NewEndpoint, Rotation,
};
use switchyard_common::deliveries;

use super::deliveries::{Recover, Recovered, instant, publish};
use super::{Data, Errors, PageQuery, TenantItemPath, TenantPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody, Params, QueryParams};

/// List webhook endpoints.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/webhook-endpoints", tag = "Webhook endpoints",
    params(TenantPath, PageQuery),
    responses((status = 200, description = "A page of endpoints", body = Paginated<Endpoint>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<Endpoint>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(
        webhook_endpoints::list(&client, &p.tenant_id, page).await?,
    ))
}

/// Create a webhook endpoint. Its secret is generated unless one is supplied; read it with
/// `GET …/secret`. A tenant holds at most 20 endpoints unless configured otherwise (the
/// tenant's `maxWebhookEndpoints`, or `SWITCHYARD_MAX_WEBHOOK_ENDPOINTS`); one more is a 409.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/webhook-endpoints", tag = "Webhook endpoints",
    params(TenantPath), request_body = NewEndpoint,
    responses((status = 201, description = "The endpoint", body = Data<Endpoint>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    JsonBody(body): JsonBody<NewEndpoint>,
) -> Result<(StatusCode, Json<Data<Endpoint>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let mut client = state.pool.get().await?;
    let created = webhook_endpoints::create(
        &mut client,
        &state.master_key,
        &p.tenant_id,
        body,
        state.max_webhook_endpoints,
    )
    .await?;
    Ok((StatusCode::CREATED, data(created)))
}

/// Get a webhook endpoint.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}", tag = "Webhook endpoints",
    params(TenantItemPath),
    responses((status = 200, description = "The endpoint", body = Data<Endpoint>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<Json<Data<Endpoint>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        webhook_endpoints::get(&client, &p.tenant_id, &p.id).await?,
    ))
}

/// Update a webhook endpoint; `enabled: true` re-enables one that was disabled.
#[utoipa::path(patch, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}", tag = "Webhook endpoints",
    params(TenantItemPath), request_body = EndpointPatch,
    responses((status = 200, description = "The endpoint", body = Data<Endpoint>), Errors))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
    JsonBody(body): JsonBody<EndpointPatch>,
) -> Result<Json<Data<Endpoint>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        webhook_endpoints::update(&client, &p.tenant_id, &p.id, body).await?,
    ))
}

/// Delete a webhook endpoint with its deliveries.
#[utoipa::path(delete, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}", tag = "Webhook endpoints",
    params(TenantItemPath), responses((status = 204, description = "Deleted"), Errors))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<StatusCode, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let mut client = state.pool.get().await?;
    webhook_endpoints::delete(&mut client, &p.tenant_id, &p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Show the endpoint's signing secret (`whsec_…`).
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}/secret", tag = "Webhook endpoints",
    params(TenantItemPath),
    responses((status = 200, description = "The secret", body = Data<EndpointSecret>), Errors))]
pub async fn secret(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
) -> Result<Json<Data<EndpointSecret>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        webhook_endpoints::reveal_secret(&client, &state.master_key, &p.tenant_id, &p.id).await?,
    ))
}

/// Rotate the signing secret: the new one (supplied, or generated) signs from now on, and the old
/// one signs too until the overlap ends, so receivers can switch without losing a delivery.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}/secret/rotate", tag = "Webhook endpoints",
    params(TenantItemPath), request_body(content = Rotation, description = "Optional: the new `key`"),
    responses((status = 200, description = "The new secret", body = Data<EndpointSecret>), Errors))]
pub async fn rotate(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
    OptionalJsonBody(rotation): OptionalJsonBody<Rotation>,
) -> Result<Json<Data<EndpointSecret>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        webhook_endpoints::rotate_secret(
            &client,
            &state.master_key,
            &p.tenant_id,
            &p.id,
            rotation,
            state.secret_rotation_overlap,
        )
        .await?,
    ))
}

/// Show the tenant's default secret (`whsec_…`), which signs deliveries to its runs' own
/// `webhookUrl` (409 for a tenant that signs with the deployment's default secret).
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/webhook-secret", tag = "Webhook endpoints",
    params(TenantPath),
    responses((status = 200, description = "The secret", body = Data<EndpointSecret>), Errors))]
pub async fn tenant_secret(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
) -> Result<Json<Data<EndpointSecret>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        webhook_endpoints::reveal_tenant_secret(&client, &state.master_key, &p.tenant_id).await?,
    ))
}

/// Rotate the tenant's default secret, as an endpoint's.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/webhook-secret/rotate", tag = "Webhook endpoints",
    params(TenantPath), request_body(content = Rotation, description = "Optional: the new `key`"),
    responses((status = 200, description = "The new secret", body = Data<EndpointSecret>), Errors))]
pub async fn rotate_tenant_secret(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    OptionalJsonBody(rotation): OptionalJsonBody<Rotation>,
) -> Result<Json<Data<EndpointSecret>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok(data(
        webhook_endpoints::rotate_tenant_secret(
            &client,
            &state.master_key,
            &p.tenant_id,
            rotation,
            state.secret_rotation_overlap,
        )
        .await?,
    ))
}

/// What happened to the endpoint: each `endpoint.disabled`, with why.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}/events", tag = "Webhook endpoints",
    params(TenantItemPath, PageQuery),
    responses((status = 200, description = "A page of events", body = Paginated<EndpointEvent>), Errors))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<EndpointEvent>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(
        webhook_endpoints::events(&client, &p.tenant_id, &p.id, page).await?,
    ))
}

/// Recover: every failed delivery of this endpoint created since `since` is sent again, now (202);
/// 409 while the endpoint is disabled.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/webhook-endpoints/{id}/recover", tag = "Webhook endpoints",
    params(TenantItemPath), request_body = Recover,
    responses((status = 202, description = "How many were queued again", body = Data<Recovered>), Errors))]
pub async fn recover(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantItemPath>,
    JsonBody(body): JsonBody<Recover>,
) -> Result<(StatusCode, Json<Data<Recovered>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let since = instant(Some(&body.since), "since")?.unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let client = state.pool.get().await?;
    if !webhook_endpoints::get(&client, &p.tenant_id, &p.id)
        .await?
        .enabled
    {
        return Err(ApiError::new(
            switchyard_common::problem::ErrorCode::Conflict,
            "the endpoint is disabled: enable it first (PATCH {\"enabled\": true})",
        ));
    }
    let ids = deliveries::recover(&client, &p.tenant_id, Some(&p.id), since).await?;
    publish(&state, &ids).await;
    Ok((
        StatusCode::ACCEPTED,
        data(Recovered {
            recovered: ids.len(),
        }),
    ))
}
