//! `POST /api/v1.0/project/{projectId}/trigger/{key}`: ChatHive's trigger route. The key
//! (`trigger` scope) and the path name the trigger; the body is checked as ChatHive's
//! envelope; `verbs::trigger` does the rest, and the answer is 202, or 200 / 408 when the
//! trigger says `waitForResponse`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use switchyard_common::Run;
use switchyard_common::catalog::api_keys::Scope;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Params, parse_body};
use crate::render::{self, Errors};
use crate::verbs::accept;
use crate::verbs::trigger::{self, TriggerCall, TriggerRef, admit, envelope, resolve};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct InvokePath {
    /// Project identifier
    pub project_id: String,
    /// The trigger's key, in any case
    pub key: String,
}

/// Invoke a trigger (ChatHive's route). The body is optional; `instruction`, `sessionId`,
/// `environment` (default `api`), `language` (ISO 639-1), `timezone` (IANA), `customer` and
/// `context` are checked, and every member is available to filters, the schema and the template.
#[utoipa::path(post, path = "/api/v1.0/project/{projectId}/trigger/{key}", tag = "Triggers",
    params(InvokePath,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call idempotent for 24 hours")),
    request_body(content = Object, description = "Any JSON object", content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the run, still going", body = Run),
        (status = 200, description = "`waitForResponse`: the finished run, its result after `outputTransform`", body = Run),
        (status = 408, description = "`waitForResponse` timed out; the run continues (`runId`, `runUrl`)",
            body = switchyard_common::problem::Problem, content_type = "application/problem+json"),
        Errors))]
pub async fn invoke(
    State(state): State<AppState>,
    principal: Principal,
    Params(path): Params<InvokePath>,
    headers: HeaderMap,
    bytes: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let key = principal.key_with(Scope::Trigger)?;
    let idempotency = crate::extract::idempotency_key(&headers)?;
    let missing = || {
        ApiError::not_found(format!(
            "trigger `{}` was not found in project `{}`, or it is paused",
            path.key, path.project_id
        ))
    };
    if key
        .project_ids
        .as_ref()
        .is_some_and(|p| !p.contains(&path.project_id))
    {
        return Err(missing());
    }
    let bytes = crate::extract::body_bytes(bytes)?;
    let body = parse_body(&bytes)?;
    let envelope = envelope(&body)?;
    let reference = TriggerRef::Key {
        tenant_id: key.tenant_id.clone(),
        project_id: path.project_id.clone(),
        key: path.key.to_lowercase(),
    };
    let trigger = resolve(&state, reference)
        .await?
        .filter(|t| t.enabled)
        .ok_or_else(missing)?;
    let standing = admit(&state, key, &trigger).await?;
    let invoked = trigger::invoke(
        &state,
        TriggerCall {
            tenant_id: &key.tenant_id,
            principal: accept::key_principal(key),
            viewer: Some(&principal),
            projects: key.project_ids.clone(),
            trigger,
            body,
            envelope,
            idempotency,
            test: false,
        },
    )
    .await?;
    Ok(render::invoked(invoked, Some(&standing)))
}
