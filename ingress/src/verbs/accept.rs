//! Accepting an invocation: a run request checked, its rate limit and once-only guards
//! (`Idempotency-Key`, `ignoreDuplicates`) claimed, then the run recorded (one group-committed
//! INSERT) and published with a confirm. Every door that creates runs ends here; the trigger
//! pipeline (`verbs::trigger`) shares the guards and the enqueue.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use switchyard_common::Run;
use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::catalog::{contains_nul, valid_id};
use switchyard_common::dedupe::{self, Slot};
use switchyard_common::problem::ErrorCode;
use switchyard_common::runs::{self, NewRun};
use uuid::Uuid;

use crate::AppState;
use crate::accept::StoreError;
use crate::auth::Principal;
use crate::limits::Standing;
use crate::verbs::error::VerbError;
use crate::verbs::view::shown;

/// Largest `message`, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest serialised `metadata`, in bytes.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest `webhookUrl`.
const MAX_URL_LEN: usize = 2048;
/// The longest `wait` a request may ask for.
const MAX_WAIT_SECS: f64 = 60.0;

/// A run as a door asks for it, not yet checked: the native body's members (the vendors' doors
/// fill in theirs). Its canonical JSON is what an `Idempotency-Key` compares.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInput {
    pub agent_id: Option<String>,
    pub message: Option<String>,
    pub inputs: Option<Value>,
    pub webhook_url: Option<String>,
    pub metadata: Option<Value>,
    pub session_id: Option<String>,
    pub wait: Option<f64>,
    pub chat_model_id: Option<String>,
    pub ttl: Option<f64>,
    pub stream: Option<bool>,
    pub priority: Option<i64>,
}

/// A checked run request: parse, don't validate.
struct RunRequest {
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
    priority: Option<i32>,
}

