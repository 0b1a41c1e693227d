//! Invoking a trigger: resolving it (cached), its checks compiled once per version, the
//! caller admitted, then filters → schema → once-only guards → template → record and publish,
//! and the wait of `waitForResponse`. Every door that reaches a trigger (ChatHive's route,
//! Writer's blueprints, inbound webhooks, the test route) goes through here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use switchyard_common::Run;
use switchyard_common::catalog::invocations::{self, NewRefusal, Refusal};
use switchyard_common::catalog::triggers::{self, Debounce, DebounceMode, Trigger};
use switchyard_common::filters::Filter;
use switchyard_common::inbound::Verifier;
use switchyard_common::problem::{ErrorCode, Violation};
use switchyard_common::runs::{NewRun, TriggerOrigin};
use switchyard_common::template::{Template, TooLarge, limit_for};
use switchyard_common::transform::Transform;
use switchyard_common::{dedupe, runs};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::limits::Standing;
use crate::verbs::accept::{self, Guarded, Guards, Started};
use crate::verbs::error::VerbError;
use crate::verbs::follow::wait_for_end;
use crate::verbs::view::shown;

/// Most compiled triggers kept per process.
const CACHE_CAPACITY: usize = 4_096;

/// What a trigger's checks compile to, once per trigger version.
pub struct Compiled {
    /// `Err` for a schema stored by an earlier version that no longer compiles (look-around):
    /// only calls that need the schema fail, with 422.
    schema: Result<Option<jsonschema::Validator>, String>,
    filter: Option<Filter>,
    template: Option<Template>,
    /// The trigger's `outputTransform`, parsed.
    pub(crate) transform: Option<Transform>,
    /// Its `signatureVerification`, with the regexes compiled.
    pub(crate) verifier: Option<Verifier>,
}

impl Compiled {
    /// The trigger's `outputTransform` applied to `result` (as it is without one), or 422 naming
    /// the run when the transform would render more than its limit.
    pub(crate) fn shown_result(&self, run_id: Uuid, result: &Value) -> Result<Value, VerbError> {
        match &self.transform {
            None => Ok(result.clone()),
            Some(t) => t.apply(result).map_err(|too_large| {
                VerbError::new(
                    ErrorCode::UnprocessableEntity,
                    format!(
                        "the run finished, but the trigger's outputTransform cannot be applied: \
                         {too_large}; read the untransformed result at /v1/runs/{run_id}"
                    ),
                )
                .with_run(run_id)
            }),
        }
    }
}

/// How a door names a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TriggerRef {
    /// By its key (lowercase) in a project: the trigger route.
    Key {
        tenant_id: String,
        project_id: String,
        key: String,
    },
    /// By its id in the tenant: Writer's blueprint route.
    Id { tenant_id: String, id: String },
}

/// Resolved triggers; see [`crate::cache`].
pub type TriggerCache = crate::cache::ControlledCache<TriggerRef, Trigger>;

/// The trigger `reference` names: from the cache, else from Postgres (then cached).
pub(crate) async fn resolve(
    state: &AppState,
    reference: TriggerRef,
) -> Result<Option<Arc<Trigger>>, VerbError> {
    if let Some(trigger) = state.triggers.get(&reference) {
        return Ok(Some(trigger));
    }
    let epoch = state.triggers.epoch();
    let client = state.pool.get().await?;
    let found = match &reference {
        TriggerRef::Key {
            tenant_id,
            project_id,
            key,
        } => triggers::resolve(&client, tenant_id, project_id, key).await?,
        TriggerRef::Id { tenant_id, id } => triggers::find(&client, tenant_id, id).await?,
    };
    let Some(trigger) = found else {
        return Ok(None);
    };
    let trigger = Arc::new(trigger);
    state.triggers.fill(reference, trigger.clone(), epoch);
    Ok(Some(trigger))
}

/// A trigger's compiled form, tagged with the version (and creation time: a trigger deleted and
/// made again starts over at version 1) it was compiled from.
type Versioned = ((i32, time::OffsetDateTime), Arc<Compiled>);

/// Compiled triggers by (tenant, trigger id).
#[derive(Default)]
pub struct CompiledTriggers {
    entries: Mutex<HashMap<(String, String), Versioned>>,
}

