//! Relevance AI's API trigger (`POST /latest/agents/trigger`), as a thin adapter over
//! `POST /v1/runs`: `{"message": {"role": "user", "content": …}, "agent_id": …}` becomes a run of
//! that agent with that message. The key is sent raw in `Authorization` (Bearer and `x-api-key`
//! work too). As in Relevance, the answer carries no result: it goes to the tenant's webhook
//! endpoints (the agent's "destination"), and the run can be read at its `Location`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::render::{self, Errors};
use crate::verbs::accept::{RunInput, Started, start_run};

/// The message that starts the agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerMessage {
    /// `user` (the only role Relevance documents; others are refused).
    pub role: Option<String>,
    pub content: String,
}

/// The body of Relevance AI's agent trigger.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTrigger {
    pub message: TriggerMessage,
    /// The agent to run.
    pub agent_id: String,
}

/// Trigger an agent, Relevance AI style: 202 with the run (no result; it is delivered to the
/// tenant's webhook endpoints). Needs the `trigger` scope.
#[utoipa::path(post, path = "/latest/agents/trigger", tag = "Relevance AI",
    request_body = AgentTrigger,
    responses((status = 202, description = "Accepted; `Location` names the run", body = switchyard_common::Run), Errors))]
pub async fn trigger(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(raw): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let body: AgentTrigger = serde_json::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid: {e}")))?;
    if body.message.role.as_deref().is_some_and(|r| r != "user") {
        return Err(ApiError::bad_request("`message.role` must be `user`"));
    }
    if !switchyard_common::catalog::valid_id(&body.agent_id) {
        return Err(ApiError::bad_request(
            "`agent_id` must be 1 to 255 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if body.message.content.trim().is_empty() {
        return Err(ApiError::bad_request("`message.content` may not be empty"));
    }
    let input = RunInput {
        agent_id: Some(body.agent_id),
        message: Some(body.message.content),
        ..RunInput::default()
    };
    let idempotency = crate::extract::idempotency_key(&headers)?;
    let started = start_run(&state, &principal, input, idempotency, None).await?;
    let mut response = match started.run {
        Started::New(run) => render::accepted(&run),
        Started::Replay(run) => (StatusCode::OK, Json(run)).into_response(),
    };
    render::rate_headers(&started.standing, response.headers_mut());
    Ok(response)
}
