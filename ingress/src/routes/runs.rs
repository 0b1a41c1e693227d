//! The native runs API: `POST /v1/runs`, `GET /v1/runs`, `GET /v1/runs/{id}` and
//! `POST /v1/runs/{id}/cancel`, over `verbs::accept`, `verbs::follow` and `verbs::cancel`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use switchyard_common::Run;
use switchyard_common::catalog::api_keys::Scope;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::render::{self, Cancelled, Errors};
use crate::verbs::accept::{RunInput, Started, start_run};
use crate::verbs::follow::{visible_run, wait_for_end};
use crate::verbs::view::shown;

/// The body of `POST /v1/runs`. Unknown fields are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateRun {
    /// The agent to run (`appId` is accepted as a synonym).
    agent_id: Option<String>,
    /// The agent-app API's name for the agent.
    app_id: Option<String>,
    message: Option<String>,
    #[schema(value_type = Option<Object>)]
    inputs: Option<Value>,
    webhook_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// A conversation of your choosing (1 to 255 characters): runs with the same `sessionId` in a
    /// project see the earlier messages, and run one at a time in the order they were accepted.
    #[schema(min_length = 1, max_length = 255)]
    session_id: Option<String>,
    /// Seconds to wait for the run to finish before answering (0 to 60). A run that finishes in
    /// time is answered 200 with its result; otherwise 202 as usual.
    #[schema(minimum = 0, maximum = 60)]
    wait: Option<f64>,
    /// The model to use instead of the agent's (an `openai` agent's `model`).
    #[schema(min_length = 1, max_length = 255)]
    chat_model_id: Option<String>,
    /// Seconds the run may wait in the queue (1 to 604800): one that has not started by then
    /// never does, and ends `expired`.
    #[schema(minimum = 1, maximum = 604800)]
    ttl: Option<f64>,
    /// Answer with the run's events as they happen (SSE), from its creation to its end, as
    /// `GET /v1/runs/{id}/events` would. `Accept: text/event-stream` does the same.
    stream: Option<bool>,
    /// 0 to 100 (default 0): among its tenant's queued runs, a run with a higher priority starts
    /// first; equal priorities start in the order they were accepted. It orders runs within
    /// the tenant's fair share of the workers, never ahead of other tenants.
    #[schema(minimum = 0, maximum = 100)]
    priority: Option<i64>,
}

impl CreateRun {
    /// The body as the accept verb takes it (`appId` standing in for `agentId`).
    fn into_input(self) -> RunInput {
        RunInput {
            agent_id: self.agent_id.or(self.app_id),
            message: self.message,
            inputs: self.inputs,
            webhook_url: self.webhook_url,
            metadata: self.metadata,
            session_id: self.session_id,
            wait: self.wait,
            chat_model_id: self.chat_model_id,
            ttl: self.ttl,
            stream: self.stream,
            priority: self.priority,
        }
    }
}

/// Create a run: recorded as `queued` (one INSERT, group-committed), its id published with a
/// confirm, then 202. A publish failure still answers 202: the row is the outbox and the sweeper
/// publishes it again. Needs the `trigger` scope.
#[utoipa::path(post, path = "/v1/runs", tag = "Runs", request_body = CreateRun,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the create idempotent for 24 hours")),
    responses(
        (status = 202, description = "Accepted; `Location` names the run", body = Run),
        (status = 200, description = "Finished within `wait`, or the original run of a repeated `Idempotency-Key`; \
            with `stream`, the run's events (`text/event-stream`)",
            content((Run = "application/json"), (crate::render::RunEventFrame = "text/event-stream"))),
        Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRun>,
) -> Result<Response, ApiError> {
    let idempotency = crate::extract::idempotency_key(&headers)?;
    let started = start_run(&state, &principal, body.into_input(), idempotency, None).await?;
    let stream = started.stream
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let mut response = match started.run {
        Started::Replay(run) if stream => {
            let permit = state.streams.open(principal.key_id(), &run.tenant_id)?;
            render::stream(state.clone(), &run, 0, permit).into_response()
        }
        Started::Replay(run) => (StatusCode::OK, axum::Json(run)).into_response(),
        // The run is recorded: past the stream cap the caller still gets its 202.
        Started::New(run) if stream => match state.streams.open(principal.key_id(), &run.tenant_id)
        {
            Ok(permit) => {
                let mut response = render::stream(state.clone(), &run, 0, permit).into_response();
                if let Ok(location) = HeaderValue::from_str(&render::run_location(run.id)) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                response
            }
            Err(_) => render::accepted(&run),
        },
        Started::New(run) => match started.wait.filter(|w| !w.is_zero()) {
            Some(wait) => match state.streams.open(principal.key_id(), &run.tenant_id) {
                Ok(permit) => match wait_for_end(&state, &run, wait, &permit).await? {
                    Some(done) => {
                        (StatusCode::OK, axum::Json(shown(done, Some(&principal)))).into_response()
                    }
                    None => render::accepted(&run),
                },
                Err(_) => render::accepted(&run),
            },
            None => render::accepted(&run),
        },
    };
    render::rate_headers(&started.standing, response.headers_mut());
    Ok(response)
}

