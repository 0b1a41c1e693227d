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

/// A delivery as the operator API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: Uuid,
    pub run_id: Uuid,
    /// `run.completed`, `run.failed`, …
    pub event_type: String,
    pub url: String,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempt_count: i32,
    /// The `webhook-id` every attempt carries.
    pub message_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One recorded attempt.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedAttempt {
    pub attempt: i32,
    pub response_status: Option<i32>,
    /// The first 4 KiB of the response body.
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub latency_ms: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A delivery with every attempt made.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempts: Vec<RecordedAttempt>,
}

/// What the delivery list is narrowed to.
#[derive(Debug, Default)]
pub struct Filter {
    pub status: Option<String>,
    pub run_id: Option<Uuid>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

const DELIVERY_COLUMNS: &str = "id, run_id, event_type, url, status, attempts, message_id, \
    next_attempt_at, last_error, created_at, delivered_at, updated_at";

fn delivery_from_row(row: &tokio_postgres::Row) -> Result<Delivery, tokio_postgres::Error> {
    Ok(Delivery {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        event_type: row.try_get("event_type")?,
        url: row.try_get("url")?,
        status: row.try_get("status")?,
        attempt_count: row.try_get("attempts")?,
        message_id: row.try_get("message_id")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The tenant's deliveries, newest first, narrowed by `filter`.
pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    filter: &Filter,
    page: crate::catalog::Page,
) -> Result<crate::catalog::Paginated<Delivery>, crate::catalog::Error> {
    if let Some(status) = &filter.status
        && !matches!(
            status.as_str(),
            "pending" | "sending" | "delivered" | "failed"
        )
    {
        return Err(crate::catalog::Error::BadRequest(
            "`status` must be pending, sending, delivered or failed".into(),
        ));
    }
    let conditions = "tenant_id = $1 AND ($2::text IS NULL OR status = $2) \
        AND ($3::uuid IS NULL OR run_id = $3) AND ($4::timestamptz IS NULL OR created_at >= $4) \
        AND ($5::timestamptz IS NULL OR created_at < $5)";
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &tenant_id,
        &filter.status,
        &filter.run_id,
        &filter.from,
        &filter.to,
    ];
    let total: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM deliveries WHERE {conditions}"),
            &params,
        )
        .await?
        .try_get(0)?;
    let mut with_page: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
    let (limit, offset) = (page.limit(), page.offset());
    with_page.push(&limit);
    with_page.push(&offset);
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {conditions} \
                 ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
            ),
            &with_page,
        )
        .await?;
    let data = rows
        .iter()
        .map(delivery_from_row)
        .collect::<Result<_, _>>()?;
    Ok(page.wrap(data, total))
}

/// One delivery of the tenant, with its attempts; `None` for another tenant's.
pub async fn get(
    client: &impl GenericClient,
    tenant_id: &str,
    id: Uuid,
) -> Result<Option<DeliveryDetail>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = $1 AND id = $2"),
            &[&tenant_id, &id],
        )
        .await?
    else {
        return Ok(None);
    };
    let attempts = client
        .query(
            "SELECT attempt, response_status, response_body, error, latency_ms, created_at \
             FROM delivery_attempts WHERE tenant_id = $1 AND delivery_id = $2 ORDER BY attempt",
            &[&tenant_id, &id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(RecordedAttempt {
                attempt: r.try_get(0)?,
                response_status: r.try_get(1)?,
                response_body: r.try_get(2)?,
                error: r.try_get(3)?,
                latency_ms: r.try_get(4)?,
                created_at: r.try_get(5)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(Some(DeliveryDetail {
        delivery: delivery_from_row(&row)?,
        attempts,
    }))
}

/// `delivered | failed → pending`, due now: one more attempt (with what is left of the retry
/// schedule, if anything). `None` when the delivery is not the tenant's or is still in progress.
pub async fn redeliver(
    client: &impl GenericClient,
    tenant_id: &str,
    id: Uuid,
) -> Result<Option<Delivery>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), delivered_at = NULL, \
                        updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND status IN ('delivered', 'failed') \
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&tenant_id, &id],
        )
        .await?;
    row.as_ref().map(delivery_from_row).transpose()
}

/// `failed → pending`, due now, for every failed delivery of the tenant created since `since`.
/// Returns their ids, to be published.
pub async fn recover(
    client: &impl GenericClient,
    tenant_id: &str,
    since: OffsetDateTime,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now() \
             WHERE tenant_id = $1 AND status = 'failed' AND created_at >= $2 RETURNING id",
            &[&tenant_id, &since],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
