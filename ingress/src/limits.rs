//! Rate limits per API key, per tenant and per trigger, shared by every ingress replica.
//!
//! A limit of N a minute admits a burst of N and refills at N a minute (GCRA). Each replica first
//! asks its own governor limiter, in memory: a replica never admits more than the limit by itself,
//! so a flood is refused there without touching the database. What that pre-check lets through
//! then takes its call from the shared bucket in PostgreSQL (`switchyard_take_many`, one statement
//! on an UNLOGGED table, shared by the calls that arrive together), whose answer holds whatever the
//! number of replicas. A call that no limit concerns costs nothing here.
//!
//! Refused unauthenticated webhooks (`admit_refusal`) stay a per-replica budget: it protects each
//! process's own work, not a tenant's allowance.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use switchyard_common::batch::Batcher;
use switchyard_common::catalog::api_keys::ApiKey;
use switchyard_common::db;
use switchyard_common::problem::ErrorCode;

use crate::verbs::error::VerbError as ApiError;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Most limiters of one kind kept; past it they start over (a reset is generous, not unsafe:
/// the shared bucket still decides).
const CAPACITY: usize = 100_000;

/// One family of limiters, each rebuilt when its quota changes.
struct Family<K> {
    limiters: Mutex<HashMap<K, (u32, Arc<Limiter>)>>,
}

impl<K: Hash + Eq + Clone> Family<K> {
    fn new() -> Self {
        Self {
            limiters: Mutex::new(HashMap::new()),
        }
    }

    fn limiter(&self, key: &K, per_minute: u32, burst: u32) -> Arc<Limiter> {
        let Ok(mut limiters) = self.limiters.lock() else {
            return Arc::new(build(per_minute, burst));
        };
        if let Some((quota, limiter)) = limiters.get(key)
            && *quota == per_minute
        {
            return limiter.clone();
        }
        if limiters.len() >= CAPACITY {
            limiters.clear();
        }
        let limiter = Arc::new(build(per_minute, burst));
        limiters.insert(key.clone(), (per_minute, limiter.clone()));
        limiter
    }
}

fn build(per_minute: u32, burst: u32) -> Limiter {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let b = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_minute(n).allow_burst(b))
}

/// Where a request stands against the limit that concerns its caller (the key's), when one does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standing {
    /// (per minute, calls admitted at once now, until the whole burst is back).
    limit: Option<(u32, u32, Duration)>,
}

impl Standing {
    /// The rate-limit headers' names and values: `x-ratelimit-limit` (per minute),
    /// `-remaining` (calls that may come at once now) and `-reset` (seconds until the whole
    /// burst is available again). None when no limit concerns the key.
    pub fn headers(&self) -> Vec<(&'static str, u64)> {
        let Some((limit, remaining, reset)) = self.limit else {
            return Vec::new();
        };
        vec![
            ("x-ratelimit-limit", u64::from(limit)),
            ("x-ratelimit-remaining", u64::from(remaining)),
            ("x-ratelimit-reset", reset.as_secs_f64().ceil() as u64),
        ]
    }
}

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Key,
    Tenant,
    Trigger,
}

/// One limit a call counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bucket {
    scope: Scope,
    /// The shared bucket's name: `k:<key id>`, `t:<tenant>`, `g:<tenant>/<trigger>`.
    name: String,
    per_minute: u32,
}

impl Bucket {
    fn key(key: &ApiKey, per_minute: u32) -> Self {
        Self {
            scope: Scope::Key,
            name: format!("k:{}", key.id),
            per_minute,
        }
    }

    fn tenant(tenant_id: &str, per_minute: u32) -> Self {
        Self {
            scope: Scope::Tenant,
            name: format!("t:{tenant_id}"),
            per_minute,
        }
    }

    fn trigger(tenant_id: &str, trigger_id: &str, per_minute: u32) -> Self {
        Self {
            scope: Scope::Trigger,
            name: format!("g:{tenant_id}/{trigger_id}"),
            per_minute,
        }
    }

    /// 429 for a call refused by this limit, retriable in `wait`.
    fn refusal(&self, wait: Duration) -> ApiError {
        let per_minute = self.per_minute;
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        // Until the whole burst is back: this wait, then one refill per further call.
        let reset = wait.as_secs_f64()
            + 60.0 * f64::from(per_minute.saturating_sub(1)) / f64::from(per_minute.max(1));
        let what = match self.scope {
            Scope::Key => "this API key",
            Scope::Tenant => "this tenant",
            Scope::Trigger => "this trigger",
        };
        let refused = ApiError::new(
            ErrorCode::TooManyRequests,
            format!("{what} may make {per_minute} invocations a minute; retry in {secs}s"),
        )
        .with_rate_limit(per_minute, secs, reset.ceil() as u64);
        if self.scope == Scope::Tenant {
            refused.with_quota("rateLimitPerMinute", i64::from(per_minute))
        } else {
            refused
        }
    }
}

