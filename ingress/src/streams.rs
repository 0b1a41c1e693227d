//! The long answers this replica holds open (event streams and waits), counted per API key and
//! per tenant, and ended when their key is revoked.
//!
//! Each open stream or wait holds a [`Permit`]. Opening one past `SWITCHYARD_MAX_STREAMS_PER_KEY`
//! or `SWITCHYARD_MAX_STREAMS_PER_TENANT` (on this replica) is a 429, so one key or tenant cannot
//! take every connection and task a replica has. A permit's [`Permit::revoked`] resolves when
//! the control message that empties the key caches says its key was revoked (or its tenant
//! deleted): the stream or wait ends at once instead of running on until its run ends. A revoked
//! key is remembered, so a request that resolved it from a cache just before cannot open a new
//! permit afterwards; and [`Streams::check_revoked`] asks PostgreSQL every few seconds about
//! the keys holding permits, for a control message that never arrived. How many are open is the
//! gauge `switchyard_open_streams`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use switchyard_common::control::Control;
use switchyard_common::problem::ErrorCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::verbs::error::VerbError as ApiError;

/// How long a revoked key (or deleted tenant) is remembered: longer than any cache holds it.
const REMEMBER_REVOKED: Duration = Duration::from_secs(600);
/// How often the keys holding permits are checked against PostgreSQL.
const CHECK_EVERY: Duration = Duration::from_secs(2);

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
    /// Cancelled when the key (or tenant) is revoked.
    revoked: CancellationToken,
}

#[derive(Default)]
struct State {
    keys: HashMap<Uuid, Count>,
    tenants: HashMap<String, Count>,
    /// Keys revoked and tenants deleted lately, with when: no permit is opened for them.
    revoked_keys: HashMap<Uuid, Instant>,
    deleted_tenants: HashMap<String, Instant>,
    /// Every permit open (`switchyard_open_streams`).
    open: usize,
}

impl State {
    fn observe(&self) {
        metrics::gauge!(switchyard_common::metrics::OPEN_STREAMS).set(self.open as f64);
    }

    fn forget_old(&mut self) {
        let now = Instant::now();
        self.revoked_keys
            .retain(|_, at| now.duration_since(*at) < REMEMBER_REVOKED);
        self.deleted_tenants
            .retain(|_, at| now.duration_since(*at) < REMEMBER_REVOKED);
    }
}

/// The open streams and waits of this replica.
pub struct Streams {
    per_key: usize,
    per_tenant: usize,
    state: Mutex<State>,
    /// Cancelled when the replica shuts down: streams end so that clients resume elsewhere.
    closing: CancellationToken,
}

/// One open stream or wait. Dropping it gives its place back.
pub struct Permit {
    streams: Arc<Streams>,
    holder: Holder,
    tenant_id: String,
    revoked: CancellationToken,
}

impl Permit {
    /// Resolves when the permit's key is revoked, its tenant deleted, or the replica closing
    /// (tell them apart with [`Streams::is_closing`]).
    pub async fn revoked(&self) {
        self.revoked.cancelled().await;
    }

    /// A token cancelled with the permit's key (for a task that outlives the handler).
    pub fn revocation(&self) -> CancellationToken {
        self.revoked.clone()
    }

