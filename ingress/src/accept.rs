//! Durable accept with group commit: concurrent requests hand their run to one
//! [`Batcher`], which inserts whatever has queued up as one multi-row INSERT (one commit). Under
//! light load a batch is one run and adds no wait; under heavy load the batches grow, so commits
//! per second stay flat while runs per second rise.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use switchyard_common::batch::Batcher;
use switchyard_common::runs::{self, NewRun};
use switchyard_common::{Run, db};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Why a run could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Postgres is down or too slow: answer 503.
    #[error("the database is unavailable")]
    Unavailable,
    /// Anything else: a bug.
    #[error("storing the run failed: {0}")]
    Internal(String),
}

/// Handle to the group-commit collector.
#[derive(Clone)]
pub struct Accepter {
    batcher: Batcher<NewRun, Result<Option<Run>, StoreError>>,
}

impl Accepter {
    /// Starts the collector: batches of at most `max_batch` runs, at most `max_inflight` at once.
    pub fn start(pool: Pool, max_batch: usize, max_inflight: usize) -> Self {
        let batcher = Batcher::start(max_batch, max_inflight, move |rows: Vec<NewRun>| {
            let pool = pool.clone();
            async move { flush(&pool, rows).await }
        });
        Self { batcher }
    }

    /// Records `run` as queued; `Ok(None)` when its agent does not exist in its tenant.
    /// Returns once the row is committed.
    pub async fn insert(&self, run: NewRun) -> Result<Option<Run>, StoreError> {
        self.batcher
            .submit(run)
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

async fn flush(pool: &Pool, rows: Vec<NewRun>) -> Vec<Result<Option<Run>, StoreError>> {
    match insert(pool, &rows).await {
        Ok(inserted) => {
            let mut by_id: HashMap<Uuid, Run> = inserted.into_iter().map(|r| (r.id, r)).collect();
            rows.iter().map(|row| Ok(by_id.remove(&row.id))).collect()
        }
        // A row the database refuses must not fail the requests that shared its batch: insert
        // them one by one, so only the culprit sees the error.
        Err(StoreError::Internal(_)) if rows.len() > 1 => {
            let mut answers = Vec::with_capacity(rows.len());
            for row in &rows {
                let outcome = insert(pool, std::slice::from_ref(row)).await;
                answers.push(outcome.map(|mut inserted| inserted.pop()));
            }
            answers
        }
        Err(err) => rows.iter().map(|_| Err(err.clone())).collect(),
    }
}

async fn insert(pool: &Pool, rows: &[NewRun]) -> Result<Vec<Run>, StoreError> {
    let client = pool.get().await.map_err(|e| {
        if db::is_unavailable(&e) {
            StoreError::Unavailable
        } else {
            StoreError::Internal(e.to_string())
        }
    })?;
    runs::insert_batch(&client, rows).await.map_err(|e| {
        if db::pg_unavailable(&e) {
            StoreError::Unavailable
        } else {
            tracing::error!(error = %e, rows = rows.len(), "inserting runs failed");
            StoreError::Internal(e.to_string())
        }
    })
}

/// Run ids whose publish failed (the broker was down or slow). A background task publishes them
/// as soon as the broker is back, so a short outage costs seconds rather than the sweeper's
/// threshold. Best effort and bounded: when it is full, or the process dies, the sweeper in the
/// workers still finds every queued run in Postgres.
#[derive(Clone)]
pub struct Backlog {
    ids: mpsc::Sender<Uuid>,
}

impl Backlog {
    /// Starts the background publisher, holding at most `capacity` ids.
    pub fn start(broker: switchyard_common::amqp::Broker, capacity: usize) -> Self {
        let (ids, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(drain(broker, rx));
        Self { ids }
    }

    /// Queues `id` for publishing; drops it when full (the sweeper covers it).
    pub fn push(&self, id: Uuid) {
        let _ = self.ids.try_send(id);
    }
}

async fn drain(broker: switchyard_common::amqp::Broker, mut rx: mpsc::Receiver<Uuid>) {
    const BATCH: usize = 500;
    let queue = broker.topology().runs();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        loop {
            if broker.is_connected() {
                // A partial confirm republishes the whole batch: duplicates are harmless, since
                // the worker's claim is guarded.
                if matches!(broker.publish_ids(&queue, &batch).await, Ok(n) if n == batch.len()) {
                    tracing::info!(
                        count = batch.len(),
                        "published runs accepted while the broker was away"
                    );
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}
