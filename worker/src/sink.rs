//! The events of one running run, on their way to `run_events` and the `events` exchange.
//!
//! The executor emits events through an [`Emitter`] without waiting. A task of the run collects
//! them, merges consecutive deltas, and every [`FLUSH_EVERY`] writes what has gathered in one
//! INSERT (only while this worker holds the lease), then publishes it. What is still unwritten
//! when the executor ends goes into the statement that records the outcome ([`Pending`]), so a
//! short run costs no statement of its own for its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{Value, json};
use switchyard_common::amqp::Broker;
use switchyard_common::events::{self, EventKind, NewEvent};
use switchyard_common::runs::Pending;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long deltas gather before they are written and published together.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// What one run may emit, and what it has: every byte of event data counts against
/// `max_bytes` and every event but a text delta against `max_events`. Past either, nothing more
/// is taken and [`Budget::exceeded`] fires: the worker ends the run `output_too_large`.
pub struct Budget {
    max_bytes: usize,
    max_events: usize,
    bytes: AtomicUsize,
    events: AtomicUsize,
    spent: CancellationToken,
}

/// The caps of one run's output (`SWITCHYARD_MAX_RUN_OUTPUT_BYTES`, `SWITCHYARD_MAX_RUN_EVENTS`).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_bytes: usize,
    pub max_events: usize,
}

impl Budget {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            max_bytes: caps.max_bytes,
            max_events: caps.max_events,
            bytes: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
            spent: CancellationToken::new(),
        })
    }

    /// Counts an event of `size` bytes; `false` (and the budget spent) when it does not fit.
    fn take(&self, kind: EventKind, size: usize) -> bool {
        if self.spent.is_cancelled() {
            return false;
        }
        let bytes = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
        let events = if kind == EventKind::Delta {
            self.events.load(Ordering::Relaxed)
        } else {
            self.events.fetch_add(1, Ordering::Relaxed) + 1
        };
        if bytes > self.max_bytes || events > self.max_events {
            self.spent.cancel();
            return false;
        }
        true
    }

    /// Whether the run has emitted more than its caps allow.
    pub fn is_spent(&self) -> bool {
        self.spent.is_cancelled()
    }

    /// Resolves once the run has emitted more than its caps allow, with why (the run ends
    /// `output_too_large` with it).
    pub async fn exceeded(&self) -> String {
        self.spent.cancelled().await;
        format!(
            "the run's output passed its limits ({} bytes of events, {} events besides text)",
            self.max_bytes, self.max_events
        )
    }
}

/// What every event is charged beyond its data: what holding it costs, so that a flood of tiny
/// deltas cannot grow the queue far past the budget.
const EVENT_OVERHEAD: usize = 32;

/// Where an executor sends its events. Cheap to clone; sending never waits.
#[derive(Clone)]
pub struct Emitter {
    sender: mpsc::UnboundedSender<NewEvent>,
    budget: Arc<Budget>,
}

impl Emitter {
    /// A piece of the answer's text.
    pub fn delta(&self, text: &str) {
        if !text.is_empty()
            && self
                .budget
                .take(EventKind::Delta, text.len() + EVENT_OVERHEAD)
        {
            let _ = self.sender.send(NewEvent {
                kind: EventKind::Delta,
                data: json!({ "text": text }),
            });
        }
    }

    /// Any other event. One past the run's [`Budget`] is dropped, and the run ends.
    pub fn emit(&self, kind: EventKind, data: Value) {
        let room = self
            .budget
            .max_bytes
            .saturating_sub(self.budget.bytes.load(Ordering::Relaxed));
        // Measured without building the text, and no further than the room left.
        let size = switchyard_common::template::json_len_within(&data, room).unwrap_or(room + 1);
        if self.budget.take(kind, size.saturating_add(EVENT_OVERHEAD)) {
            let _ = self.sender.send(NewEvent { kind, data });
        }
    }

    /// Whether the run has passed its caps (an executor may stop early; the worker ends the run
    /// either way).
    pub fn spent(&self) -> bool {
        self.budget.spent.is_cancelled()
    }

    /// An emitter whose events go nowhere (for unit tests of executors).
    pub fn discard() -> Self {
        let (sender, _) = mpsc::unbounded_channel();
        Self {
            sender,
            budget: Budget::new(Caps {
                max_bytes: usize::MAX,
                max_events: usize::MAX,
            }),
        }
    }
}

