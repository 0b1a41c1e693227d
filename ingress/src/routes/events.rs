//! Following a run over HTTP: `GET /v1/runs/{id}/events` (SSE, resumable, replay or live, from
//! any replica) and `GET /v1/runs/{id}/wait`, over `verbs::follow`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchyard_common::{Run, runs};

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::render::{self, Errors, RunEventFrame};
use crate::verbs::follow::{visible_run, wait_for_end};
use crate::verbs::view::shown;

/// `?after=N` on the events route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event number (the `Last-Event-ID` header does the same, and wins).
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// Stream a run's events (SSE). Each event's `id` is its number; reconnect with `Last-Event-ID`
/// (or `?after=N`) to resume with no gap and no repeat. A finished run is replayed; a live one
/// is followed until its final `status` event, which ends the stream. Comments keep an idle
/// connection alive. Needs the `runs:read` scope.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "Runs",
    params(("id" = String, Path, description = "Run id"), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The last event number received")),
    responses(
        (status = 200, description = "`text/event-stream`: `id: <seq>`, `event: <type>`, `data: <the event as JSON>`",
            body = RunEventFrame, content_type = "text/event-stream"),
        Errors))]
pub async fn follow(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    let after = match headers.get("last-event-id") {
        Some(raw) => raw
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::bad_request("`Last-Event-ID` must be an event number (0 or more)")
            })?,
        None => match query.after {
            Some(n) if n < 0 => {
                return Err(ApiError::bad_request("`after` must be 0 or more"));
            }
            Some(n) => n,
            None => 0,
        },
    };
    let run = visible_run(&state, &principal, &id).await?;
    let permit = state.streams.open(principal.key_id(), &run.tenant_id)?;
    Ok(render::stream(state, &run, after, permit).into_response())
}

/// `?timeout=` of the wait route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait (0 to `SWITCHYARD_MAX_WAIT`, default 30).
    #[param(minimum = 0)]
    timeout: Option<f64>,
}

/// Wait for a run to finish: 200 with the finished run, or 202 with the run as it is now if it
/// has not finished within `timeout` seconds (it goes on). Needs the `runs:read` scope.
#[utoipa::path(get, path = "/v1/runs/{id}/wait", tag = "Runs",
    params(("id" = String, Path, description = "Run id"), WaitQuery),
    responses(
        (status = 200, description = "The finished run", body = Run),
        (status = 202, description = "Not finished in time: the run as it is now", body = Run),
        Errors))]
pub async fn wait(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<WaitQuery>,
) -> Result<Response, ApiError> {
    let max = state.max_wait.as_secs_f64();
    let timeout = match query.timeout {
        None => 30f64.min(max),
        Some(t) if t.is_finite() && (0.0..=max).contains(&t) => t,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "`timeout` must be a number of seconds from 0 to {max}"
            )));
        }
    };
    let run = visible_run(&state, &principal, &id).await?;
    if run.status.is_terminal() {
        return Ok((StatusCode::OK, axum::Json(run)).into_response());
    }
    let permit = state.streams.open(principal.key_id(), &run.tenant_id)?;
    let show = |run| shown(run, Some(&principal));
    match wait_for_end(&state, &run, Duration::from_secs_f64(timeout), &permit).await? {
        Some(done) => Ok((StatusCode::OK, axum::Json(show(done))).into_response()),
        None => {
            let client = state.pool.get().await?;
            let now = runs::get(&client, &run.tenant_id, run.id)
                .await?
                .map_or(run, show);
            Ok(render::accepted(&now))
        }
    }
}
