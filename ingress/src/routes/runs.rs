//! The native runs API: `POST /v1/runs` and `GET /v1/runs/{id}`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use switchyard_common::Run;
use switchyard_common::problem::ErrorCode;
use switchyard_common::runs::NewRun;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::limits::Standing;
use crate::pipeline::{self, Guarded, Guards};
use crate::routes::invoke::Started;
use crate::routes::manage::Errors;
use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::lifecycle::{self, Left};

/// Largest `message`, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest serialised `metadata`, in bytes.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest `webhookUrl`.
const MAX_URL_LEN: usize = 2048;

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
}

/// A validated request: parse, don't validate.
struct ValidRun {
    agent_id: String,
    message: Option<String>,
    inputs: Option<Value>,
    webhook_url: Option<String>,
    metadata: Value,
    session_id: Option<String>,
    wait: Option<Duration>,
    ttl: Option<Duration>,
    chat_model_id: Option<String>,
    stream: bool,
}

/// The longest `wait` a request may ask for.
const MAX_WAIT_SECS: f64 = 60.0;

fn valid_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate(body: CreateRun) -> Result<ValidRun, ApiError> {
    let agent_id = body
        .agent_id
        .or(body.app_id)
        .ok_or_else(|| ApiError::bad_request("`agentId` is required"))?;
    if !valid_id(&agent_id) {
        return Err(ApiError::bad_request(
            "`agentId` must be 1 to 255 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if body.message.is_none() && body.inputs.is_none() {
        return Err(ApiError::bad_request("give a `message`, `inputs`, or both"));
    }
    if let Some(message) = &body.message
        && message.len() > MAX_MESSAGE_BYTES
    {
        return Err(ApiError::bad_request(format!(
            "`message` is longer than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    if let Some(inputs) = &body.inputs
        && !inputs.is_object()
    {
        return Err(ApiError::bad_request("`inputs` must be a JSON object"));
    }
    let metadata = body
        .metadata
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !metadata.is_object() {
        return Err(ApiError::bad_request("`metadata` must be a JSON object"));
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::bad_request(format!(
            "`metadata` is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    if let Some(session) = &body.session_id
        && !(1..=255).contains(&session.chars().count())
    {
        return Err(ApiError::bad_request(
            "`sessionId` must be a string of 1 to 255 characters",
        ));
    }
    let has_nul = body.message.as_deref().is_some_and(|m| m.contains('\0'))
        || body.session_id.as_deref().is_some_and(|m| m.contains('\0'))
        || body
            .chat_model_id
            .as_deref()
            .is_some_and(|m| m.contains('\0'))
        || body.inputs.as_ref().is_some_and(contains_nul)
        || contains_nul(&metadata);
    if has_nul {
        return Err(ApiError::bad_request(
            "text may not contain the NUL character (\\u0000)",
        ));
    }
    let webhook_url = body.webhook_url.map(validate_webhook_url).transpose()?;
    let wait = match body.wait {
        None => None,
        Some(secs) if (0.0..=MAX_WAIT_SECS).contains(&secs) => Some(Duration::from_secs_f64(secs)),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "`wait` must be a number of seconds from 0 to {MAX_WAIT_SECS}"
            )));
        }
    };
    if let Some(model) = &body.chat_model_id
        && !(1..=255).contains(&model.chars().count())
    {
        return Err(ApiError::bad_request(
            "`chatModelId` must be a string of 1 to 255 characters",
        ));
    }
    let ttl = match body.ttl {
        None => None,
        Some(secs) if secs.is_finite() && (1.0..=604_800.0).contains(&secs) => {
            Some(Duration::from_secs_f64(secs))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`ttl` must be a number of seconds from 1 to 604800",
            ));
        }
    };
    Ok(ValidRun {
        wait,
        ttl,
        chat_model_id: body.chat_model_id,
        stream: body.stream.unwrap_or(false),
        session_id: body.session_id,
        agent_id,
        message: body.message,
        inputs: body.inputs,
        webhook_url,
        metadata,
    })
}

/// Whether any string or key in `value` holds U+0000, which PostgreSQL cannot store.
fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn validate_webhook_url(raw: String) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("`webhookUrl` must be an absolute http or https URL");
    if raw.len() > MAX_URL_LEN {
        return Err(bad());
    }
    let url = url::Url::parse(&raw).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad());
    }
    Ok(url.to_string())
}

