//! The operator's view of deliveries: the tenant's list, one delivery with its attempts, and
//! the two ways to try again (redeliver one, recover every failed one since a time).

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use uuid::Uuid;

/// A delivery as the operator API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: Uuid,
    /// The run the event is about, if it is a run's.
    pub run_id: Option<Uuid>,
    /// The invocation: the run's, or a dropped one's.
    pub invocation_id: Option<Uuid>,
    /// The endpoint delivered to; null for a run's own `webhookUrl`.
    pub endpoint_id: Option<String>,
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
    pub endpoint_id: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

const DELIVERY_COLUMNS: &str = "id, run_id, invocation_id, endpoint_id, event_type, url, status, attempts, message_id, \
    next_attempt_at, last_error, created_at, delivered_at, updated_at";

fn delivery_from_row(row: &tokio_postgres::Row) -> Result<Delivery, tokio_postgres::Error> {
    Ok(Delivery {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        invocation_id: row.try_get("invocation_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
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
        AND ($5::timestamptz IS NULL OR created_at < $5) \
        AND ($6::text IS NULL OR endpoint_id = $6)";
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &tenant_id,
        &filter.status,
        &filter.run_id,
        &filter.from,
        &filter.to,
        &filter.endpoint_id,
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
                 ORDER BY created_at DESC, id DESC LIMIT $7 OFFSET $8"
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

/// `failed → pending`, due now, for every failed delivery of the tenant (or of one of its
/// endpoints) created since `since`. Returns their ids, to be published.
pub async fn recover(
    client: &impl GenericClient,
    tenant_id: &str,
    endpoint_id: Option<&str>,
    since: OffsetDateTime,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now() \
             WHERE tenant_id = $1 AND status = 'failed' AND created_at >= $2 \
               AND ($3::text IS NULL OR endpoint_id = $3) RETURNING id",
            &[&tenant_id, &since, &endpoint_id],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
