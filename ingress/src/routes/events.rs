//! Following a run: `GET /v1/runs/{id}/events` (SSE, resumable, replay or live, from any
//! replica) and `GET /v1/runs/{id}/wait`. Both sit on the replica's [`crate::live::Hub`]; neither
//! polls the database per client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchyard_common::Run;
use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::events::{self, RunEvent};
use switchyard_common::runs;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::live::Signal;
use crate::routes::manage::Errors;
use crate::streams::Permit;

/// How many stored events one read takes at most (and no more than `events::PAGE_BYTES`).
const PAGE: i64 = 500;

/// The run `id`, if the key may read it: 404 for another tenant's run, one outside the key's
/// projects, or a malformed id.
pub(crate) async fn visible_run(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Run, ApiError> {
    let key = principal.key_with(Scope::RunsRead)?;
    let not_found = || ApiError::not_found(format!("run `{id}` was not found"));
    let run_id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let client = state.pool.get().await?;
    runs::get(&client, &key.tenant_id, run_id)
        .await?
        .filter(|run| {
            key.project_ids
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&run.project_id))
        })
        .map(|run| crate::routes::runs::shown(run, Some(principal)))
        .ok_or_else(not_found)
}

/// `?after=N` on the events route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event number (the `Last-Event-ID` header does the same, and wins).
    #[param(minimum = 0)]
    after: Option<i64>,
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
    let permit = state.streams.open(Some(&principal), &run.tenant_id)?;
    Ok(stream(state, &run, after, permit).into_response())
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

/// `run`'s events after number `after`, in order with no gap: replayed from the database, then
/// followed live until the final `status` event. The receiver closes after that event, when the
/// run had ended before the call and its events are all read, after `SWITCHYARD_MAX_STREAM`
/// (a client resumes), or when `revoked` is cancelled (its key was revoked). Dropping the
/// receiver stops the follower.
pub(crate) fn follow_run(
    state: AppState,
    run: &Run,
    after: i64,
    revoked: CancellationToken,
) -> mpsc::Receiver<Arc<RunEvent>> {
    // A few events at most wait for a slow client: an event may be megabytes.
    let (sender, receiver) = mpsc::channel::<Arc<RunEvent>>(4);
    let ended_before = run.status.is_terminal();
    let run_id = run.id;
    let max_stream = state.max_stream;
    let producer = tokio::spawn(async move {
        let mut watcher = state.hub.watch(run_id).await;
        let mut last = after;
        loop {
            // Catch up from the database.
            let page = match state.pool.get().await {
                Ok(client) => events::after(&client, run_id, last, PAGE).await.ok(),
                Err(_) => None,
            };
            let Some(page) = page else {
                // The database is unreachable: keep the client, try again shortly.
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            };
            let full = page.more;
            for event in page.events {
                let seq = event.seq;
                let ended = event.final_status().is_some();
                if sender.send(Arc::new(event)).await.is_err() {
                    return;
                }
                last = seq;
                if ended {
                    return;
                }
            }
            if full {
                continue;
            }
            // A run that had ended when the client came has nothing more to say.
            if ended_before {
                return;
            }
            // Follow live until a number is skipped or the hub says to read again.
            loop {
                let signal = tokio::select! {
                    () = sender.closed() => return,
                    signal = watcher.next() => signal,
                };
                match signal {
                    Signal::Event(event) if event.seq <= last => {}
                    Signal::Event(event) if event.seq == last + 1 => {
                        let ended = event.final_status().is_some();
                        last = event.seq;
                        if sender.send(event).await.is_err() || ended {
                            return;
                        }
                    }
                    Signal::Event(_) | Signal::Resync => break,
                }
            }
        }
    });
    // The follower ends at the run's end, after `SWITCHYARD_MAX_STREAM`, or at its key's
    // revocation.
    tokio::spawn(async move {
        let mut producer = producer;
        tokio::select! {
            _ = &mut producer => {}
            () = tokio::time::sleep(max_stream) => {
                producer.abort();
                tracing::debug!(%run_id, "event stream reached SWITCHYARD_MAX_STREAM; ending it");
            }
            () = revoked.cancelled() => {
                producer.abort();
                tracing::info!(%run_id, "the stream's API key was revoked; ending it");
            }
        }
    });
    receiver
}

fn sse(event: &RunEvent) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(serde_json::to_string(event).unwrap_or_default())
}

/// Waits until `run` ends or `wait` passes (never longer than `SWITCHYARD_MAX_WAIT`), and returns
/// it finished, or `None`. It reads the run when it starts and again only when the hub hears
/// the run's final event (or says events may have been missed). The wait holds `permit`: a
/// revoked key ends it at once with 401.
pub async fn wait_for_end(
    state: &AppState,
    run: &Run,
    wait: Duration,
    permit: &Permit,
) -> Result<Option<Run>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait.min(state.max_wait);
    let waiting = async {
        let mut watcher = state.hub.watch(run.id).await;
        loop {
            if let Ok(client) = state.pool.get().await
                && let Ok(Some(now)) = runs::get(&client, &run.tenant_id, run.id).await
                && now.status.is_terminal()
            {
                return Some(now);
            }
            loop {
                match tokio::time::timeout_at(deadline, watcher.next()).await {
                    Err(_) => return None,
                    Ok(Signal::Event(event)) if event.final_status().is_none() => {}
                    Ok(_) => break,
                }
            }
        }
    };
    tokio::select! {
        ended = waiting => Ok(ended),
        () = permit.revoked() => {
            if permit.closing() {
                // The replica is shutting down: answer as if the wait ran out (the run goes on).
                Ok(None)
            } else {
                Err(ApiError::unauthorized(
                    "the API key was revoked while this request waited; the run goes on",
                )
                .with_run(run.id))
            }
        }
    }
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
    let permit = state.streams.open(Some(&principal), &run.tenant_id)?;
    let show = |run| crate::routes::runs::shown(run, Some(&principal));
    match wait_for_end(&state, &run, Duration::from_secs_f64(timeout), &permit).await? {
        Some(done) => Ok((StatusCode::OK, axum::Json(show(done))).into_response()),
        None => {
            let client = state.pool.get().await?;
            let now = runs::get(&client, &run.tenant_id, run.id)
                .await?
                .map_or(run, show);
            Ok(crate::routes::runs::accepted(&now))
        }
    }
}
