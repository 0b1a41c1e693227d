//! Group commit for any statement. Concurrent callers submit one item each; a collector hands
//! whatever has queued up (at most `max`) to one `flush`, with at most `inflight` flushes running
//! at once. There is no timer: a lone item is flushed at once, and under load the batches grow
//! while earlier flushes are in flight, so statements and commits per item fall as load rises.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// A handle to a running collector; cheap to clone.
pub struct Batcher<I, O> {
    items: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            items: self.items.clone(),
        }
    }
}

/// The collector stopped, or a flush panicked: the item's fate is unknown to the caller.
#[derive(Debug, thiserror::Error)]
#[error("the batch collector is gone")]
pub struct Gone;

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the collector. `flush` must return one output per input, in input order.
    pub fn start<F, Fut>(max: usize, inflight: usize, flush: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let max = max.max(1);
        let (items, rx) = mpsc::channel(max * inflight.max(1) * 4);
        tokio::spawn(collect(rx, max, inflight.max(1), flush));
        Self { items }
    }

    /// Submits `item` and waits for its output.
    pub async fn submit(&self, item: I) -> Result<O, Gone> {
        let (reply, answer) = oneshot::channel();
        self.items.send((item, reply)).await.map_err(|_| Gone)?;
        answer.await.map_err(|_| Gone)
    }
}

async fn collect<I, O, F, Fut>(
    mut rx: mpsc::Receiver<(I, oneshot::Sender<O>)>,
    max: usize,
    inflight: usize,
    flush: F,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(inflight));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets the next batch grow under load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
        let outputs = flush(inputs);
        tokio::spawn(async move {
            let outputs = outputs.await;
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(output);
            }
            drop(slot);
        });
    }
}

/// Answers each item of a flush from one statement's outcome: the returned row whose key is the
/// item's (or `None` when the statement skipped it), or, when the statement failed, its error
/// for every item.
pub fn answer_each<K, T, E>(
    keys: &[K],
    outcome: Result<Vec<T>, E>,
    key_of: impl Fn(&T) -> K,
) -> Vec<Result<Option<T>, String>>
where
    K: Eq + Hash,
    E: std::fmt::Display,
{
    match outcome {
        Ok(rows) => {
            let mut by_key: HashMap<K, T> =
                rows.into_iter().map(|row| (key_of(&row), row)).collect();
            keys.iter().map(|k| Ok(by_key.remove(k))).collect()
        }
        Err(err) => {
            let cause = format!("{err:#}");
            keys.iter().map(|_| Err(cause.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn each_caller_gets_its_own_output_and_batches_grow_under_load() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = flushes.clone();
        let batcher = Batcher::start(50, 1, move |items: Vec<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 10).collect()
            }
        });
        let mut calls = Vec::new();
        for i in 0..200u32 {
            let b = batcher.clone();
            calls.push(tokio::spawn(async move {
                (i, b.submit(i).await.expect("answered"))
            }));
        }
        for call in calls {
            let (i, out) = call.await.expect("join");
            assert_eq!(out, i * 10);
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!(
            (4..200).contains(&n),
            "200 items in {n} flushes of at most 50"
        );
    }

    #[test]
    fn answers_match_rows_to_items_by_key() {
        let rows: Result<Vec<(u8, &str)>, String> = Ok(vec![(3, "c"), (1, "a")]);
        let answers = answer_each(&[1, 2, 3], rows, |row| row.0);
        assert_eq!(
            answers,
            vec![Ok(Some((1, "a"))), Ok(None), Ok(Some((3, "c")))]
        );
        let failed: Result<Vec<(u8, &str)>, String> = Err("down".into());
        assert_eq!(
            answer_each(&[1, 2], failed, |row| row.0),
            vec![Err("down".into()), Err("down".into())]
        );
    }

    #[tokio::test]
    async fn a_lone_item_is_flushed_without_waiting_for_company() {
        let batcher = Batcher::start(100, 2, |items: Vec<u8>| async move { items });
        let answered = tokio::time::timeout(Duration::from_millis(200), batcher.submit(7)).await;
        assert_eq!(answered.expect("no timer").expect("answered"), 7);
    }
}
