//! `/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers`, Inkeep's paths.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::triggers::{self, Owner, Trigger, TriggerPatch, TriggerSpec};

use super::{AgentPath, Data, Errors, PageQuery, TriggerPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

fn owner(p: &AgentPath) -> Owner<'_> {
    Owner {
        tenant_id: &p.tenant_id,
        project_id: &p.project_id,
        agent_id: &p.agent_id,
    }
}

fn item_owner(p: &TriggerPath) -> Owner<'_> {
    Owner {
        tenant_id: &p.tenant_id,
        project_id: &p.project_id,
        agent_id: &p.agent_id,
    }
}

/// List Triggers
#[utoipa::path(get,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers",
    tag = "Triggers", params(AgentPath, PageQuery),
    responses((status = 200, description = "A page of triggers", body = Paginated<Trigger>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<AgentPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<Trigger>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(triggers::list(&client, owner(&p), page).await?))
}

/// Create Trigger
#[utoipa::path(post,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers",
    tag = "Triggers", params(AgentPath), request_body = TriggerSpec,
    responses((status = 201, description = "The trigger", body = Data<Trigger>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<AgentPath>,
    JsonBody(body): JsonBody<TriggerSpec>,
) -> Result<(StatusCode, Json<Data<Trigger>>), ApiError> {
    let access = principal.manage(&p.tenant_id)?;
    access.project(&p.project_id)?;
    let may_use = access.projects().is_none();
    let client = state.pool.get().await?;
    Ok((
        StatusCode::CREATED,
        data(triggers::create(&client, owner(&p), body, may_use).await?),
    ))
}

/// Get Trigger
#[utoipa::path(get,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}",
    tag = "Triggers", params(TriggerPath),
    responses((status = 200, description = "The trigger", body = Data<Trigger>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TriggerPath>,
) -> Result<Json<Data<Trigger>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    Ok(data(triggers::get(&client, item_owner(&p), &p.id).await?))
}

/// Update Trigger: members present replace the stored ones; `null` clears.
#[utoipa::path(patch,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}",
    tag = "Triggers", params(TriggerPath), request_body = TriggerPatch,
    responses((status = 200, description = "The trigger", body = Data<Trigger>), Errors))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TriggerPath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Data<Trigger>>, ApiError> {
    let access = principal.manage(&p.tenant_id)?;
    access.project(&p.project_id)?;
    let may_use = access.projects().is_none();
    let mut client = state.pool.get().await?;
    Ok(data(
        triggers::update(&mut client, item_owner(&p), &p.id, body, may_use).await?,
    ))
}

/// Delete Trigger
#[utoipa::path(delete,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}",
    tag = "Triggers", params(TriggerPath),
    responses((status = 204, description = "Deleted"), Errors))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TriggerPath>,
) -> Result<StatusCode, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    triggers::delete(&client, item_owner(&p), &p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
