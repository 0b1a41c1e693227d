//! The catalog: what operators configure through the management API (tenants, projects, agents,
//! triggers, API keys and credentials). Each resource is a module of typed specs, validation on
//! write, and tenant-scoped SQL.
//!
//! Architecture invariant: every function that reads or writes a tenant's rows takes the tenant id
//! and filters on it; only [`tenants`] and [`api_keys::authenticate`] look across tenants.

pub mod agents;
pub mod api_keys;
pub mod credentials;
pub mod invocations;
pub mod projects;
pub mod tenants;
pub mod triggers;
pub mod webhook_endpoints;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Why a catalog operation was refused. The ingress maps each to a problem+json status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource (or its parent) does not exist in the caller's tenant: 404.
    #[error("{0}")]
    NotFound(String),
    /// A name, key or id is taken, or a limit is reached, or the resource is in use: 409.
    #[error("{0}")]
    Conflict(String),
    /// The body is well-formed but a value breaks a rule: 422.
    #[error("{0}")]
    Invalid(String),
    /// The body is not of the documented shape: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not write this (a project-limited key naming a credential): 403.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

impl Error {
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::Invalid(detail.into())
    }
}

/// Turns constraint violations into the client's error; anything else stays a database error.
pub(crate) fn constraint(err: tokio_postgres::Error, what: &str) -> Error {
    use tokio_postgres::error::SqlState;
    let Some(db) = err.as_db_error() else {
        return Error::Db(err);
    };
    let name = db.constraint().unwrap_or_default();
    match *db.code() {
        SqlState::UNIQUE_VIOLATION => Error::Conflict(match name {
            "triggers_key" => "a trigger with this key already exists in the project".into(),
            n if n.ends_with("_name_key") || n == "triggers_name" => {
                format!("a {what} with this name already exists")
            }
            _ => format!("a {what} with this id already exists"),
        }),
        // The foreign keys from agents and triggers to the credential they name.
        SqlState::FOREIGN_KEY_VIOLATION
            if name == "agents_credential_fkey" || name == "triggers_credential_fkey" =>
        {
            if what == "credential" {
                Error::Conflict("the credential is in use by an agent or a trigger".into())
            } else {
                Error::invalid("the referenced credential does not exist")
            }
        }
        SqlState::FOREIGN_KEY_VIOLATION => {
            Error::NotFound(format!("the {what}'s tenant or parent was not found"))
        }
        SqlState::CHECK_VIOLATION => {
            Error::invalid(format!("a value of the {what} is out of range"))
        }
        _ => Error::Db(err),
    }
}

/// 404 unless the tenant exists (lists would otherwise answer an empty page).
pub(crate) async fn tenant_must_exist(
    client: &impl deadpool_postgres::GenericClient,
    tenant_id: &str,
) -> Result<(), Error> {
    let found = client
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant_id])
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| Error::NotFound(format!("tenant `{tenant_id}` was not found")))
}

/// 404 unless the project exists in the tenant.
pub(crate) async fn project_must_exist(
    client: &impl deadpool_postgres::GenericClient,
    tenant_id: &str,
    project_id: &str,
) -> Result<(), Error> {
    let found = client
        .query_opt(
            "SELECT 1 FROM projects WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &project_id],
        )
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| Error::NotFound(format!("project `{project_id}` was not found")))
}

/// One page of a tenant's rows of `table`, oldest first (`ORDER BY created_at, id`), with the
/// total for Inkeep's envelope: the rows whose `scope` holds (a condition over `params`, which
/// are `$1`, `$2`, … in it; `$1` is always the tenant, so every list is tenant-scoped), read as
/// `columns` and turned into items by `from_row`. Every catalog list is this one function.
pub(crate) async fn list_page<T>(
    client: &impl deadpool_postgres::GenericClient,
    table: &str,
    columns: &str,
    scope: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    page: Page,
    from_row: impl Fn(&tokio_postgres::Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Paginated<T>, Error> {
    let total: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE tenant_id = $1 AND ({scope})"),
            params,
        )
        .await?
        .get(0);
    let (limit, offset) = (page.limit(), page.offset());
    let mut with_page: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
    with_page.push(&limit);
    with_page.push(&offset);
    let n = params.len();
    let rows = client
        .query(
            &format!(
                "SELECT {columns} FROM {table} WHERE tenant_id = $1 AND ({scope}) \
                 ORDER BY created_at, id LIMIT ${} OFFSET ${}",
                n + 1,
                n + 2
            ),
            &with_page,
        )
        .await?;
    let data = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok(page.wrap(data, total))
}

/// The one rule for resource ids, as Inkeep documents it: `^[a-zA-Z0-9\-_.]+$`, 1..255.
pub fn valid_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks an optional caller-chosen id, or makes a time-ordered one.
pub(crate) fn id_or_new(id: Option<String>, what: &str) -> Result<String, Error> {
    match id {
        Some(id) if valid_id(&id) => Ok(id),
        Some(_) => Err(Error::invalid(format!(
            "`id` of a {what} must be 1 to 255 characters of letters, digits, '-', '_' or '.'"
        ))),
        None => Ok(uuid::Uuid::now_v7().to_string()),
    }
}

/// A required human name: 1 to 255 characters, not blank.
pub(crate) fn check_name(name: &str, what: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.chars().count() > 255 {
        return Err(Error::invalid(format!(
            "`name` of a {what} must be 1 to 255 characters, not blank"
        )));
    }
    check_text(name, "name")
}

/// PostgreSQL text cannot hold U+0000.
pub(crate) fn check_text(text: &str, field: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::invalid(format!(
            "`{field}` may not contain the NUL character"
        )));
    }
    Ok(())
}