fn positive(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0)
}

/// One call's take from the shared buckets: (bucket name, limit per minute) each, in order.
type Take = Vec<(String, i32)>;

/// The shared buckets' answer to one call: the 1-based index of the bucket that refused it (0:
/// admitted), the wait until it has room, and the first bucket's remaining calls and reset.
#[derive(Debug, Clone, Copy)]
struct Taken {
    refused: i32,
    wait_ms: i64,
    remaining: i32,
    reset_ms: i64,
}

/// Why a batch of takes got no answer.
#[derive(Debug, Clone)]
enum TakeFailure {
    Unavailable,
    Internal(String),
}

/// Most calls one take statement serves; how many such statements run at once.
const TAKE_BATCH: usize = 128;
const TAKES_IN_FLIGHT: usize = 4;

/// Every limiter of this process, and the way to the shared buckets.
pub struct RateLimits {
    shared: Batcher<Take, Result<Taken, TakeFailure>>,
    agent_app_per_key: u32,
    refusals_per_minute: u32,
    local: Family<Bucket>,
    /// Refused inbound webhooks, per trigger.
    refusals: Family<(String, String)>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Limits over `pool`'s shared buckets, with `agent_app_per_key` calls a minute for keys that
    /// set none on the agent-app door, and `refusals_per_minute` refused inbound webhooks a
    /// minute per trigger (per replica).
    pub fn new(pool: Pool, agent_app_per_key: u32, refusals_per_minute: u32) -> Self {
        let shared = Batcher::start(TAKE_BATCH, TAKES_IN_FLIGHT, move |takes: Vec<Take>| {
            let pool = pool.clone();
            async move {
                let answers = take_many(&pool, &takes).await;
                match answers {
                    Ok(rows) if rows.len() == takes.len() => rows.into_iter().map(Ok).collect(),
                    Ok(rows) => {
                        let cause = format!("{} answers to {} takes", rows.len(), takes.len());
                        takes
                            .iter()
                            .map(|_| Err(TakeFailure::Internal(cause.clone())))
                            .collect()
                    }
                    Err(failure) => takes.iter().map(|_| Err(failure.clone())).collect(),
                }
            }
        });
        Self {
            shared,
            agent_app_per_key: agent_app_per_key.max(1),
            refusals_per_minute: refusals_per_minute.max(1),
            local: Family::new(),
            refusals: Family::new(),
            clock: DefaultClock::default(),
        }
    }

    /// The per-key limit of the agent-app door for keys that set none.
    pub fn agent_app_default(&self) -> u32 {
        self.agent_app_per_key
    }

