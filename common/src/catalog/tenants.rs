//! Tenants: created and managed only with the admin token.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::{Error, Page, Paginated, check_name, constraint, id_or_new};

/// A tenant: the unit of isolation. Every other resource belongs to exactly one.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// The most active API keys this tenant may hold; `null` means the server's default.
    pub max_api_keys: Option<i32>,
    /// Invocations per minute across all the tenant's keys; `null` for no tenant-wide limit.
    pub rate_limit_per_minute: Option<i32>,
    /// The most webhook endpoints this tenant may hold; `null` means the server's default.
    pub max_webhook_endpoints: Option<i32>,
    /// The tenant's share of the workers when several tenants' runs wait (1 to 100): a tenant
    /// of weight 2 starts twice as many runs as one of weight 1.
    pub weight: i32,
    /// The most runs of the tenant running at once; `null` for no quota. Past it, its runs wait
    /// (`queued`) without holding up other tenants'.
    pub max_running: Option<i32>,
    /// The most runs of the tenant queued at once; `null` for no quota. Past it, new runs are
    /// refused with 429 and `Retry-After`.
    pub max_queued: Option<i32>,
    /// The tenant's runs queued now.
    pub queued: i64,
    /// The tenant's runs running now.
    pub running: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The body of `POST /manage/tenants`. Not `Debug`: it may hold a secret.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTenant {
    /// Resource identifier; made up when absent.
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_api_keys: Option<i32>,
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i32>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_webhook_endpoints: Option<i32>,
    /// Default 1.
    #[schema(minimum = 1, maximum = 100)]
    pub weight: Option<i32>,
    #[schema(minimum = 1, maximum = 100000)]
    pub max_running: Option<i32>,
    #[schema(minimum = 1, maximum = 10000000)]
    pub max_queued: Option<i32>,
    /// The `whsec_` secret (24 to 64 bytes) that signs deliveries to the tenant's runs' own
    /// `webhookUrl`; generated when absent. Read it with `GET …/webhook-secret`.
    pub webhook_secret: Option<String>,
}

/// The body of `PATCH /manage/tenants/{tenantId}`: members present are changed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantPatch {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// `null` returns to the server's default.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    pub max_api_keys: Option<Option<i32>>,
    /// `null` removes the tenant-wide limit.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<Option<i32>>,
    /// `null` returns to the server's default.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    pub max_webhook_endpoints: Option<Option<i32>>,
    #[schema(minimum = 1, maximum = 100)]
    pub weight: Option<i32>,
    /// `null` removes the quota.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 100000)]
    pub max_running: Option<Option<i32>>,
    /// `null` removes the quota.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 10000000)]
    pub max_queued: Option<Option<i32>>,
}

const COLUMNS: &str = "id, name, max_api_keys, rate_limit_per_minute, max_webhook_endpoints, \
    weight, max_running, max_queued, created_at, updated_at, \
    (SELECT count(*) FROM runs r WHERE r.tenant_id = tenants.id AND r.status = 'queued') AS queued, \
    (SELECT count(*) FROM runs r WHERE r.tenant_id = tenants.id AND r.status = 'running') AS running";

