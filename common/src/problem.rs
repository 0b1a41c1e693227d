//! The `application/problem+json` error body, in Inkeep's shape. Transport-agnostic: the ingress
//! turns it into an HTTP response.

use serde::Serialize;
use utoipa::ToSchema;

/// The media type every error response carries.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// A machine-readable error code; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnprocessableEntity,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::UnprocessableEntity => 422,
            Self::TooManyRequests => 429,
            Self::InternalServerError => 500,
            Self::ServiceUnavailable => 503,
        }
    }

    /// The short human title for this code.
    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::RequestTimeout => "Request Timeout",
            Self::Conflict => "Conflict",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::UnsupportedMediaType => "Unsupported Media Type",
            Self::UnprocessableEntity => "Unprocessable Entity",
            Self::TooManyRequests => "Too Many Requests",
            Self::InternalServerError => "Internal Server Error",
            Self::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// The nested `error` member, kept for clients that read `error.code`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// One problem+json body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub code: ErrorCode,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub instance: String,
    pub request_id: String,
    pub error: ErrorDetail,
    /// Every schema violation, when `inputSchema` refused the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Violation>>,
    /// The run concerned: the one still running after a timed-out wait, or the original of a
    /// duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Where to read that run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    /// The tenant quota that refused the request (`maxQueued`), and its value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// A tenant quota named by a 429.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct Quota {
    /// The tenant setting: `maxQueued`.
    pub name: String,
    /// Its value.
    pub limit: i64,
}

/// One place where a body breaks a JSON Schema.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct Violation {
    /// JSON pointer into the body.
    pub pointer: String,
    pub message: String,
}

impl Problem {
    /// Builds a problem for `code` with a detail safe to show to the caller.
    pub fn new(
        code: ErrorCode,
        detail: impl Into<String>,
        instance: impl Into<String>,
        request_id: impl Into<String>,
    ) -> Self {
        let detail = detail.into();
        Self {
            code,
            title: code.title(),
            status: code.status(),
            instance: instance.into(),
            request_id: request_id.into(),
            error: ErrorDetail {
                code,
                message: detail.clone(),
            },
            detail,
            errors: None,
            run_id: None,
            run_url: None,
            quota: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_inkeeps_shape() {
        let p = Problem::new(ErrorCode::NotFound, "run not found", "/v1/runs/x", "req-1");
        let v = serde_json::to_value(&p).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({
                "code": "not_found",
                "title": "Not Found",
                "status": 404,
                "detail": "run not found",
                "instance": "/v1/runs/x",
                "requestId": "req-1",
                "error": {"code": "not_found", "message": "run not found"}
            })
        );
    }
}
