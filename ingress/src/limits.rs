//! Rate limits with governor (GCRA), per API key, per tenant and per trigger, each counted in
//! this process's memory. A quota of N per minute refills at N per minute and admits a small
//! burst: a sixth of N at once (at least 1; 5 for the default 30). Across R ingress replicas behind a balancer each replica counts on its own, so the
//! effective limit is up to R × N; set the configured values to the global limit divided by R.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use switchyard_common::problem::ErrorCode;

use crate::verbs::error::VerbError as ApiError;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Most limiters of one kind kept; past it they start over (a reset is generous, not unsafe).
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

    fn limiter(&self, key: &K, per_minute: u32) -> Arc<Limiter> {
        let Ok(mut limiters) = self.limiters.lock() else {
            return Arc::new(build(per_minute));
        };
        if let Some((quota, limiter)) = limiters.get(key)
            && *quota == per_minute
        {
            return limiter.clone();
        }
        if limiters.len() >= CAPACITY {
            limiters.clear();
        }
        let limiter = Arc::new(build(per_minute));
        limiters.insert(key.clone(), (per_minute, limiter.clone()));
        limiter
    }
}

/// How many calls a quota of `per_minute` admits at once.
pub fn burst(per_minute: u32) -> u32 {
    per_minute.div_ceil(6).max(1)
}

fn build(per_minute: u32) -> Limiter {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let b = NonZeroU32::new(burst(per_minute)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_minute(n).allow_burst(b))
        .with_middleware::<StateInformationMiddleware>()
}

/// Seconds for one call's worth of refill.
fn per_call(per_minute: u32) -> f64 {
    60.0 / f64::from(per_minute.max(1))
}

/// Where a request stands against the limit that concerns its caller (the key's).
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    limit: u32,
    remaining: u32,
    reset: Duration,
}

impl Standing {
    fn of(per_minute: u32, snapshot: &StateSnapshot) -> Self {
        let remaining = snapshot.remaining_burst_capacity();
        let per_request = 60.0 / f64::from(per_minute.max(1));
        Self {
            limit: per_minute,
            remaining,
            reset: Duration::from_secs_f64(
                per_request * f64::from(per_minute.saturating_sub(remaining)),
            ),
        }
    }

    /// The rate-limit headers' names and values: `x-ratelimit-limit` (per minute),
    /// `-remaining` (calls that may come at once now) and `-reset` (seconds until the whole
    /// burst is available again).
    pub fn headers(&self) -> [(&'static str, u64); 3] {
        [
            ("x-ratelimit-limit", u64::from(self.limit)),
            ("x-ratelimit-remaining", u64::from(self.remaining)),
            ("x-ratelimit-reset", self.reset.as_secs_f64().ceil() as u64),
        ]
    }
}

/// Every limiter of this process.
pub struct RateLimits {
    per_key_default: u32,
    refusals_per_minute: u32,
    keys: Family<uuid::Uuid>,
    tenants: Family<String>,
    triggers: Family<(String, String)>,
    /// Refused inbound webhooks, per trigger.
    refusals: Family<(String, String)>,
    clock: DefaultClock,
}

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy)]
enum Scope {
    Key,
    Tenant,
    Trigger,
}

impl RateLimits {
    /// Limits with `per_key_default` calls a minute for keys that set none, and
    /// `refusals_per_minute` refused inbound webhooks a minute per trigger.
    pub fn new(per_key_default: u32, refusals_per_minute: u32) -> Self {
        Self {
            per_key_default: per_key_default.max(1),
            refusals_per_minute: refusals_per_minute.max(1),
            keys: Family::new(),
            tenants: Family::new(),
            triggers: Family::new(),
            refusals: Family::new(),
            clock: DefaultClock::default(),
        }
    }

