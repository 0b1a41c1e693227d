//! Durable accept with group commit. Concurrent requests hand their run to one collector, which
//! inserts whatever has queued up as one multi-row INSERT (one commit), with a bounded number of
//! batches in flight. Under light load a batch is one run and adds no wait; under heavy load the
//! batches grow, so commits per second stay flat while runs per second rise.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use switchyard_common::runs::{self, NewRun};
use switchyard_common::{Run, db};
use tokio::sync::{Semaphore, mpsc, oneshot};
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

type Reply = oneshot::Sender<Result<Option<Run>, StoreError>>;

/// Handle to the group-commit collector.
#[derive(Clone)]
pub struct Accepter {
    jobs: mpsc::Sender<(NewRun, Reply)>,
}

impl Accepter {
    /// Starts the collector: batches of at most `max_batch` runs, at most `max_inflight` at once.
    pub fn start(pool: Pool, max_batch: usize, max_inflight: usize) -> Self {
        let (jobs, rx) = mpsc::channel(max_batch.max(1) * max_inflight.max(1) * 4);
        tokio::spawn(collect(pool, rx, max_batch.max(1), max_inflight.max(1)));
        Self { jobs }
    }

    /// Records `run` as queued; `Ok(None)` when its agent does not exist in its tenant.
    /// Returns once the row is committed.
    pub async fn insert(&self, run: NewRun) -> Result<Option<Run>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((run, reply))
            .await
            .map_err(|_| StoreError::Internal("the accept collector stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Internal("the accept batch was dropped".into()))?
    }
}

async fn collect(
    pool: Pool,
    mut rx: mpsc::Receiver<(NewRun, Reply)>,
    max_batch: usize,
    max_inflight: usize,
) {
    let inflight = Arc::new(Semaphore::new(max_inflight));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets the next batch grow under load.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            flush(&pool, batch).await;
            drop(permit);
        });
    }
}

async fn flush(pool: &Pool, batch: Vec<(NewRun, Reply)>) {
    let (rows, replies): (Vec<NewRun>, Vec<Reply>) = batch.into_iter().unzip();
    match insert(pool, &rows).await {
        Ok(inserted) => answer(&rows, replies, inserted),
        // A row the database refuses must not fail the requests that shared its batch: insert
        // them one by one, so only the culprit sees the error.
        Err(StoreError::Internal(_)) if rows.len() > 1 => {
            for (row, reply) in rows.into_iter().zip(replies) {
                let outcome = insert(pool, std::slice::from_ref(&row)).await;
                let _ = reply.send(outcome.map(|mut inserted| inserted.pop()));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
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

fn answer(rows: &[NewRun], replies: Vec<Reply>, inserted: Vec<Run>) {
    let mut by_id: HashMap<Uuid, Run> = inserted.into_iter().map(|r| (r.id, r)).collect();
    for (row, reply) in rows.iter().zip(replies) {
        let _ = reply.send(Ok(by_id.remove(&row.id)));
    }
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
