//! Writer's blueprint API trigger, as a thin adapter over the trigger pipeline: a blueprint is a
//! trigger (its id in the path, under its agent's id), the key is a Bearer token, and the body
//! must hold `inputs`; the whole body is what the trigger sees, and templates can also reach it as
//! `result` (`{{result.inputs.user_id}}`, Writer's `@{result.inputs.user_id}`).
//!
//! - `POST /v1/agents/{agent_id}/blueprints/{blueprint_id}` answers with Writer's SSE: `{"status":
//!   "in progress"}`, `{"status":"executing"}` once a worker runs it, `{"delta":…}` frames, then
//!   `[DONE]`.
//! - `POST …/jobs` answers 202 with a job (the run), read back at `GET /v1/agents/jobs/{job_id}`,
//!   whose `artifact` is the result after the trigger's `outputTransform`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::catalog::triggers::Trigger;
use switchyard_common::events::{EventKind, RunEvent};
use switchyard_common::transform::Transform;
use switchyard_common::{Run, RunStatus};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::Params;
use crate::extract::parse_body;
use crate::limits::Standing;
use crate::render::{self, Errors};
use crate::verbs::accept::{self, Started};
use crate::verbs::follow::{follow_run, visible_run};
use crate::verbs::trigger::{Envelope, TriggerCall, TriggerRef, admit, resolve, start_trigger};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BlueprintPath {
    /// The agent the trigger belongs to
    pub agent_id: String,
    /// The trigger's id
    pub blueprint_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// The job id: the run's id
    pub job_id: String,
}

/// Writer's status of a job.
fn job_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued | RunStatus::Running => "in_progress",
        RunStatus::Completed => "completed",
        _ => "failed",
    }
}

/// One frame of the blueprint stream as it goes over the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintFrame {
    /// A JSON object (`{"status", "message"}` or `{"delta"}`), or `[DONE]` at the end.
    pub data: String,
}

/// A job as Writer shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// The job's id (the run's); also given as `job_id`.
    pub id: Uuid,
    /// The same id, under the name Writer's job guide uses.
    pub job_id: Uuid,
    /// `in_progress`, `completed` or `failed`.
    pub status: &'static str,
    pub agent_id: String,
    /// The trigger that ran.
    pub blueprint_id: Option<String>,
    /// The result after the trigger's `outputTransform`, once completed.
    #[schema(value_type = Option<Object>)]
    pub artifact: Option<Value>,
    /// Why it failed: `{code, message}`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

fn job(run: Run, output_transform: Option<&Transform>) -> Job {
    let (artifact, transform_error) = match (run.status, run.result) {
        (RunStatus::Completed, Some(result)) => match output_transform.map(|t| t.apply(&result)) {
            None => (Some(result), None),
            Some(Ok(shown)) => (Some(shown), None),
            Some(Err(too_large)) => (
                None,
                Some(json!({
                    "code": "output_transform_too_large",
                    "message": format!(
                        "the blueprint's outputTransform cannot be applied: {too_large}; read the \
                         untransformed result at /v1/runs/{}", run.id),
                })),
            ),
        },
        _ => (None, None),
    };
    let error = (run.status.is_terminal() && run.status != RunStatus::Completed)
        .then(|| {
            json!({
                "code": run.error_code.as_deref().unwrap_or(run.status.as_str()),
                "message": run.error_message.clone()
                    .unwrap_or_else(|| format!("the run ended {}", run.status.as_str())),
            })
        })
        .or(transform_error);
    Job {
        id: run.id,
        job_id: run.id,
        status: job_status(run.status),
        agent_id: run.agent_id,
        blueprint_id: run.trigger_id,
        artifact,
        error,
        created_at: run.created_at,
        completed_at: run.completed_at,
    }
}

