//! Projects: a tenant's folders of agents and triggers, and the unit an API key can be limited to.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::{Error, Page, Paginated, check_description, check_name, constraint, id_or_new};

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub description: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The body of a project create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProject {
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

/// The body of a project PATCH: members present are changed; a `null` description clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectPatch {
    /// Read-only: accepted when it names this project.
    #[schema(pattern = r"^[a-zA-Z0-9\-_.]+$", min_length = 1, max_length = 255)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub description: Option<Option<String>>,
}

const COLUMNS: &str = "id, tenant_id, name, description, created_at, updated_at";

fn from_row(row: &Row) -> Result<Project, tokio_postgres::Error> {
    Ok(Project {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("project `{id}` was not found"))
}

pub async fn create(
    client: &impl GenericClient,
    tenant_id: &str,
    new: NewProject,
) -> Result<Project, Error> {
    let id = id_or_new(new.id, "project")?;
    check_name(&new.name, "project")?;
    check_description(new.description.as_deref())?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO projects (tenant_id, id, name, description) VALUES ($1, $2, $3, $4) \
                 RETURNING {COLUMNS}"
            ),
            &[&tenant_id, &id, &new.name, &new.description],
        )
        .await
        .map_err(|e| constraint(e, "project"))?;
    Ok(from_row(&row)?)
}

pub async fn get(client: &impl GenericClient, tenant_id: &str, id: &str) -> Result<Project, Error> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM projects WHERE tenant_id = $1 AND id = $2"),
            &[&tenant_id, &id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// Lists the tenant's projects; `only` limits the list to those ids (a project-restricted key).
pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    only: Option<&[String]>,
    page: Page,
) -> Result<Paginated<Project>, Error> {
    super::tenant_must_exist(client, tenant_id).await?;
    super::list_page(
        client,
        "projects",
        COLUMNS,
        "$2::text[] IS NULL OR id = ANY($2)",
        &[&tenant_id, &only],
        page,
        from_row,
    )
    .await
}

pub async fn update(
    client: &impl GenericClient,
    tenant_id: &str,
    id: &str,
    patch: ProjectPatch,
) -> Result<Project, Error> {
    if patch.id.as_deref().is_some_and(|given| given != id) {
        return Err(Error::BadRequest(
            "`id` cannot be changed; create a new resource instead".into(),
        ));
    }
    match &patch.name {
        Some(None) => return Err(Error::invalid("`name` cannot be null")),
        Some(Some(name)) => check_name(name, "project")?,
        None => {}
    }
    if let Some(description) = &patch.description {
        check_description(description.as_deref())?;
    }
    let row = client
        .query_opt(
            &format!(
                "UPDATE projects SET name = coalesce($3, name), \
                     description = CASE WHEN $4 THEN $5 ELSE description END, updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
            ),
            &[
                &tenant_id,
                &id,
                &patch.name.clone().flatten(),
                &patch.description.is_some(),
                &patch.description.flatten(),
            ],
        )
        .await
        .map_err(|e| constraint(e, "project"))?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

/// Deletes the project with its agents and triggers. Its runs stay, as history.
pub async fn delete(client: &impl GenericClient, tenant_id: &str, id: &str) -> Result<(), Error> {
    let n = client
        .execute(
            "DELETE FROM projects WHERE tenant_id = $1 AND id = $2",
            &[&tenant_id, &id],
        )
        .await?;
    if n == 0 {
        return Err(not_found(id));
    }
    Ok(())
}
