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
use utoipa::{IntoParams, ToSchema};

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

pub use crate::render::Errors;
