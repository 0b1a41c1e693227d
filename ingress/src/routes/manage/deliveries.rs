//! `/manage/tenants/{tenantId}/deliveries`: the webhooks sent for the tenant's runs, with every
//! attempt; redeliver one, or recover every failed one since a time. Tenant-wide keys only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use switchyard_common::catalog::Paginated;
use switchyard_common::deliveries::{self, Delivery, DeliveryDetail};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{Data, Errors, TenantPath, data};
use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, QueryParams};

/// The list's filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Page number, from 1.
    #[param(minimum = 1, default = 1)]
    page: Option<i64>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 10)]
    limit: Option<i64>,
    /// `pending`, `sending`, `delivered` or `failed`.
    status: Option<String>,
    /// Only the deliveries of this run.
    run_id: Option<String>,
    /// Only the deliveries to this webhook endpoint.
    endpoint_id: Option<String>,
    /// Created at or after (ISO 8601).
    from: Option<String>,
    /// Created before (ISO 8601).
    to: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct DeliveryPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Delivery identifier
    pub id: String,
}

pub(super) fn instant(
    raw: Option<&str>,
    name: &str,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    raw.map(|r| {
        time::OffsetDateTime::parse(r, &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::bad_request(format!("`{name}` must be an ISO 8601 date-time")))
    })
    .transpose()
}

fn delivery_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("delivery `{raw}` was not found")))
}

/// List deliveries, newest first, by status, run, endpoint and time.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/deliveries", tag = "Deliveries",
    params(TenantPath, DeliveryQuery),
    responses((status = 200, description = "A page of deliveries", body = Paginated<Delivery>), Errors))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    QueryParams(q): QueryParams<DeliveryQuery>,
) -> Result<Json<Paginated<Delivery>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let page = switchyard_common::catalog::Page::new(q.page, q.limit)?;
    let run_id = q
        .run_id
        .as_deref()
        .map(|r| Uuid::parse_str(r).map_err(|_| ApiError::bad_request("`runId` must be a run id")))
        .transpose()?;
    let filter = deliveries::Filter {
        status: q.status,
        run_id,
        endpoint_id: q.endpoint_id,
        from: instant(q.from.as_deref(), "from")?,
        to: instant(q.to.as_deref(), "to")?,
    };
    let client = state.pool.get().await?;
    Ok(Json(
        deliveries::list(&client, &p.tenant_id, &filter, page).await?,
    ))
}

/// Get a delivery with every attempt: status, latency and the first 4 KiB of each response.
#[utoipa::path(get, path = "/manage/tenants/{tenantId}/deliveries/{id}", tag = "Deliveries",
    params(DeliveryPath),
    responses((status = 200, description = "The delivery and its attempts", body = Data<DeliveryDetail>), Errors))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<DeliveryPath>,
) -> Result<Json<Data<DeliveryDetail>>, ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let id = delivery_id(&p.id)?;
    let client = state.pool.get().await?;
    deliveries::get(&client, &p.tenant_id, id)
        .await?
        .map(data)
        .ok_or_else(|| ApiError::not_found(format!("delivery `{}` was not found", p.id)))
}

/// Redeliver: a delivered or failed delivery is sent once more, now, with the same `webhook-id`
/// (202). 409 while it is still pending or being sent.
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/deliveries/{id}/redeliver", tag = "Deliveries",
    params(DeliveryPath),
    responses((status = 202, description = "Queued for another attempt", body = Data<Delivery>), Errors))]
pub async fn redeliver(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<DeliveryPath>,
) -> Result<(StatusCode, Json<Data<Delivery>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let id = delivery_id(&p.id)?;
    let client = state.pool.get().await?;
    let Some(queued) = deliveries::redeliver(&client, &p.tenant_id, id).await? else {
        return Err(match deliveries::get(&client, &p.tenant_id, id).await? {
            Some(_) => ApiError::new(
                switchyard_common::problem::ErrorCode::Conflict,
                "the delivery is still pending or being sent",
            ),
            None => ApiError::not_found(format!("delivery `{}` was not found", p.id)),
        });
    };
    publish(&state, &[queued.id]).await;
    Ok((StatusCode::ACCEPTED, data(queued)))
}

/// What to recover.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recover {
    /// Failed deliveries created at or after this time (ISO 8601) are sent again.
    pub since: String,
}

/// How many deliveries were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recovered {
    pub recovered: usize,
}

/// Recover: every failed delivery of the tenant created since `since` is sent again, now (202).
#[utoipa::path(post, path = "/manage/tenants/{tenantId}/deliveries/recover", tag = "Deliveries",
    params(TenantPath), request_body = Recover,
    responses((status = 202, description = "How many were queued again", body = Data<Recovered>), Errors))]
pub async fn recover(
    State(state): State<AppState>,
    principal: Principal,
    Params(p): Params<TenantPath>,
    JsonBody(body): JsonBody<Recover>,
) -> Result<(StatusCode, Json<Data<Recovered>>), ApiError> {
    principal.manage(&p.tenant_id)?.tenant_wide()?;
    let since = instant(Some(&body.since), "since")?.unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let client = state.pool.get().await?;
    let ids = deliveries::recover(&client, &p.tenant_id, None, since).await?;
    publish(&state, &ids).await;
    Ok((
        StatusCode::ACCEPTED,
        data(Recovered {
            recovered: ids.len(),
        }),
    ))
}

/// Hands the ids to the notifier; one that is not published is found by the delivery sweeper.
pub(super) async fn publish(state: &AppState, ids: &[Uuid]) {
    let queue = state.broker.topology().deliveries();
    if let Err(err) = state.broker.publish_ids(&queue, ids).await {
        tracing::warn!(error = %err, "redeliveries recorded but not published; the sweeper will");
    }
}
