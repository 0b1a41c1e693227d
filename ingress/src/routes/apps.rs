//! The agent-app runs API (`/api/v1/runs`, `/api/v1/apps`), as a thin adapter over the native
//! runs: an app is an agent, keys are Bearer tokens, and run statuses carry the app API's names
//! (`queued` is `pending`; `timed_out` and `expired` are `failed`, with their `errorCode`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_common::{Run, RunStatus};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::render::{self, Cancelled, Errors};
use crate::verbs::accept::{RunInput, Started, start_run};
use crate::verbs::follow::visible_run;
use switchyard_common::catalog::agents;
use switchyard_common::catalog::api_keys::Scope;

/// The body of a run create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAppRun {
    /// The app (agent) to run.
    pub app_id: String,
    /// Key-value pairs for the app's inputs.
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<Value>,
    /// Overrides the app's model.
    pub chat_model_id: Option<String>,
    /// Receives a POST when the run ends.
    pub webhook_url: Option<String>,
}

/// The answer of a create.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedAppRun {
    pub id: uuid::Uuid,
    /// `pending`.
    pub status: &'static str,
    pub app_id: String,
    pub app_name: Option<String>,
}

/// A run as the app API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRun {
    pub id: uuid::Uuid,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: &'static str,
    pub app_id: String,
    pub app_name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[schema(value_type = Vec<Object>)]
    pub artifacts: Vec<Value>,
    pub error_code: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

/// The app API's name for a status.
fn app_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "pending",
        RunStatus::Running => "running",
        RunStatus::Completed => "completed",
        RunStatus::Cancelled => "cancelled",
        _ => "failed",
    }
}

/// The native statuses an app status names.
fn native_statuses(status: &str) -> Option<&'static [&'static str]> {
    Some(match status {
        "pending" => &["queued"],
        "running" => &["running"],
        "completed" => &["completed"],
        "failed" => &["failed", "timed_out", "expired"],
        "cancelled" => &["cancelled"],
        _ => return None,
    })
}

/// The name of the tenant's agent `agent_id`, if it still exists.
async fn app_name(
    state: &AppState,
    tenant_id: &str,
    agent_id: &str,
) -> Result<Option<String>, ApiError> {
    let client = state.pool.get().await?;
    let mut names = agents::names(&client, tenant_id, &[agent_id.to_owned()]).await?;
    Ok(names.remove(agent_id))
}

fn app_run(run: Run, app_name: Option<String>) -> AppRun {
    AppRun {
        id: run.id,
        status: app_status(run.status),
        app_id: run.agent_id,
        app_name,
        result: run.result,
        artifacts: run.artifacts,
        error_code: run.error_code,
        created_at: run.created_at,
        started_at: run.started_at,
        completed_at: run.completed_at,
    }
}

/// Create a run of an app: 202 `{id, status, appId, appName}`, with `Location`. Needs the
/// `trigger` scope.
#[utoipa::path(post, path = "/api/v1/runs", tag = "Agent-app runs", request_body = CreateAppRun,
    responses((status = 202, description = "Accepted", body = AcceptedAppRun), Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateAppRun>,
) -> Result<Response, ApiError> {
    let input = RunInput {
        agent_id: Some(body.app_id),
        inputs: Some(
            body.inputs
                .unwrap_or_else(|| Value::Object(Default::default())),
        ),
        chat_model_id: body.chat_model_id,
        webhook_url: body.webhook_url,
        ..RunInput::default()
    };
    // The app API answers at once, whatever `Accept` says: a run is never awaited here.
    let idempotency = crate::extract::idempotency_key(&headers)?;
    let started = start_run(
        &state,
        &principal,
        input,
        idempotency,
        Some(state.limits.agent_app_default()),
    )
    .await?;
    let (status, run) = match started.run {
        Started::New(run) => (StatusCode::ACCEPTED, run),
        Started::Replay(run) => (StatusCode::OK, run),
    };
    let accepted = AcceptedAppRun {
        id: run.id,
        status: app_status(run.status),
        app_name: app_name(&state, &run.tenant_id, &run.agent_id).await?,
        app_id: run.agent_id,
    };
    let mut out = (status, Json(accepted)).into_response();
    if let Ok(location) = axum::http::HeaderValue::from_str(&format!("/api/v1/runs/{}", run.id)) {
        out.headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    render::rate_headers(&started.standing, out.headers_mut());
    Ok(out)
}

/// Get a run: status, result, artifacts, timings and `errorCode`. Needs `runs:read`.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "Agent-app runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = AppRun), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<AppRun>, ApiError> {
    let run = visible_run(&state, &principal, &id).await?;
    let name = app_name(&state, &run.tenant_id, &run.agent_id).await?;
    Ok(Json(app_run(run, name)))
}

