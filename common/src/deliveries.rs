//! The delivery state machine: `pending → sending → delivered | pending (retry) | failed`.
//! Like [`crate::runs`], each transition is one guarded UPDATE, so a duplicate message can never
//! send a delivery twice at once, nor revive a finished one.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::catalog::triggers::OutputTransform;

use crate::model::Run;

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: Uuid,
    pub tenant_id: String,
    pub run_id: Uuid,
    pub url: String,
    /// The `webhook-id` header, the same on every attempt.
    pub message_id: String,
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
}

/// The outcome of one attempt, as recorded in `delivery_attempts`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub latency: Duration,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    RetryAfter(Duration),
    GiveUp,
}

/// The `{type, timestamp, data}` body a webhook carries for a run.
pub fn payload(event_type: &str, run: &Run) -> serde_json::Value {
    let timestamp = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    serde_json::json!({ "type": event_type, "timestamp": timestamp, "data": run })
}

/// Creates the deliveries a run's terminal status calls for, inside the caller's transaction.
/// Idempotent: one delivery per (run, event type, url). Returns the ids created.
pub async fn create_for_run(
    client: &impl GenericClient,
    run: &Run,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    create_for_runs(client, std::slice::from_ref(run)).await
}

/// The `outputTransform`s of the triggers that started `runs`, by (tenant, trigger id); one
/// query, and none at all when no run came through a trigger.
async fn output_transforms(
    client: &impl GenericClient,
    runs: &[Run],
) -> Result<std::collections::HashMap<(String, String), OutputTransform>, tokio_postgres::Error> {
    let (tenants, triggers): (Vec<&str>, Vec<&str>) = runs
        .iter()
        .filter_map(|r| Some((r.tenant_id.as_str(), r.trigger_id.as_deref()?)))
        .unzip();
    if triggers.is_empty() {
        return Ok(Default::default());
    }
    let stmt = client
        .prepare_cached(
            "SELECT t.tenant_id, t.id, t.output_transform FROM triggers t \
             JOIN unnest($1::text[], $2::text[]) AS w(tenant_id, id) \
               ON t.tenant_id = w.tenant_id AND t.id = w.id \
             WHERE t.output_transform IS NOT NULL",
        )
        .await?;
    let rows = client.query(&stmt, &[&tenants, &triggers]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let ot: serde_json::Value = row.try_get(2).ok()?;
            Some((
                (row.try_get(0).ok()?, row.try_get(1).ok()?),
                serde_json::from_value(ot).ok()?,
            ))
        })
        .collect())
}

/// [`create_for_run`] for many runs in one statement. A run started by a trigger with an
/// `outputTransform` is delivered with its result transformed.
pub async fn create_for_runs(
    client: &impl GenericClient,
    runs: &[Run],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let transforms = output_transforms(client, runs).await?;
    let mut ids = Vec::new();
    let mut tenants = Vec::new();
    let mut run_ids = Vec::new();
    let mut types = Vec::new();
    let mut urls = Vec::new();
    let mut message_ids = Vec::new();
    let mut payloads = Vec::new();
    for run in runs {
        let (Some(url), Some(event_type)) = (run.webhook_url.as_deref(), run.status.event_type())
        else {
            continue;
        };
        let id = Uuid::now_v7();
        ids.push(id);
        tenants.push(run.tenant_id.as_str());
        run_ids.push(run.id);
        types.push(event_type);
        urls.push(url);
        message_ids.push(format!("msg_{}", id.simple()));
        let transform = run
            .trigger_id
            .as_ref()
            .and_then(|t| transforms.get(&(run.tenant_id.clone(), t.clone())));
        match (transform, &run.result) {
            (Some(ot), Some(result)) => {
                let mut shown = run.clone();
                shown.result = Some(crate::transform::apply(ot, result));
                payloads.push(payload(event_type, &shown));
            }
            _ => payloads.push(payload(event_type, run)),
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "INSERT INTO deliveries (id, tenant_id, run_id, event_type, url, message_id, payload, status) \
                     SELECT n.id, n.tenant_id, n.run_id, n.event_type, n.url, n.message_id, n.payload, 'pending' \
                     FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::jsonb[]) \
                          AS n(id, tenant_id, run_id, event_type, url, message_id, payload) \
                     ON CONFLICT (run_id, event_type, url) DO NOTHING RETURNING id",
                )
                .await?,
            &[&ids, &tenants, &run_ids, &types, &urls, &message_ids, &payloads],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// `pending → sending` for one attempt, with a lease of `lease`. `None` when the delivery is not
/// pending or not yet due (a duplicate or early message): ack it and move on.
pub async fn claim(
    client: &impl GenericClient,
    id: Uuid,
    lease: Duration,
) -> Result<Option<Outgoing>, tokio_postgres::Error> {
    Ok(claim_many(client, &[id], lease).await?.pop())
}

/// [`claim`] for many deliveries in one statement, locking in id order.
pub async fn claim_many(
    client: &impl GenericClient,
    ids: &[Uuid],
    lease: Duration,
) -> Result<Vec<Outgoing>, tokio_postgres::Error> {
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "WITH c AS (SELECT id FROM deliveries WHERE id = ANY($1) AND status = 'pending' \
                                  AND next_attempt_at <= now() + interval '1 second' ORDER BY id FOR UPDATE) \
                     UPDATE deliveries d SET status = 'sending', attempts = d.attempts + 1, \
                            lease_expires_at = now() + make_interval(secs => $2), updated_at = now() \
                     FROM c WHERE d.id = c.id AND d.status = 'pending' \
                     RETURNING d.id, d.tenant_id, d.run_id, d.url, d.message_id, d.payload, d.attempts",
                )
                .await?,
            &[&ids, &lease.as_secs_f64()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Outgoing {
                id: r.try_get("id")?,
                tenant_id: r.try_get("tenant_id")?,
                run_id: r.try_get("run_id")?,
                url: r.try_get("url")?,
                message_id: r.try_get("message_id")?,
                payload: r.try_get("payload")?,
                attempt: r.try_get("attempts")?,
            })
        })
        .collect()
}