    fn check(
        &self,
        limiter: &Limiter,
        per_minute: u32,
        scope: Scope,
    ) -> Result<StateSnapshot, ApiError> {
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            // Until the whole burst is back: this wait, then one refill per further call.
            let reset = wait.as_secs_f64()
                + per_call(per_minute) * f64::from(burst(per_minute).saturating_sub(1));
            let what = match scope {
                Scope::Key => "this API key",
                Scope::Tenant => "this tenant",
                Scope::Trigger => "this trigger",
            };
            ApiError::new(
                ErrorCode::TooManyRequests,
                format!("{what} may make {per_minute} invocations a minute; retry in {secs}s"),
            )
            .with_rate_limit(per_minute, secs, reset.ceil() as u64)
        })
    }

    /// Counts one invocation against the key, its tenant and (when given) the trigger. Returns
    /// the key's standing for the response headers, or 429 with `Retry-After`.
    pub fn admit(
        &self,
        key: &switchyard_common::catalog::api_keys::ApiKey,
        trigger: Option<(&str, u32)>,
    ) -> Result<Standing, ApiError> {
        let per_key = key
            .rate_limit_per_minute
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(self.per_key_default);
        let snapshot = self.check(&self.keys.limiter(&key.id, per_key), per_key, Scope::Key)?;
        if let Some(per_tenant) = key
            .tenant_rate_limit_per_minute
            .and_then(|n| u32::try_from(n).ok())
        {
            let limiter = self.tenants.limiter(&key.tenant_id, per_tenant);
            self.check(&limiter, per_tenant, Scope::Tenant)?;
        }
        if let Some((trigger_id, per_trigger)) = trigger {
            let limiter = self
                .triggers
                .limiter(&(key.tenant_id.clone(), trigger_id.to_owned()), per_trigger);
            self.check(&limiter, per_trigger, Scope::Trigger)?;
        }
        Ok(Standing::of(per_key, &snapshot))
    }

    /// Counts one call that carries no API key (the admin token testing a trigger) against the
    /// tenant's limit and the trigger's own, when they have them.
    pub fn admit_unkeyed(
        &self,
        tenant_id: &str,
        per_tenant: Option<i32>,
        trigger: Option<(&str, u32)>,
    ) -> Result<(), ApiError> {
        if let Some(per_tenant) = per_tenant.and_then(|n| u32::try_from(n).ok()) {
            let limiter = self.tenants.limiter(&tenant_id.to_owned(), per_tenant);
            self.check(&limiter, per_tenant, Scope::Tenant)?;
        }
        if let Some((trigger_id, per_trigger)) = trigger {
            let limiter = self
                .triggers
                .limiter(&(tenant_id.to_owned(), trigger_id.to_owned()), per_trigger);
            self.check(&limiter, per_trigger, Scope::Trigger)?;
        }
        Ok(())
    }
}

impl RateLimits {
    /// Counts one refused (unauthenticated) inbound webhook against its trigger's refusal budget,
    /// `SWITCHYARD_HOOK_REFUSALS_PER_MINUTE`: past it the caller gets 429 and nothing is recorded.
    pub fn admit_refusal(&self, tenant_id: &str, trigger_id: &str) -> Result<(), ApiError> {
        let per_minute = self.refusals_per_minute;
        let limiter = self
            .refusals
            .limiter(&(tenant_id.to_owned(), trigger_id.to_owned()), per_minute);
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

    /// Counts one call against a trigger's own limit, when it has one (inbound webhooks carry no
    /// API key to count against).
    pub fn admit_trigger(
        &self,
        tenant_id: &str,
        trigger_id: &str,
        per_minute: Option<i32>,
    ) -> Result<(), ApiError> {
        let Some(per_trigger) = per_minute.and_then(|n| u32::try_from(n).ok()) else {
            return Ok(());
        };
        let limiter = self
            .triggers
            .limiter(&(tenant_id.to_owned(), trigger_id.to_owned()), per_trigger);
        self.check(&limiter, per_trigger, Scope::Trigger)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_admits_its_burst_then_refuses_with_a_wait() {
        let limits = RateLimits::new(3, 60);
        let family: Family<u8> = Family::new();
        let limiter = family.limiter(&1, 3);
        assert_eq!(burst(3), 1);
        assert_eq!(burst(30), 5);
        assert!(limits.check(&limiter, 3, Scope::Key).is_ok());
        let refused = limits.check(&limiter, 3, Scope::Key);
        assert!(refused.is_err());
        // A changed quota gets a fresh limiter.
        let bigger = family.limiter(&1, 10);
        assert!(limits.check(&bigger, 10, Scope::Key).is_ok());
    }
}
