//! The messages of the `control` fanout exchange, which reaches every process: one enum, one
//! encoding (JSON with a `type`). A run's cancel is for the worker that holds it; every other
//! message says the catalog changed, and each ingress replica empties its caches on it (and ends
//! the streams of a revoked key or a deleted tenant).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Control {
    /// Stop this run: the worker holding it ends it `cancelled`.
    #[serde(rename = "run.cancel", rename_all = "camelCase")]
    RunCancel { run_id: Uuid },
    /// An API key was revoked: no cache may hold it, and its streams end.
    #[serde(rename = "api_key.revoked", rename_all = "camelCase")]
    ApiKeyRevoked { tenant_id: String, key_id: Uuid },
    /// A tenant and everything it owned were deleted.
    #[serde(rename = "tenant.deleted", rename_all = "camelCase")]
    TenantDeleted { tenant_id: String },
    /// A tenant's settings changed (cached keys carry its rate limit).
    #[serde(rename = "tenant.updated")]
    TenantUpdated,
    /// Triggers changed, or went with an agent or project.
    #[serde(rename = "trigger.changed")]
    TriggerChanged,
    /// A message this version does not know: still a change, so caches empty.
    #[serde(other)]
    Other,
}

impl Control {
    /// The message as it goes on the exchange.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A message read off the exchange; `None` for one that is not JSON with a `type`.
    pub fn decode(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// Whether the message is about the catalog (keys, tenants, triggers), so caches empty.
    pub fn changes_catalog(&self) -> bool {
        !matches!(self, Self::RunCancel { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_wire_shape_and_unknown_ones_are_changes() {
        let id = Uuid::nil();
        assert_eq!(
            String::from_utf8(Control::RunCancel { run_id: id }.encode()).expect("utf-8"),
            format!(r#"{{"type":"run.cancel","runId":"{id}"}}"#)
        );
        let revoked = Control::ApiKeyRevoked {
            tenant_id: "t".into(),
            key_id: id,
        };
        assert_eq!(
            String::from_utf8(revoked.encode()).expect("utf-8"),
            format!(r#"{{"type":"api_key.revoked","tenantId":"t","keyId":"{id}"}}"#)
        );
        for message in [
            revoked,
            Control::TenantDeleted {
                tenant_id: "t".into(),
            },
            Control::TenantUpdated,
            Control::TriggerChanged,
            Control::RunCancel { run_id: id },
        ] {
            assert_eq!(Control::decode(&message.encode()), Some(message));
        }
        assert_eq!(
            Control::decode(br#"{"type":"something.new"}"#),
            Some(Control::Other)
        );
        assert!(Control::Other.changes_catalog());
        assert!(!Control::RunCancel { run_id: id }.changes_catalog());
        assert_eq!(Control::decode(b"not json"), None);
    }
}
