//! The one path a run takes out of `queued` or `running`, whoever moves it (a worker completing,
//! failing, cancelling, handing back or reaping it; the ingress cancelling a queued run; the
//! ttl sweep expiring one).
//!
//! In the mover's transaction, [`record`] takes the rows a `runs` transition returned and
//! creates the deliveries of those that ended. After the commit, [`announce`] does everything
//! else, in this order: the metrics, the delivery ids (webhooks are what most callers wait for),
//! the closing events, the runs put back in the queue, and the runs that may start now because
//! these left: the next of each one's session, the next of its agent when the run held one of
//! the agent's slots or was still queued (it may have been the head of the agent's queue), and
//! runs of its tenant that waited under the tenant's running quota. A
//! publish that fails is not an error: the rows are the outbox, and the sweepers find them.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use lapin::types::FieldTable;
use uuid::Uuid;

use crate::amqp::Broker;
use crate::model::Run;
use crate::{deliveries, runs, telemetry};

/// Where the runs of a transition were before it: the state they left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// In `running` (completed, failed, timed out, cancelled, handed back, reaped).
    Running,
    /// In `queued` (cancelled or expired before any worker started them).
    Queued,
}

/// What a transition did, recorded in its transaction and announced after the commit.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The runs the transition moved, with the events it appended.
    pub runs: Vec<Run>,
    /// The deliveries created for those that ended, with their runs' ids.
    deliveries: Vec<(Uuid, Uuid)>,
    /// Where the runs were before.
    from: Option<Left>,
    /// The trace each run's delivery messages continue (else the current span's).
    traces: HashMap<Uuid, FieldTable>,
}

impl Recorded {
    /// Publishes the deliveries of run `run_id` in the trace `headers` carry.
    pub fn traced(mut self, traces: impl IntoIterator<Item = (Uuid, FieldTable)>) -> Self {
        self.traces.extend(traces);
        self
    }

