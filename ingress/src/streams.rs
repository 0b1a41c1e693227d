//! The long answers this replica holds open (event streams and waits), counted per API key and
//! per tenant, and ended when their key is revoked.
//!
//! Each open stream or wait holds a [`Permit`]. Opening one past `SWITCHYARD_MAX_STREAMS_PER_KEY`
//! or `SWITCHYARD_MAX_STREAMS_PER_TENANT` (on this replica) is a 429, so one key or tenant cannot
//! take every connection and task a replica has. A permit's [`Permit::revoked`] resolves when
//! the control message that empties the key caches says its key was revoked (or its tenant
//! deleted): the stream or wait ends at once instead of running on until its run ends. How many
//! are open is the gauge `switchyard_open_streams`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_common::problem::ErrorCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;

/// Who a permit is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holder {
    /// An API key (or a console session, which acts as its key).
    Key(Uuid),
    /// No key: the admin token, or a trigger's inbound webhook waiting for its run.
    Unkeyed,
}

#[derive(Default)]
struct Count {
    open: usize,
    /// Cancelled when the key (or tenant) is revoked; replaced for permits opened afterwards.
    revoked: CancellationToken,
}

#[derive(Default)]
struct State {
    keys: HashMap<Uuid, Count>,
    tenants: HashMap<String, Count>,
    /// Every permit open (`switchyard_open_streams`).
    open: usize,
}

impl State {
    fn observe(&self) {
        metrics::gauge!(switchyard_common::metrics::OPEN_STREAMS).set(self.open as f64);
    }
}

/// The open streams and waits of this replica.
pub struct Streams {
    per_key: usize,
    per_tenant: usize,
    state: Mutex<State>,
}

/// One open stream or wait. Dropping it gives its place back.
pub struct Permit {
    streams: Arc<Streams>,
    holder: Holder,
    tenant_id: String,
    revoked: CancellationToken,
}

impl Permit {
    /// Resolves when the permit's key is revoked or its tenant deleted.
    pub async fn revoked(&self) {
        self.revoked.cancelled().await;
    }

    /// A token cancelled with the permit's key (for a task that outlives the handler).
    pub fn revocation(&self) -> CancellationToken {
        self.revoked.clone()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Ends the task that links the key's revocation to this permit (the parents are not
        // touched by cancelling a child).
        self.revoked.cancel();
        let mut state = self.streams.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Holder::Key(id) = &self.holder
            && let Some(count) = state.keys.get_mut(id)
        {
            count.open -= 1;
            if count.open == 0 {
                state.keys.remove(id);
            }
        }
        if let Some(count) = state.tenants.get_mut(&self.tenant_id) {
            count.open -= 1;
            if count.open == 0 {
                state.tenants.remove(&self.tenant_id);
            }
        }
        state.open = state.open.saturating_sub(1);
        state.observe();
    }
}

impl Streams {
    /// At most `per_key` open at once per key and `per_tenant` per tenant, on this replica.
    pub fn new(per_key: usize, per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            per_key: per_key.max(1),
            per_tenant: per_tenant.max(1),
            state: Mutex::default(),
        })
    }

    /// A permit for one more stream or wait of `principal` in `tenant_id`, or 429.
    pub fn open(
        self: &Arc<Self>,
        principal: Option<&Principal>,
        tenant_id: &str,
    ) -> Result<Permit, ApiError> {
        let holder = match principal {
            Some(Principal::Key(key)) => Holder::Key(key.id),
            _ => Holder::Unkeyed,
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tenant_open = state.tenants.get(tenant_id).map_or(0, |c| c.open);
        if tenant_open >= self.per_tenant {
            return Err(too_many(format!(
                "this tenant already holds {tenant_open} event streams and waits open here, the \
                 most it may (SWITCHYARD_MAX_STREAMS_PER_TENANT); close one first"
            )));
        }
        let key_token = match &holder {
            Holder::Key(id) => {
                let count = state.keys.entry(*id).or_default();
                if count.open >= self.per_key {
                    let open = count.open;
                    return Err(too_many(format!(
                        "this API key already holds {open} event streams and waits open here, \
                         the most it may (SWITCHYARD_MAX_STREAMS_PER_KEY); close one first"
                    )));
                }
                count.open += 1;
                Some(count.revoked.clone())
            }
            Holder::Unkeyed => None,
        };
        let tenant = state.tenants.entry(tenant_id.to_owned()).or_default();
        tenant.open += 1;
        // Either revocation ends the permit: a child of the tenant's token, cancelled by the
        // key's too.
        let revoked = tenant.revoked.child_token();
        state.open += 1;
        state.observe();
        if let Some(key_token) = key_token {
            let linked = revoked.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = key_token.cancelled() => linked.cancel(),
                    () = linked.cancelled() => {}
                }
            });
        }
        Ok(Permit {
            streams: Arc::clone(self),
            holder,
            tenant_id: tenant_id.to_owned(),
            revoked,
        })
    }

    /// Ends every stream and wait of key `key_id` on this replica.
    pub fn revoke_key(&self, key_id: Uuid) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = state.keys.get_mut(&key_id) {
            std::mem::take(&mut count.revoked).cancel();
        }
    }

    /// Ends every stream and wait of tenant `tenant_id` on this replica.
    pub fn revoke_tenant(&self, tenant_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = state.tenants.get_mut(tenant_id) {
            std::mem::take(&mut count.revoked).cancel();
        }
    }

    /// How many streams and waits are open here.
    pub fn open_count(&self) -> usize {
        self.state.lock().map_or(0, |s| s.open)
    }
}

