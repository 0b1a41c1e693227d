//! The steps every door shares once a request is parsed: record the run (one group-committed
//! INSERT) and publish it with a confirm, then optionally wait for its end. The native runs API
//! and the trigger route both end here.

use std::time::Duration;

use switchyard_common::Run;
use switchyard_common::runs::{self, NewRun};

use crate::AppState;
use crate::accept::StoreError;
use crate::error::ApiError;

/// Records `new` as `queued` and publishes its id, answering once the broker confirmed (or the id
/// was handed to the background publisher). A publish failure is not an error: the row is the
/// outbox. 404 when the agent does not exist in the caller's tenant and projects.
pub async fn enqueue(state: &AppState, new: NewRun) -> Result<Run, ApiError> {
    let agent_id = new.agent_id.clone();
    // Recording and publishing run in their own task: a client that hangs up mid-request cannot
    // leave a committed run unpublished (it would wait for the sweeper).
    let (stored_tx, stored_rx) = tokio::sync::oneshot::channel();
    let task_state = state.clone();
    let publishing = tokio::spawn(async move {
        let stored = task_state.accepter.insert(new).await;
        let _ = stored_tx.send(stored.clone());
        if let Ok(Some(run)) = stored {
            let queue = task_state.broker.topology().runs();
            if let Err(err) = task_state.broker.publish_id(&queue, run.id).await {
                tracing::warn!(run_id = %run.id, error = %err, "run stored but not published yet; retrying in the background");
                task_state.backlog.push(run.id);
            }
        }
    });
    let stored = tokio::time::timeout(state.accept_timeout, stored_rx)
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|_| ApiError::internal("the accept task ended without an answer"))?;
    let run = match stored {
        Ok(Some(run)) => run,
        Ok(None) => {
            return Err(ApiError::not_found(format!(
                "agent `{agent_id}` was not found"
            )));
        }
        Err(StoreError::Unavailable) => return Err(ApiError::unavailable()),
        Err(err @ StoreError::Internal(_)) => return Err(ApiError::internal(err)),
    };
    let _ = publishing.await;
    Ok(run)
}

/// Polls the run until it is terminal or `wait` passes. Polling is a stopgap until run events
/// stream; it reads one row per tick, and backs off from 50 ms to 250 ms.
pub async fn wait_for_end(state: &AppState, run: &Run, wait: Duration) -> Option<Run> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut every = Duration::from_millis(50);
    loop {
        tokio::time::sleep(
            every.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        if let Ok(client) = state.pool.get().await
            && let Ok(Some(now)) = runs::get(&client, &run.tenant_id, run.id).await
            && now.status.is_terminal()
        {
            return Some(now);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        every = (every * 2).min(Duration::from_millis(250));
    }
}
