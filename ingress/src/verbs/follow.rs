//! Following a run: reading it as a key may see it, its events from any number on (replayed,
//! then live from this replica's hub, with no gap), and waiting for its end. Neither polls the
//! database per client.

use std::sync::Arc;
use std::time::Duration;

use switchyard_common::Run;
use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::events::{self, RunEvent};
use switchyard_common::runs;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::live::Signal;
use crate::streams::Permit;
use crate::verbs::error::VerbError;
use crate::verbs::view::shown;

/// How many stored events one read takes at most (and no more than `events::PAGE_BYTES`).
const PAGE: i64 = 500;

/// The run `id`, if the key may read it: 404 for another tenant's run, one outside the key's
/// projects, or a malformed id.
pub(crate) async fn visible_run(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Run, VerbError> {
    let key = principal.key_with(Scope::RunsRead)?;
    let not_found = || VerbError::not_found(format!("run `{id}` was not found"));
    let run_id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let client = state.pool.get().await?;
    runs::get(&client, &key.tenant_id, run_id)
        .await?
        .filter(|run| {
            key.project_ids
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&run.project_id))
        })
        .map(|run| shown(run, Some(principal)))
        .ok_or_else(not_found)
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

/// Waits until `run` ends or `wait` passes (never longer than `SWITCHYARD_MAX_WAIT`), and returns
/// it finished, or `None`. It reads the run when it starts and again only when the hub hears
/// the run's final event (or says events may have been missed). The wait holds `permit`: a
/// revoked key ends it at once with 401.
pub async fn wait_for_end(
    state: &AppState,
    run: &Run,
    wait: Duration,
    permit: &Permit,
) -> Result<Option<Run>, VerbError> {
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
                Err(VerbError::unauthorized(
                    "the API key was revoked while this request waited; the run goes on",
                )
                .with_run(run.id))
            }
        }
    }
}
