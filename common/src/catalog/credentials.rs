//! Credentials: secrets (LLM API keys, webhook and signature secrets) sealed with the master key.
//! After creation only their metadata is ever returned; agents and triggers name them by id.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::{
    Error, Page, Paginated, check_description, check_name, check_text, constraint, id_or_new,
};
use crate::secrets::{MasterKey, credential_context};

/// Largest secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// What a credential holds; informational, it does not change how the value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    ApiKey,
    WebhookSecret,
    SigningSecret,
    Generic,
}

impl CredentialKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::WebhookSecret => "webhook_secret",
            Self::SigningSecret => "signing_secret",
            Self::Generic => "generic",
        }
    }

    fn parse(raw: &str) -> Self {
        match raw {
            "api_key" => Self::ApiKey,
            "webhook_secret" => Self::WebhookSecret,
            "signing_secret" => Self::SigningSecret,
            _ => Self::Generic,
        }
    }
}

/// A credential's metadata. The value is never part of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub kind: CredentialKind,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The body of a credential create. `value` is sealed at once and never shown again.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCredential {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[serde(rename = "type", default = "generic")]
    pub kind: CredentialKind,
    /// The secret; 1 to 8192 bytes.
    #[schema(min_length = 1, max_length = 8192)]
    pub value: String,
}

fn generic() -> CredentialKind {
    CredentialKind::Generic
}

/// The body of a credential PATCH. A new `value` replaces the secret (rotation).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialPatch {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub description: Option<Option<String>>,
    #[schema(min_length = 1, max_length = 8192)]
    pub value: Option<String>,
}

const COLUMNS: &str = "id, name, description, kind, created_at, updated_at";

fn from_row(row: &Row) -> Result<Credential, tokio_postgres::Error> {
    Ok(Credential {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        kind: CredentialKind::parse(row.try_get("kind")?),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("credential `{id}` was not found"))
}

fn check_value(value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "`value` must be 1 to {MAX_VALUE_BYTES} bytes"
        )));
    }
    check_text(value, "value")
}

pub async fn create(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
    new: NewCredential,
) -> Result<Credential, Error> {
    let id = id_or_new(new.id, "credential")?;
    check_name(&new.name, "credential")?;
    check_description(new.description.as_deref())?;
    check_value(&new.value)?;
    let sealed = key.seal(&credential_context(tenant_id, &id), new.value.as_bytes());
    let row = client
        .query_one(
            &format!(
                "INSERT INTO credentials (tenant_id, id, name, description, kind, sealed) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &id,
                &new.name,
                &new.description,
                &new.kind.as_str(),
                &sealed,
            ],
        )
        .await
        .map_err(|e| constraint(e, "credential"))?;
    Ok(from_row(&row)?)
}

pub async fn get(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
) -> Result<Credential, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM credentials WHERE tenant_id = $1 AND id = $2"),
            &[&tenant_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// The secret itself, for the component that uses it (never for an API response).
pub async fn reveal(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
    id: &str,
) -> Result<String, Error> {
    let row = client
        .query_opt(
            "SELECT sealed FROM credentials WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    let sealed: Vec<u8> = row.try_get(0)?;
    let plain = key
        .open(&credential_context(tenant_id, id), &sealed)
        .map_err(|e| Error::Conflict(format!("credential `{id}`: {e}")))?;
    String::from_utf8(plain).map_err(|_| Error::Conflict(format!("credential `{id}` is not text")))
}

pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    page: Page,
) -> Result<Paginated<Credential>, Error> {
    super::tenant_must_exist(client, tenant_id).await?;
    super::list_page(
        client,
        "credentials",
        COLUMNS,
        "true",
        &[&tenant_id],
        page,
        from_row,
    )
    .await
}

pub async fn update(
    client: &impl GenericClient,
    key: &MasterKey,
    tenant_id: &str,
    id: &str,
    patch: CredentialPatch,
) -> Result<Credential, Error> {
    if let Some(name) = &patch.name {
        check_name(name, "credential")?;
    }
    if let Some(description) = &patch.description {
        check_description(description.as_deref())?;
    }
    let sealed = match &patch.value {
        Some(value) => {
            check_value(value)?;
            Some(key.seal(&credential_context(tenant_id, id), value.as_bytes()))
        }
        None => None,
    };
    let row = client
        .query_opt(
            &format!(
                "UPDATE credentials SET name = coalesce($3, name), \
                     description = CASE WHEN $4 THEN $5 ELSE description END, \
                     sealed = coalesce($6, sealed), updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &id,
                &patch.name,
                &patch.description.is_some(),
                &patch.description.flatten(),
                &sealed,
            ],
        )
        .await
        .map_err(|e| constraint(e, "credential"))?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// Deletes a credential; 409 while an agent or a trigger still names it.
pub async fn delete(client: &impl GenericClient, tenant_id: &str, id: &str) -> Result<(), Error> {
    let n = client
        .execute(
            "DELETE FROM credentials WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &id],
        )
        .await
        .map_err(|e| constraint(e, "credential"))?;
    if n == 0 {
        return Err(not_found(id));
    }
    Ok(())
}
