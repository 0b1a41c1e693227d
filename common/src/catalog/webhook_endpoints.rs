//! Webhook endpoints: where a tenant's events are delivered, which ones, how fast, and with which
//! secret. The secret is sealed with the master key; it is shown only by [`reveal_secret`], and a
//! rotation keeps the previous one valid for an overlap, during which both sign.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::{Error, Page, Paginated, check_description, constraint, id_or_new};
use crate::model::WebhookEvent;
use crate::secrets::{MasterKey, endpoint_context, tenant_webhook_context};
use crate::signing::Secret;

/// The `maxConcurrency` of an endpoint that names none.
pub const DEFAULT_MAX_CONCURRENCY: i32 = 10;

/// A webhook endpoint as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// The event types delivered; `["*"]` is every type.
    pub event_types: Vec<String>,
    /// Only this project's events, when set.
    pub project_id: Option<String>,
    pub enabled: bool,
    /// When and why the endpoint was disabled (by a 410, by failing too long, or by the API).
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
    /// Bodies carry ids, status and the run's URL only.
    pub thin: bool,
    /// Deliveries per second at most; none when null.
    pub rate_limit: Option<i32>,
    /// Attempts in flight at once at most.
    pub max_concurrency: i32,
    /// Since when every attempt has failed; null after a success.
    #[serde(with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Until when the secret before the last rotation still signs too.
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The body of an endpoint create.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEndpoint {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    /// An absolute http or https URL.
    #[schema(max_length = 2048)]
    pub url: String,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Event types to deliver (default `["*"]`): `run.completed`, `run.failed`,
    /// `run.cancelled`, `run.timed_out`, `run.expired`, `invocation.dropped`,
    /// `endpoint.disabled`, or `*`.
    pub event_types: Option<Vec<String>>,
    /// Only this project's events.
    pub project_id: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Send thin bodies (ids, status and the run's URL). Default false.
    pub thin: Option<bool>,
    /// Deliveries per second at most, 1 to 10000.
    #[schema(minimum = 1, maximum = 10000)]
    pub rate_limit: Option<i32>,
    /// Attempts in flight at once at most, 1 to 1000 (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<i32>,
    /// A `whsec_` secret of 24 to 64 bytes; one is generated when absent.
    pub secret: Option<String>,
}

/// The body of an endpoint PATCH. `enabled: true` re-enables a disabled endpoint.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPatch {
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub description: Option<Option<String>>,
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub project_id: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub thin: Option<bool>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 10000)]
    pub rate_limit: Option<Option<i32>>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<i32>,
}

/// An endpoint's signing secret, shown on request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSecret {
    /// `whsec_…`: verify with it.
    pub key: String,
    /// Until when the previous secret still signs too (after a rotation).
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_key_expires_at: Option<OffsetDateTime>,
}

/// The body of a rotation: a supplied `key`, or none to generate one.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    /// A `whsec_` secret of 24 to 64 bytes.
    pub key: Option<String>,
}

/// Something that happened to an endpoint (`endpoint.disabled`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointEvent {
    pub id: uuid::Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const COLUMNS: &str = "id, url, description, event_types, project_id, enabled, disabled_at, \
    disabled_reason, thin, rate_limit, max_concurrency, failing_since, \
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END \
        AS previous_secret_expires_at, created_at, updated_at";

