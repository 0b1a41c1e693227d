//! One execution of a claimed run: its conversation and credentials read, its events sunk, the
//! executor run under the agent's timeout, a cancel token, the lease's heartbeat and the output
//! budget, and the outcome handed to `finish`.

use switchyard_common::events::{EventKind, NewEvent};
use switchyard_common::lifecycle;
use switchyard_common::{AgentSpec, Run, runs};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::finish::{self, Outcome};
use crate::sink::Sink;
use crate::{Ctx, executor};

pub(crate) async fn execute(ctx: &Ctx, run: Run, agent: AgentSpec) {
    if agent.limited {
        // More slots may be free than messages came: start the agent's next run too.
        lifecycle::start_next_for_agent(&ctx.pool, &ctx.broker, &run).await;
    }
    let lost = CancellationToken::new();
    let cancel = ctx.cancels.register(run.id);
    // Dropped on every way out of here, a panic included: a heartbeat that outlived its
    // execution would hold the lease (and the run) forever.
    let _heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(heartbeat(
        ctx.clone(),
        run.id,
        lost.clone(),
        cancel.clone(),
    )));
    let _registered = Registered(ctx, run.id);
    let history = match conversation(ctx, &run).await {
        Ok(history) => history,
        Err(err) => {
            tracing::warn!(run_id = %run.id, error = format!("{err:#}"), "cannot read the conversation; handing the run back");
            finish::hand_back(ctx, run.id).await;
            return;
        }
    };
    let drained = async {
        ctx.shutdown.cancelled().await;
        tokio::time::sleep(ctx.grace).await;
    };
    let sink = Sink::start(
        ctx.pool.clone(),
        ctx.broker.clone(),
        ctx.owner.clone(),
        run.id,
        run.last_seq + 1,
        vec![NewEvent {
            kind: EventKind::Status,
            data: serde_json::json!({"status": "running", "attempt": run.attempt}),
        }],
        ctx.caps,
    );
    let env = executor::outbound::Env {
        http: ctx.http.clone(),
        guard: ctx.guard.clone(),
        credentials: credentials(ctx, &run, &agent).await,
        attempts: u32::try_from(run.max_attempts).unwrap_or(1),
    };
    let executing = tokio::time::timeout(
        agent.timeout,
        executor::execute(&agent, &run, &history, &sink.emitter, &env),
    );
    let budget = std::sync::Arc::clone(&sink.budget);
    // Leaving the `select!` drops the executor, which aborts its requests to the provider.
    let outcome = tokio::select! {
        // A run past its output caps ends at once, whatever its executor was doing: what a
        // tenant's agent, model or tool sends cannot grow a worker's memory without bound.
        biased;
        why = budget.exceeded() => {
            tracing::warn!(run_id = %run.id, "output past its limits; ending the run");
            Some(Outcome::Done(Err(executor::ExecError::new("output_too_large", why))))
        }
        outcome = executing => Some(outcome.map_or(Outcome::TimedOut, Outcome::Done)),
        () = cancel.cancelled() => {
            tracing::info!(run_id = %run.id, "cancelled");
            Some(Outcome::Cancelled)
        }
        () = lost.cancelled() => {
            tracing::warn!(run_id = %run.id, "lease lost; abandoning the run");
            None
        }
        () = drained => {
            tracing::warn!(run_id = %run.id, "shutting down; handing the run back");
            Some(Outcome::HandBack)
        }
    };
    // An executor that noticed the caps itself may have ended before the budget's branch was
    // polled: the caps decide, whatever it answered.
    let outcome = match outcome {
        Some(Outcome::Done(Ok(_))) if budget.is_spent() => {
            let why = budget.exceeded().await;
            Some(Outcome::Done(Err(executor::ExecError::new(
                "output_too_large",
                why,
            ))))
        }
        other => other,
    };
    // Whatever the sink has not written goes in with the outcome; it writes nothing after this.
    let pending = sink.finish().await;
    match outcome {
        Some(Outcome::HandBack) => finish::hand_back(ctx, run.id).await,
        // The heartbeat keeps the lease while the outcome is recorded, however long that takes.
        Some(outcome) => finish::finish(ctx, &run, &agent, outcome, pending).await,
        None => {}
    }
}

/// Takes a run off the worker's cancel list when its execution ends, however it ends.
struct Registered<'a>(&'a Ctx, Uuid);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.cancels.unregister(self.1);
    }
}

/// The secrets the agent names (its own credential, and its tools'), revealed for this run.
/// One that cannot be read is left out: the executor that needs it fails the run with
/// `credential_unavailable`.
async fn credentials(
    ctx: &Ctx,
    run: &Run,
    agent: &AgentSpec,
) -> std::collections::HashMap<String, String> {
    let mut ids: Vec<String> = agent.credential_id.iter().cloned().collect();
    if let Some(tools) = agent
        .config
        .get("tools")
        .and_then(serde_json::Value::as_array)
    {
        ids.extend(
            tools
                .iter()
                .filter_map(|t| t.get("credentialReferenceId")?.as_str().map(str::to_owned)),
        );
    }
    let mut revealed = std::collections::HashMap::new();
    let (Some(key), false) = (&ctx.master_key, ids.is_empty()) else {
        return revealed;
    };
    let Ok(client) = ctx.pool.get().await else {
        return revealed;
    };
    for id in ids {
        match switchyard_common::catalog::credentials::reveal(&client, key, &run.tenant_id, &id)
            .await
        {
            Ok(secret) => {
                revealed.insert(id, secret);
            }
            Err(err) => {
                tracing::warn!(run_id = %run.id, credential = %id, error = %err, "cannot read a credential")
            }
        }
    }
    revealed
}

/// The earlier messages of the run's conversation; none without a session.
async fn conversation(
    ctx: &Ctx,
    run: &Run,
) -> anyhow::Result<Vec<switchyard_common::conversations::Message>> {
    let Some(conversation_id) = run.conversation_id else {
        return Ok(Vec::new());
    };
    let client = ctx.pool.get().await?;
    Ok(switchyard_common::conversations::history(&client, &run.tenant_id, conversation_id).await?)
}

async fn heartbeat(ctx: Ctx, run_id: Uuid, lost: CancellationToken, cancel: CancellationToken) {
    let every = ctx.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let beat = async {
            let client = ctx.pool.get().await.ok()?;
            runs::heartbeat(&client, run_id, &ctx.owner, ctx.lease)
                .await
                .ok()
        };
        match beat.await {
            Some(Some(false)) => {}
            // A cancel the control exchange did not bring.
            Some(Some(true)) => cancel.cancel(),
            Some(None) => {
                lost.cancel();
                return;
            }
            // The database is unreachable: keep trying until the lease runs out.
            None => tracing::warn!(%run_id, "heartbeat failed"),
        }
    }
}
