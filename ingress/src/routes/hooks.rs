//! `POST /hooks/{tenantId}/{triggerId}`: inbound webhooks, for senders that cannot send an API key
//! (GitHub, Stripe, Slack, Standard Webhooks senders). The trigger's `signatureVerification`
//! (with the secret from its credential) and/or its `authentication` headers authenticate the
//! request; then the same pipeline as the trigger route runs, with `environment: "webhook"`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Params, parse_body};
use crate::render::{self, Errors};
use crate::verbs::accept;
use crate::verbs::inbound::{Incoming, authenticate, refuse};
use crate::verbs::trigger::{Envelope, TriggerCall, TriggerRef, invoke, own_limit, resolve};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct HookPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Trigger identifier
    pub trigger_id: String,
}

/// Receive a webhook for a trigger. No API key: the trigger's `signatureVerification` and/or
/// `authentication` headers authenticate the sender. A failure is a 401, recorded as a rejected
/// invocation with its reason and size but none of its content; past
/// `SWITCHYARD_HOOK_REFUSALS_PER_MINUTE` refusals of a trigger, further failures are a 429 and
/// are not recorded.
#[utoipa::path(post, path = "/hooks/{tenantId}/{triggerId}", tag = "Triggers",
    params(HookPath,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call idempotent for 24 hours")),
    request_body(content = Object, description = "The sender's JSON payload", content_type = "application/json"),
    security(()),
    responses(
        (status = 202, description = "Accepted: the run, still going", body = switchyard_common::Run),
        (status = 200, description = "`waitForResponse`: the finished run", body = switchyard_common::Run),
        Errors))]
pub async fn receive(
    State(state): State<AppState>,
    Params(path): Params<HookPath>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    bytes: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = crate::extract::body_bytes(bytes)?;
    let idempotency = crate::extract::idempotency_key(&headers)?;
    let reference = TriggerRef::Id {
        tenant_id: path.tenant_id.clone(),
        id: path.trigger_id.clone(),
    };
    let trigger = resolve(&state, reference)
        .await?
        .filter(|t| t.enabled)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "trigger `{}` was not found, or it is paused",
                path.trigger_id
            ))
        })?;
    // Limited before authenticating: refused requests cost work too.
    // The trigger's own limit only: a forger must not spend the tenant's ceiling, which its
    // keys share, so that is taken once the webhook is authenticated.
    state
        .limits
        .admit_unkeyed(&path.tenant_id, None, own_limit(&trigger))
        .await?;
    let compiled = state.compiled.get(&path.tenant_id, &trigger)?;
    let headers_seen: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let query_seen: Vec<(String, String)> = query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let incoming = Incoming {
        headers: &headers_seen,
        query: &query_seen,
        body: &bytes,
    };
    if let Err(reason) =
        authenticate(&state, &path.tenant_id, &trigger, &compiled, incoming).await?
    {
        // Past the refusal budget nothing more is written: a flood of forged webhooks costs
        // the tenant's invocation history nothing.
        return Err(refuse(&state, &path.tenant_id, &trigger, &reason, bytes.len()).await);
    }
    state
        .limits
        .admit_unkeyed(&path.tenant_id, trigger.tenant_rate_limit_per_minute, None)
        .await?;
    let body = parse_body(&bytes)?;
    let invoked = invoke(
        &state,
        TriggerCall {
            tenant_id: &path.tenant_id,
            principal: accept::hook_principal(&trigger.id),
            viewer: None,
            projects: None,
            trigger,
            body,
            envelope: Envelope {
                instruction: None,
                session_id: None,
                environment: "webhook".into(),
            },
            idempotency,
            test: false,
        },
    )
    .await?;
    Ok(render::invoked(invoked, None))
}
