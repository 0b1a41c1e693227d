//! What several doors render alike: a run accepted (202 with `Location`), a run's events as
//! SSE, the rate-limit headers of a key's standing, and the problem responses every route may
//! answer (for the OpenAPI document). Not a door: doors use it, and it imports none.

use std::convert::Infallible;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use switchyard_common::Run;
use switchyard_common::events::RunEvent;
use switchyard_common::problem::Problem;
use utoipa::IntoResponses;
use uuid::Uuid;

use crate::AppState;
use crate::limits::Standing;
use crate::streams::Permit;
use crate::verbs::follow::follow_run;
use crate::verbs::trigger::Invoked;

/// Where a run is read: `/v1/runs/{id}`.
pub(crate) fn run_location(id: Uuid) -> String {
    format!("/v1/runs/{id}")
}

/// 202 with the run, and `Location` naming it.
pub(crate) fn accepted(run: &Run) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&run_location(run.id)) {
        headers.insert(header::LOCATION, location);
    }
    (StatusCode::ACCEPTED, headers, axum::Json(run)).into_response()
}

/// A trigger invocation's answer: 202 with the run accepted, or 200 with the finished run (after
/// `waitForResponse`) or with the run of a repeated `Idempotency-Key`; with the caller's
/// rate-limit headers when it has a key.
pub(crate) fn invoked(invoked: Invoked, standing: Option<&Standing>) -> Response {
    let mut response = match invoked {
        Invoked::Accepted(run) => accepted(&run),
        Invoked::Replayed(run) | Invoked::Finished(run) => {
            (StatusCode::OK, axum::Json(run)).into_response()
        }
    };
    if let Some(standing) = standing {
        rate_headers(standing, response.headers_mut());
    }
    response
}

/// `X-RateLimit-Limit` (per minute), `-Remaining` (calls that may come at once now) and
/// `-Reset` (seconds until the whole burst is available again) of a key's standing.
pub(crate) fn rate_headers(standing: &Standing, headers: &mut HeaderMap) {
    for (name, value) in standing.headers() {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// One event of the stream as it goes over the wire (OpenAPI 3.2's shape for
/// `text/event-stream`): `data` holds a [`RunEvent`] as JSON.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RunEventFrame {
    /// The event's number (`seq`).
    pub id: String,
    /// The event's type.
    pub event: String,
    /// The event (`RunEvent`) as JSON.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// The SSE response that follows `run` from after event `after` to its end, holding `permit`
/// (it ends when the permit's key is revoked).
pub(crate) fn stream(state: AppState, run: &Run, after: i64, permit: Permit) -> impl IntoResponse {
    let keep_alive = state.sse_keep_alive;
    let receiver = follow_run(state, run, after, permit.revocation());
    let events = futures::stream::unfold((receiver, permit), |(mut receiver, permit)| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(sse(&event)), (receiver, permit)))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive))
}

fn sse(event: &RunEvent) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// The answer of a cancel, on the native and the agent-app routes.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Cancelled {
    pub success: bool,
}

/// The errors any route can answer, each as problem+json (for the OpenAPI document).
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