/// Authenticates, resolves the blueprint's trigger, admits the call, checks the body and starts
/// the run.
async fn start(
    state: &AppState,
    principal: &Principal,
    path: &BlueprintPath,
    headers: &HeaderMap,
    bytes: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(Arc<Trigger>, Started, Standing), ApiError> {
    let key = principal.key_with(Scope::Trigger)?;
    let idempotency = crate::extract::idempotency_key(headers)?;
    let bytes = crate::extract::body_bytes(bytes)?;
    let body = parse_body(&bytes)?;
    let missing = || {
        ApiError::not_found(format!(
            "blueprint `{}` of agent `{}` was not found, or it is paused",
            path.blueprint_id, path.agent_id
        ))
    };
    let reference = TriggerRef::Id {
        tenant_id: key.tenant_id.clone(),
        id: path.blueprint_id.clone(),
    };
    let trigger = resolve(state, reference)
        .await?
        .filter(|t| {
            t.enabled
                && t.agent_id == path.agent_id
                && key
                    .project_ids
                    .as_ref()
                    .is_none_or(|p| p.contains(&t.project_id))
        })
        .ok_or_else(missing)?;
    if body.get("inputs").is_none_or(Value::is_null) {
        return Err(ApiError::bad_request(
            "the body must hold your data under `inputs`, such as {\"inputs\": {\"user_id\": \"123\"}}",
        ));
    }
    let standing = admit(state, key, &trigger).await?;
    let started = start_trigger(
        state,
        TriggerCall {
            tenant_id: &key.tenant_id,
            principal: accept::key_principal(key),
            viewer: Some(principal),
            projects: key.project_ids.clone(),
            trigger: trigger.clone(),
            body,
            envelope: Envelope {
                instruction: None,
                session_id: None,
                environment: "api".to_owned(),
            },
            idempotency,
            test: false,
        },
    )
    .await?;
    Ok((trigger, started, standing))
}

fn with_job_location(response: &mut Response, run_id: Uuid, standing: Standing) {
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/agents/jobs/{run_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    render::rate_headers(&standing, response.headers_mut());
}

/// Trigger a blueprint and follow it (SSE, Writer's frames): `data: {"status":"in progress",
/// "message":null}`, `data: {"status":"executing","message":"Executing blueprint..."}`, then
/// `data: {"delta":…}` frames, then `data: [DONE]`. A run that fails sends `{"status":"failed",
/// "message":…}` before `[DONE]`; one retried after it streamed text says so, and its text starts
/// over. `Location` names the job, for reading the run later. Past the caller's cap on open
/// streams (`SWITCHYARD_MAX_STREAMS_PER_KEY`) the answer is the job, 202, to poll. Needs the
/// `trigger` scope.
#[utoipa::path(post, path = "/v1/agents/{agent_id}/blueprints/{blueprint_id}", tag = "Writer",
    params(BlueprintPath,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call idempotent for 24 hours")),
    request_body(content = Object, description = "`{\"inputs\": …}`", content_type = "application/json"),
    responses(
        (status = 200, description = "`text/event-stream` of `data:` frames: JSON objects, then `[DONE]`",
            body = BlueprintFrame, content_type = "text/event-stream"),
        Errors))]
pub async fn run(
    State(state): State<AppState>,
    principal: Principal,
    Params(path): Params<BlueprintPath>,
    headers: HeaderMap,
    bytes: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (trigger, started, standing) = start(&state, &principal, &path, &headers, bytes).await?;
    let run = match started {
        Started::New(run) | Started::Replay(run) => run,
    };
    let compiled = state.compiled.get(&run.tenant_id, &trigger)?;
    // The run is recorded: past the stream cap the caller gets the job to poll instead.
    let permit = match state.streams.open(principal.key_id(), &run.tenant_id) {
        Ok(permit) => permit,
        Err(_) => {
            let id = run.id;
            let job = job(run, compiled.transform.as_ref());
            let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
            with_job_location(&mut response, id, standing);
            return Ok(response);
        }
    };
    let keep_alive = state.sse_keep_alive;
    let frames = Frames::new(compiled.transform.clone(), run.id);
    let opening = futures::stream::iter(vec![frames.opening()]);
    let events = follow_run(state, &run, 0, permit.revocation());
    let following = futures::stream::unfold(Some((events, frames, permit)), |state| async {
        let (mut events, mut frames, permit) = state?;
        match events.recv().await {
            Some(event) => {
                let out = frames.of(&event);
                Some((futures::stream::iter(out), Some((events, frames, permit))))
            }
            // The follower stopped before the run ended (`SWITCHYARD_MAX_STREAM`, or the key
            // was revoked).
            None => Some((futures::stream::iter(frames.cut_short()), None)),
        }
    });
    let body = futures::StreamExt::map(
        futures::StreamExt::chain(opening, futures::StreamExt::flatten(following)),
        |data| Ok::<_, Infallible>(Event::default().data(data)),
    );
    let mut response = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    with_job_location(&mut response, run.id, standing);
    Ok(response)
}

/// Trigger a blueprint as a job: 202 `{id, job_id, status: "in_progress", created_at}`, with
/// `Location`. Needs the `trigger` scope.
#[utoipa::path(post, path = "/v1/agents/{agent_id}/blueprints/{blueprint_id}/jobs", tag = "Writer",
    params(BlueprintPath,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call idempotent for 24 hours")),
    request_body(content = Object, description = "`{\"inputs\": …}`", content_type = "application/json"),
    responses(
        (status = 202, description = "The job", body = Job),
        (status = 200, description = "An `Idempotency-Key` replay: the job as it is now", body = Job),
        Errors))]