/// The running sink of one run: its emitter, and the task that ends with what it did not write.
pub struct Sink {
    pub emitter: Emitter,
    /// The run's output caps, and what it has used of them.
    pub budget: Arc<Budget>,
    task: JoinHandle<Pending>,
}

impl Sink {
    /// Starts the sink of `run_id`, whose next event is number `next_seq`, with `first` as its
    /// first events (the `running` status).
    pub fn start(
        pool: Pool,
        broker: Broker,
        owner: String,
        run_id: Uuid,
        next_seq: i64,
        first: Vec<NewEvent>,
        caps: Caps,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(collect(
            pool, broker, owner, run_id, next_seq, first, receiver,
        ));
        let budget = Budget::new(caps);
        Self {
            emitter: Emitter {
                sender,
                budget: Arc::clone(&budget),
            },
            budget,
            task,
        }
    }

    /// Stops taking events and returns what was not written, numbered from where the written
    /// ones stopped. Waits for a write in progress, so nothing is written after this returns.
    pub async fn finish(self) -> Pending {
        drop(self.emitter);
        self.task.await.unwrap_or_default()
    }
}

/// Adds `event` to `pending`, merging a delta into a delta just before it.
fn push(pending: &mut Vec<NewEvent>, event: NewEvent) {
    if event.kind == EventKind::Delta
        && let Some(last) = pending.last_mut()
        && last.kind == EventKind::Delta
        && let (Some(Value::String(so_far)), Some(more)) = (
            last.data.get_mut("text"),
            event.data.get("text").and_then(Value::as_str),
        )
    {
        so_far.push_str(more);
        return;
    }
    pending.push(event);
}

async fn collect(
    pool: Pool,
    broker: Broker,
    owner: String,
    run_id: Uuid,
    mut next_seq: i64,
    mut pending: Vec<NewEvent>,
    mut receiver: mpsc::UnboundedReceiver<NewEvent>,
) -> Pending {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            event = receiver.recv() => match event {
                Some(event) => push(&mut pending, event),
                None => break,
            },
            _ = tick.tick() => {
                if pending.is_empty() {
                    continue;
                }
                let written = async {
                    let client = pool.get().await.ok()?;
                    events::append(&client, run_id, &owner, next_seq, &pending).await.ok()
                };
                match written.await {
                    Some(written) if written.len() == pending.len() => {
                        next_seq += i64::try_from(written.len()).unwrap_or(0);
                        pending.clear();
                        broker.publish_events(&written).await;
                    }
                    // The lease is gone: the run is someone else's now; the outcome will not
                    // be recorded either.
                    Some(_) => pending.clear(),
                    // The database is unreachable: keep them for the next try.
                    None => {}
                }
            }
        }
    }
    Pending {
        next_seq: Some(next_seq),
        events: pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_passes_its_caps_and_stays_spent() {
        let budget = Budget::new(Caps {
            max_bytes: 10,
            max_events: 2,
        });
        assert!(budget.take(EventKind::Delta, 4));
        assert!(budget.take(EventKind::ToolCall, 4));
        assert!(!budget.take(EventKind::Delta, 3), "14 bytes > 10");
        assert!(budget.spent.is_cancelled());
        assert!(!budget.take(EventKind::Delta, 0), "spent stays spent");
        let events = Budget::new(Caps {
            max_bytes: 1 << 20,
            max_events: 2,
        });
        assert!(events.take(EventKind::Status, 1));
        assert!(events.take(EventKind::ToolCall, 1));
        assert!(
            events.take(EventKind::Delta, 1),
            "text deltas are not counted as events"
        );
        assert!(!events.take(EventKind::ToolResult, 1));
    }

    #[test]
    fn consecutive_deltas_merge_and_other_events_keep_their_place() {
        let mut pending = Vec::new();
        let delta = |t: &str| NewEvent {
            kind: EventKind::Delta,
            data: json!({ "text": t }),
        };
        push(&mut pending, delta("Hel"));
        push(&mut pending, delta("lo"));
        push(
            &mut pending,
            NewEvent {
                kind: EventKind::ToolCall,
                data: json!({"name": "t"}),
            },
        );
        push(&mut pending, delta(" world"));
        assert_eq!(pending.len(), 3);
        assert_eq!(pending[0].data["text"], "Hello");
        assert_eq!(pending[1].kind, EventKind::ToolCall);
        assert_eq!(pending[2].data["text"], " world");
    }
}