pub(crate) fn run_location(id: Uuid) -> String {
    format!("/v1/runs/{id}")
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
            content((Run = "application/json"), (crate::routes::events::RunEventFrame = "text/event-stream"))),
        Errors))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(raw): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let started = start_run(&state, &principal, &headers, raw).await?;
    let stream = started.stream
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let mut response = match started.run {
        Started::Replay(run) if stream => {
            let permit = state.streams.open(Some(&principal), &run.tenant_id)?;
            crate::routes::events::stream(state.clone(), &run, 0, permit).into_response()
        }
        Started::Replay(run) => (StatusCode::OK, axum::Json(run)).into_response(),
        // The run is recorded: past the stream cap the caller still gets its 202.
        Started::New(run) if stream => match state.streams.open(Some(&principal), &run.tenant_id) {
            Ok(permit) => {
                let mut response =
                    crate::routes::events::stream(state.clone(), &run, 0, permit).into_response();
                if let Ok(location) = HeaderValue::from_str(&run_location(run.id)) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                response
            }
            Err(_) => accepted(&run),
        },
        Started::New(run) => match started.wait.filter(|w| !w.is_zero()) {
            Some(wait) => match state.streams.open(Some(&principal), &run.tenant_id) {
                Ok(permit) => match pipeline::wait_for_end(&state, &run, wait, &permit).await? {
                    Some(done) => {
                        (StatusCode::OK, axum::Json(shown(done, Some(&principal)))).into_response()
                    }
                    None => accepted(&run),
                },
                Err(_) => accepted(&run),
            },
            None => accepted(&run),
        },
    };
    started.standing.write(response.headers_mut());
    Ok(response)
}

/// A run started from a body of `POST /v1/runs`'s shape, and what its caller asked for beyond it.
pub(crate) struct RunStart {
    pub run: Started,
    /// The key's rate-limit standing, for the response headers.
    pub standing: Standing,
    /// `wait` of the body.
    pub wait: Option<Duration>,
    /// `stream` of the body (`Accept` is the native route's to read).
    pub stream: bool,
}

/// The pipeline of `POST /v1/runs` from its body to a recorded and published run (or the replay
/// of an `Idempotency-Key`): scope, rate limit, validation, once-only guard, record, publish.
/// Every run-creating door ends here and renders the run its own way (the vendors' doors
/// translate their bodies into this one).
pub(crate) async fn start_run(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    raw: Value,
) -> Result<RunStart, ApiError> {
    let key = principal.key_with(Scope::Trigger)?;
    let standing = state.limits.admit(key, None)?;
    let body: CreateRun = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::bad_request(format!("the body is not valid: {e}")))?;
    let valid = validate(body)?;
    let idempotency = pipeline::idempotency_key(headers)?;
    let (wait, stream) = (valid.wait, valid.stream);
    let run_id = Uuid::now_v7();
    let owner = pipeline::key_principal(key);
    let guards = Guards {
        principal: &owner,
        idempotency: idempotency.as_deref().map(|k| (k, "POST /v1/runs")),
        duplicates_of: None,
    };
    if let Guarded::Replay(run) = pipeline::guard(
        state,
        &key.tenant_id,
        key.project_ids.as_deref(),
        run_id,
        &guards,
        &raw,
    )
    .await?
    {
        return Ok(RunStart {
            run: Started::Replay(shown(*run, Some(principal))),
            standing,
            wait,
            stream,
        });
    }
    let new = NewRun {
        id: run_id,
        tenant_id: key.tenant_id.clone(),
        agent_id: valid.agent_id,
        message: valid.message,
        inputs: valid.inputs,
        metadata: valid.metadata,
        webhook_url: valid.webhook_url,
        session_id: valid.session_id,
        ttl: valid.ttl,
        chat_model_id: valid.chat_model_id,
        projects: key.project_ids.clone(),
        trigger: None,
        trace_id: switchyard_common::telemetry::current_trace_id(),
        traceparent: switchyard_common::telemetry::current_traceparent(),
    };
    let run = pipeline::enqueue_guarded(state, new, idempotency.is_some()).await?;
    Ok(RunStart {
        run: Started::New(shown(run, Some(principal))),
        standing,
        wait,
        stream,
    })
}

/// `run` as its viewer may see it: the `webhookUrl` only for a viewer that
/// [`Principal::sees_destinations`]; `None` (an inbound webhook's sender) sees none.
pub(crate) fn shown(mut run: Run, viewer: Option<&Principal>) -> Run {
    if !viewer.is_some_and(Principal::sees_destinations) {
        run.webhook_url = None;
    }
    run
}

