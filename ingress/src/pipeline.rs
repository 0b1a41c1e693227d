//! The steps every door shares once a request is parsed: record the run (one group-committed
//! INSERT) and publish it with a confirm, then optionally wait for its end. The native runs API
//! and the trigger route both end here.

use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value;
use switchyard_common::Run;
use switchyard_common::dedupe::{self, Slot};
use switchyard_common::problem::ErrorCode;
use switchyard_common::runs::{self, NewRun};
use uuid::Uuid;

use crate::AppState;
use crate::accept::StoreError;
use crate::error::ApiError;

/// The header that makes a create idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` a request sent, checked: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "`Idempotency-Key` must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// What the once-only guards decided about a new request.
pub enum Guarded {
    /// Go on and create the run with the id the guards were claimed for.
    Proceed,
    /// The same `Idempotency-Key` and request came before: answer with that run.
    Replay(Box<Run>),
    /// `ignoreDuplicates`: the same body reached the trigger before, and started this run.
    Duplicate(Uuid),
}

/// Who an `Idempotency-Key` belongs to: the API key that sent it. Keys never meet across
/// principals, so one key cannot pre-claim another's keys or read its runs through a replay.
pub fn key_principal(key: &switchyard_common::catalog::api_keys::ApiKey) -> String {
    format!("key:{}", key.id)
}

/// Who an `Idempotency-Key` sent with a trigger's inbound webhooks belongs to: the trigger (its
/// senders share one secret, so they are one principal).
pub fn hook_principal(trigger_id: &str) -> String {
    format!("hook:{trigger_id}")
}

/// The once-only checks of one request.
pub struct Guards<'a> {
    /// Who sent the request ([`key_principal`], [`hook_principal`]).
    pub principal: &'a str,
    /// `Idempotency-Key`, with the route it came to.
    pub idempotency: Option<(&'a str, &'a str)>,
    /// `ignoreDuplicates`: the trigger whose earlier bodies count.
    pub duplicates_of: Option<&'a str>,
}

/// Claims the guards for `run_id`. The body is compared as canonical JSON.
pub async fn guard(
    state: &AppState,
    tenant_id: &str,
    projects: Option<&[String]>,
    run_id: Uuid,
    guards: &Guards<'_>,
    body: &Value,
) -> Result<Guarded, ApiError> {
    if guards.idempotency.is_none() && guards.duplicates_of.is_none() {
        return Ok(Guarded::Proceed);
    }
    let canonical = dedupe::canonical(body);
    let client = state.pool.get().await?;
    if let Some((key, route)) = guards.idempotency {
        let hash = dedupe::digest(&[route.as_bytes(), canonical.as_bytes()]);
        match dedupe::claim_idempotency_key(
            &client,
            tenant_id,
            guards.principal,
            key,
            &hash,
            run_id,
            state.idempotency_ttl,
        )
        .await?
        {
            Slot::Claimed => {}
            Slot::Mismatch => {
                return Err(ApiError::new(
                    ErrorCode::UnprocessableEntity,
                    "this Idempotency-Key was used with a different request",
                ));
            }
            Slot::Taken { run_id: original } => {
                return match runs::get(&client, tenant_id, original).await? {
                    // A project-limited key must not read another project's run through a key.
                    Some(run) if projects.is_some_and(|p| !p.contains(&run.project_id)) => {
                        Err(ApiError::new(
                            ErrorCode::UnprocessableEntity,
                            "this Idempotency-Key was used with a different request",
                        ))
                    }
                    Some(run) => {
                        count_invocation("replayed");
                        Ok(Guarded::Replay(Box::new(run)))
                    }
                    None => Err(ApiError::new(
                        ErrorCode::Conflict,
                        "a request with this Idempotency-Key is still being processed; retry shortly",
                    )),
                };
            }
        }
    }
    if let Some(trigger_id) = guards.duplicates_of {
        let hash = dedupe::digest(&[canonical.as_bytes()]);
        if let Slot::Taken { run_id: original } = dedupe::claim_trigger_body(
            &client,
            tenant_id,
            trigger_id,
            &hash,
            run_id,
            state.duplicate_window,
        )
        .await?
        {
            // The idempotency key (if any) was claimed for a run that will not exist.
            dedupe::release(&client, tenant_id, run_id).await?;
            return Ok(Guarded::Duplicate(original));
        }
    }
    Ok(Guarded::Proceed)
}

/// [`enqueue`], giving the guards' slots back when the run was refused (its agent does not
/// exist). After a timeout or an outage the run may still commit, so the slots stay taken.
pub async fn enqueue_guarded(
    state: &AppState,
    new: NewRun,
    guarded: bool,
) -> Result<Run, ApiError> {
    let (tenant_id, run_id) = (new.tenant_id.clone(), new.id);
    let outcome = enqueue(state, new).await;
    if outcome
        .as_ref()
        .is_err_and(|e| e.code() == ErrorCode::NotFound)
        && guarded
        && let Ok(client) = state.pool.get().await
    {
        let _ = dedupe::release(&client, &tenant_id, run_id).await;
    }
    outcome
}

/// Records `new` as `queued` and publishes its id, answering once the broker confirmed (or the id
/// was handed to the background publisher). A publish failure is not an error: the row is the
/// outbox. 404 when the agent does not exist in the caller's tenant and projects.
pub async fn enqueue(state: &AppState, new: NewRun) -> Result<Run, ApiError> {
    let agent_id = new.agent_id.clone();
    // Recording and publishing run in their own task: a client that hangs up mid-request cannot
    // leave a committed run unpublished (it would wait for the sweeper).
    let (stored_tx, stored_rx) = tokio::sync::oneshot::channel();
    let task_state = state.clone();
    let publishing = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let stored = task_state.accepter.insert(new).await;
        let _ = stored_tx.send(stored.clone());
        if let Ok(Some(run)) = stored {
            let queue = task_state.broker.topology().runs();
            if let Err(err) = task_state.broker.publish_id(&queue, run.id).await {
                tracing::warn!(run_id = %run.id, error = %err, "run stored but not published yet; retrying in the background");
                task_state.backlog.push(run.id);
            }
        }
    }));
    let stored = tokio::time::timeout(state.accept_timeout, stored_rx)
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|_| ApiError::internal("the accept task ended without an answer"))?;
    let run = match stored {
        Ok(Some(run)) => run,
        Ok(None) => {
            return Err(ApiError::not_found(format!(
                "agent `{agent_id}` was not found"
            )));
        }
        Err(StoreError::Unavailable) => return Err(ApiError::unavailable()),
        Err(err @ StoreError::Internal(_)) => return Err(ApiError::internal(err)),
    };
    let _ = publishing.await;
    count_invocation("accepted");
    Ok(run)
}

/// Counts an invocation by its outcome: `accepted`, `dropped`, `rejected` or `replayed`.
pub fn count_invocation(outcome: &'static str) {
    metrics::counter!(switchyard_common::metrics::INVOCATIONS, "outcome" => outcome).increment(1);
}

/// Waits until `run` ends or `wait` passes (never longer than `SWITCHYARD_MAX_WAIT`): the
/// finished run, or `None`; 401 if the key of `permit` is revoked meanwhile. Follows the run's
/// events on this replica's hub; see [`crate::routes::events::wait_for_end`].
pub async fn wait_for_end(
    state: &AppState,
    run: &Run,
    wait: Duration,
    permit: &crate::streams::Permit,
) -> Result<Option<Run>, ApiError> {
    crate::routes::events::wait_for_end(state, run, wait, permit).await
}