fn too_many(detail: String) -> ApiError {
    ApiError::new(ErrorCode::TooManyRequests, detail).with_retry_after(1)
}

/// What a control message asks of the open streams, if anything: its key revoked, or its
/// tenant deleted.
pub fn apply_control(streams: &Streams, body: &[u8]) {
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    match message["type"].as_str() {
        Some("api_key.revoked") => {
            if let Some(id) = message["keyId"]
                .as_str()
                .and_then(|k| Uuid::parse_str(k).ok())
            {
                streams.revoke_key(id);
            }
        }
        Some("tenant.deleted") => {
            if let Some(tenant) = message["tenantId"].as_str() {
                streams.revoke_tenant(tenant);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_common::catalog::api_keys::{ApiKey, Scope};

    fn key(tenant: &str) -> Principal {
        Principal::Key(Arc::new(ApiKey {
            id: Uuid::now_v7(),
            tenant_id: tenant.into(),
            name: "k".into(),
            prefix: "sy_".into(),
            scopes: vec![Scope::RunsRead],
            project_ids: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            last_used_at: None,
            revoked_at: None,
            rate_limit_per_minute: None,
            tenant_rate_limit_per_minute: None,
        }))
    }

    #[tokio::test]
    async fn permits_are_capped_per_key_and_tenant_and_given_back() {
        let streams = Streams::new(2, 3);
        let (a, b) = (key("t"), key("t"));
        let a1 = streams.open(Some(&a), "t").expect("first");
        let _a2 = streams.open(Some(&a), "t").expect("second");
        assert!(streams.open(Some(&a), "t").is_err(), "third of one key");
        let _b1 = streams.open(Some(&b), "t").expect("another key");
        assert!(streams.open(Some(&b), "t").is_err(), "fourth of one tenant");
        assert!(
            streams.open(None, "other").is_ok(),
            "other tenants are apart"
        );
        drop(a1);
        assert!(
            streams.open(Some(&b), "t").is_ok(),
            "a dropped permit frees its place"
        );
    }

    #[tokio::test]
    async fn revoking_a_key_ends_its_permits_only() {
        let streams = Streams::new(10, 10);
        let (a, b) = (key("t"), key("t"));
        let pa = streams.open(Some(&a), "t").expect("a");
        let pb = streams.open(Some(&b), "t").expect("b");
        let Principal::Key(ka) = &a else { panic!() };
        apply_control(
            &streams,
            format!(
                r#"{{"type":"api_key.revoked","tenantId":"t","keyId":"{}"}}"#,
                ka.id
            )
            .as_bytes(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), pa.revoked())
            .await
            .expect("a's permit ends");
        assert!(!pb.revocation().is_cancelled());
        apply_control(&streams, br#"{"type":"tenant.deleted","tenantId":"t"}"#);
        tokio::time::timeout(std::time::Duration::from_secs(1), pb.revoked())
            .await
            .expect("the tenant's permits end");
    }
}
