//! `VerbError`: the one error the verbs (and so every door) answer with: a problem code, a
//! detail the caller may read, and what the problem body and headers add (violations, the run,
//! `Retry-After`, the exhausted rate limit). Nothing here is HTTP: the `error` module renders it as
//! problem+json. 5xx causes are logged once, where they are made.

use switchyard_common::catalog;
use switchyard_common::db;
use switchyard_common::problem::{ErrorCode, Violation};

/// An error answered to the client.
#[derive(Debug)]
pub struct VerbError {
    pub(crate) code: ErrorCode,
    pub(crate) detail: String,
    pub(crate) retry_after_secs: Option<u64>,
    pub(crate) violations: Option<Vec<Violation>>,
    pub(crate) run_id: Option<uuid::Uuid>,
    /// The exhausted limit: per minute, and seconds until its whole burst is back.
    pub(crate) rate_limit: Option<(u32, u64)>,
    /// The tenant quota that refused the request, and its value.
    pub(crate) quota: Option<Box<(&'static str, i64)>>,
}

impl VerbError {
    /// An error with a detail the caller may read.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_secs: None,
            violations: None,
            run_id: None,
            rate_limit: None,
            quota: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, detail)
    }

    /// A pool that cannot hand out a connection: 503, or 500 for anything else.
    pub fn from_pool(err: deadpool_postgres::PoolError) -> Self {
        if db::is_unavailable(&err) {
            Self::unavailable()
        } else {
            Self::internal(err)
        }
    }

    /// A failed query: 503 when the database is unreachable, 500 otherwise.
    pub fn from_pg(err: tokio_postgres::Error) -> Self {
        if db::pg_unavailable(&err) {
            Self::unavailable()
        } else {
            Self::internal(format!("{err:#}"))
        }
    }

    /// The database cannot be reached: 503 with `Retry-After`.
    pub fn unavailable() -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(
                ErrorCode::ServiceUnavailable,
                "the database is unavailable; retry shortly",
            )
        }
    }

    /// A dependency is down: 503 with `Retry-After: 1` and this detail.
    pub fn unavailable_because(detail: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(ErrorCode::ServiceUnavailable, detail)
        }
    }

    /// A bug or unexpected failure: logs the cause, answers a bare 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorCode::InternalServerError,
            "an unexpected error occurred",
        )
    }

    /// Adds `Retry-After: secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Lists every schema violation in the body.
    pub fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.violations = Some(violations);
        self
    }

    /// Names the run this error is about (`runId` and `runUrl` in the body).
    pub fn with_run(mut self, run_id: uuid::Uuid) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// A 429: `Retry-After` and the `X-RateLimit-*` headers of the exhausted limit.
    pub fn with_rate_limit(
        mut self,
        per_minute: u32,
        retry_after_secs: u64,
        reset_secs: u64,
    ) -> Self {
        self.rate_limit = Some((per_minute, reset_secs));
        self.retry_after_secs = Some(retry_after_secs);
        self
    }

    /// Names the tenant quota that refused the request (`quota` in the body).
    pub fn with_quota(mut self, name: &'static str, limit: i64) -> Self {
        self.quota = Some(Box::new((name, limit)));
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl From<catalog::Error> for VerbError {
    fn from(err: catalog::Error) -> Self {
        match err {
            catalog::Error::NotFound(d) => Self::not_found(d),
            catalog::Error::Conflict(d) => Self::new(ErrorCode::Conflict, d),
            catalog::Error::Invalid(d) => Self::new(ErrorCode::UnprocessableEntity, d),
            catalog::Error::BadRequest(d) => Self::bad_request(d),
            catalog::Error::Forbidden(d) => Self::forbidden(d),
            catalog::Error::Db(e) => Self::from_pg(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for VerbError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::from_pool(err)
    }
}

impl From<tokio_postgres::Error> for VerbError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::from_pg(err)
    }
}