/// An optional description: at most 2,000 characters.
pub(crate) fn check_description(description: Option<&str>) -> Result<(), Error> {
    match description {
        Some(d) if d.chars().count() > 2000 => Err(Error::invalid(
            "`description` must be at most 2000 characters",
        )),
        Some(d) => check_text(d, "description"),
        None => Ok(()),
    }
}

/// Whether any string or key in `value` holds U+0000, which PostgreSQL cannot store.
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Which page of a list: `page` from 1, `limit` from 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub limit: u32,
}

impl Default for Page {
    fn default() -> Self {
        Self { page: 1, limit: 10 }
    }
}

impl Page {
    /// Validates the query's values; `None` means the default.
    pub fn new(page: Option<i64>, limit: Option<i64>) -> Result<Self, Error> {
        let page = page.unwrap_or(1);
        let limit = limit.unwrap_or(10);
        if !(1..=1_000_000).contains(&page) {
            return Err(Error::BadRequest(
                "`page` must be a whole number from 1".into(),
            ));
        }
        if !(1..=100).contains(&limit) {
            return Err(Error::BadRequest(
                "`limit` must be a whole number from 1 to 100".into(),
            ));
        }
        Ok(Self {
            page: page as u32,
            limit: limit as u32,
        })
    }

    pub(crate) fn limit(self) -> i64 {
        i64::from(self.limit)
    }

    pub(crate) fn offset(self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.limit)
    }

    /// Wraps one page of items with the pagination block.
    pub fn wrap<T>(self, data: Vec<T>, total: i64) -> Paginated<T> {
        let total = u64::try_from(total).unwrap_or(0);
        let limit = u64::from(self.limit);
        Paginated {
            data,
            pagination: Pagination {
                limit: self.limit,
                page: self.page,
                pages: total.div_ceil(limit),
                total,
            },
        }
    }
}

/// Inkeep's list envelope.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Paginated<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

/// Where a page sits in the whole list.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Pagination {
    pub limit: u32,
    pub page: u32,
    pub pages: u64,
    pub total: u64,
}

/// RFC 7396 at the top level: each member of `patch` replaces the same member of `current`, and
/// `null` clears it. Nested objects are replaced whole, never merged. Members named in `required`
/// cannot be cleared: a `null` for one of them is a 422.
pub fn merge_top_level(current: &mut Value, patch: Value, required: &[&str]) -> Result<(), Error> {
    let Value::Object(patch) = patch else {
        return Err(Error::BadRequest(
            "the body of a PATCH must be a JSON object".into(),
        ));
    };
    if let Some(field) = required
        .iter()
        .find(|f| patch.get(**f).is_some_and(Value::is_null))
    {
        return Err(Error::invalid(format!("`{field}` cannot be null")));
    }
    let Value::Object(target) = current else {
        return Err(Error::BadRequest("nothing to patch".into()));
    };
    for (k, v) in patch {
        target.insert(k, v);
    }
    Ok(())
}

/// Refuses a PATCH that would move a resource: ids in the body must match the path.
pub(crate) fn same_or_absent(body: &Value, field: &str, actual: &str) -> Result<(), Error> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == actual => Ok(()),
        Some(_) => Err(Error::BadRequest(format!(
            "`{field}` cannot be changed; create a new resource instead"
        ))),
    }
}

/// For PATCH members that may be `null`: absent is `None`, `null` is `Some(None)`.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_default_and_bound() {
        assert_eq!(
            Page::new(None, None).ok(),
            Some(Page { page: 1, limit: 10 })
        );
        assert!(Page::new(Some(0), None).is_err());
        assert!(Page::new(None, Some(0)).is_err());
        assert!(Page::new(None, Some(101)).is_err());
        assert_eq!(
            Page::new(Some(3), Some(100)).ok(),
            Some(Page {
                page: 3,
                limit: 100
            })
        );
    }

    #[test]
    fn pagination_counts_pages() {
        let p = Page { page: 2, limit: 10 }.wrap(vec![1, 2], 12).pagination;
        assert_eq!(
            p,
            Pagination {
                limit: 10,
                page: 2,
                pages: 2,
                total: 12
            }
        );
        let empty = Page::default().wrap(Vec::<u8>::new(), 0).pagination;
        assert_eq!(empty.pages, 0);
    }

    #[test]
    fn ids_follow_inkeeps_pattern() {
        assert!(valid_id("resource_789.v2-a"));
        assert!(!valid_id(""));
        assert!(!valid_id("has space"));
        assert!(!valid_id(&"a".repeat(256)));
    }

    #[test]
    fn merge_replaces_and_clears_top_level_members() {
        let mut current = serde_json::json!({"a": 1, "b": {"x": 1}, "c": 3});
        merge_top_level(
            &mut current,
            serde_json::json!({"b": {"y": 2}, "c": null}),
            &["a"],
        )
        .expect("merges");
        assert_eq!(
            current,
            serde_json::json!({"a": 1, "b": {"y": 2}, "c": null})
        );
    }
}
