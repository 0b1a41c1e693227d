//! Following the `control` fanout exchange: every catalog change empties this replica's key
//! and trigger caches (which are used only while the subscription is live), and a revoked key's
//! (or deleted tenant's) open streams end.

use std::sync::Arc;

use switchyard_common::amqp::{Broker, ControlEvent};
use switchyard_common::control::Control;
use tokio_util::sync::CancellationToken;

use crate::auth::keys::KeyCache;

/// Follows the control exchange until `shutdown`, switching `caches` on and off with the
/// subscription and emptying them on every message; a revoked key's (or deleted tenant's) open
/// streams and waits end.
pub async fn follow_control(
    broker: Broker,
    shutdown: CancellationToken,
    keys: Arc<KeyCache>,
    triggers: Arc<crate::verbs::trigger::TriggerCache>,
    streams: Arc<crate::streams::Streams>,
) {
    broker
        .subscribe_control(shutdown, |event| match event {
            ControlEvent::Subscribed => {
                keys.set_live(true);
                triggers.set_live(true);
            }
            ControlEvent::Lost => {
                keys.set_live(false);
                triggers.set_live(false);
            }
            // A cancel is for workers; every other message is a catalog change (one this
            // version cannot read too).
            ControlEvent::Message(body) => match Control::decode(body) {
                Some(Control::RunCancel { .. }) => {}
                message => {
                    keys.invalidate();
                    triggers.invalidate();
                    // A revoked key's streams and waits end here too.
                    if let Some(message) = message {
                        crate::streams::apply_control(&streams, &message);
                    }
                }
            },
        })
        .await;
}
