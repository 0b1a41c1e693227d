//! The delivery state machine: `pending → sending → delivered | pending (retry) | failed`.
//! Like [`crate::runs`], each transition is one guarded UPDATE, so a duplicate message can never
//! send a delivery twice at once, nor revive a finished one.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

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
    let (Some(url), Some(event_type)) = (run.webhook_url.as_deref(), run.status.event_type())
    else {
        return Ok(Vec::new());
    };
    let id = Uuid::now_v7();
    let message_id = format!("msg_{}", id.simple());
    let body = payload(event_type, run);
    let rows = client
        .query(
            &client.prepare_cached("INSERT INTO deliveries (id, tenant_id, run_id, event_type, url, message_id, payload, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending') \
             ON CONFLICT (run_id, event_type, url) DO NOTHING RETURNING id").await?,
            &[&id, &run.tenant_id, &run.id, &event_type, &url, &message_id, &body],
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
    let row = client
        .query_opt(
            &client.prepare_cached("UPDATE deliveries SET status = 'sending', attempts = attempts + 1, \
                    lease_expires_at = now() + make_interval(secs => $2), updated_at = now() \
             WHERE id = $1 AND status = 'pending' AND next_attempt_at <= now() + interval '1 second' \
             RETURNING id, tenant_id, run_id, url, message_id, payload, attempts").await?,
            &[&id, &lease.as_secs_f64()],
        )
        .await?;
    row.map(|r| {
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
    .transpose()
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
    let tx = client.transaction().await?;
    let latency_ms = i32::try_from(attempt.latency.as_millis()).unwrap_or(i32::MAX);
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO delivery_attempts (id, delivery_id, tenant_id, attempt, response_status, \
                                        response_body, error, latency_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .await?,
        &[
            &Uuid::now_v7(),
            &out.id,
            &out.tenant_id,
            &out.attempt,
            &attempt.response_status,
            &attempt.response_body,
            &attempt.error,
            &latency_ms,
        ],
    )
    .await?;
    let last_error = attempt.error.clone().or_else(|| {
        attempt
            .response_status
            .map(|s| format!("the endpoint answered {s}"))
    });
    let n = match next {
        Next::Delivered => {
            tx.execute(
                &tx.prepare_cached("UPDATE deliveries SET status = 'delivered', delivered_at = now(), lease_expires_at = NULL, \
                        last_error = NULL, updated_at = now() \
                 WHERE id = $1 AND status = 'sending' AND attempts = $2").await?,
                &[&out.id, &out.attempt],
            )
            .await?
        }
        Next::RetryAfter(delay) => {
            tx.execute(
                &tx.prepare_cached("UPDATE deliveries SET status = 'pending', next_attempt_at = now() + make_interval(secs => $2), \
                        lease_expires_at = NULL, last_error = $3, updated_at = now() \
                 WHERE id = $1 AND status = 'sending' AND attempts = $4").await?,
                &[&out.id, &delay.as_secs_f64(), &last_error, &out.attempt],
            )
            .await?
        }
        Next::GiveUp => {
            tx.execute(
                &tx.prepare_cached("UPDATE deliveries SET status = 'failed', lease_expires_at = NULL, last_error = $2, \
                        updated_at = now() \
                 WHERE id = $1 AND status = 'sending' AND attempts = $3").await?,
                &[&out.id, &last_error, &out.attempt],
            )
            .await?
        }
    };
    tx.commit().await?;
    Ok(n == 1)
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
