//! Every queue and exchange, named under one prefix, and their declaration: quorum queues with
//! a delivery limit and dead-letter queues, the TTL queues of webhook retries and deferrals
//! (each dead-letters back to `deliveries`), and the `control` and `events` exchanges.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

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
