//! RabbitMQ plumbing. Messages carry only ids plus `traceparent` headers; Postgres holds the
//! state. This module is the supervised connection ([`Broker`]: it reconnects and declares the
//! topology again after a broker restart); the rest is one concern a file:
//!
//! - `topology`: every queue and exchange under one prefix, and their declaration.
//! - `publish`: confirmed publishes of ids, pipelined across concurrent callers.
//! - `consume`: the bounded consumer loop, and the [`Disposition`] a handler answers with.
//! - `topics`: the `control` fanout and the `events` topic exchange, followed through exclusive
//!   queues across reconnects.

mod consume;
mod publish;
mod topics;
mod topology;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use consume::{Disposition, Handled, parse_id, process_span};
pub use topics::{ControlEvent, TopicCommand, run_routing_key};
pub use topology::{DEFER_TTL, Topology, declare, delete_topology};

/// Why a publish did not reach a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    Unavailable,
    #[error("RabbitMQ did not confirm in time")]
    Timeout,
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("no queue is bound to the routing key")]
    Unroutable,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

#[derive(Clone)]
struct Live {
    conn: Arc<Connection>,
    publisher: Channel,
}

struct Inner {
    url: String,
    topology: Topology,
    publish_timeout: Duration,
    live: RwLock<Option<Live>>,
    connected: watch::Sender<bool>,
}

/// A supervised broker connection, cheap to clone. A background task connects, declares the
/// topology, and reconnects with backoff whenever the connection or its publish channel dies;
/// meanwhile publishes fail fast with [`PublishError::Unavailable`] and consumers wait.
#[derive(Clone)]
pub struct Broker(Arc<Inner>);

/// The body of every work message: one id.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct IdMessage {
    pub id: Uuid,
}

impl Broker {
    /// Starts the supervisor; returns at once, connected or not.
    pub fn start(
        url: &str,
        topology: Topology,
        publish_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (connected, _) = watch::channel(false);
        let broker = Self(Arc::new(Inner {
            url: url.to_owned(),
            topology,
            publish_timeout,
            live: RwLock::new(None),
            connected,
        }));
        tokio::spawn(broker.clone().supervise(shutdown));
        broker
    }

    /// The topology this broker declared.
    pub fn topology(&self) -> &Topology {
        &self.0.topology
    }

    /// Whether a connection is up right now (for readiness).
    pub fn is_connected(&self) -> bool {
        *self.0.connected.borrow()
    }

    fn live(&self) -> Option<Live> {
        self.0.live.read().ok().and_then(|guard| guard.clone())
    }

    fn set_live(&self, live: Option<Live>) {
        let up = live.is_some();
        if let Ok(mut guard) = self.0.live.write() {
            *guard = live;
        }
        self.0.connected.send_replace(up);
    }

    async fn connect_once(&self) -> lapin::Result<Live> {
        let conn = Connection::connect(&self.0.url, ConnectionProperties::default()).await?;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare(&publisher, &self.0.topology).await?;
        Ok(Live {
            conn: Arc::new(conn),
            publisher,
        })
    }

    async fn supervise(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(5), self.connect_once());
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(Ok(live)) => {
                    tracing::info!(prefix = %self.0.topology.prefix, "connected to RabbitMQ");
                    backoff = Duration::from_millis(100);
                    self.set_live(Some(live.clone()));
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => {
                                self.set_live(None);
                                let _ = live.conn.close(200, ShortString::from("shutdown")).await;
                                return;
                            }
                            () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        if !live.conn.status().connected() || !live.publisher.status().connected() {
                            break;
                        }
                    }
                    self.set_live(None);
                    tracing::warn!("lost the RabbitMQ connection; reconnecting");
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "cannot connect to RabbitMQ")
                }
                Err(_) => tracing::warn!(retry_in = ?backoff, "connecting to RabbitMQ timed out"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Waits until connected; `None` if `shutdown` fires first.
    async fn wait_live(&self, shutdown: &CancellationToken) -> Option<Live> {
        let mut rx = self.0.connected.subscribe();
        loop {
            if let Some(live) = self.live() {
                return Some(live);
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None; },
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// How many messages wait in `queue`, ready for a consumer (unacked ones not counted).
    /// `None` when not connected.
    pub async fn ready_count(&self, queue: &str) -> Option<u32> {
        let live = self.live()?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            self.0.publish_timeout,
            live.publisher
                .queue_declare(queue.into(), options, FieldTable::default()),
        )
        .await
        .ok()?
        .ok()?;
        Some(declared.message_count())
    }
}
