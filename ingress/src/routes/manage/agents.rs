//! `/manage/tenants/{tenantId}/projects/{projectId}/agents`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::agents::{self, Agent, AgentPatch, AgentSpec};

use super::{AgentPath, Data, Errors, PageQuery, ProjectPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

/// List a project's agents.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/projects/{projectId}/agents", tag = "Agents",
    params(ProjectPath, PageQuery),
    responses((status = 200, description = "A page of agents", body = Paginated<Agent>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<ProjectPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<Agent>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(
        agents::list(&client, &p.tenant_id, &p.project_id, page).await?,
    ))
}

/// Create an agent. Its id is unique in the tenant, so `agentId` alone names it on the runs API.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/projects/{projectId}/agents", tag = "Agents",
    params(ProjectPath), request_body = AgentSpec,
    responses((status = 201, description = "The agent", body = Data<Agent>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<ProjectPath>,
    JsonBody(body): JsonBody<AgentSpec>,
) -> Result<(StatusCode, Json<Data<Agent>>), ApiError> {
    let access = principal.manage(&p.tenant_id)?;
    access.project(&p.project_id)?;
    let may_use = access.projects().is_none();
    let client = state.pool.get().await?;
    Ok((
        StatusCode::CREATED,
        data(agents::create(&client, &p.tenant_id, &p.project_id, body, may_use).await?),
    ))
}

/// Get an agent.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}",
    tag = "Agents", params(AgentPath),
    responses((status = 200, description = "The agent", body = Data<Agent>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<AgentPath>,
) -> Result<Json<Data<Agent>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    Ok(data(
        agents::get(&client, &p.tenant_id, &p.project_id, &p.agent_id).await?,
    ))
}

/// Update an agent: members present replace the stored ones; `null` clears.
#[utoipa::path(patch, path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}",
    tag = "Agents", params(AgentPath), request_body = AgentPatch,
    responses((status = 200, description = "The agent", body = Data<Agent>), Errors))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<AgentPath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Data<Agent>>, ApiError> {
    let access = principal.manage(&p.tenant_id)?;
    access.project(&p.project_id)?;
    let may_use = access.projects().is_none();
    let mut client = state.pool.get().await?;
    Ok(data(
        agents::update(
            &mut client,
            &p.tenant_id,
            &p.project_id,
            &p.agent_id,
            body,
            may_use,
        )
        .await?,
    ))
}

/// Delete an agent with its triggers (its runs stay).
#[utoipa::path(delete, path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}",
    tag = "Agents", params(AgentPath), responses((status = 204, description = "Deleted"), Errors))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<AgentPath>,
) -> Result<StatusCode, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    agents::delete(&client, &p.tenant_id, &p.project_id, &p.agent_id).await?;
    // Its triggers went with it.
    state
        .announce_change(&switchyard_common::control::Control::TriggerChanged)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