    /// Counts one call against every bucket, all or none: this replica's limiter first, then the
    /// shared bucket. The first bucket's standing comes back when it is the key's.
    async fn take(&self, buckets: &[Bucket]) -> Result<Standing, ApiError> {
        if buckets.is_empty() {
            return Ok(Standing::default());
        }
        for bucket in buckets {
            let limiter = self
                .local
                .limiter(bucket, bucket.per_minute, bucket.per_minute);
            if let Err(not_until) = limiter.check() {
                return Err(bucket.refusal(not_until.wait_time_from(self.clock.now())));
            }
        }
        let take: Take = buckets
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    i32::try_from(b.per_minute).unwrap_or(i32::MAX),
                )
            })
            .collect();
        let taken = match self.shared.submit(take).await {
            Ok(Ok(taken)) => taken,
            Ok(Err(TakeFailure::Unavailable)) => return Err(ApiError::unavailable()),
            Ok(Err(TakeFailure::Internal(cause))) => return Err(ApiError::internal(cause)),
            Err(gone) => return Err(ApiError::internal(gone)),
        };
        if let Some(bucket) = usize::try_from(taken.refused)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| buckets.get(i))
        {
            return Err(bucket.refusal(Duration::from_millis(taken.wait_ms.max(0) as u64)));
        }
        let first = &buckets[0];
        if first.scope != Scope::Key {
            return Ok(Standing::default());
        }
        let (remaining, reset) = (taken.remaining, taken.reset_ms);
        Ok(Standing {
            limit: Some((
                first.per_minute,
                u32::try_from(remaining).unwrap_or(0),
                Duration::from_millis(reset.max(0) as u64),
            )),
        })
    }

    /// Counts one invocation by `key` against its own limit (its `rateLimitPerMinute`, else
    /// `door_default`), its tenant's ceiling and (when given) the trigger's limit. Returns the
    /// key's standing for the response headers, or 429 with `Retry-After`.
    pub async fn admit(
        &self,
        key: &ApiKey,
        door_default: Option<u32>,
        trigger: Option<(&str, u32)>,
    ) -> Result<Standing, ApiError> {
        let mut buckets = Vec::with_capacity(3);
        if let Some(per_key) = positive(key.rate_limit_per_minute).or(door_default) {
            buckets.push(Bucket::key(key, per_key));
        }
        if let Some(per_tenant) = positive(key.tenant_rate_limit_per_minute) {
            buckets.push(Bucket::tenant(&key.tenant_id, per_tenant));
        }
        if let Some((trigger_id, per_trigger)) = trigger {
            buckets.push(Bucket::trigger(&key.tenant_id, trigger_id, per_trigger));
        }
        self.take(&buckets).await
    }

    /// Counts one call that carries no API key (an inbound webhook, or the admin token testing a
    /// trigger) against the tenant's ceiling and the trigger's own limit, when they have them.
    pub async fn admit_unkeyed(
        &self,
        tenant_id: &str,
        per_tenant: Option<i32>,
        trigger: Option<(&str, u32)>,
    ) -> Result<(), ApiError> {
        let mut buckets = Vec::with_capacity(2);
        if let Some(per_tenant) = positive(per_tenant) {
            buckets.push(Bucket::tenant(tenant_id, per_tenant));
        }
        if let Some((trigger_id, per_trigger)) = trigger {
            buckets.push(Bucket::trigger(tenant_id, trigger_id, per_trigger));
        }
        self.take(&buckets).await.map(|_| ())
    }

    /// Counts one refused (unauthenticated) inbound webhook against its trigger's refusal budget,
    /// `SWITCHYARD_HOOK_REFUSALS_PER_MINUTE` in each replica: past it the caller gets 429 and
    /// nothing is recorded.
    pub fn admit_refusal(&self, tenant_id: &str, trigger_id: &str) -> Result<(), ApiError> {
        let per_minute = self.refusals_per_minute;
        let limiter = self.refusals.limiter(
            &(tenant_id.to_owned(), trigger_id.to_owned()),
            per_minute,
            per_minute.div_ceil(6),
        );
        limiter.check().map(|_| ()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "this trigger has refused {per_minute} unauthenticated webhooks a minute; \
                     retry in {secs}s"
                ),
            )
            .with_rate_limit(per_minute, secs, secs)
        })
    }
}

/// The takes of concurrent calls in one statement (`switchyard_take_many`), one answer per call in
/// order.
async fn take_many(pool: &Pool, takes: &[Take]) -> Result<Vec<Taken>, TakeFailure> {
    let mut request = Vec::new();
    let mut names = Vec::new();
    let mut rates = Vec::new();
    for (i, take) in takes.iter().enumerate() {
        for (name, per_minute) in take {
            request.push(i32::try_from(i + 1).unwrap_or(i32::MAX));
            names.push(name.as_str());
            rates.push(*per_minute);
        }
    }
    let client = pool.get().await.map_err(|err| {
        if db::is_unavailable(&err) {
            TakeFailure::Unavailable
        } else {
            TakeFailure::Internal(err.to_string())
        }
    })?;
    let failed = |err: tokio_postgres::Error| {
        if db::pg_unavailable(&err) {
            TakeFailure::Unavailable
        } else {
            TakeFailure::Internal(format!("{err:#}"))
        }
    };
    let statement = client
        .prepare_cached(
            "SELECT req, refused, wait_ms, remaining, reset_ms \
             FROM switchyard_take_many($1::integer[], $2::text[], $3::integer[])",
        )
        .await
        .map_err(failed)?;
    let rows = client
        .query(&statement, &[&request, &names, &rates])
        .await
        .map_err(failed)?;
    // Every take names at least one bucket, so each has its row, in request order.
    rows.iter()
        .map(|row| {
            Ok(Taken {
                refused: row.try_get(1)?,
                wait_ms: row.try_get(2)?,
                remaining: row.try_get(3)?,
                reset_ms: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(failed)
}

/// Deletes shared buckets that have been full for a minute: such a bucket admits what a missing
/// one would. Also the concurrency keys' next turns that the line has passed, which place a
/// key's next runs as a missing row would (tenants name keys, so the rows would otherwise pile up).
pub async fn purge_full(client: &deadpool_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    let buckets = client
        .execute(
            "DELETE FROM rate_buckets WHERE tat < now() - interval '1 minute'",
            &[],
        )
        .await?;
    let keys = client
        .execute(
            "DELETE FROM key_turns WHERE finish < switchyard_now_turn()",
            &[],
        )
        .await?;
    Ok(buckets + keys)
}