fn from_row(row: &Row) -> Result<Tenant, tokio_postgres::Error> {
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        max_api_keys: row.try_get("max_api_keys")?,
        rate_limit_per_minute: row.try_get("rate_limit_per_minute")?,
        max_webhook_endpoints: row.try_get("max_webhook_endpoints")?,
        weight: row.try_get("weight")?,
        max_running: row.try_get("max_running")?,
        max_queued: row.try_get("max_queued")?,
        queued: row.try_get("queued")?,
        running: row.try_get("running")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn check_rate(rate: Option<i32>) -> Result<(), Error> {
    match rate {
        Some(n) if !(1..=1_000_000).contains(&n) => Err(Error::invalid(
            "`rateLimitPerMinute` must be from 1 to 1000000",
        )),
        _ => Ok(()),
    }
}

fn check_max_keys(max: Option<i32>) -> Result<(), Error> {
    match max {
        Some(n) if !(1..=1000).contains(&n) => {
            Err(Error::invalid("`maxApiKeys` must be from 1 to 1000"))
        }
        _ => Ok(()),
    }
}

/// The scheduling settings: `weight`, `maxRunning`, `maxQueued`.
fn check_scheduling(
    weight: Option<i32>,
    max_running: Option<i32>,
    max_queued: Option<i32>,
) -> Result<(), Error> {
    if weight.is_some_and(|w| !(1..=100).contains(&w)) {
        return Err(Error::invalid("`weight` must be from 1 to 100"));
    }
    if max_running.is_some_and(|n| !(1..=100_000).contains(&n)) {
        return Err(Error::invalid("`maxRunning` must be from 1 to 100000"));
    }
    if max_queued.is_some_and(|n| !(1..=10_000_000).contains(&n)) {
        return Err(Error::invalid("`maxQueued` must be from 1 to 10000000"));
    }
    Ok(())
}

fn check_max_endpoints(max: Option<i32>) -> Result<(), Error> {
    match max {
        Some(n) if !(1..=1000).contains(&n) => Err(Error::invalid(
            "`maxWebhookEndpoints` must be from 1 to 1000",
        )),
        _ => Ok(()),
    }
}

pub async fn create(
    client: &impl GenericClient,
    key: &crate::secrets::MasterKey,
    new: NewTenant,
) -> Result<Tenant, Error> {
    let id = id_or_new(new.id, "tenant")?;
    check_name(&new.name, "tenant")?;
    check_max_keys(new.max_api_keys)?;
    check_rate(new.rate_limit_per_minute)?;
    check_max_endpoints(new.max_webhook_endpoints)?;
    check_scheduling(new.weight, new.max_running, new.max_queued)?;
    let secret =
        super::webhook_endpoints::seal_tenant_secret(key, &id, new.webhook_secret.as_deref())?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO tenants (id, name, max_api_keys, rate_limit_per_minute, webhook_secret, \
                                      max_webhook_endpoints, weight, max_running, max_queued) \
                 VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, 1), $8, $9) RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &new.name,
                &new.max_api_keys,
                &new.rate_limit_per_minute,
                &secret,
                &new.max_webhook_endpoints,
                &new.weight,
                &new.max_running,
                &new.max_queued,
            ],
        )
        .await
        .map_err(|e| constraint(e, "tenant"))?;
    Ok(from_row(&row)?)
}

pub async fn get(client: &impl GenericClient, id: &str) -> Result<Tenant, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM tenants WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("tenant `{id}` was not found")))?;
    Ok(from_row(&row)?)
}

pub async fn list(client: &impl GenericClient, page: Page) -> Result<Paginated<Tenant>, Error> {
    let total: i64 = client
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM tenants ORDER BY created_at, id LIMIT $1 OFFSET $2"),
            &[&page.limit(), &page.offset()],
        )
        .await?;
    let data = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok(page.wrap(data, total))
}

pub async fn update(
    client: &impl GenericClient,
    id: &str,
    patch: TenantPatch,
) -> Result<Tenant, Error> {
    if let Some(name) = &patch.name {
        check_name(name, "tenant")?;
    }
    if let Some(max) = patch.max_api_keys {
        check_max_keys(max)?;
    }
    if let Some(rate) = patch.rate_limit_per_minute {
        check_rate(rate)?;
    }
    if let Some(max) = patch.max_webhook_endpoints {
        check_max_endpoints(max)?;
    }
    check_scheduling(
        patch.weight,
        patch.max_running.flatten(),
        patch.max_queued.flatten(),
    )?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE tenants SET name = coalesce($2, name), \
                     max_api_keys = CASE WHEN $3 THEN $4 ELSE max_api_keys END, \
                     rate_limit_per_minute = CASE WHEN $5 THEN $6 ELSE rate_limit_per_minute END, \
                     max_webhook_endpoints = CASE WHEN $7 THEN $8 ELSE max_webhook_endpoints END, \
                     weight = coalesce($9, weight), \
                     max_running = CASE WHEN $10 THEN $11 ELSE max_running END, \
                     max_queued = CASE WHEN $12 THEN $13 ELSE max_queued END, \
                     updated_at = now() \
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &patch.name,
                &patch.max_api_keys.is_some(),
                &patch.max_api_keys.flatten(),
                &patch.rate_limit_per_minute.is_some(),
                &patch.rate_limit_per_minute.flatten(),
                &patch.max_webhook_endpoints.is_some(),
                &patch.max_webhook_endpoints.flatten(),
                &patch.weight,
                &patch.max_running.is_some(),
                &patch.max_running.flatten(),
                &patch.max_queued.is_some(),
                &patch.max_queued.flatten(),
            ],
        )
        .await
        .map_err(|e| constraint(e, "tenant"))?
        .ok_or_else(|| Error::NotFound(format!("tenant `{id}` was not found")))?;
    Ok(from_row(&row)?)
}

/// Deletes the tenant and everything it owns, runs included.
pub async fn delete(client: &impl GenericClient, id: &str) -> Result<(), Error> {
    let n = client
        .execute("DELETE FROM tenants WHERE id = $1", &[&id])
        .await?;
    if n == 0 {
        return Err(Error::NotFound(format!("tenant `{id}` was not found")));
    }
    Ok(())
}
