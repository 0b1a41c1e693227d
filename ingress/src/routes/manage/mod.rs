//! The management API under `/manage`, in Inkeep's shape: single resources as `{data}`, lists as
//! `{data, pagination}`, errors as problem+json. Each module is one resource; the SQL lives in
//! `switchyard_common::catalog`.

pub mod agents;
pub mod api_keys;
pub mod credentials;
pub mod deliveries;
pub mod projects;
pub mod tenants;
pub mod triggers;
pub mod webhook_endpoints;

use serde::{Deserialize, Serialize};
use switchyard_common::catalog::Page;
use switchyard_common::problem::Problem;
use utoipa::{IntoParams, IntoResponses, ToSchema};

use crate::error::ApiError;

/// One resource, wrapped as Inkeep wraps it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

/// `{"data": value}` as JSON.
pub fn data<T: Serialize>(value: T) -> axum::Json<Data<T>> {
    axum::Json(Data { data: value })
}

/// `page` and `limit` of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1.
    #[param(minimum = 1, default = 1)]
    page: Option<i64>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 10)]
    limit: Option<i64>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        Ok(Page::new(self.page, self.limit)?)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct TenantPath {
    /// Tenant identifier
    pub tenant_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct ProjectPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Project identifier
    pub project_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct AgentPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Project identifier
    pub project_id: String,
    /// Agent identifier
    pub agent_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct TriggerPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Project identifier
    pub project_id: String,
    /// Agent identifier
    pub agent_id: String,
    /// Resource identifier
    pub id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub struct TenantItemPath {
    /// Tenant identifier
    pub tenant_id: String,
    /// Resource identifier
    pub id: String,
}

/// The errors any management call can answer, each as problem+json.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    #[response(
        status = 400,
        description = "Bad Request",
        content_type = "application/problem+json"
    )]
    BadRequest(Problem),
    #[response(
        status = 401,
        description = "Unauthorized",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "Forbidden",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 404,
        description = "Not Found",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 409,
        description = "Conflict",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    #[response(
        status = 413,
        description = "Payload Too Large",
        content_type = "application/problem+json"
    )]
    PayloadTooLarge(Problem),
    #[response(
        status = 415,
        description = "Unsupported Media Type",
        content_type = "application/problem+json"
    )]
    UnsupportedMediaType(Problem),
    #[response(
        status = 422,
        description = "Unprocessable Entity",
        content_type = "application/problem+json"
    )]
    UnprocessableEntity(Problem),
    #[response(
        status = 429,
        description = "Too Many Requests",
        content_type = "application/problem+json"
    )]
    TooManyRequests(Problem),
    #[response(
        status = 500,
        description = "Internal Server Error",
        content_type = "application/problem+json"
    )]
    InternalServerError(Problem),
    #[response(
        status = 503,
        description = "Service Unavailable",
        content_type = "application/problem+json"
    )]
    ServiceUnavailable(Problem),
}