    /// Whether the permit ended because the replica is shutting down, not a revocation.
    pub fn closing(&self) -> bool {
        self.streams.closing.is_cancelled()
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
            closing: CancellationToken::new(),
        })
    }

    /// A permit for one more stream or wait of API key `key` (`None`: a caller with no key) in
    /// `tenant_id`, or 429 (401 for a key revoked since the request resolved it).
    pub fn open(self: &Arc<Self>, key: Option<Uuid>, tenant_id: &str) -> Result<Permit, ApiError> {
        let holder = match key {
            Some(id) => Holder::Key(id),
            None => Holder::Unkeyed,
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = match &holder {
            Holder::Key(id) => state.revoked_keys.contains_key(id),
            Holder::Unkeyed => false,
        } || state.deleted_tenants.contains_key(tenant_id);
        if revoked {
            return Err(ApiError::unauthorized(
                "the API key is not valid or was revoked",
            ));
        }
        if self.closing.is_cancelled() {
            return Err(ApiError::unavailable_because(
                "this ingress replica is shutting down; retry",
            ));
        }
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
        let closing = self.closing.clone();
        let tenant = state.tenants.entry(tenant_id.to_owned()).or_default();
        tenant.open += 1;
        // Any of three ends the permit: a child of the tenant's token, cancelled by the key's
        // and by the replica's closing too.
        let revoked = tenant.revoked.child_token();
        state.open += 1;
        state.observe();
        let linked = revoked.clone();
        tokio::spawn(async move {
            let key_revoked = async {
                match key_token {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = key_revoked => linked.cancel(),
                () = closing.cancelled() => linked.cancel(),
                () = linked.cancelled() => {}
            }
        });
        Ok(Permit {
            streams: Arc::clone(self),
            holder,
            tenant_id: tenant_id.to_owned(),
            revoked,
        })
    }

    /// Ends every stream and wait of key `key_id` on this replica, and refuses it new ones.
    pub fn revoke_key(&self, key_id: Uuid) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.forget_old();
        state.revoked_keys.insert(key_id, Instant::now());
        if let Some(count) = state.keys.get(&key_id) {
            count.revoked.cancel();
        }
    }

    /// Ends every stream and wait of tenant `tenant_id` on this replica, and refuses it new ones.
    pub fn revoke_tenant(&self, tenant_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.forget_old();
        state
            .deleted_tenants
            .insert(tenant_id.to_owned(), Instant::now());
        if let Some(count) = state.tenants.get(tenant_id) {
            count.revoked.cancel();
        }
    }

    /// Ends every stream and wait: the replica is shutting down, and clients resume on another.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Whether [`Streams::close_all`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// How many streams and waits are open here.
    pub fn open_count(&self) -> usize {
        self.state.lock().map_or(0, |s| s.open)
    }

    /// Until `shutdown`, every [`CHECK_EVERY`] asks PostgreSQL which of the keys holding permits
    /// are revoked or gone, and ends their streams: the fallback for a revocation whose control
    /// message this replica never heard (its subscription was down, or the broker lost it).
    pub async fn check_revoked(self: Arc<Self>, pool: Pool, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let held: Vec<Uuid> = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.keys.keys().copied().collect()
            };
            if held.is_empty() {
                continue;
            }
            let gone = async {
                let client = pool.get().await.ok()?;
                let rows = client
                    .query(
                        "SELECT k FROM unnest($1::uuid[]) AS k WHERE NOT EXISTS \
                         (SELECT 1 FROM api_keys a WHERE a.id = k AND a.revoked_at IS NULL)",
                        &[&held],
                    )
                    .await
                    .ok()?;
                Some(rows.iter().map(|r| r.get::<_, Uuid>(0)).collect::<Vec<_>>())
            };
            for key in gone.await.unwrap_or_default() {
                tracing::info!(key_id = %key, "a revoked key held streams; ending them");
                self.revoke_key(key);
            }
        }
    }
}

fn too_many(detail: String) -> ApiError {
    ApiError::new(ErrorCode::TooManyRequests, detail).with_retry_after(1)
}

/// What a control message asks of the open streams, if anything: its key revoked, or its
/// tenant deleted.
pub fn apply_control(streams: &Streams, message: &Control) {
    match message {
        Control::ApiKeyRevoked { key_id, .. } => streams.revoke_key(*key_id),
        Control::TenantDeleted { tenant_id } => streams.revoke_tenant(tenant_id),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(_tenant: &str) -> Option<Uuid> {
        Some(Uuid::now_v7())
    }

    fn id(key: &Option<Uuid>) -> Uuid {
        key.unwrap_or_default()
    }

    #[tokio::test]
    async fn permits_are_capped_per_key_and_tenant_and_given_back() {
        let streams = Streams::new(2, 3);
        let (a, b) = (key("t"), key("t"));
        let a1 = streams.open(a, "t").expect("first");
        let _a2 = streams.open(a, "t").expect("second");
        assert!(streams.open(a, "t").is_err(), "third of one key");
        let _b1 = streams.open(b, "t").expect("another key");
        assert!(streams.open(b, "t").is_err(), "fourth of one tenant");
        assert!(
            streams.open(None, "other").is_ok(),
            "other tenants are apart"
        );
        drop(a1);
        assert!(
            streams.open(b, "t").is_ok(),
            "a dropped permit frees its place"
        );
    }

    #[tokio::test]
    async fn revoking_a_key_ends_its_permits_only_and_refuses_it_new_ones() {
        let streams = Streams::new(10, 10);
        let (a, b) = (key("t"), key("t"));
        let pa = streams.open(a, "t").expect("a");
        let pb = streams.open(b, "t").expect("b");
        apply_control(
            &streams,
            &Control::ApiKeyRevoked {
                tenant_id: "t".into(),
                key_id: id(&a),
            },
        );
        tokio::time::timeout(Duration::from_secs(1), pa.revoked())
            .await
            .expect("a's permit ends");
        assert!(!pb.revocation().is_cancelled());
        // A request that resolved the key from a cache just before cannot open one after.
        assert_eq!(
            streams.open(a, "t").err().map(|e| e.code()),
            Some(ErrorCode::Unauthorized)
        );
        apply_control(
            &streams,
            &Control::TenantDeleted {
                tenant_id: "t".into(),
            },
        );
        tokio::time::timeout(Duration::from_secs(1), pb.revoked())
            .await
            .expect("the tenant's permits end");
        assert!(streams.open(None, "t").is_err());
    }

    #[tokio::test]
    async fn closing_ends_every_permit() {
        let streams = Streams::new(10, 10);
        let p = streams.open(key("t"), "t").expect("open");
        streams.close_all();
        tokio::time::timeout(Duration::from_secs(1), p.revoked())
            .await
            .expect("ended");
        assert!(p.closing());
        assert!(streams.open(None, "t").is_err());
    }
}
