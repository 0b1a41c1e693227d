//! Trigger invocations, in Inkeep's shape. An accepted invocation is its run (the run row keeps
//! the trigger, environment and session); one that did not become a run is a row of
//! `invocations`. Lists read both, newest first.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Error, Page, Paginated};

/// Why an invocation did not become a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The trigger's filters did not match, or the body repeated an earlier one.
    Dropped,
    /// The body broke the trigger's `inputSchema`, or its signature did not verify.
    Rejected,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dropped => "dropped",
            Self::Rejected => "rejected",
        }
    }
}

/// An invocation that did not become a run.
#[derive(Debug, Clone)]
pub struct NewRefusal<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub agent_id: &'a str,
    pub trigger_id: &'a str,
    pub refusal: Refusal,
    pub reason: String,
    pub environment: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub request_payload: &'a Value,
    pub duplicate_of: Option<Uuid>,
}

/// Records a refused invocation; returns its id.
pub async fn record_refusal(
    client: &impl GenericClient,
    r: &NewRefusal<'_>,
) -> Result<Uuid, tokio_postgres::Error> {
    let id = Uuid::now_v7();
    let stmt = client
        .prepare_cached(
            "INSERT INTO invocations (id, tenant_id, project_id, agent_id, trigger_id, outcome, reason, \
                                      environment, session_id, request_payload, duplicate_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &id,
                &r.tenant_id,
                &r.project_id,
                &r.agent_id,
                &r.trigger_id,
                &r.refusal.as_str(),
                &r.reason,
                &r.environment,
                &r.session_id,
                &r.request_payload,
                &r.duplicate_of,
            ],
        )
        .await?;
    Ok(id)
}

/// The `invocation.dropped` event of a dropped invocation recorded as `id`, for the tenant's
/// webhook endpoints.
pub fn dropped_event<'a>(id: Uuid, r: &'a NewRefusal<'a>) -> crate::deliveries::Event<'a> {
    crate::deliveries::Event {
        tenant_id: r.tenant_id,
        project_id: Some(r.project_id),
        event_type: crate::model::WebhookEvent::InvocationDropped.as_str(),
        invocation_id: Some(id),
        subject: id.to_string(),
        data: serde_json::json!({
            "id": id,
            "outcome": r.refusal.as_str(),
            "reason": r.reason,
            "tenantId": r.tenant_id,
            "projectId": r.project_id,
            "agentId": r.agent_id,
            "triggerId": r.trigger_id,
            "environment": r.environment,
            "sessionId": r.session_id,
            "duplicateOf": r.duplicate_of,
            "requestPayload": r.request_payload,
        }),
    }
}

/// One invocation, as Inkeep's API shows it, with Switchyard's additions.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub id: Uuid,
    pub trigger_id: String,
    /// `pending` (the run is queued or running), `success` (it completed) or `failed` (it failed,
    /// or the invocation was dropped or rejected).
    pub status: String,
    /// `accepted` (it became a run), `dropped` or `rejected`.
    pub outcome: String,
    /// The run it started (the same id as the invocation), if it was accepted.
    pub run_id: Option<Uuid>,
    /// The session (ChatHive `sessionId`).
    pub conversation_id: Option<String>,
    pub environment: Option<String>,
    /// The body as received.
    #[schema(value_type = Option<Object>)]
    pub request_payload: Option<Value>,
    /// The message the agent received (the rendered `messageTemplate`).
    pub transformed_payload: Option<String>,
    /// Placeholders that found nothing in the body and rendered empty.
    pub missing_placeholders: Vec<String>,
    pub error_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Filters of the invocations list.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    pub status: Option<String>,
    pub environment: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

/// Both kinds of invocation as one relation, newest first.
const UNION: &str = "\
    SELECT r.id, r.trigger_id, \
           CASE WHEN r.status IN ('queued', 'running') THEN 'pending' \
                WHEN r.status = 'completed' THEN 'success' ELSE 'failed' END AS status, \
           'accepted' AS outcome, r.id AS run_id, r.session_id, r.environment, \
           r.inputs AS request_payload, r.message AS transformed_payload, \
           coalesce(r.missing_placeholders, '{}') AS missing_placeholders, r.error_message, r.created_at \
    FROM runs r WHERE r.tenant_id = $1 AND r.trigger_id = $2 AND r.project_id = $7 AND r.agent_id = $8 \
    UNION ALL \
    SELECT i.id, i.trigger_id, 'failed', i.outcome, NULL, i.session_id, i.environment, \
           i.request_payload, NULL, '{}', i.reason, i.created_at \
    FROM invocations i WHERE i.tenant_id = $1 AND i.trigger_id = $2 AND i.project_id = $7 \
      AND i.agent_id = $8";

const WHERE: &str = "($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR environment = $4) \
    AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at <= $6)";

fn from_row(row: &Row) -> Result<Invocation, tokio_postgres::Error> {
    Ok(Invocation {
        id: row.try_get("id")?,
        trigger_id: row.try_get("trigger_id")?,
        status: row.try_get("status")?,
        outcome: row.try_get("outcome")?,
        run_id: row.try_get("run_id")?,
        conversation_id: row.try_get("session_id")?,
        environment: row.try_get("environment")?,
        request_payload: row.try_get("request_payload")?,
        transformed_payload: row.try_get("transformed_payload")?,
        missing_placeholders: row.try_get("missing_placeholders")?,
        error_message: row.try_get("error_message")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A trigger's invocations, newest first. The trigger must belong to the owner's agent.
pub async fn list(
    client: &impl GenericClient,
    owner: super::triggers::Owner<'_>,
    trigger_id: &str,
    filter: &Filter,
    page: Page,
) -> Result<Paginated<Invocation>, Error> {
    super::triggers::get(client, owner, trigger_id).await?;
    if let Some(status) = &filter.status
        && !matches!(status.as_str(), "pending" | "success" | "failed")
    {
        return Err(Error::BadRequest(
            "`status` must be pending, success or failed".into(),
        ));
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &owner.tenant_id,
        &trigger_id,
        &filter.status,
        &filter.environment,
        &filter.from,
        &filter.to,
        &owner.project_id,
        &owner.agent_id,
    ];
    let total: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM ({UNION}) AS x WHERE {WHERE}"),
            &params,
        )
        .await?
        .get(0);
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
    let (limit, offset) = (page.limit(), page.offset());
    all.push(&limit);
    all.push(&offset);
    let rows = client
        .query(
            &format!(
                "SELECT * FROM ({UNION}) AS x WHERE {WHERE} \
                 ORDER BY created_at DESC, id DESC LIMIT $9 OFFSET $10"
            ),
            &all,
        )
        .await?;
    let data = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok(page.wrap(data, total))
}

/// One invocation of the trigger.
pub async fn get(
    client: &impl GenericClient,
    owner: super::triggers::Owner<'_>,
    trigger_id: &str,
    id: &str,
) -> Result<Invocation, Error> {
    super::triggers::get(client, owner, trigger_id).await?;
    let not_found = || Error::NotFound(format!("invocation `{id}` was not found"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let row = client
        .query_opt(
            &format!(
                "SELECT * FROM ({UNION}) AS x WHERE id = $3 AND $4::int IS NULL AND $5::int IS NULL \
                 AND $6::int IS NULL"
            ),
            &[
                &owner.tenant_id,
                &trigger_id,
                &id,
                &None::<i32>,
                &None::<i32>,
                &None::<i32>,
                &owner.project_id,
                &owner.agent_id,
            ],
        )
        .await?
        .ok_or_else(not_found)?;
    Ok(from_row(&row)?)
}
