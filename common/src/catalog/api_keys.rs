//! API keys: `sy_` plus 32 random bytes (base64url), shown once and stored only as a SHA-256
//! digest. Scoped, optionally limited to projects, capped per tenant, revocable.

use base64::prelude::*;
use deadpool_postgres::GenericClient;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Error, Page, Paginated, check_name};

/// What every key starts with, so a leaked one is easy to recognise (and to scan for).
pub const KEY_PREFIX: &str = "sy_";
/// How many leading characters of a key the list shows.
const SHOWN_PREFIX_LEN: usize = 11;

/// The scopes of a key created without `scopes`.
pub const DEFAULT_SCOPES: [Scope; 2] = [Scope::Trigger, Scope::RunsRead];

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    /// Invoke triggers and create runs.
    #[serde(rename = "trigger")]
    Trigger,
    /// Read runs and their events.
    #[serde(rename = "runs:read")]
    RunsRead,
    /// Use the management API of its tenant.
    #[serde(rename = "manage")]
    Manage,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::RunsRead => "runs:read",
            Self::Manage => "manage",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "trigger" => Some(Self::Trigger),
            "runs:read" => Some(Self::RunsRead),
            "manage" => Some(Self::Manage),
            _ => None,
        }
    }
}

/// A key as the API lists it: never the secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    /// The first characters of the secret.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// The projects the key may touch; `null` means all of the tenant's.
    pub project_ids: Option<Vec<String>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Updated in the background, within about ten seconds of use.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Invocations per minute this key may make; `null`: none of its own (on the agent-app door,
    /// the server's default).
    pub rate_limit_per_minute: Option<i32>,
    /// The tenant's own limit, shared by all its keys (filled in when authenticating).
    #[serde(skip)]
    pub tenant_rate_limit_per_minute: Option<i32>,
}

/// A key just created: the secret, shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The secret. It is not stored and cannot be shown again.
    pub key: String,
}

/// The body of a key create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewApiKey {
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// Default: `trigger` and `runs:read`.
    pub scopes: Option<Vec<Scope>>,
    /// Limit the key to these projects; absent or `null` for all.
    pub project_ids: Option<Vec<String>>,
    /// Invocations per minute (1 to 1,000,000); absent for none of its own (on the agent-app
    /// door, the server's default).
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i32>,
}

/// The SHA-256 digest a key is stored and looked up by.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new secret: the prefix and 32 random bytes.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", BASE64_URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `presented` could be a key at all (cheap, before any lookup).
pub fn looks_like_key(presented: &str) -> bool {
    presented.len() == KEY_PREFIX.len() + 43 && presented.starts_with(KEY_PREFIX)
}

const COLUMNS: &str = "id, tenant_id, name, prefix, scopes, project_ids, created_at, last_used_at, \
    revoked_at, rate_limit_per_minute";

fn from_row(row: &Row) -> Result<ApiKey, tokio_postgres::Error> {
    let scopes: Vec<String> = row.try_get("scopes")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        project_ids: row.try_get("project_ids")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rate_limit_per_minute: row.try_get("rate_limit_per_minute")?,
        tenant_rate_limit_per_minute: row
            .try_get::<_, Option<i32>>("tenant_rate_limit_per_minute")
            .ok()
            .flatten(),
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("API key `{id}` was not found"))
}

