//! `POST /hooks/{tenantId}/{triggerId}`: inbound webhooks, for senders that cannot send an API key
//! (GitHub, Stripe, Slack, Standard Webhooks senders). The trigger's `signatureVerification`
//! (with the secret from its credential) and/or its `authentication` headers authenticate the
//! request; then the same pipeline as the trigger route runs, with `environment: "webhook"`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use switchyard_common::catalog::credentials;
use switchyard_common::catalog::invocations::{self, NewRefusal, Refusal};
use switchyard_common::catalog::triggers::Trigger;
use switchyard_common::inbound;
use utoipa::IntoParams;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Params;
use crate::pipeline;
use crate::routes::invoke::{
    Compiled, Envelope, TriggerCall, TriggerRef, parse_body, resolve, run_trigger,
};
use crate::routes::manage::Errors;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct HookPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Trigger identifier
    pub trigger_id: String,
}

/// The parts of an inbound request that authentication reads.
struct Incoming<'a> {
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    body: &'a Bytes,
}

/// Checks the request against the trigger's configured authentication; the error is the reason
/// to record and show (short, and never the request's own content).
async fn authenticate(
    state: &AppState,
    tenant_id: &str,
    trigger: &Trigger,
    compiled: &Compiled,
    incoming: Incoming<'_>,
) -> Result<Result<(), String>, ApiError> {
    let Incoming {
        headers,
        query,
        body,
    } = incoming;
    let stored_auth = trigger.stored_authentication.as_ref();
    if trigger.signature_verification.is_none() && stored_auth.is_none() {
        return Ok(Err(
            "this trigger takes no webhooks: give it signatureVerification or authentication"
                .into(),
        ));
    }
    if let Some(auth) = stored_auth {
        let checks = auth
            .get("headers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for check in checks {
            let name = check
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let want = check
                .get("valueSha256")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let got = headers
                .get(name)
                .map(|v| inbound::hex(&Sha256::digest(v.as_bytes())))
                .unwrap_or_default();
            if !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
                return Ok(Err(format!("the `{name}` header is missing or wrong")));
            }
        }
    }
    if let Some(verifier) = &compiled.verifier {
        let Some(credential) = &trigger.signing_secret_credential_reference_id else {
            return Ok(Err(
                "the trigger names no signing secret (signingSecretCredentialReferenceId)".into(),
            ));
        };
        // Whatever goes wrong here, an unauthenticated sender learns nothing about it.
        let client = state.pool.get().await?;
        let Ok(secret) =
            credentials::reveal(&client, &state.master_key, tenant_id, credential).await
        else {
            tracing::warn!(trigger_id = %trigger.id, "the trigger's signing secret cannot be read");
            return Ok(Err("the signature cannot be checked".into()));
        };
        drop(client);
        let header_list: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let query_list: Vec<(String, String)> = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let request = inbound::Request {
            headers: &header_list,
            query: &query_list,
            body,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(refused) = verifier.verify(&secret, &request, now) {
            return Ok(Err(refused.to_string()));
        }
    }
    Ok(Ok(()))
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
    let idempotency = pipeline::idempotency_key(&headers)?;
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
    state
        .limits
        .admit_trigger(&path.tenant_id, &trigger.id, trigger.rate_limit_per_minute)?;
    let compiled = state.compiled.get(&path.tenant_id, &trigger)?;
    let verdict = authenticate(
        &state,
        &path.tenant_id,
        &trigger,
        &compiled,
        Incoming {
            headers: &headers,
            query: query.as_deref(),
            body: &bytes,
        },
    )
    .await?;
    if let Err(reason) = verdict {
        // Past the refusal budget nothing more is written: a flood of forged webhooks costs
        // the tenant's invocation history nothing.
        state.limits.admit_refusal(&path.tenant_id, &trigger.id)?;
        let client = state.pool.get().await?;
        invocations::record_refusal(
            &client,
            &NewRefusal {
                tenant_id: &path.tenant_id,
                project_id: &trigger.project_id,
                agent_id: &trigger.agent_id,
                trigger_id: &trigger.id,
                refusal: Refusal::Rejected,
                reason: format!(
                    "the webhook was not authenticated: {reason} ({} bytes, not stored)",
                    bytes.len()
                ),
                environment: Some("webhook"),
                session_id: None,
                // An unauthenticated sender's content is never stored.
                request_payload: &Value::Null,
                duplicate_of: None,
            },
        )
        .await?;
        crate::pipeline::count_invocation("rejected");
        return Err(ApiError::unauthorized(format!(
            "the webhook was not authenticated: {reason}"
        )));
    }
    let body = parse_body(&bytes)?;
    run_trigger(
        &state,
        TriggerCall {
            tenant_id: &path.tenant_id,
            principal: pipeline::hook_principal(&trigger.id),
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
        None,
    )
    .await
}
