//! Authenticating an inbound webhook, which carries no API key: the trigger's static headers
//! (compared by SHA-256 digest, in constant time) and/or its `signatureVerification` with the
//! secret unsealed from its credential; and refusing one, which stores none of its content.

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use switchyard_common::catalog::credentials;
use switchyard_common::catalog::invocations::{self, NewRefusal, Refusal};
use switchyard_common::catalog::triggers::Trigger;
use switchyard_common::inbound;

use crate::AppState;
use crate::verbs::accept;
use crate::verbs::error::VerbError;
use crate::verbs::trigger::Compiled;

/// An inbound request as authentication reads it.
pub(crate) struct Incoming<'a> {
    /// Header names (lowercase) and raw values.
    pub headers: &'a [(String, Vec<u8>)],
    /// Query parameters, decoded.
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Checks the request against the trigger's configured authentication; the error is the reason
/// to record and show (short, and never the request's own content).
pub(crate) async fn authenticate(
    state: &AppState,
    tenant_id: &str,
    trigger: &Trigger,
    compiled: &Compiled,
    incoming: Incoming<'_>,
) -> Result<Result<(), String>, VerbError> {
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
            let got = incoming
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| inbound::hex(&Sha256::digest(v)))
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
        let header_list: Vec<(String, String)> = incoming
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.clone()).ok()?)))
            .collect();
        let request = inbound::Request {
            headers: &header_list,
            query: incoming.query,
            body: incoming.body,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(refused) = verifier.verify(&secret, &request, now) {
            return Ok(Err(refused.to_string()));
        }
    }
    Ok(Ok(()))
}

/// Refuses an unauthenticated webhook: within the trigger's refusal budget it is recorded as a
/// rejected invocation (the reason and its size, none of its content) and answered 401; past
/// the budget, 429 and nothing is written.
pub(crate) async fn refuse(
    state: &AppState,
    tenant_id: &str,
    trigger: &Trigger,
    reason: &str,
    size: usize,
) -> VerbError {
    if let Err(limited) = state.limits.admit_refusal(tenant_id, &trigger.id) {
        return limited;
    }
    let recorded = async {
        let client = state.pool.get().await?;
        invocations::record_refusal(
            &client,
            &NewRefusal {
                tenant_id,
                project_id: &trigger.project_id,
                agent_id: &trigger.agent_id,
                trigger_id: &trigger.id,
                refusal: Refusal::Rejected,
                reason: format!(
                    "the webhook was not authenticated: {reason} ({size} bytes, not stored)"
                ),
                environment: Some("webhook"),
                session_id: None,
                // An unauthenticated sender's content is never stored.
                request_payload: &Value::Null,
                duplicate_of: None,
            },
        )
        .await?;
        Ok::<_, VerbError>(())
    };
    if let Err(err) = recorded.await {
        return err;
    }
    accept::count_invocation("rejected");
    VerbError::unauthorized(format!("the webhook was not authenticated: {reason}"))
}