/// Creates a key. The tenant row is locked while active keys are counted, so concurrent creates
/// cannot pass the cap together.
pub async fn create(
    client: &mut deadpool_postgres::Client,
    tenant_id: &str,
    new: NewApiKey,
    default_max: i32,
) -> Result<CreatedApiKey, Error> {
    check_name(&new.name, "API key")?;
    let mut scopes = new.scopes.unwrap_or_else(|| DEFAULT_SCOPES.to_vec());
    scopes.sort_by_key(|s| s.as_str());
    scopes.dedup();
    if scopes.is_empty() {
        return Err(Error::invalid("`scopes` must name at least one scope"));
    }
    if new
        .rate_limit_per_minute
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        return Err(Error::invalid(
            "`rateLimitPerMinute` must be from 1 to 1000000",
        ));
    }
    let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let projects = match new.project_ids {
        Some(p) if p.is_empty() => {
            return Err(Error::invalid(
                "`projectIds` must name at least one project, or be left out for all",
            ));
        }
        Some(p) if !p.iter().all(|id| super::valid_id(id)) => {
            return Err(Error::invalid(
                "`projectIds` names a project that does not exist",
            ));
        }
        Some(mut p) => {
            p.sort();
            p.dedup();
            Some(p)
        }
        None => None,
    };
    let tx = client.transaction().await?;
    let tenant = tx
        .query_opt(
            "SELECT max_api_keys FROM tenants WHERE id = $1 FOR NO KEY UPDATE",
            &[&tenant_id],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant_id}` was not found")))?;
    if let Some(projects) = &projects {
        let known: i64 = tx
            .query_one(
                "SELECT count(*) FROM projects WHERE tenant_id = $1 AND id = ANY($2)",
                &[&tenant_id, projects],
            )
            .await?
            .get(0);
        if known != projects.len() as i64 {
            return Err(Error::invalid(
                "`projectIds` names a project that does not exist",
            ));
        }
    }
    let max: i32 = tenant.try_get::<_, Option<i32>>(0)?.unwrap_or(default_max);
    let active: i64 = tx
        .query_one(
            "SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL",
            &[&tenant_id],
        )
        .await?
        .get(0);
    if active >= i64::from(max) {
        return Err(Error::Conflict(format!(
            "the tenant already has {active} active API keys, the most it may hold ({max}); revoke one first"
        )));
    }
    let secret = generate();
    let hash = digest(&secret).to_vec();
    let prefix = &secret[..SHOWN_PREFIX_LEN];
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, scopes, project_ids, \
                                       rate_limit_per_minute) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &tenant_id,
                &new.name,
                &prefix,
                &hash,
                &scope_names,
                &projects,
                &new.rate_limit_per_minute,
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(CreatedApiKey {
        api_key: from_row(&row)?,
        key: secret,
    })
}

pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    page: Page,
) -> Result<Paginated<ApiKey>, Error> {
    super::tenant_must_exist(client, tenant_id).await?;
    super::list_page(
        client,
        "api_keys",
        COLUMNS,
        "true",
        &[&tenant_id],
        page,
        from_row,
    )
    .await
}

pub async fn get(client: &impl GenericClient, tenant_id: &str, id: &str) -> Result<ApiKey, Error> {
    let key_id = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2"),
            &[&tenant_id, &key_id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// Revokes a key. Idempotent: revoking a revoked key keeps its first revocation time.
pub async fn revoke(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> Result<ApiKey, Error> {
    let key_id = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) \
                 WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
            &[&tenant_id, &key_id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// The active key with this digest, across all tenants (this is how a request finds its tenant).
pub async fn authenticate(
    client: &impl GenericClient,
    hash: &[u8; 32],
) -> Result<Option<ApiKey>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT k.id, k.tenant_id, k.name, k.prefix, k.scopes, k.project_ids, k.created_at, \
                    k.last_used_at, k.revoked_at, k.rate_limit_per_minute, \
                    t.rate_limit_per_minute AS tenant_rate_limit_per_minute \
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.hash = $1 AND k.revoked_at IS NULL",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&hash.as_slice()]).await?;
    row.as_ref().map(from_row).transpose()
}

/// Records when keys were last used: one statement for a whole batch of uses.
pub async fn record_use(
    client: &impl GenericClient,
    uses: &[(Uuid, OffsetDateTime)],
) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<Uuid> = uses.iter().map(|u| u.0).collect();
    let times: Vec<OffsetDateTime> = uses.iter().map(|u| u.1).collect();
    client
        .execute(
            "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, u.at) \
             FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at) WHERE k.id = u.id",
            &[&ids, &times],
        )
        .await
}

/// Inserts a key directly, for tests and bootstrap tooling that have no HTTP server at hand. Its
/// rate limit is the highest there is (a million a minute), for load tests.
pub async fn insert_raw(
    client: &tokio_postgres::Client,
    tenant_id: &str,
    name: &str,
    secret: &str,
    scopes: &[Scope],
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::now_v7();
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    client
        .execute(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, scopes, rate_limit_per_minute) \
             VALUES ($1, $2, $3, $4, $5, $6, 1000000)",
            &[
                &id,
                &tenant_id,
                &name,
                &&secret[..SHOWN_PREFIX_LEN.min(secret.len())],
                &digest(secret).as_slice(),
                &names,
            ],
        )
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_high_entropy() {
        let a = generate();
        let b = generate();
        assert!(a.starts_with("sy_"));
        assert!(looks_like_key(&a));
        assert_ne!(a, b);
        assert_eq!(
            BASE64_URL_SAFE_NO_PAD.decode(&a[3..]).map(|v| v.len()).ok(),
            Some(32)
        );
        assert!(!looks_like_key("sy_short"));
        assert!(!looks_like_key(&a.replace("sy_", "xx_")));
    }

    #[test]
    fn scopes_have_their_documented_names() {
        let v = serde_json::to_value([Scope::Trigger, Scope::RunsRead, Scope::Manage]).expect("ok");
        assert_eq!(v, serde_json::json!(["trigger", "runs:read", "manage"]));
    }
}
