//! The delivery state machine: `pending → sending → delivered | pending (retry) | failed`.
//! Like [`crate::runs`], each transition is one guarded UPDATE, so a duplicate message can never
//! send a delivery twice at once, nor revive a finished one. One concern a file:
//!
//! - `create`: the deliveries an event calls for (a run's end, recorded by the lifecycle module; an
//!   invocation dropped; an endpoint disabled), fanned out to the tenant's endpoints in one
//!   INSERT.
//! - `send`: the notifier's claim (within each endpoint's limits, else parked or deferred) and
//!   the record of each attempt with the endpoint's health; the sweeper of stalled deliveries.
//! - `operator`: the operator's view: list, inspect, redeliver, recover.

mod create;
mod operator;
mod send;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::Run;

pub use create::{Event, create_for_run, create_for_runs, fan_out};
pub use operator::{
    Delivery, DeliveryDetail, Filter, RecordedAttempt, get, list, recover, redeliver,
};
pub use send::{
    Attempt, Claim, DEFAULT_DISABLE_AFTER, Finished, Next, Outgoing, PARK_TIMEOUT, claim,
    claim_many, finish, finish_many, sweep_stalled,
};

/// The `{type, timestamp, data}` body of a webhook.
pub fn envelope(event_type: &str, data: serde_json::Value) -> serde_json::Value {
    let timestamp = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    serde_json::json!({ "type": event_type, "timestamp": timestamp, "data": data })
}

/// The body a webhook carries for a run: the run as the API shows it, with its artifacts'
/// metadata only (name, media type, size) and the id of the invocation that started it, and
/// never its `webhookUrl`.
pub fn payload(event_type: &str, run: &Run) -> serde_json::Value {
    let mut data = serde_json::to_value(run).unwrap_or_default();
    data["artifacts"] = run
        .artifacts
        .iter()
        .map(|a| {
            let mut meta = serde_json::Map::new();
            for field in ["name", "mediaType", "size"] {
                if let Some(value) = a.get(field) {
                    meta.insert(field.into(), value.clone());
                }
            }
            serde_json::Value::Object(meta)
        })
        .collect();
    // A run's own delivery URL often carries a secret (a Slack hook, `?token=`): a receiver
    // never needs it, and an endpoint receiver must not see it.
    if let Some(data) = data.as_object_mut() {
        data.remove("webhookUrl");
    }
    // An accepted trigger invocation is its run: the two share the id.
    data["invocationId"] = match run.trigger_id {
        Some(_) => serde_json::json!(run.id),
        None => serde_json::Value::Null,
    };
    envelope(event_type, data)
}