/// Records an attempt and moves the delivery on (`sending → delivered | pending | failed`), in one
/// transaction. Guarded by the attempt number, so a late finish of a swept attempt cannot
/// overwrite a newer one. Returns `false` if the delivery was no longer ours.
pub async fn finish(
    client: &mut deadpool_postgres::Client,
    out: &Outgoing,
    attempt: &Attempt,
    next: Next,
) -> Result<bool, tokio_postgres::Error> {
    let done = finish_many(client, &[(out.clone(), attempt.clone(), next)]).await?;
    Ok(done.contains(&out.id))
}

/// [`finish`] for many attempts in one transaction: one INSERT of the attempts, one UPDATE of
/// the deliveries. Returns the ids of the deliveries that were still ours and moved on.
pub async fn finish_many(
    client: &mut deadpool_postgres::Client,
    items: &[(Outgoing, Attempt, Next)],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let n = items.len();
    let (mut ids, mut tenants, mut numbers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut bodies, mut errors, mut latencies) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut next_statuses, mut delays, mut last_errors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (out, attempt, next) in items {
        ids.push(out.id);
        tenants.push(out.tenant_id.as_str());
        numbers.push(out.attempt);
        statuses.push(attempt.response_status);
        bodies.push(attempt.response_body.as_deref());
        errors.push(attempt.error.as_deref());
        latencies.push(i32::try_from(attempt.latency.as_millis()).unwrap_or(i32::MAX));
        let (status, delay) = match next {
            Next::Delivered => ("delivered", 0.0),
            Next::RetryAfter(d) => ("pending", d.as_secs_f64()),
            Next::GiveUp => ("failed", 0.0),
        };
        next_statuses.push(status);
        delays.push(delay);
        last_errors.push(match next {
            Next::Delivered => None,
            _ => attempt.error.clone().or_else(|| {
                attempt
                    .response_status
                    .map(|s| format!("the endpoint answered {s}"))
            }),
        });
    }
    let tx = client.transaction().await?;
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO delivery_attempts (delivery_id, tenant_id, attempt, response_status, \
                                            response_body, error, latency_ms) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], \
                                  $6::text[], $7::int[]) \
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .await?,
        &[
            &ids, &tenants, &numbers, &statuses, &bodies, &errors, &latencies,
        ],
    )
    .await?;
    let rows = tx
        .query(
            &tx.prepare_cached(
                "UPDATE deliveries d SET status = f.status, \
                        delivered_at = CASE WHEN f.status = 'delivered' THEN now() END, \
                        next_attempt_at = CASE WHEN f.status = 'pending' \
                            THEN now() + make_interval(secs => f.delay) ELSE d.next_attempt_at END, \
                        lease_expires_at = NULL, last_error = f.last_error, updated_at = now() \
                 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::float8[], $5::text[]) \
                      AS f(id, attempt, status, delay, last_error) \
                 WHERE d.id = f.id AND d.status = 'sending' AND d.attempts = f.attempt \
                   AND f.status IN ('delivered', 'pending', 'failed') \
                 RETURNING d.id",
            )
            .await?,
            &[&ids, &numbers, &next_statuses, &delays, &last_errors],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Deliveries that should be moving but are not: `pending` ones overdue by `grace` (their message
/// was lost), and `sending` ones whose lease expired (their notifier died mid-attempt). Puts them
/// back to `pending`, due now, and returns their ids to publish again.
pub async fn sweep_stalled(
    client: &impl GenericClient,
    grace: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            &client.prepare_cached("WITH stale AS ( \
                 (SELECT id FROM deliveries WHERE status = 'pending' \
                    AND next_attempt_at < now() - make_interval(secs => $1) \
                  ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UNION ALL \
                 (SELECT id FROM deliveries WHERE status = 'sending' AND lease_expires_at < now() \
                  ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)) \
             UPDATE deliveries d SET status = 'pending', next_attempt_at = now(), lease_expires_at = NULL, \
                    updated_at = now() \
             FROM stale WHERE d.id = stale.id RETURNING d.id").await?,
            &[&grace.as_secs_f64(), &limit],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
