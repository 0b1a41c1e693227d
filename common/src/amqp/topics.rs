//! The exchanges that fan out to every process: `control` (catalog changes, cancels,
//! revocations) and `events` (live run events under `run.<id>`), each followed through an
//! exclusive queue of the process, bound again after every reconnect.

use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Broker, PublishError};

/// What a control subscription hears.
#[derive(Debug)]
pub enum ControlEvent<'a> {
    /// The queue is bound: from now on every message arrives.
    Subscribed,
    /// One message.
    Message(&'a [u8]),
    /// The subscription is down; messages may be missed until the next `Subscribed`.
    Lost,
}

/// What a topic follower is asked to do.
#[derive(Debug)]
pub enum TopicCommand {
    /// Bind a routing key; the answer says whether the broker confirmed the binding (from then on
    /// every message under the key arrives). Unanswered or `false`: not bound yet; it will be
    /// after the next [`ControlEvent::Subscribed`].
    Bind(String, tokio::sync::oneshot::Sender<bool>),
    /// Unbind a routing key.
    Unbind(String),
}

impl Broker {
    /// Publishes a control message to every subscribed process, and waits for the confirm. Nobody
    /// listening is not an error.
    pub async fn publish_control(
        &self,
        message: &crate::control::Control,
    ) -> Result<(), PublishError> {
        let body = message.encode();
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let exchange = self.0.topology.control();
        let confirm = tokio::time::timeout(self.0.publish_timeout, async {
            live.publisher
                .basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await?
                .await
                .map_err(PublishError::from)
        })
        .await
        .map_err(|_| PublishError::Timeout)??;
        match confirm {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// Follows the control exchange until `shutdown` through an exclusive queue of this process,
    /// across reconnects. `on_event` hears [`ControlEvent::Subscribed`] each time the queue is bound
    /// (messages sent before then were missed), every message, and [`ControlEvent::Lost`].
    pub async fn subscribe_control<F>(&self, shutdown: CancellationToken, on_event: F)
    where
        F: Fn(ControlEvent<'_>) + Send + Sync,
    {
        // A fanout exchange: the one binding, with any key, hears everything. Nothing else is
        // ever asked, but the sender lives as long as the follower, which stops when it closes.
        let (_asks, commands) = tokio::sync::mpsc::unbounded_channel();
        self.follow_topic(
            self.0.topology.control(),
            vec![String::new()],
            shutdown,
            commands,
            on_event,
        )
        .await;
    }

    /// Publishes run events on the `events` exchange, each under `run.<id>`, without waiting for
    /// confirms: they are for live listeners, and every one of them is already in `run_events`,
    /// where a listener that missed one finds it.
    pub async fn publish_events(&self, events: &[crate::model::RunEvent]) {
        if events.is_empty() {
            return;
        }
        let Some(live) = self.live() else {
            return;
        };
        let exchange = self.0.topology.events();
        let bodies: Vec<(String, Vec<u8>)> = events
            .iter()
            .filter_map(|event| {
                let body = serde_json::to_vec(event).ok()?;
                Some((run_routing_key(event.run_id), body))
            })
            .collect();
        // Sent together, not one after another; confirms are not awaited.
        let sends = bodies.iter().map(|(key, body)| {
            live.publisher.basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
        });
        for sent in futures::future::join_all(sends).await {
            if let Err(err) = sent {
                tracing::debug!(error = %err, "cannot publish a run event; listeners will read it from the database");
                return;
            }
        }
    }

    /// Follows the topic (or fanout) `exchange` until `shutdown` through an exclusive queue of
    /// this process, bound to `keys` from the start and then binding and unbinding keys as
    /// `commands` ask, across reconnects (every key is bound again on a new connection). `on_event` hears [`ControlEvent::Subscribed`] each time the queue is
    /// set up again (messages sent meanwhile were missed), every message, and
    /// [`ControlEvent::Lost`].
    pub async fn follow_topic<F>(
        &self,
        exchange: String,
        keys: Vec<String>,
        shutdown: CancellationToken,
        mut commands: tokio::sync::mpsc::UnboundedReceiver<TopicCommand>,
        on_event: F,
    ) where
        F: Fn(ControlEvent<'_>) + Send + Sync,
    {
        let mut keys: std::collections::HashSet<String> = keys.into_iter().collect();
        let mut connected = self.0.connected.subscribe();
        loop {
            // While there is no connection, remember what is asked and answer "not bound".
            let Some(live) = self.live() else {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = connected.changed() => if changed.is_err() { return },
                    command = commands.recv() => match command {
                        Some(TopicCommand::Bind(key, reply)) => {
                            keys.insert(key);
                            let _ = reply.send(false);
                        }
                        Some(TopicCommand::Unbind(key)) => {
                            keys.remove(&key);
                        }
                        None => return,
                    },
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            };
            let setup = async {
                let channel = live.conn.create_channel().await?;
                let queue = channel
                    .queue_declare(
                        "".into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                for key in &keys {
                    channel
                        .queue_bind(
                            queue.name().clone(),
                            exchange.as_str().into(),
                            key.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                let consumer = channel
                    .basic_consume(
                        queue.name().clone(),
                        "".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            exclusive: true,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, lapin::Error>((channel, queue.name().clone(), consumer))
            };
            let (channel, queue, mut consumer) = match setup.await {
                Ok(set) => set,
                Err(err) => {
                    tracing::warn!(%exchange, error = %err, "cannot follow the exchange; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            on_event(ControlEvent::Subscribed);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = channel.close(200, ShortString::from("shutdown")).await;
                        on_event(ControlEvent::Lost);
                        return;
                    }
                    command = commands.recv() => match command {
                        Some(TopicCommand::Bind(key, reply)) => {
                            let bound = channel
                                .queue_bind(
                                    queue.clone(),
                                    exchange.as_str().into(),
                                    key.as_str().into(),
                                    QueueBindOptions::default(),
                                    FieldTable::default(),
                                )
                                .await;
                            keys.insert(key);
                            let _ = reply.send(bound.is_ok());
                            if bound.is_err() {
                                break;
                            }
                        }
                        Some(TopicCommand::Unbind(key)) => {
                            if keys.remove(&key) {
                                let unbound = channel
                                    .queue_unbind(
                                        queue.clone(),
                                        exchange.as_str().into(),
                                        key.as_str().into(),
                                        FieldTable::default(),
                                    )
                                    .await;
                                if unbound.is_err() {
                                    break;
                                }
                            }
                        }
                        None => {
                            let _ = channel.close(200, ShortString::from("shutdown")).await;
                            on_event(ControlEvent::Lost);
                            return;
                        }
                    },
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => on_event(ControlEvent::Message(&delivery.data)),
                        _ => break,
                    },
                }
            }
            on_event(ControlEvent::Lost);
            tracing::warn!(%exchange, "stopped following the exchange; following again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The routing key of a run's events on the `events` exchange.
pub fn run_routing_key(run_id: Uuid) -> String {
    format!("run.{run_id}")
}
