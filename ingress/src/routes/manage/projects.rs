//! `/manage/tenants/{tenantId}/projects`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use switchyard_common::catalog::Paginated;
use switchyard_common::catalog::projects::{self, NewProject, Project, ProjectPatch};

use super::{Data, Errors, PageQuery, ProjectPath, TenantPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

/// List projects (a project-limited key sees only its projects).
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/projects", tag = "Projects",
    params(TenantPath, PageQuery),
    responses((status = 200, description = "A page of projects", body = Paginated<Project>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<Paginated<Project>>, ApiError> {
    let access = principal.manage(&p.tenant_id)?;
    let page = q.page()?;
    let client = state.pool.get().await?;
    Ok(Json(
        projects::list(&client, &p.tenant_id, access.projects(), page).await?,
    ))
}

/// Create a project.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/projects", tag = "Projects",
    params(TenantPath), request_body = NewProject,
    responses((status = 201, description = "The project", body = Data<Project>), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    JsonBody(body): JsonBody<NewProject>,
) -> Result<(StatusCode, Json<Data<Project>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    Ok((
        StatusCode::CREATED,
        data(projects::create(&client, &p.tenant_id, body).await?),
    ))
}

/// Get a project.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/projects/{projectId}", tag = "Projects",
    params(ProjectPath),
    responses((status = 200, description = "The project", body = Data<Project>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<ProjectPath>,
) -> Result<Json<Data<Project>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    Ok(data(
        projects::get(&client, &p.tenant_id, &p.project_id).await?,
    ))
}

/// Update a project.
#[utoipa::path(patch, path = "/manage/tenants/{tenantId}/projects/{projectId}", tag = "Projects",
    params(ProjectPath), request_body = ProjectPatch,
    responses((status = 200, description = "The project", body = Data<Project>), Errors))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<ProjectPath>,
    JsonBody(body): JsonBody<ProjectPatch>,
) -> Result<Json<Data<Project>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    Ok(data(
        projects::update(&client, &p.tenant_id, &p.project_id, body).await?,
    ))
}

/// Delete a project with its agents and triggers (its runs stay).
#[utoipa::path(delete, path = "/manage/tenants/{tenantId}/projects/{projectId}", tag = "Projects",
    params(ProjectPath), responses((status = 204, description = "Deleted"), Errors))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<ProjectPath>,
) -> Result<StatusCode, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let client = state.pool.get().await?;
    projects::delete(&client, &p.tenant_id, &p.project_id).await?;
    // Its triggers went with it.
    state
        .announce_change(&switchyard_common::control::Control::TriggerChanged)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
