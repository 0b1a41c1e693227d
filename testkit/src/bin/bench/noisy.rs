//! The noisy neighbour: one tenant floods a slow agent, ten quiet tenants send a few runs each
//! while the flood waits. Reports the quiet tenants' wait (accepted to started, from the runs'
//! own timestamps), and the throughput of the whole against one tenant sending the same runs
//! alone, in the same run of the bench. Then the cost of one pick of the scheduler with the same
//! backlog spread over 10 or 1,000 tenants.

use std::time::{Duration, Instant};

use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::runs::{self, NewRun};
use switchyard_testkit::{Stack, StackOptions, TestDb, fixtures, poll};

use super::{ms, percentile};

/// What the noisy-neighbour measurement was asked to do.
pub struct Noisy {
    pub workers: usize,
    pub flood: usize,
    pub delay_ms: u64,
    pub quiet_tenants: usize,
    pub quiet_runs: usize,
}

/// A tenant with an echo agent `slow` taking `delay_ms`, and a key that may trigger runs.
async fn tenant(stack: &Stack, id: &str, delay_ms: u64) -> anyhow::Result<String> {
    let client = stack.db.client().await?;
    fixtures::tenant_with_slow_agent(&client, id, 1, delay_ms, &[Scope::Trigger]).await
}

/// Sends `n` runs of `slow` with `key`, `concurrency` at a time; how many were accepted.
async fn send(stack: &Stack, key: &str, n: usize, concurrency: usize) -> usize {
    fixtures::post_runs(stack, key, n, concurrency).await.len()
}

/// One stack: the loud tenant's flood, then (with `quiet`) the quiet tenants' runs; or the
/// same number of runs from the loud tenant alone. Returns the runs per second from the first
/// start to the last end, and the quiet runs' waits.
async fn one(noisy: &Noisy, quiet: bool) -> anyhow::Result<(f64, Vec<Duration>)> {
    let stack = Stack::start(StackOptions {
        workers: noisy.workers,
        ..StackOptions::default()
    })
    .await?;
    let loud = tenant(&stack, "loud", noisy.delay_ms).await?;
    let quiet_total = noisy.quiet_tenants * noisy.quiet_runs;
    let sent = send(&stack, &loud, noisy.flood, 64).await;
    // The flood is waiting; the quiet tenants arrive behind it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent_quiet = 0;
    if quiet {
        let mut keys = Vec::new();
        for n in 0..noisy.quiet_tenants {
            keys.push(tenant(&stack, &format!("quiet-{n}"), noisy.delay_ms).await?);
        }
        for key in &keys {
            sent_quiet += send(&stack, key, noisy.quiet_runs, noisy.quiet_runs).await;
        }
    } else {
        sent_quiet = send(&stack, &loud, quiet_total, 16).await;
    }
    let total = i64::try_from(sent + sent_quiet)?;
    let client = stack.db.client().await?;
    let deadline = Duration::from_secs(
        30 + (noisy.flood as u64 * noisy.delay_ms) / 1000 / (noisy.workers as u64 * 16).max(1) * 3,
    );
    poll(deadline, || async {
        let done: i64 = client
            .query_one("SELECT count(*) FROM runs WHERE status = 'completed'", &[])
            .await
            .ok()?
            .get(0);
        (done >= total).then_some(())
    })
    .await?;
    let row = client
        .query_one(
            "SELECT extract(epoch FROM max(completed_at) - min(started_at))::float8 FROM runs",
            &[],
        )
        .await?;
    let span: f64 = row.get(0);
    let mut waits: Vec<Duration> = client
        .query(
            "SELECT extract(epoch FROM started_at - created_at)::float8 FROM runs \
             WHERE tenant_id LIKE 'quiet-%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| Duration::from_secs_f64(r.get::<_, f64>(0).max(0.0)))
        .collect();
    waits.sort();
    stack.shutdown().await;
    Ok((total as f64 / span, waits))
}

/// The report's rows.
pub async fn measure(noisy: &Noisy) -> anyhow::Result<String> {
    let (alone, _) = one(noisy, false).await?;
    let (shared, waits) = one(noisy, true).await?;
    Ok(format!(
        "| {} × {} ms, then {} tenants × {} | {:.1} | {:.1} ({:+.1} %) | {} | {} | {} |",
        noisy.flood,
        noisy.delay_ms,
        noisy.quiet_tenants,
        noisy.quiet_runs,
        alone,
        shared,
        (shared / alone - 1.0) * 100.0,
        ms(percentile(&waits, 50.0)),
        ms(percentile(&waits, 99.0)),
        ms(waits.last().copied().unwrap_or_default()),
    ))
}

/// Milliseconds per pick of 8 runs (`runs::claim_next`, claim included) with 5,000 runs waiting,
/// spread over `tenants` tenants.
pub async fn pick_cost(tenants: usize) -> anyhow::Result<f64> {
    let db = TestDb::create().await?;
    let client = db.client().await?;
    fixtures::many_tenants(&client, tenants).await?;
    let pool = switchyard_common::db::pool(&switchyard_common::config::DatabaseArgs {
        database_url: db.url.clone(),
        db_pool_size: 2,
        db_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(30),
    })?;
    let each = 5000 / tenants;
    let batch: Vec<NewRun> = (0..each)
        .flat_map(|_| (1..=tenants).map(|n| format!("t{n}")))
        .map(|tenant_id| fixtures::new_run(&tenant_id, "echo"))
        .collect();
    {
        let client = pool.get().await?;
        for chunk in batch.chunks(100) {
            runs::insert_batch(&client, chunk).await?;
        }
    }
    client.batch_execute("VACUUM ANALYZE runs").await?;
    let mut conn = pool.get().await?;
    let picks = 200;
    let started = Instant::now();
    for _ in 0..picks {
        runs::claim_next(&mut conn, 8, "bench", Duration::from_secs(60)).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(picks))
}
