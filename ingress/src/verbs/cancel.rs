//! Cancelling a run: a queued one ends here (through the lifecycle, with its webhooks), a running
//! one is marked and its worker told on the control exchange.

use switchyard_common::catalog::api_keys::Scope;
use switchyard_common::control::Control;
use switchyard_common::lifecycle::{self, Left};
use switchyard_common::runs;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::verbs::error::VerbError;

/// Cancels run `id` for `principal` (the `trigger` scope; 404 for a run it may not see).
/// Idempotent: a run that has ended stays as it is. A queued run never starts; a running one is
/// stopped by the worker holding it, told now (or at its next heartbeat, should the message be
/// lost).
pub(crate) async fn cancel(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(), VerbError> {
    let key = principal.key_with(Scope::Trigger)?;
    let not_found = || VerbError::not_found(format!("run `{id}` was not found"));
    let run_id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let mut client = state.pool.get().await?;
    let run = runs::get(&client, &key.tenant_id, run_id)
        .await?
        .filter(|run| {
            key.project_ids
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&run.project_id))
        })
        .ok_or_else(not_found)?;
    // A run can move between queued and running while this looks (a hand-back, the reaper), so
    // try both ways until one takes or the run has ended.
    let mut status = Some(run.status);
    for _ in 0..5 {
        if status.is_none_or(|s| s.is_terminal()) {
            return Ok(());
        }
        // Queued: cancel it here, with its webhooks, in one transaction.
        let tx = client.transaction().await?;
        if let Some(cancelled) = runs::cancel_queued(&tx, &key.tenant_id, run_id).await? {
            let recorded = lifecycle::record(&tx, vec![cancelled], Left::Queued).await?;
            tx.commit().await?;
            // It may have held up the rest of its session, or its limited agent's queue.
            lifecycle::announce(&state.pool, &state.broker, &recorded).await;
            return Ok(());
        }
        tx.rollback().await?;
        // Running: ask its worker.
        if runs::request_cancel(&client, &key.tenant_id, run_id).await? {
            if let Err(err) = state
                .broker
                .publish_control(&Control::RunCancel { run_id })
                .await
            {
                tracing::warn!(%run_id, error = %err, "cancel recorded; the worker will see it at its next heartbeat");
            }
            return Ok(());
        }
        status = runs::get(&client, &key.tenant_id, run_id)
            .await?
            .map(|r| r.status);
    }
    Err(VerbError::unavailable_because(
        "the run kept changing state while it was being cancelled; retry the request",
    ))
}