fn from_row(row: &Row) -> Result<Endpoint, tokio_postgres::Error> {
    Ok(Endpoint {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: row.try_get("event_types")?,
        project_id: row.try_get("project_id")?,
        enabled: row.try_get("enabled")?,
        disabled_at: row.try_get("disabled_at")?,
        disabled_reason: row.try_get("disabled_reason")?,
        thin: row.try_get("thin")?,
        rate_limit: row.try_get("rate_limit")?,
        max_concurrency: row.try_get("max_concurrency")?,
        failing_since: row.try_get("failing_since")?,
        previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("webhook endpoint `{id}` was not found"))
}

fn check_event_types(types: &[String]) -> Result<(), Error> {
    if types.is_empty() || types.len() > WebhookEvent::ALL.len() + 1 {
        return Err(Error::invalid(
            "`eventTypes` must name 1 or more event types, or `*`",
        ));
    }
    match types
        .iter()
        .find(|t| *t != "*" && WebhookEvent::parse(t).is_none())
    {
        Some(unknown) => Err(Error::invalid(format!(
            "`eventTypes`: `{unknown}` is not an event type; use {} or `*`",
            WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ")
        ))),
        None => Ok(()),
    }
}

fn check_limits(rate_limit: Option<i32>, max_concurrency: Option<i32>) -> Result<(), Error> {
    if rate_limit.is_some_and(|n| !(1..=10_000).contains(&n)) {
        return Err(Error::invalid("`rateLimit` must be 1 to 10000 per second"));
    }
    if max_concurrency.is_some_and(|n| !(1..=1000).contains(&n)) {
        return Err(Error::invalid("`maxConcurrency` must be 1 to 1000"));
    }
    Ok(())
}

/// A supplied secret: `whsec_` and 24 to 64 bytes, as Standard Webhooks recommends.
pub(crate) fn parse_secret(raw: &str) -> Result<Secret, Error> {
    Secret::parse(raw)
        .ok()
        .filter(|s| raw.trim().starts_with("whsec_") && (24..=64).contains(&s.len()))
        .ok_or_else(|| Error::invalid("a secret must be `whsec_` and the base64 of 24 to 64 bytes"))
}

async fn check_project(
    client: &impl GenericClient,
    tenant_id: &str,
    project_id: Option<&str>,
) -> Result<(), Error> {
    match project_id {
        Some(p) => super::project_must_exist(client, tenant_id, p)
            .await
            .map_err(|_| Error::invalid(format!("`projectId`: project `{p}` was not found"))),
        None => Ok(()),
    }
}

/// Creates an endpoint, within the tenant's cap (its `maxWebhookEndpoints`, else
/// `default_max`): every run event fans out to every endpoint inside the worker's shared
/// completion batch, so their number is bounded. The tenant row is locked (`FOR NO KEY UPDATE`,
/// which lets its runs' foreign-key checks through) while the endpoints are counted, so
/// concurrent creates cannot pass the cap together.
pub async fn create(
    client: &mut deadpool_postgres::Client,
    key: &MasterKey,
    tenant_id: &str,
    new: NewEndpoint,
    default_max: i32,
) -> Result<Endpoint, Error> {
    let id = id_or_new(new.id, "webhook endpoint")?;
    super::agents::check_url(&new.url, "url")?;
    check_description(new.description.as_deref())?;
    let event_types = new.event_types.unwrap_or_else(|| vec!["*".into()]);
    check_event_types(&event_types)?;
    check_limits(new.rate_limit, new.max_concurrency)?;
    let secret = match new.secret.as_deref() {
        Some(raw) => parse_secret(raw)?,
        None => Secret::generate(),
    };
    let tx = client.transaction().await?;
    let tenant = tx
        .query_opt(
            "SELECT max_webhook_endpoints FROM tenants WHERE id = $1 FOR NO KEY UPDATE",
            &[&tenant_id],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant_id}` was not found")))?;
    check_project(&tx, tenant_id, new.project_id.as_deref()).await?;
    let max: i32 = tenant.try_get::<_, Option<i32>>(0)?.unwrap_or(default_max);
    let held: i64 = tx
        .query_one(
            "SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1",
            &[&tenant_id],
        )
        .await?
        .get(0);
    if held >= i64::from(max) {
        return Err(Error::Conflict(format!(
            "the tenant already has {held} webhook endpoints, the most it may hold ({max}); \
             delete one first"
        )));
    }
    let sealed = key.seal(&endpoint_context(tenant_id, &id), secret.as_bytes());
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO webhook_endpoints (tenant_id, id, url, description, event_types, \
                     project_id, enabled, thin, rate_limit, max_concurrency, secret) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &id,
                &new.url,
                &new.description,
                &event_types,
                &new.project_id,
                &new.enabled.unwrap_or(true),
                &new.thin.unwrap_or(false),
                &new.rate_limit,
                &new.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
                &sealed,
            ],
        )
        .await
        .map_err(|e| constraint(e, "webhook endpoint"))?;
    tx.commit().await?;
    Ok(from_row(&row)?)
}

pub async fn get(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> Result<Endpoint, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2"),
            &[&tenant_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    page: Page,
) -> Result<Paginated<Endpoint>, Error> {
    super::tenant_must_exist(client, tenant_id).await?;
    super::list_page(
        client,
        "webhook_endpoints",
        COLUMNS,
        "true",
        &[&tenant_id],
        page,
        from_row,
    )
    .await
}

/// Applies a PATCH. Enabling clears the disabled state and the failure window; disabling
/// through the API records why.
pub async fn update(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
    patch: EndpointPatch,
) -> Result<Endpoint, Error> {
    if let Some(url) = &patch.url {
        super::agents::check_url(url, "url")?;
    }
    if let Some(description) = &patch.description {
        check_description(description.as_deref())?;
    }
    if let Some(types) = &patch.event_types {
        check_event_types(types)?;
    }
    check_limits(patch.rate_limit.flatten(), patch.max_concurrency)?;
    if let Some(project) = &patch.project_id {
        check_project(client, tenant_id, project.as_deref()).await?;
    }
    let row = client
        .query_opt(
            &format!(
                "UPDATE webhook_endpoints SET url = coalesce($3, url), \
                     description = CASE WHEN $4 THEN $5 ELSE description END, \
                     event_types = coalesce($6, event_types), \
                     project_id = CASE WHEN $7 THEN $8 ELSE project_id END, \
                     thin = coalesce($9, thin), \
                     rate_limit = CASE WHEN $10 THEN $11 ELSE rate_limit END, \
                     max_concurrency = coalesce($12, max_concurrency), \
                     disabled_at = CASE WHEN $13::boolean IS NULL THEN disabled_at \
                                        WHEN $13::boolean THEN NULL \
                                        WHEN enabled THEN now() ELSE disabled_at END, \
                     disabled_reason = CASE WHEN $13::boolean IS NULL THEN disabled_reason \
                                            WHEN $13::boolean THEN NULL \
                                            WHEN enabled THEN 'disabled through the API' \
                                            ELSE disabled_reason END, \
                     failing_since = CASE WHEN $13::boolean THEN NULL ELSE failing_since END, \
                     enabled = coalesce($13::boolean, enabled), updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &id,
                &patch.url,
                &patch.description.is_some(),
                &patch.description.flatten(),
                &patch.event_types,
                &patch.project_id.is_some(),
                &patch.project_id.flatten(),
                &patch.thin,
                &patch.rate_limit.is_some(),
                &patch.rate_limit.flatten(),
                &patch.max_concurrency,
                &patch.enabled,
            ],
        )
        .await
        .map_err(|e| constraint(e, "webhook endpoint"))?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// Deletes an endpoint with its deliveries. The deliveries are locked first, in id order, as a
/// claim locks them before the endpoint: the other order could deadlock with a claim.
pub async fn delete(
    client: &mut deadpool_postgres::Client,
    tenant_id: &str,
    id: &str,
) -> Result<(), Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT 1 FROM deliveries WHERE tenant_id = $1 AND endpoint_id = $2 ORDER BY id FOR UPDATE",
        &[&tenant_id, &id],
    )
    .await?;
    let n = tx
        .execute(
            "DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &id],
        )
        .await?;
    if n == 0 {
        return Err(not_found(id));
    }
    tx.commit().await?;
    Ok(())
}

/// The endpoint's current secret, as `whsec_…`.
pub async fn reveal_secret(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
    id: &str,
) -> Result<EndpointSecret, Error> {
    let row = client
        .query_opt(
            "SELECT secret, CASE WHEN previous_secret_expires_at > now() \
                                 THEN previous_secret_expires_at END \
             FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let sealed: Vec<u8> = row.try_get(0)?;
    let secret =
        Secret::unseal(key, &endpoint_context(tenant_id, id), &sealed).ok_or_else(|| {
            Error::Conflict(format!(
                "the secret of webhook endpoint `{id}` does not open under this master key"
            ))
        })?;
    Ok(EndpointSecret {
        key: secret.to_whsec(),
        previous_key_expires_at: row.try_get(1)?,
    })
}

/// Replaces the secret (generated, or the one supplied); the old one keeps signing too until
/// `overlap` from now.
pub async fn rotate_secret(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
    id: &str,
    rotation: Rotation,
    overlap: std::time::Duration,
) -> Result<EndpointSecret, Error> {
    let secret = match rotation.key.as_deref() {
        Some(raw) => parse_secret(raw)?,
        None => Secret::generate(),
    };
    let sealed = key.seal(&endpoint_context(tenant_id, id), secret.as_bytes());
    let row = client
        .query_opt(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = $3, \
                 previous_secret_expires_at = now() + make_interval(secs => $4), updated_at = now() \
             WHERE tenant_id = $1 AND id = $2 RETURNING previous_secret_expires_at",
            &[&tenant_id, &id, &sealed, &overlap.as_secs_f64()],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let expires: OffsetDateTime = row.try_get(0)?;
    Ok(EndpointSecret {
        key: secret.to_whsec(),
        previous_key_expires_at: (!overlap.is_zero()).then_some(expires),
    })
}

/// The tenant's default secret, which signs deliveries to its runs' own `webhookUrl`. 409 for a
/// tenant that has none of its own (it signs with the deployment's `SWITCHYARD_WEBHOOK_SECRET`).
pub async fn reveal_tenant_secret(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
) -> Result<EndpointSecret, Error> {
    let row = client
        .query_opt(
            "SELECT webhook_secret, CASE WHEN previous_webhook_secret_expires_at > now() \
                                         THEN previous_webhook_secret_expires_at END \
             FROM tenants WHERE id = $1",
            &[&tenant_id],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant_id}` was not found")))?;
    let Some(sealed) = row.try_get::<_, Option<Vec<u8>>>(0)? else {
        return Err(Error::Conflict(
            "the tenant signs with the deployment's default secret; rotate to give it its own"
                .into(),
        ));
    };
    let secret =
        Secret::unseal(key, &tenant_webhook_context(tenant_id), &sealed).ok_or_else(|| {
            Error::Conflict("the tenant's secret does not open under this master key".into())
        })?;
    Ok(EndpointSecret {
        key: secret.to_whsec(),
        previous_key_expires_at: row.try_get(1)?,
    })
}

/// A new tenant's default secret, sealed: the one supplied, or a generated one.
pub fn seal_tenant_secret(
    key: &MasterKey,
    tenant_id: &str,
    supplied: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let secret = match supplied {
        Some(raw) => parse_secret(raw)?,
        None => Secret::generate(),
    };
    Ok(key.seal(&tenant_webhook_context(tenant_id), secret.as_bytes()))
}

/// Replaces the tenant's default secret; its old one keeps signing too until `overlap` from now
/// (the deployment's default secret, for a tenant that had none of its own).
pub async fn rotate_tenant_secret(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
    rotation: Rotation,
    overlap: std::time::Duration,
) -> Result<EndpointSecret, Error> {
    let secret = match rotation.key.as_deref() {
        Some(raw) => parse_secret(raw)?,
        None => Secret::generate(),
    };
    let sealed = key.seal(&tenant_webhook_context(tenant_id), secret.as_bytes());
    let row = client
        .query_opt(
            "UPDATE tenants SET previous_webhook_secret = webhook_secret, webhook_secret = $2, \
                 previous_webhook_secret_expires_at = now() + make_interval(secs => $3), \
                 updated_at = now() \
             WHERE id = $1 RETURNING previous_webhook_secret_expires_at",
            &[&tenant_id, &sealed, &overlap.as_secs_f64()],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant_id}` was not found")))?;
    let expires: OffsetDateTime = row.try_get(0)?;
    Ok(EndpointSecret {
        key: secret.to_whsec(),
        previous_key_expires_at: (!overlap.is_zero()).then_some(expires),
    })
}

/// The endpoint's events, oldest first.
pub async fn events(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
    page: Page,
) -> Result<Paginated<EndpointEvent>, Error> {
    get(client, tenant_id, id).await?;
    let total: i64 = client
        .query_one(
            "SELECT count(*) FROM webhook_endpoint_events WHERE tenant_id = $1 AND endpoint_id = $2",
            &[&tenant_id, &id],
        )
        .await?
        .get(0);
    let rows = client
        .query(
            "SELECT id, type, reason, created_at FROM webhook_endpoint_events \
             WHERE tenant_id = $1 AND endpoint_id = $2 ORDER BY created_at, id LIMIT $3 OFFSET $4",
            &[&tenant_id, &id, &page.limit(), &page.offset()],
        )
        .await?;
    let data = rows
        .iter()
        .map(|r| {
            Ok(EndpointEvent {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                reason: r.try_get(2)?,
                created_at: r.try_get(3)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(page.wrap(data, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_known_or_the_wildcard() {
        let types =
            |t: &[&str]| check_event_types(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(types(&["*"]).is_ok());
        assert!(types(&["run.completed", "invocation.dropped"]).is_ok());
        assert!(types(&[]).is_err());
        assert!(types(&["run.started"]).is_err());
    }

    #[test]
    fn supplied_secrets_are_whsec_of_24_to_64_bytes() {
        assert!(parse_secret(&Secret::generate().to_whsec()).is_ok());
        assert!(parse_secret("whsec_c2hvcnQ=").is_err(), "5 bytes");
        let bare = Secret::generate().to_whsec().replace("whsec_", "");
        assert!(parse_secret(&bare).is_err(), "the prefix is required");
    }
}