/// The list's filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    status: Option<String>,
    /// At most this many, 1 to 100 (default 20), newest first.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A run as the list shows it: its status and timings, not its result (read the run for that).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRunSummary {
    pub id: uuid::Uuid,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: &'static str,
    pub app_id: String,
    pub app_name: Option<String>,
    pub error_code: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppRuns {
    pub data: Vec<AppRunSummary>,
}

/// List runs, newest first, by status: each with its status and timings (read a run for its
/// result). Needs `runs:read`.
#[utoipa::path(get, path = "/api/v1/runs", tag = "Agent-app runs", params(ListQuery),
    responses((status = 200, description = "The runs", body = AppRuns), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<AppRuns>, ApiError> {
    let key = principal.key_with(Scope::RunsRead)?;
    let statuses: &[&str] = match q.status.as_deref() {
        None => &[],
        Some(s) => native_statuses(s).ok_or_else(|| {
            ApiError::bad_request(
                "`status` must be pending, running, completed, failed or cancelled",
            )
        })?,
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1 to 100"));
    }
    let client = state.pool.get().await?;
    let filter = switchyard_common::runs::RunFilter {
        statuses,
        ..Default::default()
    };
    let runs = switchyard_common::runs::list(
        &client,
        &key.tenant_id,
        key.project_ids.as_deref(),
        &filter,
        limit,
    )
    .await?;
    let ids: Vec<String> = runs.iter().map(|r| r.agent_id.clone()).collect();
    let names = agents::names(&client, &key.tenant_id, &ids).await?;
    let data = runs
        .into_iter()
        .map(|run| AppRunSummary {
            id: run.id,
            status: app_status(run.status),
            app_name: names.get(&run.agent_id).cloned(),
            app_id: run.agent_id,
            error_code: run.error_code,
            created_at: run.created_at,
            started_at: run.started_at,
            completed_at: run.completed_at,
        })
        .collect();
    Ok(Json(AppRuns { data }))
}

/// Cancel a run: `{success: true}`, as `POST /v1/runs/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "Agent-app runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "Cancelled, or already finished", body = Cancelled), Errors))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, ApiError> {
    crate::verbs::cancel::cancel(&state, &principal, &id).await?;
    Ok(Json(Cancelled { success: true }))
}

/// An app: an agent the key may run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: String,
    pub name: String,
    pub project_id: String,
}

/// The apps.
#[derive(Debug, Serialize, ToSchema)]
pub struct Apps {
    pub data: Vec<App>,
}

/// List the apps (agents) the key may run, to find their ids. Needs `runs:read`.
#[utoipa::path(get, path = "/api/v1/apps", tag = "Agent-app runs",
    responses((status = 200, description = "The apps", body = Apps), Errors))]
pub async fn apps(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Apps>, ApiError> {
    let key = principal.key_with(Scope::RunsRead)?;
    let client = state.pool.get().await?;
    let data = agents::runnable(&client, &key.tenant_id, key.project_ids.as_deref())
        .await?
        .into_iter()
        .map(|(id, name, project_id)| App {
            id,
            name,
            project_id,
        })
        .collect();
    Ok(Json(Apps { data }))
}