impl CompiledTriggers {
    /// The compiled form of `trigger`, compiling it when its version is new.
    pub(crate) fn get(
        &self,
        tenant_id: &str,
        trigger: &Trigger,
    ) -> Result<Arc<Compiled>, VerbError> {
        let key = (tenant_id.to_owned(), trigger.id.clone());
        if let Ok(entries) = self.entries.lock()
            && let Some((version, compiled)) = entries.get(&key)
            && *version == (trigger.version, trigger.created_at)
        {
            return Ok(compiled.clone());
        }
        let compiled = Arc::new(Compiled {
            schema: trigger
                .input_schema
                .as_ref()
                .map(triggers::compile_input_schema)
                .transpose(),
            filter: trigger
                .filters
                .as_ref()
                .map(Filter::parse)
                .transpose()
                .map_err(|e| VerbError::internal(format!("stored filters: {e}")))?,
            template: trigger
                .message_template
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| VerbError::internal(format!("stored messageTemplate: {e}")))?,
            transform: trigger.output_transform.as_ref().map(Transform::compile),
            verifier: trigger
                .signature_verification
                .as_ref()
                .map(Verifier::compile)
                .transpose()
                .map_err(|e| VerbError::internal(format!("stored signatureVerification: {e}")))?,
        });
        if let Ok(mut entries) = self.entries.lock() {
            // Full: one entry makes room (not all of them, so a tenant cycling through many
            // triggers cannot make every other trigger compile again).
            if entries.len() >= CACHE_CAPACITY
                && let Some(evicted) = entries.keys().next().cloned()
            {
                entries.remove(&evicted);
            }
            entries.insert(
                key,
                ((trigger.version, trigger.created_at), compiled.clone()),
            );
        }
        Ok(compiled)
    }
}

/// ChatHive's body members, checked; every other member passes through untouched.
pub(crate) struct Envelope {
    pub instruction: Option<Value>,
    pub session_id: Option<String>,
    pub environment: String,
}

/// ISO 639-1: every two-letter language code.
const ISO_639_1: &str = "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch \
    co cr cs cu cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he \
    hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv \
    kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny \
    oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su \
    sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu";

pub(crate) fn envelope(body: &Value) -> Result<Envelope, VerbError> {
    let bad = |m: &str| VerbError::bad_request(m.to_owned());
    let instruction = match body.get("instruction") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Object(_))) => Some(v.clone()),
        Some(_) => return Err(bad("`instruction` must be a string or an object")),
    };
    let session_id = match body.get("sessionId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if (1..=255).contains(&s.chars().count()) => Some(s.clone()),
        Some(_) => return Err(bad("`sessionId` must be a string of 1 to 255 characters")),
    };
    let environment = match body.get("environment") {
        None | Some(Value::Null) => "api".to_owned(),
        Some(Value::String(s)) if (1..=64).contains(&s.len()) => s.clone(),
        Some(_) => return Err(bad("`environment` must be a string of 1 to 64 characters")),
    };
    match body.get("language") {
        None | Some(Value::Null) => {}
        Some(Value::String(code))
            if code.len() == 2
                && ISO_639_1
                    .split_whitespace()
                    .any(|c| c.eq_ignore_ascii_case(code)) => {}
        Some(_) => {
            return Err(bad(
                "`language` must be an ISO 639-1 code (two letters, such as \"en\")",
            ));
        }
    }
    match body.get("timezone") {
        None | Some(Value::Null) => {}
        Some(Value::String(tz)) if tz.parse::<chrono_tz::Tz>().is_ok() => {}
        Some(_) => {
            return Err(bad(
                "`timezone` must be an IANA time zone, such as \"Europe/Amsterdam\"",
            ));
        }
    }
    match body.get("customer") {
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => return Err(bad("`customer` must be an object")),
    }
    match body.get("context") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map))
            if map.values().all(|v| {
                matches!(
                    v,
                    Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Null
                )
            }) => {}
        Some(_) => {
            return Err(bad(
                "`context` must be a flat object of booleans, numbers and strings",
            ));
        }
    }
    Ok(Envelope {
        instruction,
        session_id,
        environment,
    })
}

