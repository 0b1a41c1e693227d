//! `/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers`, Inkeep's paths.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use switchyard_common::catalog::invocations::{self, Invocation};
use switchyard_common::catalog::triggers::{self, Owner, Trigger, TriggerPatch, TriggerSpec};
use switchyard_common::catalog::{Page, Paginated};
use utoipa::IntoParams;

use super::{AgentPath, Data, Errors, PageQuery, TriggerPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};
use crate::verbs::trigger::{TriggerCall, admit, envelope, invoke, own_limit};

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
    let trigger = triggers::update(&mut client, item_owner(&p), &p.id, body, may_use).await?;
    // Every ingress replica drops its cached copy.
    state
        .announce_change(&switchyard_common::control::Control::TriggerChanged)
        .await?;
    Ok(data(trigger))
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
    state
        .announce_change(&switchyard_common::control::Control::TriggerChanged)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of the invocations list, with `page` and `limit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvocationQuery {
    /// Page number, from 1.
    #[param(minimum = 1, default = 1)]
    page: Option<i64>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 10)]
    limit: Option<i64>,
    /// Filter by invocation status: `pending`, `success` or `failed`.
    #[param(pattern = "^(pending|success|failed)$")]
    status: Option<String>,
    /// Start date for filtering (ISO 8601).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End date for filtering (ISO 8601).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Only invocations from this environment (ChatHive's `environment`).
    environment: Option<String>,
}

fn instant(raw: Option<&str>, name: &str) -> Result<Option<time::OffsetDateTime>, ApiError> {
    raw.map(|r| {
        time::OffsetDateTime::parse(r, &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::bad_request(format!("`{name}` must be an ISO 8601 date-time")))
    })
    .transpose()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct InvocationPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Project identifier
    pub project_id: String,
    /// Agent identifier
    pub agent_id: String,
    /// Resource identifier
    pub id: String,
    /// Trigger Invocation ID
    pub invocation_id: String,
}

/// List Trigger Invocations: every request that reached the trigger, accepted, dropped or
/// rejected, newest first.
#[utoipa::path(get,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}/invocations",
    tag = "Triggers", params(TriggerPath, InvocationQuery),
    responses((status = 200, description = "A page of invocations", body = Paginated<Invocation>), Errors))]
pub async fn list_invocations(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TriggerPath>,
    QueryParams(q): QueryParams<InvocationQuery>,
) -> Result<Json<Paginated<Invocation>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let page = Page::new(q.page, q.limit)?;
    let filter = invocations::Filter {
        status: q.status,
        environment: q.environment,
        from: instant(q.from.as_deref(), "from")?,
        to: instant(q.to.as_deref(), "to")?,
    };
    let client = state.pool.get().await?;
    Ok(Json(
        invocations::list(&client, item_owner(&p), &p.id, &filter, page).await?,
    ))
}

/// Get Trigger Invocation
#[utoipa::path(get,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}/invocations/{invocationId}",
    tag = "Triggers", params(InvocationPath),
    responses((status = 200, description = "The invocation", body = Data<Invocation>), Errors))]
pub async fn get_invocation(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<InvocationPath>,
) -> Result<Json<Data<Invocation>>, ApiError> {
    principal.manage(&p.tenant_id)?.project(&p.project_id)?;
    let client = state.pool.get().await?;
    let owner = Owner {
        tenant_id: &p.tenant_id,
        project_id: &p.project_id,
        agent_id: &p.agent_id,
    };
    Ok(data(
        invocations::get(&client, owner, &p.id, &p.invocation_id).await?,
    ))
}

/// Test a trigger: runs it on the body given, or on the first of its `inputSchema`'s `examples`,
/// or on `{}`. Filters, the schema and the template apply as to a real call, and so do the rate
/// limits (the key's, its tenant's and the trigger's; for the admin token, the tenant's and the
/// trigger's). The run is marked `{"test": true}` in its metadata and is never taken for a
/// duplicate. Paused triggers can be tested.
#[utoipa::path(post,
    path = "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}/test",
    tag = "Triggers", params(TriggerPath),
    request_body(content = Option<Object>, description = "A sample body (optional)", content_type = "application/json"),
    responses(
        (status = 202, description = "The test run, still going", body = switchyard_common::Run),
        (status = 200, description = "`waitForResponse`: the finished test run", body = switchyard_common::Run),
        (status = 408, description = "`waitForResponse` timed out; the test run continues (`runId`, `runUrl`)",
            body = switchyard_common::problem::Problem, content_type = "application/problem+json"),
        Errors))]
pub async fn test(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TriggerPath>,
    bytes: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    let access = principal.manage(&p.tenant_id)?;
    access.project(&p.project_id)?;
    let bytes = crate::extract::body_bytes(bytes)?;
    let (trigger, tenant_limit) = {
        let client = state.pool.get().await?;
        let trigger = triggers::get(&client, item_owner(&p), &p.id).await?;
        let tenant_limit = match &principal {
            Principal::Admin => {
                switchyard_common::catalog::tenants::get(&client, &p.tenant_id)
                    .await?
                    .rate_limit_per_minute
            }
            Principal::Key(_) => None,
        };
        (trigger, tenant_limit)
    };
    // A test run costs what a real one does: it counts against the same limits.
    let standing = match &principal {
        Principal::Key(key) => Some(admit(&state, key, &trigger).await?),
        Principal::Admin => {
            state
                .limits
                .admit_unkeyed(&p.tenant_id, tenant_limit, own_limit(&trigger))
                .await?;
            None
        }
    };
    let supplied = crate::extract::parse_body(&bytes)?;
    let body = if supplied.as_object().is_some_and(|m| !m.is_empty()) {
        supplied
    } else {
        trigger
            .input_schema
            .as_ref()
            .and_then(|s| s.get("examples"))
            .and_then(|e| e.get(0))
            .filter(|e| e.is_object())
            .cloned()
            .unwrap_or(supplied)
    };
    let mut envelope = envelope(&body)?;
    if body.get("environment").is_none() {
        envelope.environment = "test".into();
    }
    let invoked = invoke(
        &state,
        TriggerCall {
            tenant_id: &p.tenant_id,
            // Test calls take no `Idempotency-Key`.
            principal: match &principal {
                Principal::Key(key) => crate::verbs::accept::key_principal(key),
                Principal::Admin => "admin".to_owned(),
            },
            viewer: Some(&principal),
            projects: access.projects().map(<[String]>::to_vec),
            trigger: std::sync::Arc::new(trigger),
            body,
            envelope,
            idempotency: None,
            test: true,
        },
    )
    .await?;
    Ok(crate::render::invoked(invoked, standing.as_ref()))
}
