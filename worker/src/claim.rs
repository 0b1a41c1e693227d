//! A run message becomes a run of this worker's: the claim (batched with concurrent ones into
//! one statement; runs of limited agents take a slot each), then the message's disposition.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use lapin::message::Delivery;
use switchyard_common::amqp::{self, Disposition, Handled};
use switchyard_common::batch::Batcher;
use switchyard_common::{AgentSpec, Run, runs};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{BATCH, BATCHES_IN_FLIGHT, Ctx, execute};

/// One claim's answer: the run won (with its agent), or `None`; `Err` carries the cause.
pub(crate) type Claimed = Result<Claim, String>;

/// What a claim found for one message.
pub(crate) enum Claim {
    /// The run is ours to execute.
    Won(Box<(Run, AgentSpec)>),
    /// Someone else's, finished, cancelled, or not its turn: ack and move on.
    Skip,
    /// No such run: a poison message, for the dead-letter queue.
    Unknown,
}

pub(crate) fn claimer(pool: Pool, owner: String, lease: Duration) -> Batcher<Uuid, Claimed> {
    Batcher::start(BATCH, BATCHES_IN_FLIGHT, move |ids: Vec<Uuid>| {
        let (pool, owner) = (pool.clone(), owner.clone());
        async move {
            let claimed = async {
                let mut client = pool.get().await.context("getting a connection")?;
                let mut won = runs::claim_many(&client, &ids, &owner, lease)
                    .await
                    .context("claiming runs")?;
                let mut unknown = Vec::new();
                // What went wrong after some runs were won: those stay won (they are ours now),
                // the others are retried.
                let mut trouble = None;
                // Runs of agents with a concurrency limit each take a slot, one by one; ids of
                // no run at all are poison. Only asked when some runs were not won, which is
                // rare without limited agents and sessions.
                if won.len() < ids.len() {
                    let rest: Vec<Uuid> = ids
                        .iter()
                        .filter(|id| !won.iter().any(|(run, _)| run.id == **id))
                        .copied()
                        .collect();
                    match runs::why_unclaimed(&client, &rest).await {
                        Ok(unclaimed) => {
                            unknown = unclaimed.unknown;
                            for id in unclaimed.limited {
                                match runs::claim_limited(&mut client, id, &owner, lease).await {
                                    Ok(Some(claimed)) => won.push(claimed),
                                    Ok(None) => {}
                                    Err(err) => {
                                        trouble = Some(format!("claiming a limited run: {err}"));
                                        break;
                                    }
                                }
                            }
                        }
                        Err(err) => trouble = Some(format!("looking at unclaimed runs: {err}")),
                    }
                }
                anyhow::Ok((won, unknown, trouble))
            }
            .await;
            match claimed {
                Ok((won, unknown, trouble)) => {
                    let mut won: std::collections::HashMap<Uuid, (Run, AgentSpec)> =
                        won.into_iter().map(|c| (c.0.id, c)).collect();
                    ids.iter()
                        .map(|id| match won.remove(id) {
                            Some(claimed) => Ok(Claim::Won(Box::new(claimed))),
                            None if unknown.contains(id) => Ok(Claim::Unknown),
                            None => trouble.clone().map_or(Ok(Claim::Skip), Err),
                        })
                        .collect()
                }
                Err(err) => {
                    let cause = format!("{err:#}");
                    ids.iter().map(|_| Err(cause.clone())).collect()
                }
            }
        }
    })
}

/// A run message: claims the run (batched), and, won, acks the message and executes the run in
/// its slot; a run that is someone else's, finished or not its turn is acked; a message naming
/// no run is dead-lettered; one whose claim failed is requeued after a second.
pub(crate) async fn handle(ctx: Ctx, delivery: Delivery) -> Handled {
    let Some(run_id) = amqp::parse_id(&delivery) else {
        tracing::warn!("malformed run message; dead-lettering it");
        return Disposition::DeadLetter.into();
    };
    let span = amqp::process_span(&delivery, &ctx.broker.topology().runs(), run_id);
    let claimed = ctx
        .claims
        .submit(run_id)
        .instrument(tracing::info_span!(parent: &span, "claim", %run_id))
        .await
        .unwrap_or_else(|gone| Err(gone.to_string()));
    let _entered = span.enter();
    match claimed {
        Ok(Claim::Won(claimed)) => {
            let (run, agent) = *claimed;
            let execute_span = tracing::info_span!(
                "execute",
                otel.name = %format!("execute {}", agent.kind),
                run_id = %run.id,
                tenant_id = %run.tenant_id,
                agent_id = %run.agent_id,
                attempt = run.attempt,
            );
            // Execution time per attempt, by agent: from the claim to the recorded end.
            let labels = [
                ("tenant", run.tenant_id.clone()),
                ("agent", run.agent_id.clone()),
            ];
            let execution = async move {
                let started = std::time::Instant::now();
                execute::execute(&ctx, run, agent).await;
                metrics::histogram!(switchyard_common::metrics::EXECUTION, &labels)
                    .record(started.elapsed().as_secs_f64());
            };
            // The lease owns the run from here: ack, then execute. A failed ack only means a
            // duplicate later, which its claim refuses.
            Handled::then(
                Disposition::Ack,
                execution.instrument(execute_span).instrument(span.clone()),
            )
        }
        Ok(Claim::Skip) => {
            tracing::debug!("run already claimed, cancelled, finished, or not its turn; skipping");
            Disposition::Ack.into()
        }
        Ok(Claim::Unknown) => {
            tracing::warn!("no such run; dead-lettering the message");
            Disposition::DeadLetter.into()
        }
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot claim; requeueing the message"
            );
            Disposition::Requeue(Duration::from_secs(1)).into()
        }
    }
}