/// The message the agent receives: the rendered template, else the instruction, else nothing
/// (the agent gets the body as `inputs`). A template that would render more than 256 KiB (or
/// the body's own size, when larger) is refused before it is built.
fn message(
    compiled: &Compiled,
    envelope: &Envelope,
    body: &Value,
) -> Result<(Option<String>, Vec<String>), TooLarge> {
    Ok(match (&compiled.template, &envelope.instruction) {
        (Some(template), _) => {
            // A template may copy the body, whatever `SWITCHYARD_MAX_BODY_BYTES` allows.
            let own = switchyard_common::template::json_len_within(body, usize::MAX).unwrap_or(0);
            let rendered = template.render_request(body, limit_for(own))?;
            (Some(rendered.text), rendered.missing)
        }
        (None, Some(Value::String(s))) => (Some(s.clone()), Vec::new()),
        (None, Some(other)) => (Some(other.to_string()), Vec::new()),
        (None, None) => (None, Vec::new()),
    })
}

/// Admits a call by `key` to `trigger`: the key's (and tenant's) limit, and the trigger's own.
pub(crate) async fn admit(
    state: &AppState,
    key: &switchyard_common::catalog::api_keys::ApiKey,
    trigger: &Trigger,
) -> Result<Standing, VerbError> {
    state.limits.admit(key, None, own_limit(trigger)).await
}

/// The trigger's own limit, when it has one.
pub(crate) fn own_limit(trigger: &Trigger) -> Option<(&str, u32)> {
    trigger
        .rate_limit_per_minute
        .and_then(|n| u32::try_from(n).ok())
        .map(|n| (trigger.id.as_str(), n))
}

/// A call that reached a trigger, authenticated and admitted.
pub(crate) struct TriggerCall<'a> {
    pub tenant_id: &'a str,
    /// Who is calling, for `Idempotency-Key` ([`accept::key_principal`] or
    /// [`accept::hook_principal`]).
    pub principal: String,
    /// Who sees the run in the answer (`None`: an inbound webhook's sender); see
    /// [`crate::verbs::view::shown`].
    pub viewer: Option<&'a Principal>,
    /// The caller's project limits (an API key's), checked again by the INSERT.
    pub projects: Option<Vec<String>>,
    pub trigger: Arc<Trigger>,
    pub body: Value,
    pub envelope: Envelope,
    pub idempotency: Option<String>,
    /// A test run (`…/triggers/{id}/test`): marked `{"test": true}` in its metadata, and neither
    /// checked for nor remembered as a duplicate.
    pub test: bool,
}

/// What invoking a trigger came to.
pub(crate) enum Invoked {
    /// The same `Idempotency-Key` and request came before: that run, as it is now.
    Replayed(Run),
    /// The run is recorded and published (the trigger does not wait, or this caller may not).
    Accepted(Run),
    /// `waitForResponse`: the run finished in time; its result after `outputTransform`.
    Finished(Run),
}

/// The pipeline from the trigger on, then its waiting: the run accepted, or (when the trigger
/// says `waitForResponse`) finished in time, or a 408 naming the run, which goes on.
pub(crate) async fn invoke(state: &AppState, call: TriggerCall<'_>) -> Result<Invoked, VerbError> {
    let trigger = call.trigger.clone();
    let viewer = call.viewer;
    match start_trigger(state, call).await? {
        Started::Replay(run) => Ok(Invoked::Replayed(run)),
        Started::New(run) => answer(state, &trigger, run, viewer).await,
    }
}

