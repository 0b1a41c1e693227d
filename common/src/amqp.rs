//! RabbitMQ plumbing: the topology, a supervised connection that reconnects after a broker
//! restart, confirmed publishes that pipeline across concurrent callers, and a bounded consumer
//! loop. Messages carry only ids plus `traceparent` headers; Postgres holds the state.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::telemetry;

/// How many times RabbitMQ redelivers a message before dead-lettering it. A run or delivery whose
/// message dies is still in Postgres, where the sweepers find it.
const DELIVERY_LIMIT: i64 = 50;

/// The longest a deferred delivery waits in the defer queue.
pub const DEFER_TTL: Duration = Duration::from_secs(2);

/// The names and shape of every queue, under one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// The webhook retry delays; each gets a TTL queue that dead-letters back to `deliveries`.
    pub retry_tiers: Vec<Duration>,
}

impl Topology {
    /// A topology without retry tiers (the ingress and the worker do not need them).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            retry_tiers: Vec::new(),
        }
    }

    /// Quorum queue of run ids waiting for a worker.
    pub fn runs(&self) -> String {
        format!("{}runs", self.prefix)
    }

    /// Where run messages go after too many redeliveries.
    pub fn runs_dead(&self) -> String {
        format!("{}runs.dead", self.prefix)
    }

    /// Quorum queue of delivery ids due for an attempt.
    pub fn deliveries(&self) -> String {
        format!("{}deliveries", self.prefix)
    }

    /// Where delivery messages go after too many redeliveries.
    pub fn deliveries_dead(&self) -> String {
        format!("{}deliveries.dead", self.prefix)
    }

    /// The TTL queue of the scheduled `delay`: it holds a delivery id for the message's own
    /// expiration (the jittered delay, or `Retry-After`), at most twice the delay, then
    /// dead-letters it to `deliveries`. The delay is in the name, so changing the schedule
    /// declares new queues instead of clashing.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}deliveries.wait.{}ms", self.prefix, delay.as_millis())
    }

    /// The TTL queue of deliveries whose endpoint is at its concurrency or rate limit: each
    /// waits its message's own expiration (at most [`DEFER_TTL`]), then dead-letters back to
    /// `deliveries`.
    pub fn defer_queue(&self) -> String {
        format!("{}deliveries.defer", self.prefix)
    }

    /// Fanout exchange for control messages (cache invalidation, later cancel commands). Each
    /// subscribed process binds its own exclusive queue.
    pub fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// Topic exchange of run events, routed by `run.<id>`. Each ingress replica binds the keys of
    /// the runs its clients watch to an exclusive queue of its own.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Every queue this topology declares.
    pub fn queues(&self) -> Vec<String> {
        let mut all = vec![
            self.runs(),
            self.runs_dead(),
            self.deliveries(),
            self.deliveries_dead(),
            self.defer_queue(),
        ];
        all.extend(self.retry_tiers.iter().map(|d| self.retry_queue(*d)));
        all
    }
}

fn quorum_args(dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(target) = dead_letter_to {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(target.into()),
        );
    }
    args
}

/// A queue where messages wait: each expires after its own expiration or `ttl`, whichever is
/// sooner, and is dead-lettered to `target`.
fn waiting_args(ttl: Duration, target: &str) -> FieldTable {
    let mut args = quorum_args(None);
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(target.into()),
    );
    args
}

/// Declares every queue of `topology`. Idempotent: redeclaring with the same arguments is a no-op.
pub async fn declare(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            topology.control().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            topology.events().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(topology.runs_dead().into(), durable, quorum_args(None))
        .await?;
    channel
        .queue_declare(
            topology.deliveries_dead().into(),
            durable,
            quorum_args(None),
        )
        .await?;
    channel
        .queue_declare(
            topology.runs().into(),
            durable,
            quorum_args(Some(&topology.runs_dead())),
        )
        .await?;
    let deliveries = topology.deliveries();
    channel
        .queue_declare(
            deliveries.as_str().into(),
            durable,
            quorum_args(Some(&topology.deliveries_dead())),
        )
        .await?;
    channel
        .queue_declare(
            topology.defer_queue().into(),
            durable,
            waiting_args(DEFER_TTL, &deliveries),
        )
        .await?;
    for delay in &topology.retry_tiers {
        channel
            .queue_declare(
                topology.retry_queue(*delay).into(),
                durable,
                waiting_args(delay.saturating_mul(2), &deliveries),
            )
            .await?;
    }
    Ok(())
}

