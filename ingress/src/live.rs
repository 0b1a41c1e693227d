//! Live run events on this ingress replica: one exclusive queue on the `events` exchange, bound to
//! `run.<id>` for every run a client here streams or waits for, and fanned out to those clients.
//!
//! Live delivery is a fast path, never the only one. Every event is in `run_events` before it is
//! published, so a client that may have missed one reads the database: after subscribing (binding
//! first, then reading, so nothing falls between), whenever a live event skips a number, and on
//! [`Signal::Resync`]. The hub sends `Resync` to everyone after the broker connection comes back,
//! and to the watchers of any run whose last event in the database is newer than the last one
//! heard live, which one query per tick finds for all watched runs together (so a lost publish
//! costs a delay, not a stuck stream, and no client polls the database on its own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use switchyard_common::amqp::{Broker, ControlEvent, TopicCommand};
use switchyard_common::events::{self, RunEvent};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a watcher hears.
#[derive(Debug, Clone)]
pub enum Signal {
    /// An event of the watched run, as published.
    Event(Arc<RunEvent>),
    /// Events may have been missed: read the database from the last one seen.
    Resync,
}

struct Watched {
    sender: broadcast::Sender<Signal>,
    watchers: usize,
    /// The last event number heard live.
    heard: i64,
}

/// The replica's subscriptions to run events.
pub struct Hub {
    watched: Mutex<HashMap<Uuid, Watched>>,
    commands: mpsc::UnboundedSender<TopicCommand>,
}

/// How often the database is asked whether any watched run has events not heard live.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a subscriber waits for the broker to confirm its binding before relying on the
/// database check alone.
const BIND_TIMEOUT: Duration = Duration::from_secs(1);

impl Hub {
    /// Starts following the `events` exchange and the periodic database check; both stop at
    /// `shutdown`.
    pub fn start(broker: Broker, pool: Pool, shutdown: CancellationToken) -> Arc<Self> {
        let (commands, receiver) = mpsc::unbounded_channel();
        let hub = Arc::new(Self {
            watched: Mutex::new(HashMap::new()),
            commands,
        });
        let follower = Arc::clone(&hub);
        let exchange = broker.topology().events();
        let follow_shutdown = shutdown.clone();
        tokio::spawn(async move {
            broker
                .follow_topic(
                    exchange,
                    Vec::new(),
                    follow_shutdown,
                    receiver,
                    |event| match event {
                        ControlEvent::Subscribed => follower.resync_all(),
                        ControlEvent::Message(body) => follower.dispatch(body),
                        ControlEvent::Lost => {}
                    },
                )
                .await;
        });
        tokio::spawn(Arc::clone(&hub).check_database(pool, shutdown));
        hub
    }

    /// Subscribes to `run_id`'s events. When this returns, every event published from now on
    /// reaches the watcher (or, if the broker could not confirm the binding in time, the periodic
    /// check will tell it to read the database).
    pub async fn watch(self: &Arc<Self>, run_id: Uuid) -> Watcher {
        let receiver = {
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            let entry = watched.entry(run_id).or_insert_with(|| Watched {
                sender: broadcast::channel(256).0,
                watchers: 0,
                heard: 0,
            });
            entry.watchers += 1;
            entry.sender.subscribe()
        };
        // The guard exists before the wait, so a caller dropped meanwhile still unsubscribes.
        let watcher = Watcher {
            hub: Arc::clone(self),
            run_id,
            receiver,
        };
        let (reply, bound) = oneshot::channel();
        if self
            .commands
            .send(TopicCommand::Bind(
                switchyard_common::amqp::run_routing_key(run_id),
                reply,
            ))
            .is_ok()
        {
            let _ = tokio::time::timeout(BIND_TIMEOUT, bound).await;
        }
        watcher
    }

    /// How many runs are watched here (for readiness and tests).
    pub fn watched_runs(&self) -> usize {
        self.watched.lock().map(|w| w.len()).unwrap_or(0)
    }

    fn leave(&self, run_id: Uuid) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = watched.get_mut(&run_id) {
            entry.watchers -= 1;
            if entry.watchers == 0 {
                watched.remove(&run_id);
                let _ = self.commands.send(TopicCommand::Unbind(
                    switchyard_common::amqp::run_routing_key(run_id),
                ));
            }
        }
    }

    fn dispatch(&self, body: &[u8]) {
        let Ok(event) = serde_json::from_slice::<RunEvent>(body) else {
            tracing::debug!("ignoring a malformed run event");
            return;
        };
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = watched.get_mut(&event.run_id) {
            entry.heard = entry.heard.max(event.seq);
            let _ = entry.sender.send(Signal::Event(Arc::new(event)));
        }
    }

    fn resync_all(&self) {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for entry in watched.values() {
            let _ = entry.sender.send(Signal::Resync);
        }
    }

    /// Every [`CHECK_EVERY`], one query for all watched runs: a run whose last event in the
    /// database was not heard live gets its watchers a [`Signal::Resync`].
    async fn check_database(self: Arc<Self>, pool: Pool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let runs: Vec<Uuid> = {
                let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
                watched.keys().copied().collect()
            };
            if runs.is_empty() {
                continue;
            }
            let last = async {
                let client = pool.get().await.ok()?;
                events::last_seqs(&client, &runs).await.ok()
            };
            let Some(last) = last.await else {
                continue;
            };
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            for (run_id, seq) in last {
                if let Some(entry) = watched.get_mut(&run_id)
                    && seq > entry.heard
                {
                    entry.heard = seq;
                    let _ = entry.sender.send(Signal::Resync);
                }
            }
        }
    }
}

/// One client's subscription to one run; unsubscribes when dropped.
pub struct Watcher {
    hub: Arc<Hub>,
    run_id: Uuid,
    receiver: broadcast::Receiver<Signal>,
}

impl Watcher {
    /// The next signal. A watcher that fell behind the channel hears [`Signal::Resync`].
    pub async fn next(&mut self) -> Signal {
        match self.receiver.recv().await {
            Ok(signal) => signal,
            Err(_) => Signal::Resync,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.leave(self.run_id);
    }
}
