//! A run message becomes a run of this worker's. A message is a turn, not an order: the claim
//! (batched with concurrent ones into one transaction) starts the fairest runs there are, as
//! many as there are messages (`runs::claim_next`), then each message gets its disposition.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use lapin::message::Delivery;
use switchyard_common::amqp::{self, Broker, Disposition, Handled};
use switchyard_common::batch::Batcher;
use switchyard_common::{AgentSpec, Run, runs};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{BATCH, BATCHES_IN_FLIGHT, Ctx, execute};

/// One claim's answer: the run won (with its agent), or `None`; `Err` carries the cause.
pub(crate) type Claimed = Result<Claim, String>;

/// What a claim found for one message.
pub(crate) enum Claim {
    /// The run is ours to execute (not always the one the message named: a message is a turn
    /// to start the fairest run, see `runs::claim_next`).
    Won(Box<(Run, AgentSpec)>),
    /// Nothing to start: ack and move on.
    Skip,
    /// The pick stopped early (another claimer held what it needed): the turn is published again
    /// (then the message acked), so that none is lost.
    Retry,
    /// No such run, and nothing started with it: a poison message, for the dead-letter queue.
    Unknown,
}

/// How long a message whose turn was cut short waits before it is offered again.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// Claims, for a batch of run messages, as many runs as there are messages, in fair order
/// (`runs::claim_next`). A message is answered with the run it named when that run was won;
/// the other runs won go to the other messages in order.
pub(crate) fn claimer(
    pool: Pool,
    broker: Broker,
    owner: String,
    lease: Duration,
) -> Batcher<Uuid, Claimed> {
    Batcher::start(BATCH, BATCHES_IN_FLIGHT, move |ids: Vec<Uuid>| {
        let (pool, broker, owner) = (pool.clone(), broker.clone(), owner.clone());
        async move {
            let claimed = async {
                let mut client = pool.get().await.context("getting a connection")?;
                let started = runs::claim_for_messages(&mut client, &ids, &owner, lease)
                    .await
                    .context("claiming runs")?;
                // Runs the pick held and left in line: another claimer may have passed them by.
                if !started.passed.is_empty()
                    && let Err(err) = broker
                        .publish_ids(&broker.topology().runs(), &started.passed)
                        .await
                {
                    tracing::warn!(error = %err, "cannot publish runs left in line; the sweeper will");
                }
                let unknown = started.unknown.clone();
                anyhow::Ok((started, unknown))
            }
            .await;
            match claimed {
                Ok((started, unknown)) => answer(&ids, started, &unknown),
                Err(err) => {
                    let cause = format!("{err:#}");
                    ids.iter().map(|_| Err(cause.clone())).collect()
                }
            }
        }
    })
}

/// Hands the runs won to the messages: each message that named a run won gets it, the rest of
/// the runs go to the other messages in the order they were picked, never to a poison one (the
/// pick started no run for it).
fn answer(ids: &[Uuid], started: runs::Started, unknown: &[Uuid]) -> Vec<Claimed> {
    let mut won: Vec<Option<(Run, AgentSpec)>> = started.runs.into_iter().map(Some).collect();
    let mut answers: Vec<Option<Claimed>> = ids
        .iter()
        .map(|id| {
            won.iter_mut()
                .find(|w| w.as_ref().is_some_and(|(run, _)| run.id == *id))
                .and_then(Option::take)
                .map(|claimed| Ok(Claim::Won(Box::new(claimed))))
        })
        .collect();
    let mut rest = won.into_iter().flatten();
    for (answer, id) in answers.iter_mut().zip(ids) {
        if answer.is_none() {
            *answer = Some(Ok(if unknown.contains(id) {
                Claim::Unknown
            } else {
                match rest.next() {
                    Some(claimed) => Claim::Won(Box::new(claimed)),
                    None if started.cut_short => Claim::Retry,
                    None => Claim::Skip,
                }
            }));
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or(Ok(Claim::Skip)))
        .collect()
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
            // The message was a turn for another run: execute in the trace of the run's own
            // acceptance, as it would have been under its own message.
            let span = if run.id == run_id {
                span.clone()
            } else {
                let own = tracing::info_span!(parent: None, "process", otel.name = "process turn", %run_id);
                switchyard_common::telemetry::adopt_trace_parent(
                    &own,
                    run.traceparent
                        .as_deref()
                        .map(switchyard_common::telemetry::amqp_headers_of)
                        .as_ref(),
                );
                own
            };
            let _own = span.enter();
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
            tracing::debug!("no run to start; skipping");
            Disposition::Ack.into()
        }
        // A fresh message rather than a requeue: a requeue counts toward the queue's delivery
        // limit, past which a turn would be dead-lettered.
        Ok(Claim::Retry) => {
            tokio::time::sleep(RETRY_AFTER).await;
            match ctx
                .broker
                .publish_id(&ctx.broker.topology().runs(), run_id)
                .await
            {
                Ok(_) => Disposition::Ack.into(),
                Err(_) => Disposition::Requeue(Duration::from_secs(1)).into(),
            }
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
