//! The consumer loop: at most `concurrency` handlers at once (and as many messages
//! prefetched), consuming again on every new connection; each handler answers with a
//! [`Disposition`] that the loop applies (ack, requeue after a wait, dead-letter).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::telemetry;

use super::{Broker, IdMessage};

impl Broker {
    /// Consumes `queue` until `shutdown`, with at most `concurrency` handlers running at once (and
    /// as many messages prefetched). Survives broker restarts by consuming again on the new
    /// connection. On shutdown it stops taking messages, then waits for running handlers.
    pub async fn consume<F, Fut>(
        &self,
        queue: String,
        concurrency: usize,
        shutdown: CancellationToken,
        handler: F,
    ) where
        F: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Handled> + Send + 'static,
    {
        let concurrency = concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let tracker = TaskTracker::new();
        let tag = format!("{}-{}", queue, Uuid::now_v7().simple());
        'connection: while let Some(live) = self.wait_live(&shutdown).await {
            let setup = async {
                let channel = live.conn.create_channel().await?;
                channel
                    .basic_qos(
                        u16::try_from(concurrency).unwrap_or(u16::MAX),
                        BasicQosOptions::default(),
                    )
                    .await?;
                let consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, lapin::Error>((channel, consumer))
            };
            let (channel, mut consumer) = match setup.await {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(%queue, error = %err, "cannot start consuming; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            tracing::info!(%queue, concurrency, "consuming");
            loop {
                let permit = tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                        tracker.close();
                        tracker.wait().await;
                        let _ = channel.close(200, ShortString::from("shutdown")).await;
                        break 'connection;
                    }
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break 'connection,
                    },
                };
                let next = tokio::select! {
                    () = shutdown.cancelled() => {
                        drop(permit);
                        let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                        tracker.close();
                        tracker.wait().await;
                        let _ = channel.close(200, ShortString::from("shutdown")).await;
                        break 'connection;
                    }
                    next = consumer.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => {
                        let handler = handler.clone();
                        tracker.spawn(async move {
                            let acker = delivery.acker.clone();
                            let handled = handler(delivery).await;
                            handled.disposition.apply(&acker).await;
                            if let Some(then) = handled.then {
                                then.await;
                            }
                            drop(permit);
                        });
                    }
                    Some(Err(err)) => {
                        tracing::warn!(%queue, error = %err, "consumer failed; consuming again");
                        break;
                    }
                    None => {
                        tracing::warn!(%queue, "consumer ended; consuming again");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// The consumer span of one message (OpenTelemetry's messaging conventions), a child of the
/// trace its headers name.
pub fn process_span(delivery: &Delivery, queue: &str, id: Uuid) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.message.id = %id,
    );
    telemetry::adopt_trace_parent(&span, delivery.properties.headers().as_ref());
    span
}

/// What a consumer decided about a message; the consume loop applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it (handled, a duplicate, or no longer ours to keep).
    Ack,
    /// Try again later: back to its queue after this wait (the database is down).
    Requeue(Duration),
    /// Never: to the queue's dead-letter queue (a malformed message, or one naming nothing).
    DeadLetter,
}

impl Disposition {
    async fn apply(self, acker: &lapin::Acker) {
        match self {
            Self::Ack => ack(acker).await,
            Self::Requeue(after) => requeue_after(acker, after).await,
            Self::DeadLetter => dead_letter(acker).await,
        }
    }
}

/// A consumer's answer: the [`Disposition`], applied at once, and work that goes on after it
/// while the message's slot is held (a run executes after its claim is acked).
/// (Its work is boxed: one allocation per message that has any.)
pub struct Handled {
    pub disposition: Disposition,
    pub then: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl From<Disposition> for Handled {
    fn from(disposition: Disposition) -> Self {
        Self {
            disposition,
            then: None,
        }
    }
}

impl Handled {
    /// `disposition`, then `work` in the message's slot.
    pub fn then(disposition: Disposition, work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            disposition,
            then: Some(Box::pin(work)),
        }
    }
}

/// Acks a message. A failed ack is not an error to act on: the broker redelivers, and every
/// handler is idempotent.
async fn ack(delivery: &lapin::Acker) {
    let _ = delivery
        .ack(lapin::options::BasicAckOptions::default())
        .await;
}

/// Returns a message to its queue after `delay`, for a transient failure (the database is
/// down). The wait keeps a redelivery loop from spinning while the cause lasts.
async fn requeue_after(delivery: &lapin::Acker, delay: Duration) {
    tokio::time::sleep(delay).await;
    let options = lapin::options::BasicNackOptions {
        requeue: true,
        ..lapin::options::BasicNackOptions::default()
    };
    let _ = delivery.nack(options).await;
}

/// Rejects a message for good: it goes to the queue's dead-letter queue.
async fn dead_letter(delivery: &lapin::Acker) {
    let _ = delivery
        .nack(lapin::options::BasicNackOptions::default())
        .await;
}

/// Reads the id a work message carries; `None` for a malformed message (dead-letter it).
pub fn parse_id(delivery: &Delivery) -> Option<Uuid> {
    serde_json::from_slice::<IdMessage>(&delivery.data)
        .ok()
        .map(|m| m.id)
}
