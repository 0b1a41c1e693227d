//! The maintenance loop every worker runs: the reaper (expired leases), the ttl expiry, the
//! release of debounced runs whose period ended, and the sweepers of runs and deliveries whose messages may have been lost. `SKIP LOCKED` keeps
//! workers from doing the same row twice.

use std::time::Duration;

use switchyard_common::lifecycle::{self, Left};
use switchyard_common::{deliveries, runs};

use crate::{Config, Ctx};

/// Sets `switchyard_runs{status}` for the runs queued and running now (two partial indexes).
async fn sample_run_counts(ctx: &Ctx) -> anyhow::Result<()> {
    let client = ctx.pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM runs WHERE status = 'queued'), \
                    (SELECT count(*) FROM runs WHERE status = 'running')",
            &[],
        )
        .await?;
    for (i, status) in ["queued", "running"].into_iter().enumerate() {
        let n: i64 = row.get(i);
        metrics::gauge!(switchyard_common::metrics::RUNS, "status" => status).set(n as f64);
    }
    Ok(())
}

/// How often a worker that serves metrics counts the runs queued and running.
const SAMPLE_RUNS_EVERY: Duration = Duration::from_secs(10);

/// The maintenance loop: reaper and sweepers. Every worker runs it; `SKIP LOCKED` keeps them from
/// doing the same row twice. A worker that serves metrics also samples `switchyard_runs`.
pub(crate) async fn maintain(ctx: Ctx, config: Config) {
    let mut tick = tokio::time::interval(config.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        if config.ops_listen.is_some() && sampled.is_none_or(|at| at.elapsed() >= SAMPLE_RUNS_EVERY)
        {
            sampled = Some(tokio::time::Instant::now());
            if let Err(err) = sample_run_counts(&ctx).await {
                tracing::debug!(error = format!("{err:#}"), "cannot count the runs");
            }
        }
        if let Err(err) = maintain_once(&ctx, &config).await {
            tracing::debug!(error = format!("{err:#}"), "maintenance pass failed");
        }
    }
}

async fn maintain_once(ctx: &Ctx, config: &Config) -> anyhow::Result<()> {
    const SWEEP_BATCH: i64 = 500;
    let topology = ctx.broker.topology();
    // Reap: expired leases go back to the queue, or fail once their attempts are spent.
    let reaped = {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let reaped = runs::reap_expired(&tx, SWEEP_BATCH).await?;
        let recorded = lifecycle::record(&tx, reaped, Left::Running).await?;
        tx.commit().await?;
        recorded
    };
    if !reaped.is_empty() {
        let requeued = reaped
            .runs
            .iter()
            .filter(|r| !r.status.is_terminal())
            .count();
        tracing::warn!(
            requeued,
            failed = reaped.runs.len() - requeued,
            "reaped expired leases"
        );
        lifecycle::announce(&ctx.pool, &ctx.broker, &reaped).await;
    }

    // Expire: queued runs whose ttl passed before any worker started them.
    let expired = {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let expired = runs::expire_overdue(&tx, SWEEP_BATCH).await?;
        let recorded = lifecycle::record(&tx, expired, Left::Queued).await?;
        tx.commit().await?;
        recorded
    };
    if !expired.is_empty() {
        tracing::info!(
            expired = expired.runs.len(),
            "expired runs whose ttl passed"
        );
        lifecycle::announce(&ctx.pool, &ctx.broker, &expired).await;
    }

    // Sweep: queued runs and pending deliveries whose messages may have been lost.
    if !ctx.broker.is_connected() {
        return Ok(());
    }
    let client = ctx.pool.get().await?;
    // While run messages wait in the queue, an old queued run is most likely one of them, not a
    // lost one: republishing would only pile duplicates onto a backlog. Sweep once it drains.
    // An unknown count (a slow broker) counts as a backlog.
    let backlog = ctx.broker.ready_count(&topology.runs()).await;
    // Runs waiting out of line are swept whatever the backlog: they have no message in it. A
    // sweep that fails does not keep the others from running.
    let mut unclaimed = runs::sweep_waiting(&client, config.sweep_after, SWEEP_BATCH)
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot sweep runs waiting out of line");
            Vec::new()
        });
    // Trailing debounces whose period has ended go in line, with a message each.
    let released = runs::release_debounced(&client, SWEEP_BATCH)
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot release debounced runs");
            Vec::new()
        });
    if !released.is_empty() {
        let sent = ctx
            .broker
            .publish_ids(&topology.runs(), &released)
            .await
            .unwrap_or(0);
        tracing::debug!(released = released.len(), sent, "released debounced runs");
    }
    if backlog == Some(0) {
        unclaimed.extend(runs::sweep_unclaimed(&client, config.sweep_after, SWEEP_BATCH).await?);
    }
    if !unclaimed.is_empty() {
        let sent = ctx
            .broker
            .publish_ids(&topology.runs(), &unclaimed)
            .await
            .unwrap_or(0);
        tracing::info!(found = unclaimed.len(), sent, "republished unclaimed runs");
    }
    let stalled =
        deliveries::sweep_stalled(&client, config.delivery_sweep_after, SWEEP_BATCH).await?;
    if !stalled.is_empty() {
        let sent = ctx
            .broker
            .publish_ids(&topology.deliveries(), &stalled)
            .await
            .unwrap_or(0);
        tracing::info!(
            found = stalled.len(),
            sent,
            "republished stalled deliveries"
        );
    }
    Ok(())
}