/// The pipeline from the trigger on: filters → schema → once-only guards → template → record
/// and publish. Every door that resolves a trigger goes through here.
pub(crate) async fn start_trigger(
    state: &AppState,
    call: TriggerCall<'_>,
) -> Result<Started, VerbError> {
    let TriggerCall {
        tenant_id,
        principal,
        viewer,
        projects,
        trigger,
        body,
        envelope,
        idempotency,
        test,
    } = call;
    let client = state.pool.get().await?;
    let compiled = state.compiled.get(tenant_id, &trigger)?;
    let refusal = |refusal: Refusal, reason: String| NewRefusal {
        tenant_id,
        project_id: &trigger.project_id,
        agent_id: &trigger.agent_id,
        trigger_id: &trigger.id,
        refusal,
        reason,
        environment: Some(&envelope.environment),
        session_id: envelope.session_id.as_deref(),
        request_payload: &body,
        duplicate_of: None,
    };

    if let Some(filter) = &compiled.filter
        && !filter.matches(&body)
    {
        let reason = "the body does not match the trigger's filters".to_owned();
        drop(client);
        record_drop(state, &refusal(Refusal::Dropped, reason.clone())).await?;
        return Err(VerbError::bad_request(format!(
            "the event was dropped: {reason}"
        )));
    }
    // A schema stored before patterns were compiled without backtracking may use look-around:
    // the trigger must be updated, and its callers are told so.
    let schema = compiled.schema.as_ref().map_err(|e| {
        VerbError::new(
            ErrorCode::UnprocessableEntity,
            format!("the trigger's inputSchema no longer compiles ({e}); update the trigger"),
        )
    })?;
    if let Some(schema) = schema {
        let violations: Vec<Violation> = schema
            .iter_errors(&body)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if !violations.is_empty() {
            let reason = format!(
                "the body breaks the trigger's inputSchema: {}",
                violations
                    .iter()
                    .map(|v| format!(
                        "{} {}",
                        if v.pointer.is_empty() {
                            "/"
                        } else {
                            &v.pointer
                        },
                        v.message
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            invocations::record_refusal(&client, &refusal(Refusal::Rejected, reason.clone()))
                .await?;
            accept::count_invocation("rejected");
            return Err(
                VerbError::new(ErrorCode::UnprocessableEntity, reason).with_violations(violations)
            );
        }
    }
    // Rendered before the once-only guards, so that a refused render holds no slot.
    let message = match message(&compiled, &envelope, &body) {
        Ok(rendered) => rendered,
        Err(too_large) => {
            let reason = format!("the trigger's messageTemplate cannot be rendered: {too_large}");
            invocations::record_refusal(&client, &refusal(Refusal::Rejected, reason.clone()))
                .await?;
            accept::count_invocation("rejected");
            return Err(VerbError::new(ErrorCode::UnprocessableEntity, reason));
        }
    };
    drop(client);
    // A test run is never debounced, as it is never taken for a duplicate.
    let debounce = trigger.debounce.as_ref().filter(|_| !test);
    let debounce_hash =
        debounce.map(|d| dedupe::digest(&[b"debounce\0", d.key_of(&body).as_bytes()]));
    let route = format!("trigger {}", trigger.id);
    // A trailing debounce's held run may be released between the guard and the replacement: then
    // its period is over, and the call opens a period of its own (a second pass).
    let mut passes = 0;
    let run_id = loop {
        passes += 1;
        let run_id = Uuid::now_v7();
        let guards = Guards {
            principal: &principal,
            idempotency: idempotency.as_deref().map(|k| (k, route.as_str())),
            duplicates_of: (trigger.ignore_duplicates && !test && debounce.is_none())
                .then_some(trigger.id.as_str()),
            debounce: debounce.zip(debounce_hash.as_ref()).map(|(d, hash)| {
                (
                    trigger.id.as_str(),
                    hash.clone(),
                    Duration::from_secs(u64::try_from(d.period_seconds).unwrap_or(1)),
                )
            }),
        };
        match accept::guard(
            state,
            tenant_id,
            projects.as_deref(),
            run_id,
            &guards,
            &body,
        )
        .await?
        {
            Guarded::Proceed => break run_id,
            Guarded::Replay(run) => return Ok(Started::Replay(shown(*run, viewer))),
            Guarded::Duplicate(original) => {
                let mut dropped = refusal(
                    Refusal::Dropped,
                    format!("a duplicate of the body that started run {original}"),
                );
                dropped.duplicate_of = Some(original);
                record_drop(state, &dropped).await?;
                return Err(VerbError::new(
                    ErrorCode::Conflict,
                    "the event was dropped: the trigger ignores duplicates, and this body came \
                     before",
                )
                .with_run(original));
            }
            Guarded::Debounced(original) => {
                let (Some(debounce), Some(key_hash)) = (debounce, debounce_hash.as_ref()) else {
                    return Err(VerbError::internal("a debounce without its settings"));
                };
                let joining = Joining {
                    tenant_id,
                    trigger_id: &trigger.id,
                    debounce,
                    key_hash,
                    original,
                    run_id,
                    message: message.0.as_deref(),
                    missing: &message.1,
                    body: &body,
                };
                match join_debounce(state, &joining, &refusal).await? {
                    Joined::Run(run) => return Ok(Started::New(shown(*run, viewer))),
                    Joined::PeriodOver if passes < 3 => continue,
                    Joined::PeriodOver => {
                        return Err(VerbError::new(
                            ErrorCode::Conflict,
                            "the debounced run started while this call joined it; retry",
                        ));
                    }
                }
            }
        }
    };
    let (message, missing_placeholders) = message;

    let guarded =
        idempotency.is_some() || (trigger.ignore_duplicates && !test) || debounce.is_some();
    let new = NewRun {
        id: run_id,
        tenant_id: tenant_id.to_owned(),
        agent_id: trigger.agent_id.clone(),
        message,
        inputs: Some(body),
        metadata: if test {
            serde_json::json!({"test": true})
        } else {
            Value::Object(Default::default())
        },
        webhook_url: trigger.webhook_url.clone(),
        session_id: envelope.session_id,
        ttl: None,
        chat_model_id: None,
        projects,
        trigger: Some(TriggerOrigin {
            trigger_id: trigger.id.clone(),
            environment: envelope.environment,
            missing_placeholders,
            hold: debounce
                .filter(|d| d.mode == DebounceMode::Trailing)
                .map(|d| Duration::from_secs(u64::try_from(d.period_seconds).unwrap_or(1))),
        }),
        trace_id: switchyard_common::telemetry::current_trace_id(),
        traceparent: switchyard_common::telemetry::current_traceparent(),
        priority: trigger.priority,
    };
    Ok(Started::New(shown(
        accept::enqueue_guarded(state, new, guarded).await?,
        viewer,
    )))
}

/// A call that found its key's debounce period open.
struct Joining<'a> {
    tenant_id: &'a str,
    trigger_id: &'a str,
    debounce: &'a Debounce,
    /// The digest naming the period (the call's key).
    key_hash: &'a [u8],
    /// The period's run.
    original: Uuid,
    /// The id the call's own guards were claimed for.
    run_id: Uuid,
    message: Option<&'a str>,
    missing: &'a [String],
    body: &'a Value,
}

/// What joining a debounce period came to.
enum Joined {
    /// The run that carries the call.
    Run(Box<Run>),
    /// The period's run was released meanwhile: the period is ended and the call's claims given
    /// back, for the call to open a period of its own.
    PeriodOver,
}

/// Joins a call to its key's open period. Leading: the call is dropped, naming the period's run.
/// Trailing: its body replaces the held run's, and the body replaced is dropped. Either way the
/// call's `Idempotency-Key` now names the run that carries it.
async fn join_debounce<'a>(
    state: &AppState,
    call: &Joining<'a>,
    refusal: &(dyn Fn(Refusal, String) -> NewRefusal<'a> + Sync),
) -> Result<Joined, VerbError> {
    let Joining {
        tenant_id,
        original,
        run_id,
        ..
    } = *call;
    let client = state.pool.get().await?;
    let earlier = match call.debounce.mode {
        DebounceMode::Leading => None,
        DebounceMode::Trailing => {
            let replaced = runs::replace_debounced(
                &client,
                tenant_id,
                original,
                call.message,
                call.body,
                call.missing,
            )
            .await?;
            let Some(earlier) = replaced else {
                dedupe::end_period(&client, tenant_id, call.trigger_id, call.key_hash, original)
                    .await?;
                dedupe::release(&client, tenant_id, run_id).await?;
                return Ok(Joined::PeriodOver);
            };
            Some(earlier.unwrap_or(Value::Null))
        }
    };
    // A leading period's run may still be being recorded (or was refused): nothing is dropped
    // into a run that is not there.
    let Some(run) = runs::get(&client, tenant_id, original).await? else {
        dedupe::release(&client, tenant_id, run_id).await?;
        return Err(VerbError::new(
            ErrorCode::Conflict,
            "the call that opened this debounce period is still being recorded; retry shortly",
        ));
    };
    dedupe::repoint(&client, tenant_id, run_id, original).await?;
    drop(client);
    let mut dropped = match &earlier {
        None => refusal(
            Refusal::Dropped,
            format!(
                "debounced: run {original} started from an earlier call with the same key \
                 within {}s",
                call.debounce.period_seconds
            ),
        ),
        Some(_) => refusal(
            Refusal::Dropped,
            format!(
                "debounced: a later call with the same key replaced this body in run {original}"
            ),
        ),
    };
    if let Some(earlier) = &earlier {
        dropped.request_payload = earlier;
    }
    dropped.duplicate_of = Some(original);
    record_drop(state, &dropped).await?;
    Ok(Joined::Run(Box::new(run)))
}

/// The run accepted; or, when the trigger waits for the response, the finished run (its result
/// after `outputTransform`) or 408 naming the run, which continues.
async fn answer(
    state: &AppState,
    trigger: &Trigger,
    run: Run,
    viewer: Option<&Principal>,
) -> Result<Invoked, VerbError> {
    if !trigger.wait_for_response {
        return Ok(Invoked::Accepted(run));
    }
    let wait = Duration::from_secs(u64::try_from(trigger.wait_timeout_seconds).unwrap_or(30))
        .min(state.max_wait);
    // The run is recorded: past the wait cap the caller gets the 408 that names it.
    let Ok(permit) = state
        .streams
        .open(viewer.and_then(Principal::key_id), &run.tenant_id)
    else {
        return Err(VerbError::new(
            ErrorCode::RequestTimeout,
            "the run was accepted, but too many waits are open for this key or tenant to wait \
             for it; it continues",
        )
        .with_run(run.id));
    };
    match wait_for_end(state, &run, wait, &permit).await? {
        Some(done) => {
            let mut done = shown(done, viewer);
            if let Some(result) = &done.result {
                let compiled = state.compiled.get(&run.tenant_id, trigger)?;
                done.result = Some(compiled.shown_result(done.id, result)?);
            }
            Ok(Invoked::Finished(done))
        }
        None => Err(VerbError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the run did not finish within {}s; it continues",
                wait.as_secs_f64()
            ),
        )
        .with_run(run.id)),
    }
}