fn check(input: RunInput) -> Result<RunRequest, VerbError> {
    let agent_id = input
        .agent_id
        .ok_or_else(|| VerbError::bad_request("`agentId` is required"))?;
    if !valid_id(&agent_id) {
        return Err(VerbError::bad_request(
            "`agentId` must be 1 to 255 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if input.message.is_none() && input.inputs.is_none() {
        return Err(VerbError::bad_request(
            "give a `message`, `inputs`, or both",
        ));
    }
    if let Some(message) = &input.message
        && message.len() > MAX_MESSAGE_BYTES
    {
        return Err(VerbError::bad_request(format!(
            "`message` is longer than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    if let Some(inputs) = &input.inputs
        && !inputs.is_object()
    {
        return Err(VerbError::bad_request("`inputs` must be a JSON object"));
    }
    let metadata = input
        .metadata
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !metadata.is_object() {
        return Err(VerbError::bad_request("`metadata` must be a JSON object"));
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(VerbError::bad_request(format!(
            "`metadata` is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    if let Some(session) = &input.session_id
        && !(1..=255).contains(&session.chars().count())
    {
        return Err(VerbError::bad_request(
            "`sessionId` must be a string of 1 to 255 characters",
        ));
    }
    let has_nul = input.message.as_deref().is_some_and(|m| m.contains('\0'))
        || input
            .session_id
            .as_deref()
            .is_some_and(|m| m.contains('\0'))
        || input
            .chat_model_id
            .as_deref()
            .is_some_and(|m| m.contains('\0'))
        || input.inputs.as_ref().is_some_and(contains_nul)
        || contains_nul(&metadata);
    if has_nul {
        return Err(VerbError::bad_request(
            "text may not contain the NUL character (\\u0000)",
        ));
    }
    let webhook_url = input.webhook_url.map(check_webhook_url).transpose()?;
    let wait = match input.wait {
        None => None,
        Some(secs) if (0.0..=MAX_WAIT_SECS).contains(&secs) => Some(Duration::from_secs_f64(secs)),
        Some(_) => {
            return Err(VerbError::bad_request(format!(
                "`wait` must be a number of seconds from 0 to {MAX_WAIT_SECS}"
            )));
        }
    };
    if let Some(model) = &input.chat_model_id
        && !(1..=255).contains(&model.chars().count())
    {
        return Err(VerbError::bad_request(
            "`chatModelId` must be a string of 1 to 255 characters",
        ));
    }
    let ttl = match input.ttl {
        None => None,
        Some(secs) if secs.is_finite() && (1.0..=604_800.0).contains(&secs) => {
            Some(Duration::from_secs_f64(secs))
        }
        Some(_) => {
            return Err(VerbError::bad_request(
                "`ttl` must be a number of seconds from 1 to 604800",
            ));
        }
    };
    let priority = match input.priority {
        None => None,
        Some(p) if (0..=100).contains(&p) => i32::try_from(p).ok(),
        Some(_) => {
            return Err(VerbError::bad_request(
                "`priority` must be a whole number from 0 to 100",
            ));
        }
    };
    Ok(RunRequest {
        wait,
        ttl,
        priority,
        chat_model_id: input.chat_model_id,
        stream: input.stream.unwrap_or(false),
        session_id: input.session_id,
        agent_id,
        message: input.message,
        inputs: input.inputs,
        webhook_url,
        metadata,
    })
}

fn check_webhook_url(raw: String) -> Result<String, VerbError> {
    let bad = || VerbError::bad_request("`webhookUrl` must be an absolute http or https URL");
    if raw.len() > MAX_URL_LEN {
        return Err(bad());
    }
    let url = url::Url::parse(&raw).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad());
    }
    Ok(url.to_string())
}

/// What starting a run (or a trigger) did.
pub(crate) enum Started {
    /// A new run, recorded and published.
    New(Run),
    /// The same `Idempotency-Key` and request came before: this is that run, as it is now.
    Replay(Run),
}

/// A run started, and what its caller asked for beyond it.
pub(crate) struct RunStart {
    pub run: Started,
    /// The key's rate-limit standing, for the answer.
    pub standing: Standing,
    /// `wait` of the request.
    pub wait: Option<Duration>,
    /// `stream` of the request.
    pub stream: bool,
}

/// Starts a run: the `trigger` scope, the key's rate limit, the request's checks, the
/// `Idempotency-Key` guard, record and publish. The run comes back as `principal` may see it.
pub(crate) async fn start_run(
    state: &AppState,
    principal: &Principal,
    input: RunInput,
    idempotency: Option<String>,
    door_default: Option<u32>,
) -> Result<RunStart, VerbError> {
    let key = principal.key_with(Scope::Trigger)?;
    let standing = state.limits.admit(key, door_default, None).await?;
    let compared = serde_json::to_value(&input).unwrap_or_default();
    let request = check(input)?;
    let (wait, stream) = (request.wait, request.stream);
    let run_id = Uuid::now_v7();
    let owner = key_principal(key);
    let guards = Guards {
        principal: &owner,
        idempotency: idempotency.as_deref().map(|k| (k, "POST /v1/runs")),
        duplicates_of: None,
        debounce: None,
    };
    if let Guarded::Replay(run) = guard(
        state,
        &key.tenant_id,
        key.project_ids.as_deref(),
        run_id,
        &guards,
        &compared,
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
        agent_id: request.agent_id,
        message: request.message,
        inputs: request.inputs,
        metadata: request.metadata,
        webhook_url: request.webhook_url,
        session_id: request.session_id,
        ttl: request.ttl,
        chat_model_id: request.chat_model_id,
        projects: key.project_ids.clone(),
        trigger: None,
        trace_id: switchyard_common::telemetry::current_trace_id(),
        traceparent: switchyard_common::telemetry::current_traceparent(),
        priority: request.priority,
    };
    let run = enqueue_guarded(state, new, idempotency.is_some()).await?;
    Ok(RunStart {
        run: Started::New(shown(run, Some(principal))),
        standing,
        wait,
        stream,
    })
}

/// What the once-only guards decided about a new request.
pub enum Guarded {
    /// Go on and create the run with the id the guards were claimed for.
    Proceed,
    /// The same `Idempotency-Key` and request came before: answer with that run.
    Replay(Box<Run>),
    /// `ignoreDuplicates`: the same body reached the trigger before, and started this run.
    Duplicate(Uuid),
    /// `debounce`: a call with the same key opened the trigger's period, with this run.
    Debounced(Uuid),
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
    /// `debounce`: the trigger, the digest of the call's key, and the period.
    pub debounce: Option<(&'a str, Vec<u8>, Duration)>,
}

/// Claims the guards for `run_id`. The body is compared as canonical JSON.
pub async fn guard(
    state: &AppState,
    tenant_id: &str,
    projects: Option<&[String]>,
    run_id: Uuid,
    guards: &Guards<'_>,
    body: &Value,
) -> Result<Guarded, VerbError> {
    if guards.idempotency.is_none() && guards.duplicates_of.is_none() && guards.debounce.is_none() {
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
                return Err(VerbError::new(
                    ErrorCode::UnprocessableEntity,
                    "this Idempotency-Key was used with a different request",
                ));
            }
            Slot::Taken { run_id: original } => {
                return match runs::get(&client, tenant_id, original).await? {
                    // A project-limited key must not read another project's run through a key.
                    Some(run) if projects.is_some_and(|p| !p.contains(&run.project_id)) => {
                        Err(VerbError::new(
                            ErrorCode::UnprocessableEntity,
                            "this Idempotency-Key was used with a different request",
                        ))
                    }
                    Some(run) => {
                        count_invocation("replayed");
                        Ok(Guarded::Replay(Box::new(run)))
                    }
                    None => Err(VerbError::new(
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
    if let Some((trigger_id, hash, period)) = &guards.debounce
        && let Slot::Taken { run_id: original } =
            dedupe::claim_trigger_body(&client, tenant_id, trigger_id, hash, run_id, *period)
                .await?
    {
        // The call's Idempotency-Key (if any) stays claimed for `run_id`: the caller points it
        // at the run that carries the call (`dedupe::repoint`) or releases it.
        return Ok(Guarded::Debounced(original));
    }
    Ok(Guarded::Proceed)
}

/// [`enqueue`], giving the guards' slots back when the run was refused (its agent does not
/// exist). After a timeout or an outage the run may still commit, so the slots stay taken.
pub async fn enqueue_guarded(
    state: &AppState,
    new: NewRun,
    guarded: bool,
) -> Result<Run, VerbError> {
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
pub async fn enqueue(state: &AppState, new: NewRun) -> Result<Run, VerbError> {
    let (tenant_id, agent_id, projects) = (
        new.tenant_id.clone(),
        new.agent_id.clone(),
        new.projects.clone(),
    );
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
        .map_err(|_| VerbError::unavailable())?
        .map_err(|_| VerbError::internal("the accept task ended without an answer"))?;
    let run = match stored {
        Ok(Some(run)) => run,
        Ok(None) => return Err(refused(state, &tenant_id, &agent_id, projects.as_deref()).await),
        Err(StoreError::Unavailable) => return Err(VerbError::unavailable()),
        Err(err @ StoreError::Internal(_)) => return Err(VerbError::internal(err)),
    };
    let _ = publishing.await;
    count_invocation("accepted");
    Ok(run)
}

/// Why a run was not recorded: 404 when its agent does not exist in the caller's tenant and
/// projects; 429 when the tenant has its `maxQueued` runs queued already.
async fn refused(
    state: &AppState,
    tenant_id: &str,
    agent_id: &str,
    projects: Option<&[String]>,
) -> VerbError {
    let not_found = || VerbError::not_found(format!("agent `{agent_id}` was not found"));
    let Ok(client) = state.pool.get().await else {
        return VerbError::unavailable();
    };
    match runs::refusal(&client, tenant_id, agent_id, projects).await {
        Ok(runs::Refusal::QueueFull(quota)) => {
            count_invocation("rejected");
            VerbError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "the tenant's quota of queued runs (maxQueued, {quota}) is reached; retry once some have started"
                ),
            )
            .with_retry_after(QUEUE_FULL_RETRY_SECS)
            .with_quota("maxQueued", i64::from(quota))
        }
        Ok(runs::Refusal::NoAgent) => not_found(),
        Err(err) => VerbError::internal(err),
    }
}

/// What a caller refused for a full queue is told to wait.
const QUEUE_FULL_RETRY_SECS: u64 = 5;

/// Counts an invocation by its outcome: `accepted`, `dropped`, `rejected` or `replayed`.
pub fn count_invocation(outcome: &'static str) {
    metrics::counter!(switchyard_common::metrics::INVOCATIONS, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> RunInput {
        let field = |k: &str| v.get(k).cloned();
        RunInput {
            agent_id: field("agentId").and_then(|v| v.as_str().map(str::to_owned)),
            message: field("message").and_then(|v| v.as_str().map(str::to_owned)),
            inputs: field("inputs"),
            webhook_url: field("webhookUrl").and_then(|v| v.as_str().map(str::to_owned)),
            metadata: field("metadata"),
            ..RunInput::default()
        }
    }

    #[test]
    fn a_minimal_request_gets_defaults() {
        let a = check(input(
            serde_json::json!({"agentId": "echo", "inputs": {"x": 1}}),
        ))
        .expect("valid");
        assert_eq!(a.agent_id, "echo");
        assert_eq!(a.metadata, serde_json::json!({}));
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
            let err = check(input(bad.clone())).err().map(|e| e.code());
            assert_eq!(err, Some(ErrorCode::BadRequest), "{bad} should be rejected");
        }
    }
}
