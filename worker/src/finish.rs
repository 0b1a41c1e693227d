//! The end of an execution here: the outcome recorded through `switchyard_common::lifecycle`
//! (a success batched with other completions into one transaction; any other end on its own),
//! or the run handed back when the worker shuts down.

use std::time::Duration;

use deadpool_postgres::Pool;
use switchyard_common::amqp::Broker;
use switchyard_common::batch::{Batcher, answer_each};
use switchyard_common::lifecycle::{self, Left};
use switchyard_common::runs::{self, Completion, Pending};
use switchyard_common::{AgentSpec, Run, RunStatus, telemetry};
use uuid::Uuid;

use crate::{BATCH, BATCHES_IN_FLIGHT, Ctx, executor};

pub(crate) fn completer(
    pool: Pool,
    broker: Broker,
    owner: String,
) -> Batcher<Completion, Result<bool, String>> {
    Batcher::start(BATCH, BATCHES_IN_FLIGHT, move |results: Vec<Completion>| {
        let (pool, broker, owner) = (pool.clone(), broker.clone(), owner.clone());
        async move {
            let complete = |results: Vec<Completion>| {
                let (pool, broker, owner) = (pool.clone(), broker.clone(), owner.clone());
                async move {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    let done = runs::complete_many(&tx, &owner, &results).await?;
                    // Each delivery message continues the trace of the run it reports.
                    let recorded = lifecycle::record(&tx, done, Left::Running)
                        .await?
                        .traced(results.iter().map(|c| (c.id, c.trace.clone())));
                    tx.commit().await?;
                    lifecycle::announce(&pool, &broker, &recorded).await;
                    Ok::<_, anyhow::Error>(recorded.runs)
                }
            };
            let mut completed = complete(results.clone()).await;
            if completed.is_err() && results.len() > 1 {
                // A result the database refuses must not hold back the others: complete them one
                // by one, so only the culprit is retried.
                let mut done = Vec::new();
                for result in &results {
                    if let Ok(runs) = complete(vec![result.clone()]).await {
                        done.extend(runs);
                    }
                }
                completed = Ok(done);
            }
            let ids: Vec<Uuid> = results.iter().map(|c| c.id).collect();
            answer_each(&ids, completed, |run| run.id)
                .into_iter()
                .map(|answer| answer.map(|run| run.is_some()))
                .collect()
        }
    })
}

/// How a run's execution ended here.
pub(crate) enum Outcome {
    /// The executor answered.
    Done(Result<executor::Output, executor::ExecError>),
    /// It took longer than the agent's `timeoutSeconds`.
    TimedOut,
    /// A cancel was asked for.
    Cancelled,
    /// The worker is shutting down and the grace period is over: give the run back.
    HandBack,
}

/// `running → queued` without spending the attempt, then publishes the run so that a worker can
/// start it at once (or, if a cancel was asked for, `→ cancelled` with its deliveries). Should
/// the release fail, the lease expires and the reaper requeues it.
pub(crate) async fn hand_back(ctx: &Ctx, run_id: Uuid) {
    let released = async {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let released = runs::release(&tx, run_id, &ctx.owner).await?;
        let recorded =
            lifecycle::record(&tx, released.into_iter().collect(), Left::Running).await?;
        tx.commit().await?;
        anyhow::Ok(recorded)
    };
    // The broker outlives the consumers, so another worker can start it now.
    if let Ok(recorded) = released.await {
        lifecycle::announce(&ctx.pool, &ctx.broker, &recorded).await;
    }
}

/// Records the outcome and its deliveries in one transaction (batched with other runs'
/// completions), then publishes the delivery ids. Retries while the database is unreachable, for
/// as long as the lease could still be ours.
pub(crate) async fn finish(
    ctx: &Ctx,
    run: &Run,
    agent: &AgentSpec,
    outcome: Outcome,
    pending: Pending,
) {
    let deadline = tokio::time::Instant::now() + ctx.lease;
    loop {
        let recorded = match &outcome {
            Outcome::Done(Ok(output)) => ctx
                .completions
                .submit(Completion {
                    id: run.id,
                    result: output.result.clone(),
                    usage: output.usage.clone(),
                    artifacts: output.artifacts.clone(),
                    pending: pending.clone(),
                    trace: telemetry::current_trace_headers(),
                })
                .await
                .unwrap_or_else(|gone| Err(gone.to_string())),
            other => record_end(ctx, run, agent, other, &pending)
                .await
                .map_err(|e| format!("{e:#}")),
        };
        match recorded {
            Ok(true) => {
                tracing::info!(run_id = %run.id, "run finished");
                return;
            }
            Ok(false) => {
                tracing::warn!(run_id = %run.id, "the lease was lost before completion; result dropped");
                // Or an earlier try committed and only its answer was lost: then the next runs
                // are ours to start. A needless publish is refused by its claim.
                lifecycle::start_next(&ctx.pool, &ctx.broker, run, Left::Running).await;
                return;
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(run_id = %run.id, error = %err, "cannot record the outcome; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                tracing::error!(run_id = %run.id, error = %err, "giving up recording; the reaper will requeue");
                return;
            }
        }
    }
}

/// Records an end other than success (`failed`, `timed_out`, `cancelled`) with its deliveries,
/// in one transaction; then publishes its events and deliveries. `false`: the lease was lost.
async fn record_end(
    ctx: &Ctx,
    run: &Run,
    agent: &AgentSpec,
    outcome: &Outcome,
    pending: &Pending,
) -> anyhow::Result<bool> {
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let ended = match outcome {
        Outcome::Done(Ok(_)) => anyhow::bail!("a success is recorded by the completer"),
        Outcome::Done(Err(err)) => {
            runs::end_with_error(
                &tx,
                run.id,
                &ctx.owner,
                RunStatus::Failed,
                err.code,
                &err.message,
                pending,
            )
            .await?
        }
        Outcome::TimedOut => {
            let message = format!(
                "the run took longer than its agent's timeoutSeconds ({} s)",
                agent.timeout.as_secs()
            );
            runs::end_with_error(
                &tx,
                run.id,
                &ctx.owner,
                RunStatus::TimedOut,
                "timeout",
                &message,
                pending,
            )
            .await?
        }
        Outcome::Cancelled => runs::cancel_running(&tx, run.id, &ctx.owner, pending).await?,
        Outcome::HandBack => anyhow::bail!("a hand-back is not an end"),
    };
    let Some(ended) = ended else {
        return Ok(false);
    };
    let recorded = lifecycle::record(&tx, vec![ended], Left::Running).await?;
    tx.commit().await?;
    lifecycle::announce(&ctx.pool, &ctx.broker, &recorded).await;
    Ok(true)
}