/// Records a dropped invocation and, in the same transaction, hands its `invocation.dropped`
/// event to the webhook endpoints that select it.
async fn record_drop(state: &AppState, dropped: &NewRefusal<'_>) -> Result<(), VerbError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let id = invocations::record_refusal(&tx, dropped).await?;
    let created =
        switchyard_common::deliveries::fan_out(&tx, &[invocations::dropped_event(id, dropped)])
            .await?;
    tx.commit().await?;
    accept::count_invocation("dropped");
    if let Err(err) = state
        .broker
        .publish_ids(&state.broker.topology().deliveries(), &created)
        .await
    {
        tracing::warn!(error = %err, "deliveries recorded but not published; the sweeper will");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chathive_members_are_checked() {
        assert!(envelope(&json!({})).is_ok());
        let e = envelope(&json!({"instruction": {"do": "x"}, "sessionId": "s1", "language": "NL",
            "timezone": "Europe/Amsterdam", "customer": {"name": "Ada"}, "context": {"plan": "pro", "seats": 3, "trial": false}}))
            .expect("valid");
        assert_eq!(e.environment, "api");
        assert_eq!(e.session_id.as_deref(), Some("s1"));
        for bad in [
            json!({"instruction": 3}),
            json!({"language": "xx"}),
            json!({"language": "eng"}),
            json!({"timezone": "Mars/Olympus"}),
            json!({"context": {"nested": {"a": 1}}}),
            json!({"customer": "Ada"}),
            json!({"sessionId": ""}),
            json!({"environment": 1}),
        ] {
            assert!(envelope(&bad).is_err(), "{bad}");
        }
    }
}