pub(crate) fn accepted(run: &Run) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&run_location(run.id)) {
        headers.insert(header::LOCATION, location);
    }
    (StatusCode::ACCEPTED, headers, axum::Json(run)).into_response()
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
    crate::routes::events::visible_run(&state, &principal, &id)
        .await
        .map(axum::Json)
}

/// The answer of a cancel.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Cancelled {
    pub success: bool,
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
    let key = principal.key_with(Scope::Trigger)?;
    let not_found = || ApiError::not_found(format!("run `{id}` was not found"));
    let run_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut client = state.pool.get().await?;
    let run = switchyard_common::runs::get(&client, &key.tenant_id, run_id)
        .await?
        .filter(|run| {
            key.project_ids
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&run.project_id))
        })
        .ok_or_else(not_found)?;
    let done = axum::Json(Cancelled { success: true });
    // A run can move between queued and running while this looks (a hand-back, the reaper), so
    // try both ways until one takes or the run has ended.
    let mut status = Some(run.status);
    for _ in 0..5 {
        if status.is_none_or(|s| s.is_terminal()) {
            return Ok(done);
        }
        // Queued: cancel it here, with its webhooks, in one transaction.
        let tx = client.transaction().await?;
        if let Some(cancelled) =
            switchyard_common::runs::cancel_queued(&tx, &key.tenant_id, run_id).await?
        {
            let recorded = lifecycle::record(&tx, vec![cancelled], Left::Queued).await?;
            tx.commit().await?;
            // It may have held up the rest of its session, or its limited agent's queue.
            lifecycle::announce(&state.pool, &state.broker, &recorded).await;
            return Ok(done);
        }
        tx.rollback().await?;
        // Running: ask its worker. Should the message be lost, the worker's next heartbeat
        // sees it.
        if switchyard_common::runs::request_cancel(&client, &key.tenant_id, run_id).await? {
            if let Err(err) = state
                .broker
                .publish_control(&switchyard_common::control::Control::RunCancel { run_id })
                .await
            {
                tracing::warn!(%run_id, error = %err, "cancel recorded; the worker will see it at its next heartbeat");
            }
            return Ok(done);
        }
        status = switchyard_common::runs::get(&client, &key.tenant_id, run_id)
            .await?
            .map(|r| r.status);
    }
    Err(ApiError::unavailable_because(
        "the run kept changing state while it was being cancelled; retry the request",
    ))
}

/// Fallback for unknown routes.
pub async fn no_route() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// The answer for a route that exists, called with a method it does not take.
pub async fn no_method(method: axum::http::Method) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this route does not take {method}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> CreateRun {
        serde_json::from_value(v).expect("deserialises")
    }

    #[test]
    fn accepts_agent_id_or_app_id() {
        let a = validate(body(
            serde_json::json!({"agentId": "echo", "message": "hi"}),
        ))
        .expect("valid");
        assert_eq!(a.agent_id, "echo");
        let b = validate(body(
            serde_json::json!({"appId": "echo", "inputs": {"x": 1}}),
        ))
        .expect("valid");
        assert_eq!(b.agent_id, "echo");
        assert_eq!(b.metadata, serde_json::json!({}));
    }

    #[test]
    fn rejects_missing_or_malformed_fields() {
        for bad in [
            serde_json::json!({"message": "hi"}),
            serde_json::json!({"agentId": "echo"}),
            serde_json::json!({"agentId": "bad id!", "message": "hi"}),
            serde_json::json!({"agentId": "echo", "inputs": [1]}),
            serde_json::json!({"agentId": "echo", "message": "hi", "metadata": "x"}),
            serde_json::json!({"agentId": "echo", "message": "hi", "webhookUrl": "ftp://x/y"}),
            serde_json::json!({"agentId": "echo", "message": "hi", "webhookUrl": "not a url"}),
            serde_json::json!({"agentId": "echo", "message": "nul\0"}),
            serde_json::json!({"agentId": "echo", "inputs": {"a": ["x\0"]}}),
            serde_json::json!({"agentId": "echo", "message": "hi", "metadata": {"k\0": 1}}),
        ] {
            let err = validate(body(bad.clone())).err().map(|e| e.code());
            assert_eq!(err, Some(ErrorCode::BadRequest), "{bad} should be rejected");
        }
    }
}