pub async fn create_job(
    State(state): State<AppState>,
    principal: Principal,
    Params(path): Params<BlueprintPath>,
    headers: HeaderMap,
    bytes: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (trigger, started, standing) = start(&state, &principal, &path, &headers, bytes).await?;
    let (status, run) = match started {
        Started::New(run) => (StatusCode::ACCEPTED, run),
        Started::Replay(run) => (StatusCode::OK, run),
    };
    let id = run.id;
    let compiled = state.compiled.get(&run.tenant_id, &trigger)?;
    let mut response = (status, Json(job(run, compiled.transform.as_ref()))).into_response();
    with_job_location(&mut response, id, standing);
    Ok(response)
}

/// Read a job: its status, and when it is done the `artifact` (the result after the trigger's
/// `outputTransform` as the trigger has it now) or the `error`. Needs the `runs:read` scope.
#[utoipa::path(get, path = "/v1/agents/jobs/{job_id}", tag = "Writer", params(JobPath),
    responses((status = 200, description = "The job", body = Job), Errors))]
pub async fn get_job(
    State(state): State<AppState>,
    principal: Principal,
    Params(path): Params<JobPath>,
) -> Result<Json<Job>, ApiError> {
    let run = visible_run(&state, &principal, &path.job_id).await?;
    let trigger = match &run.trigger_id {
        Some(trigger_id) => {
            let reference = TriggerRef::Id {
                tenant_id: run.tenant_id.clone(),
                id: trigger_id.clone(),
            };
            resolve(&state, reference).await?
        }
        None => None,
    };
    let compiled = match trigger {
        Some(trigger) => Some(state.compiled.get(&run.tenant_id, &trigger)?),
        None => None,
    };
    let transform = compiled.as_ref().and_then(|c| c.transform.as_ref());
    Ok(Json(job(run, transform)))
}

/// `{"status":…,"message":…}`, in that order, as Writer writes it.
fn status_frame(status: &str, message: Option<&str>) -> String {
    #[derive(Serialize)]
    struct StatusFrame<'a> {
        status: &'a str,
        message: Option<&'a str>,
    }
    serde_json::to_string(&StatusFrame { status, message }).unwrap_or_default()
}

/// Turns a run's events into Writer's frames.
struct Frames {
    output_transform: Option<Transform>,
    run_id: Uuid,
    executing: bool,
    /// Text went out since the (last) try started.
    streamed: bool,
    error: Option<String>,
    done: bool,
}