    /// Whether the transition moved no run (it lost its race).
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// In the transaction of the transition that returned `runs`: creates the deliveries of those
/// that ended (one statement). Commit, then [`announce`].
pub async fn record(
    client: &impl GenericClient,
    runs: Vec<Run>,
    from: Left,
) -> Result<Recorded, tokio_postgres::Error> {
    let ended: Vec<Run> = runs
        .iter()
        .filter(|r| r.status.is_terminal())
        .cloned()
        .collect();
    let deliveries = if ended.is_empty() {
        Vec::new()
    } else {
        deliveries::create_for_runs(client, &ended).await?
    };
    Ok(Recorded {
        runs,
        deliveries,
        from: Some(from),
        traces: HashMap::new(),
    })
}

/// After the commit of a [`record`]ed transition: metrics, delivery ids, events, requeued runs,
/// and the runs that may start now. Never fails; what is not published is swept later.
pub async fn announce(pool: &deadpool_postgres::Pool, broker: &Broker, recorded: &Recorded) {
    runs::observe_finished(&recorded.runs);
    let topology = broker.topology();
    if !recorded.deliveries.is_empty() {
        let messages: Vec<(Uuid, Option<&FieldTable>)> = recorded
            .deliveries
            .iter()
            .map(|(id, run_id)| (*id, recorded.traces.get(run_id)))
            .collect();
        if let Err(err) = broker
            .publish_ids_traced(&topology.deliveries(), &messages)
            .await
        {
            tracing::warn!(error = %err, "deliveries recorded but not published; the sweeper will");
        }
    }
    let events: Vec<_> = recorded
        .runs
        .iter()
        .flat_map(|r| r.events.iter().cloned())
        .collect();
    broker.publish_events(&events).await;
    // Back in the queue: published again in the trace of the request that accepted each.
    let requeued: Vec<(Uuid, Option<FieldTable>)> = recorded
        .runs
        .iter()
        .filter(|r| !r.status.is_terminal())
        .map(|r| {
            (
                r.id,
                r.traceparent.as_deref().map(telemetry::amqp_headers_of),
            )
        })
        .collect();
    if !requeued.is_empty() {
        let messages: Vec<_> = requeued.iter().map(|(id, h)| (*id, h.as_ref())).collect();
        if let Err(err) = broker.publish_ids_traced(&topology.runs(), &messages).await {
            tracing::warn!(error = %err, "runs requeued but not published; the sweeper will");
        }
    }
    // Every run that left `running` gave back its agent's slot and its key's room, handed back
    // or not; a run back in the queue is still its session's next, which `next_in_session`
    // finds in line and leaves alone.
    let from = recorded.from.unwrap_or(Left::Running);
    for run in recorded
        .runs
        .iter()
        .filter(|r| r.status.is_terminal() || from == Left::Running)
    {
        start_next(pool, broker, run, from).await;
    }
    // Every run that left `running` makes room under its tenant's running quota, if it has one.
    if from == Left::Running {
        let mut tenants: Vec<&str> = recorded
            .runs
            .iter()
            .filter(|r| r.tenant_limited)
            .map(|r| r.tenant_id.as_str())
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        if !tenants.is_empty() {
            start_next_of_tenants(pool, broker, &tenants).await;
        }
    }
}

/// Puts back in line the runs of `tenants` that waited for room under their running quota,
/// and publishes them.
async fn start_next_of_tenants(pool: &deadpool_postgres::Pool, broker: &Broker, tenants: &[&str]) {
    let next = match pool.get().await {
        Ok(mut client) => runs::next_for_tenants(&mut client, tenants).await,
        Err(_) => {
            tracing::warn!("cannot look for the tenants' next runs; the sweeper will");
            return;
        }
    };
    match next {
        Ok(next) => {
            for next in &next {
                publish_one(broker, next, "tenant").await;
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot find the tenants' next runs; the sweeper will");
        }
    }
}

/// Publishes the runs that may start because `run` left `from`: the next of its session, the
/// next of its agent when `run` held a slot or was queued, and the next of its concurrency key
/// when it was running. Used by [`announce`], and by a worker
/// whose recording lost its race (the winner may have been an earlier try of its own).
pub async fn start_next(pool: &deadpool_postgres::Pool, broker: &Broker, run: &Run, from: Left) {
    let asks_agent = run.holds_slot || from == Left::Queued;
    let asks_key = run.key_cap.is_some() && from == Left::Running;
    if run.session_id.is_none() && !asks_agent && !asks_key {
        return;
    }
    let Ok(mut client) = pool.get().await else {
        tracing::warn!(run_id = %run.id, "cannot look for the next runs; the sweeper will");
        return;
    };
    if asks_agent {
        publish_next(
            broker,
            runs::next_for_agent(&client, run).await,
            run,
            "agent",
        )
        .await;
    }
    if run.session_id.is_some() {
        publish_next(
            broker,
            runs::next_in_session(&client, run).await,
            run,
            "session",
        )
        .await;
    }
    if asks_key {
        publish_next(
            broker,
            runs::next_for_key(&mut client, run).await,
            run,
            "key",
        )
        .await;
    }
}

/// Publishes the agent's next run if it has a concurrency limit and a free slot: a worker that
/// takes a slot calls it, since more slots may be free than messages came.
pub async fn start_next_for_agent(pool: &deadpool_postgres::Pool, broker: &Broker, run: &Run) {
    let Ok(client) = pool.get().await else {
        return;
    };
    publish_next(
        broker,
        runs::next_for_agent(&client, run).await,
        run,
        "agent",
    )
    .await;
}

async fn publish_next(
    broker: &Broker,
    next: Result<Option<runs::Next>, tokio_postgres::Error>,
    after: &Run,
    whose: &'static str,
) {
    match next {
        Ok(Some(next)) => publish_one(broker, &next, whose).await,
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(run_id = %after.id, whose, error = %err, "cannot find the next run; the sweeper will");
        }
    }
}

/// Publishes a run put back in line, in the trace of the request that accepted it.
async fn publish_one(broker: &Broker, next: &runs::Next, whose: &'static str) {
    if let Err(err) = broker
        .publish_id_in(
            &broker.topology().runs(),
            next.id,
            next.traceparent.as_deref(),
        )
        .await
    {
        tracing::warn!(run_id = %next.id, whose, error = %err, "cannot publish the next run; the sweeper will");
    }
}