/// The list's filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ListQuery {
    /// Only runs with one of these statuses, comma-separated (`queued,running`).
    status: Option<String>,
    agent_id: Option<String>,
    trigger_id: Option<String>,
    /// `api`, `webhook`, `test`, or the environment a trigger call named.
    environment: Option<String>,
    /// Created at or after this time (RFC 3339).
    since: Option<String>,
    /// Created before this time (RFC 3339).
    until: Option<String>,
    /// At most this many, 1 to 200 (default 50), newest first.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The `nextCursor` of the previous page: runs older than it.
    cursor: Option<String>,
}

/// A page of runs, as summaries (no message, inputs, result or artifacts: read a run by its id
/// for those).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Runs {
    pub data: Vec<switchyard_common::RunSummary>,
    /// Pass as `cursor` for the next page; `null` when this page holds the last runs.
    pub next_cursor: Option<Uuid>,
}

/// List runs, newest first, narrowed by status, agent, trigger, environment and creation time,
/// a page at a time (`cursor`). Each run is a summary; `GET /v1/runs/{id}` has the whole run.
/// Needs the `runs:read` scope.
#[utoipa::path(get, path = "/v1/runs", tag = "Runs", params(ListQuery),
    responses((status = 200, description = "The runs, newest first", body = Runs), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    crate::extract::QueryParams(q): crate::extract::QueryParams<ListQuery>,
) -> Result<axum::Json<Runs>, ApiError> {
    let key = principal.key_with(Scope::RunsRead)?;
    let statuses: Vec<&str> = match q.status.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|s| {
                switchyard_common::RunStatus::parse(s.trim())
                    .map(|s| s.as_str())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("`status`: `{s}` is not a run status"))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let time = |name: &str, raw: &Option<String>| {
        raw.as_deref()
            .map(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        ApiError::bad_request(format!("`{name}` must be an RFC 3339 time"))
                    })
            })
            .transpose()
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1 to 200"));
    }
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| ApiError::bad_request("`cursor` must be a `nextCursor` of this list"))
        })
        .transpose()?;
    let filter = switchyard_common::runs::RunFilter {
        statuses: &statuses,
        agent_id: q.agent_id.as_deref(),
        trigger_id: q.trigger_id.as_deref(),
        environment: q.environment.as_deref(),
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        before,
    };
    let client = state.pool.get().await?;
    let data = switchyard_common::runs::list(
        &client,
        &key.tenant_id,
        key.project_ids.as_deref(),
        &filter,
        limit,
    )
    .await?;
    let next_cursor = (i64::try_from(data.len()).unwrap_or(0) == limit)
        .then(|| data.last().map(|r| r.id))
        .flatten();
    Ok(axum::Json(Runs { data, next_cursor }))
}

/// Get a run: 404 when it does not exist in the caller's tenant (or its projects). Needs the
/// `runs:read` scope.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "Runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = Run), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Run>, ApiError> {
    visible_run(&state, &principal, &id).await.map(axum::Json)
}

/// Cancel a run: `{success: true}`. A queued run never starts; a running one is stopped within
/// about a second by the worker holding it (its request to the agent is aborted), and ends
/// `cancelled` with a `run.cancelled` webhook. Idempotent: a finished run answers the same and
/// stays as it is. Needs the `trigger` scope.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "Runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "Cancelled, or already finished", body = Cancelled), Errors))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Cancelled>, ApiError> {
    crate::verbs::cancel::cancel(&state, &principal, &id).await?;
    Ok(axum::Json(Cancelled { success: true }))
}