/// Deletes every queue of `topology` (tests clean up with it).
pub async fn delete_topology(url: &str, topology: &Topology) -> lapin::Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for queue in topology.queues() {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [topology.control(), topology.events()] {
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
    }
    conn.close(200, ShortString::from("bye")).await
}

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

    /// Publishes one id to `queue` and waits for the broker's confirm. Concurrent callers share
    /// one channel, so their confirms are pipelined rather than serialised.
    pub async fn publish_id(&self, queue: &str, id: Uuid) -> Result<(), PublishError> {
        self.publish_id_in(queue, id, None).await
    }

    /// [`Broker::publish_id`] in the trace `traceparent` names (else the current span's): for a
    /// run published again, in the trace of the request that accepted it.
    pub async fn publish_id_in(
        &self,
        queue: &str,
        id: Uuid,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let span = publish_span(queue, id);
        if let Some(parent) = traceparent {
            telemetry::adopt_trace_parent(&span, Some(&telemetry::amqp_headers_of(parent)));
        }
        let headers = span.in_scope(telemetry::current_trace_headers);
        let confirm = tokio::time::timeout(self.0.publish_timeout, async {
            send_with(&live.publisher, queue, id, None, headers)
                .await?
                .await
                .map_err(PublishError::from)
        })
        .instrument(span)
        .await
        .map_err(|_| PublishError::Timeout)??;
        check(confirm)
    }

    /// [`Broker::publish_id`] with a per-message expiration: in a queue that dead-letters, the
    /// message moves on after `wait`.
    pub async fn publish_id_for(
        &self,
        queue: &str,
        id: Uuid,
        wait: Duration,
    ) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let expiration = wait.as_millis().to_string();
        let span = publish_span(queue, id);
        let headers = span.in_scope(telemetry::current_trace_headers);
        let confirm = tokio::time::timeout(self.0.publish_timeout, async {
            send_with(&live.publisher, queue, id, Some(&expiration), headers)
                .await?
                .await
                .map_err(PublishError::from)
        })
        .instrument(span)
        .await
        .map_err(|_| PublishError::Timeout)??;
        check(confirm)
    }

    /// Publishes many ids: all sent first, then all confirms awaited together. Returns how many
    /// were confirmed; the rest stay to the sweepers.
    pub async fn publish_ids(&self, queue: &str, ids: &[Uuid]) -> Result<usize, PublishError> {
        let messages: Vec<(Uuid, Option<&FieldTable>)> = ids.iter().map(|id| (*id, None)).collect();
        self.publish_ids_traced(queue, &messages).await
    }

    /// [`Broker::publish_ids`], each message in the trace its headers name (else the current
    /// span's): a message's `publish` span is a child of that trace.
    pub async fn publish_ids_traced(
        &self,
        queue: &str,
        messages: &[(Uuid, Option<&FieldTable>)],
    ) -> Result<usize, PublishError> {
        if messages.is_empty() {
            return Ok(0);
        }
        let live = self.live().ok_or(PublishError::Unavailable)?;
        tokio::time::timeout(self.0.publish_timeout, async {
            let mut pending = Vec::with_capacity(messages.len());
            for (id, parent) in messages {
                let span = publish_span(queue, *id);
                if parent.is_some() {
                    telemetry::adopt_trace_parent(&span, *parent);
                }
                let headers = span.in_scope(telemetry::current_trace_headers);
                pending.push(
                    send_with(&live.publisher, queue, *id, None, headers)
                        .instrument(span)
                        .await?,
                );
            }
            let confirmed = futures::future::join_all(pending)
                .await
                .into_iter()
                .filter(|c| matches!(c, Ok(Confirmation::Ack(None))))
                .count();
            Ok(confirmed)
        })
        .await
        .map_err(|_| PublishError::Timeout)?
    }

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

/// A producer span for one message (OpenTelemetry's messaging conventions).
fn publish_span(queue: &str, id: Uuid) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format!("publish {queue}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = %queue,
        messaging.message.id = %id,
    )
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

async fn send_with(
    channel: &Channel,
    queue: &str,
    id: Uuid,
    expiration_ms: Option<&str>,
    headers: FieldTable,
) -> lapin::Result<lapin::PublisherConfirm> {
    let body = serde_json::to_vec(&IdMessage { id }).unwrap_or_default();
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.to_string().into())
        .with_headers(headers);
    if let Some(ms) = expiration_ms {
        properties = properties.with_expiration(ms.into());
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await
}

fn check(confirm: Confirmation) -> Result<(), PublishError> {
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}

/// Acknowledges a message. A failed ack is not an error to act on: the broker redelivers, and
/// every handler is idempotent.
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

/// Acks a message.
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

/// The routing key of a run's events on the `events` exchange.
pub fn run_routing_key(run_id: Uuid) -> String {
    format!("run.{run_id}")
}
