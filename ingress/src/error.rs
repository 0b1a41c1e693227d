//! How a [`VerbError`] goes over HTTP: problem+json with the request id and path, and the
//! headers its extras call for (`Retry-After`, `X-RateLimit-*`, `WWW-Authenticate`). Also the
//! answers of the routes that do not exist.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchyard_common::problem::{self, ErrorCode, Problem};

use crate::request::RequestContext;
pub use crate::verbs::error::VerbError as ApiError;

impl IntoResponse for crate::verbs::error::VerbError {
    fn into_response(self) -> Response {
        let ctx = RequestContext::current();
        let mut body = Problem::new(self.code, self.detail, ctx.path, ctx.request_id);
        body.errors = self.violations;
        body.run_id = self.run_id.map(|id| id.to_string());
        body.run_url = self.run_id.map(|id| format!("/v1/runs/{id}"));
        body.quota = self.quota.map(|quota| problem::Quota {
            name: quota.0.to_owned(),
            limit: quota.1,
        });
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(problem::CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some((limit, reset)) = self.rate_limit {
            headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        }
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Fallback for unknown routes.
pub async fn no_route() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// The answer for a route that exists, called with a method it does not take.
pub async fn no_method(method: axum::http::Method) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this route does not take {method}"),
    )
}