impl Frames {
    fn new(output_transform: Option<Transform>, run_id: Uuid) -> Self {
        Self {
            output_transform,
            run_id,
            executing: false,
            streamed: false,
            error: None,
            done: false,
        }
    }

    fn opening(&self) -> String {
        status_frame("in progress", None)
    }

    /// The last frame of a stream that stops before the run ends: where to poll for the rest.
    fn cut_short(&self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        let message = format!(
            "the stream reached its time limit; the run goes on: poll /v1/agents/jobs/{}",
            self.run_id
        );
        vec![status_frame("in progress", Some(&message))]
    }

    /// The frames one event makes. Text the agent streams goes out as deltas as it comes, unless
    /// the trigger has an `outputTransform`: then the transformed result is the one delta. A run
    /// that streamed nothing sends its result as the one delta.
    fn of(&mut self, event: &RunEvent) -> Vec<String> {
        let mut out = Vec::new();
        match event.kind {
            EventKind::Status => {
                let status = event.data["status"].as_str().and_then(RunStatus::parse);
                // A try that starts over (a transient failure, or a run handed to another
                // worker) streams its text from the beginning.
                let restart = event.data.get("retrying").is_some()
                    || (self.executing && status == Some(RunStatus::Running));
                if restart && self.streamed {
                    self.streamed = false;
                    out.push(status_frame(
                        "executing",
                        Some("Retrying blueprint: the text starts over"),
                    ));
                }
                if status == Some(RunStatus::Running) && !self.executing {
                    self.executing = true;
                    out.push(status_frame("executing", Some("Executing blueprint...")));
                }
                if let Some(end) = status.filter(|s| s.is_terminal()) {
                    if end != RunStatus::Completed {
                        let message = self
                            .error
                            .take()
                            .unwrap_or_else(|| format!("the run ended {}", end.as_str()));
                        out.push(status_frame("failed", Some(&message)));
                    }
                    out.push("[DONE]".to_owned());
                    self.done = true;
                }
            }
            EventKind::Delta if self.output_transform.is_none() => {
                if let Some(text) = event.data["text"].as_str() {
                    self.streamed = true;
                    out.push(json!({"delta": text}).to_string());
                }
            }
            EventKind::Completed => {
                let result = &event.data["result"];
                let value = match &self.output_transform {
                    Some(t) => match t.apply(result) {
                        Ok(shown) => Some(shown),
                        Err(too_large) => {
                            let message = format!(
                                "the blueprint's outputTransform cannot be applied: {too_large}; \
                                 read the untransformed result at /v1/runs/{}",
                                self.run_id
                            );
                            out.push(status_frame("failed", Some(&message)));
                            None
                        }
                    },
                    None if !self.streamed && !result.is_null() => Some(result.clone()),
                    None => None,
                };
                // A delta is text: any other value goes as its JSON.
                let text = match value {
                    Some(Value::String(text)) => Some(text),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                };
                if let Some(text) = text {
                    out.push(json!({"delta": text}).to_string());
                }
            }
            EventKind::Error => {
                self.error = event.data["message"].as_str().map(str::to_owned);
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, data: Value) -> RunEvent {
        RunEvent {
            run_id: Uuid::nil(),
            seq: 1,
            kind,
            data,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn frames(output_transform: Option<Transform>) -> Frames {
        Frames::new(output_transform, Uuid::nil())
    }

    fn frames_of(frames: &mut Frames, events: &[RunEvent]) -> Vec<String> {
        let mut out = vec![frames.opening()];
        for e in events {
            out.extend(frames.of(e));
        }
        out
    }

    #[test]
    fn a_streaming_run_makes_writers_frames() {
        let events = [
            event(EventKind::Status, json!({"status": "queued", "attempt": 0})),
            event(
                EventKind::Status,
                json!({"status": "running", "attempt": 1}),
            ),
            event(EventKind::Delta, json!({"text": "We have "})),
            event(EventKind::Delta, json!({"text": "placed the order"})),
            event(
                EventKind::Completed,
                json!({"result": {"output": "We have placed the order"}}),
            ),
            event(
                EventKind::Status,
                json!({"status": "completed", "attempt": 1}),
            ),
        ];
        assert_eq!(
            frames_of(&mut frames(None), &events),
            [
                r#"{"status":"in progress","message":null}"#,
                r#"{"status":"executing","message":"Executing blueprint..."}"#,
                r#"{"delta":"We have "}"#,
                r#"{"delta":"placed the order"}"#,
                "[DONE]",
            ]
        );
        let mut picked = frames(Some(Transform::Pointer("/output".into())));
        assert_eq!(
            frames_of(&mut picked, &events)[2..],
            [r#"{"delta":"We have placed the order"}"#, "[DONE]"],
            "with an outputTransform, the transformed result is the one delta"
        );
    }

    #[test]
    fn a_try_that_starts_over_says_so() {
        let events = [
            event(
                EventKind::Status,
                json!({"status": "running", "attempt": 1}),
            ),
            event(EventKind::Delta, json!({"text": "We have "})),
            event(
                EventKind::Status,
                json!({"status": "running", "retrying": {"tries": 1}}),
            ),
            event(EventKind::Delta, json!({"text": "We have "})),
            event(EventKind::Status, json!({"status": "queued", "attempt": 1})),
            event(
                EventKind::Status,
                json!({"status": "running", "attempt": 2}),
            ),
            event(EventKind::Completed, json!({"result": {"output": "x"}})),
            event(
                EventKind::Status,
                json!({"status": "completed", "attempt": 2}),
            ),
        ];
        let retrying =
            r#"{"status":"executing","message":"Retrying blueprint: the text starts over"}"#;
        assert_eq!(
            frames_of(&mut frames(None), &events)[1..],
            [
                r#"{"status":"executing","message":"Executing blueprint..."}"#,
                r#"{"delta":"We have "}"#,
                retrying,
                r#"{"delta":"We have "}"#,
                retrying,
                // The last try streamed nothing: its result is the one delta.
                r#"{"delta":"{\"output\":\"x\"}"}"#,
                "[DONE]",
            ]
        );
    }

    #[test]
    fn silent_failed_and_cut_short_runs() {
        let silent = [
            event(
                EventKind::Status,
                json!({"status": "running", "attempt": 1}),
            ),
            event(EventKind::Completed, json!({"result": {"ok": true}})),
            event(
                EventKind::Status,
                json!({"status": "completed", "attempt": 1}),
            ),
        ];
        let mut whole = frames(None);
        assert_eq!(
            frames_of(&mut whole, &silent)[2..],
            [r#"{"delta":"{\"ok\":true}"}"#, "[DONE]"],
            "a delta is text: the result goes as its JSON"
        );
        assert!(
            whole.cut_short().is_empty(),
            "a finished stream says no more"
        );
        let failed = [
            event(
                EventKind::Status,
                json!({"status": "running", "attempt": 1}),
            ),
            event(
                EventKind::Error,
                json!({"errorCode": "agent_error", "message": "the agent answered 500"}),
            ),
            event(EventKind::Status, json!({"status": "failed", "attempt": 1})),
        ];
        assert_eq!(
            frames_of(&mut frames(None), &failed)[2..],
            [
                r#"{"status":"failed","message":"the agent answered 500"}"#,
                "[DONE]"
            ]
        );
        let cancelled = [event(
            EventKind::Status,
            json!({"status": "cancelled", "attempt": 0}),
        )];
        assert_eq!(
            frames_of(&mut frames(None), &cancelled)[1..],
            [
                r#"{"status":"failed","message":"the run ended cancelled"}"#,
                "[DONE]"
            ]
        );
        let mut cut = frames(None);
        frames_of(&mut cut, &silent[..1]);
        assert_eq!(
            cut.cut_short(),
            [format!(
                r#"{{"status":"in progress","message":"the stream reached its time limit; the run goes on: poll /v1/agents/jobs/{}"}}"#,
                Uuid::nil()
            )]
        );
    }
}
