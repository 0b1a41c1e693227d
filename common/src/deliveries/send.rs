//! Sending: the claim of a delivery for one attempt (within its endpoint's concurrency and
//! rate, else parked or deferred), the record of each attempt (with the endpoint's health and the
//! wake-up of a parked delivery), and the sweep of what stalled.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{Event, fan_out};

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: Uuid,
    pub tenant_id: String,
    /// The run the event is about (none for `invocation.dropped` and `endpoint.disabled`).
    pub run_id: Option<Uuid>,
    /// The endpoint's current URL, or the run's own `webhookUrl`.
    pub url: String,
    /// The `webhook-id` header, the same on every attempt.
    pub message_id: String,
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// The endpoint delivered to; none for a run's own `webhookUrl`.
    pub endpoint_id: Option<String>,
    /// The endpoint wants thin bodies.
    pub thin: bool,
    /// The sealed secrets that sign it: the endpoint's (or, for a run's own `webhookUrl`, the
    /// tenant's), the current one, then the previous one while its rotation overlap lasts.
    /// Empty: the deployment's default secret signs.
    pub sealed_secrets: Vec<Vec<u8>>,
    /// The deployment's default secret signs too: the tenant rotated away from it, and the
    /// overlap lasts.
    pub also_default_secret: bool,
}

/// What a claim made of a delivery.
#[derive(Debug, Clone)]
pub enum Claim {
    /// Attempt it now.
    Send(Outgoing),
    /// Its endpoint is at its rate limit, or another claimer holds it: try again after the
    /// wait, without counting an attempt.
    Defer(Uuid, Duration),
    /// Its endpoint has as many attempts in flight as it allows: the delivery is parked, without
    /// a message, until an attempt to the endpoint ends and wakes it ([`Finished::woken`]).
    Parked(Uuid),
}

impl Claim {
    pub fn id(&self) -> Uuid {
        match self {
            Self::Send(out) => out.id,
            Self::Defer(id, _) | Self::Parked(id) => *id,
        }
    }
}

/// The outcome of one attempt, as recorded in `delivery_attempts`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub latency: Duration,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    RetryAfter(Duration),
    GiveUp,
}

/// `pending → sending` for one attempt, with a lease of `lease`. `None` when the delivery is not
/// pending or not yet due (a duplicate or early message: ack it and move on), or when its
/// endpoint is at a limit (see [`claim_many`]).
pub async fn claim(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    lease: Duration,
) -> Result<Option<Outgoing>, tokio_postgres::Error> {
    Ok(claim_many(client, &[id], lease)
        .await?
        .into_iter()
        .find_map(|c| match c {
            Claim::Send(out) => Some(out),
            Claim::Defer(..) | Claim::Parked(_) => None,
        }))
}

/// How long a parked delivery waits for its wake-up before it is due anyway (the sweeper then
/// republishes it): the fallback should the attempts that would wake it die with their notifier.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest deferral: under the defer queue's TTL.
const MAX_DEFER: f64 = 1.9;

const RETURNING: &str = "d.id, d.tenant_id, d.run_id, d.url, d.message_id, d.payload, d.attempts, \
    d.endpoint_id";

fn outgoing(row: &tokio_postgres::Row) -> Result<Outgoing, tokio_postgres::Error> {
    Ok(Outgoing {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        run_id: row.try_get("run_id")?,
        url: row.try_get("url")?,
        message_id: row.try_get("message_id")?,
        payload: row.try_get("payload")?,
        attempt: row.try_get("attempts")?,
        endpoint_id: row.try_get("endpoint_id")?,
        thin: false,
        sealed_secrets: Vec::new(),
        also_default_secret: false,
    })
}

/// [`claim`] for many deliveries, locking in id order. A delivery to a run's own `webhookUrl` is
/// claimed in one statement. One to an endpoint is claimed in a transaction that locks the
/// endpoint, so that across every notifier it never has more than `maxConcurrency` attempts in
/// flight nor starts more than `rateLimit` a second: one over a limit is deferred (no attempt
/// counted), and one whose endpoint is disabled fails at once. Both lock the ids by key first and
/// test the rest on the locked rows (a materialized CTE): given the conditions on the table, the
/// planner ANDed the partial indexes whose predicates name them, and with stale statistics read
/// every direct delivery of the table for each claim (BENCHMARKS.md, issue 18).
pub async fn claim_many(
    client: &mut deadpool_postgres::Client,
    ids: &[Uuid],
    lease: Duration,
) -> Result<Vec<Claim>, tokio_postgres::Error> {
    let rows = client
        .query(
            &client
                .prepare_cached(&format!(
                    "WITH c AS MATERIALIZED (SELECT id, status, endpoint_id, next_attempt_at FROM deliveries \
                                               WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
                     UPDATE deliveries d SET status = 'sending', attempts = d.attempts + 1, \
                            lease_expires_at = now() + make_interval(secs => $2), updated_at = now() \
                     FROM c, tenants t WHERE d.id = c.id AND c.status = 'pending' AND c.endpoint_id IS NULL \
                          AND c.next_attempt_at <= now() + interval '1 second' AND t.id = d.tenant_id \
                     RETURNING {RETURNING}, t.webhook_secret, \
                         CASE WHEN t.previous_webhook_secret_expires_at > now() \
                              THEN t.previous_webhook_secret END AS previous_webhook_secret, \
                         t.previous_webhook_secret IS NULL \
                             AND t.previous_webhook_secret_expires_at > now() AS previous_is_default"
                ))
                .await?,
            &[&ids, &lease.as_secs_f64()],
        )
        .await?;
    let mut claims = Vec::with_capacity(ids.len());
    for row in &rows {
        // Signed with the tenant's own secrets, or (none) the deployment's default secret.
        let mut out = outgoing(row)?;
        for column in ["webhook_secret", "previous_webhook_secret"] {
            if let Some(sealed) = row.try_get::<_, Option<Vec<u8>>>(column)? {
                out.sealed_secrets.push(sealed);
            }
        }
        // The tenant's first secret of its own overlaps with the deployment's.
        out.also_default_secret = row
            .try_get::<_, Option<bool>>("previous_is_default")?
            .unwrap_or(false);
        claims.push(Claim::Send(out));
    }
    if claims.len() < ids.len() {
        let rest: Vec<Uuid> = ids
            .iter()
            .filter(|id| !claims.iter().any(|c| c.id() == **id))
            .copied()
            .collect();
        claims.extend(claim_for_endpoints(client, &rest, lease).await?);
    }
    Ok(claims)
}

/// An endpoint's limits and state, as a claim reads them under its lock.
struct Limits {
    enabled: bool,
    max_concurrency: i64,
    in_flight: i64,
    /// Seconds between deliveries, when rate-limited.
    interval: Option<f64>,
    /// The burst allowed: one second's worth.
    tolerance: f64,
    /// The GCRA's theoretical arrival time, in seconds from now (negative: in the past).
    tat: f64,
    /// Deliveries this claim deferred for the rate already.
    deferred: u32,
}

async fn claim_for_endpoints(
    client: &mut deadpool_postgres::Client,
    ids: &[Uuid],
    lease: Duration,
) -> Result<Vec<Claim>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let candidates = tx
        .query(
            &tx.prepare_cached(
                "WITH c AS MATERIALIZED (SELECT id, tenant_id, endpoint_id, status, next_attempt_at \
                                         FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
                 SELECT id, tenant_id, endpoint_id FROM c WHERE status = 'pending' \
                   AND endpoint_id IS NOT NULL AND next_attempt_at <= now() + interval '1 second' \
                 ORDER BY id",
            )
            .await?,
            &[&ids],
        )
        .await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut endpoints: Vec<(String, String)> = candidates
        .iter()
        .map(|r| Ok((r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    endpoints.sort();
    endpoints.dedup();
    let (tenants, endpoint_ids): (Vec<&str>, Vec<&str>) = endpoints
        .iter()
        .map(|(t, e)| (t.as_str(), e.as_str()))
        .unzip();
    // Lock the endpoints first; the next statement's snapshot then sees every attempt another
    // claimer of these endpoints has committed.
    let locked = tx
        .query(
            &tx.prepare_cached(
                "SELECT e.tenant_id, e.id, e.enabled, e.max_concurrency, e.rate_limit, \
                        extract(epoch FROM coalesce(e.rate_tat, now()) - now())::float8 \
                 FROM webhook_endpoints e JOIN unnest($1::text[], $2::text[]) AS w(t, i) \
                   ON e.tenant_id = w.t AND e.id = w.i \
                 ORDER BY e.tenant_id, e.id FOR NO KEY UPDATE OF e",
            )
            .await?,
            &[&tenants, &endpoint_ids],
        )
        .await?;
    let busy = tx
        .query(
            &tx.prepare_cached(
                "SELECT d.tenant_id, d.endpoint_id, count(*) FROM deliveries d \
                 JOIN unnest($1::text[], $2::text[]) AS w(t, i) \
                   ON d.tenant_id = w.t AND d.endpoint_id = w.i \
                 WHERE d.status = 'sending' AND d.lease_expires_at > now() \
                 GROUP BY d.tenant_id, d.endpoint_id",
            )
            .await?,
            &[&tenants, &endpoint_ids],
        )
        .await?;
    let mut limits = std::collections::HashMap::new();
    for row in &locked {
        let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let rate: Option<i32> = row.try_get(4)?;
        let interval = rate.map(|r| 1.0 / f64::from(r.max(1)));
        limits.insert(
            key,
            Limits {
                enabled: row.try_get(2)?,
                max_concurrency: i64::from(row.try_get::<_, i32>(3)?),
                in_flight: 0,
                interval,
                tolerance: interval.map_or(0.0, |i| 1.0 - i),
                tat: row.try_get::<_, f64>(5)?.max(0.0),
                deferred: 0,
            },
        );
    }
    for row in &busy {
        let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if let Some(l) = limits.get_mut(&key) {
            l.in_flight = row.try_get(2)?;
        }
    }
    let (mut send, mut deferred, mut waits, mut off, mut parked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in &candidates {
        let id: Uuid = row.try_get(0)?;
        let key: (String, String) = (row.try_get(1)?, row.try_get(2)?);
        // An endpoint is deleted with its deliveries, which it locks first: there is none
        // missing here, short of a change to that order.
        let Some(l) = limits.get_mut(&key) else {
            continue;
        };
        if !l.enabled {
            off.push(id);
        } else if l.in_flight >= l.max_concurrency {
            parked.push(id);
        } else if let Some(interval) = l.interval
            && l.tat > l.tolerance
        {
            // GCRA: a delivery may start while the theoretical arrival time is within one
            // second's burst of now; the k-th deferred one is due k intervals after the first.
            let wait = l.tat - l.tolerance + f64::from(l.deferred) * interval;
            l.deferred += 1;
            deferred.push(id);
            waits.push(wait.clamp(0.01, MAX_DEFER));
        } else {
            l.in_flight += 1;
            if let Some(interval) = l.interval {
                l.tat += interval;
            }
            send.push(id);
        }
    }
    let (mut rated_tenants, mut rated_ids, mut tats) = (Vec::new(), Vec::new(), Vec::new());
    for ((tenant, endpoint), l) in &limits {
        if l.interval.is_some() {
            rated_tenants.push(tenant.as_str());
            rated_ids.push(endpoint.as_str());
            tats.push(l.tat);
        }
    }
    let rows = tx
        .query(
            &tx.prepare_cached(&format!(
                "WITH send AS ( \
                     UPDATE deliveries d SET status = 'sending', attempts = d.attempts + 1, \
                            lease_expires_at = now() + make_interval(secs => $2), parked_at = NULL, \
                            updated_at = now() \
                     WHERE d.id = ANY($1) AND d.status = 'pending' RETURNING {RETURNING}), \
                 parked AS ( \
                     UPDATE deliveries d SET parked_at = now(), updated_at = now(), \
                            next_attempt_at = now() + make_interval(secs => $10) \
                     WHERE d.id = ANY($9) AND d.status = 'pending'), \
                 deferred AS ( \
                     UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => w.wait), \
                            updated_at = now() \
                     FROM unnest($3::uuid[], $4::float8[]) AS w(id, wait) WHERE d.id = w.id), \
                 off AS ( \
                     UPDATE deliveries d SET status = 'failed', last_error = 'the endpoint is disabled', \
                            updated_at = now() WHERE d.id = ANY($5) AND d.status = 'pending'), \
                 rated AS ( \
                     UPDATE webhook_endpoints e SET rate_tat = now() + make_interval(secs => r.tat) \
                     FROM unnest($6::text[], $7::text[], $8::float8[]) AS r(t, i, tat) \
                     WHERE e.tenant_id = r.t AND e.id = r.i) \
                 SELECT d.*, e.url AS endpoint_url, e.thin, e.secret, \
                        CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END \
                            AS previous_secret \
                 FROM send d JOIN webhook_endpoints e \
                   ON e.tenant_id = d.tenant_id AND e.id = d.endpoint_id"
            ))
            .await?,
            &[
                &send,
                &lease.as_secs_f64(),
                &deferred,
                &waits,
                &off,
                &rated_tenants,
                &rated_ids,
                &tats,
                &parked,
                &PARK_TIMEOUT.as_secs_f64(),
            ],
        )
        .await?;
    let mut claims = Vec::with_capacity(rows.len() + deferred.len() + parked.len());
    for row in &rows {
        let mut out = outgoing(row)?;
        out.url = row.try_get("endpoint_url")?;
        out.thin = row.try_get("thin")?;
        out.sealed_secrets.push(row.try_get("secret")?);
        if let Some(previous) = row.try_get::<_, Option<Vec<u8>>>("previous_secret")? {
            out.sealed_secrets.push(previous);
        }
        claims.push(Claim::Send(out));
    }
    tx.commit().await?;
    // Deliveries to a disabled endpoint end here, without an attempt (rows this transaction locked).
    if !off.is_empty() {
        metrics::counter!(crate::metrics::DELIVERIES_FINISHED, "status" => "failed")
            .increment(off.len() as u64);
    }
    claims.extend(
        deferred
            .into_iter()
            .zip(waits)
            .map(|(id, wait)| Claim::Defer(id, Duration::from_secs_f64(wait))),
    );
    claims.extend(parked.into_iter().map(Claim::Parked));
    Ok(claims)
}

/// Records an attempt and moves the delivery on (`sending → delivered | pending | failed`), in one
/// transaction. Guarded by the attempt number, so a late finish of a swept attempt cannot
/// overwrite a newer one. Returns `false` if the delivery was no longer ours.
pub async fn finish(
    client: &mut deadpool_postgres::Client,
    out: &Outgoing,
    attempt: &Attempt,
    next: Next,
) -> Result<bool, tokio_postgres::Error> {
    let done = finish_many(
        client,
        &[(out.clone(), attempt.clone(), next)],
        DEFAULT_DISABLE_AFTER,
    )
    .await?;
    Ok(done.moved.contains(&out.id))
}

/// How long an endpoint may fail every attempt before an exhausted delivery disables it.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

/// What recording a batch of attempts did.
#[derive(Debug, Default)]
pub struct Finished {
    /// The deliveries that were still ours and moved on.
    pub moved: Vec<Uuid>,
    /// Deliveries created meanwhile (`endpoint.disabled` to other endpoints), to publish.
    pub created: Vec<Uuid>,
    /// The endpoints disabled, as (tenant, endpoint).
    pub disabled: Vec<(String, String)>,
    /// Parked deliveries woken because attempts to their endpoint ended, to publish.
    pub woken: Vec<Uuid>,
}

/// [`finish`] for many attempts in one transaction: one statement records the attempts and
/// updates the deliveries, and for deliveries to endpoints, the endpoints' health: a success ends the
/// failure window, a 410 disables the endpoint, and so does an exhausted delivery once the
/// endpoint has failed every attempt for longer than `disable_after`.
pub async fn finish_many(
    client: &mut deadpool_postgres::Client,
    items: &[(Outgoing, Attempt, Next)],
    disable_after: Duration,
) -> Result<Finished, tokio_postgres::Error> {
    let n = items.len();
    let (mut ids, mut tenants, mut numbers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut bodies, mut errors, mut latencies) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut next_statuses, mut delays, mut last_errors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (out, attempt, next) in items {
        ids.push(out.id);
        tenants.push(out.tenant_id.as_str());
        numbers.push(out.attempt);
        statuses.push(attempt.response_status);
        bodies.push(attempt.response_body.as_deref());
        errors.push(attempt.error.as_deref());
        latencies.push(i32::try_from(attempt.latency.as_millis()).unwrap_or(i32::MAX));
        let (status, delay) = match next {
            Next::Delivered => ("delivered", 0.0),
            Next::RetryAfter(d) => ("pending", d.as_secs_f64()),
            Next::GiveUp => ("failed", 0.0),
        };
        next_statuses.push(status);
        delays.push(delay);
        last_errors.push(match next {
            Next::Delivered => None,
            _ => attempt.error.clone().or_else(|| {
                attempt
                    .response_status
                    .map(|s| format!("the endpoint answered {s}"))
            }),
        });
    }
    // One statement records the attempts and moves the deliveries on. Deliveries to a run's own
    // `webhookUrl` need nothing else: that statement commits on its own (one round trip). Those
    // to endpoints also update the endpoints' health, in the same transaction.
    let statement = client
        .prepare_cached(
            "WITH attempts AS ( \
                 INSERT INTO delivery_attempts (delivery_id, tenant_id, attempt, response_status, \
                                                response_body, error, latency_ms) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::text[], \
                                      $6::text[], $7::int[]) \
                 ON CONFLICT (delivery_id, attempt) DO NOTHING) \
             UPDATE deliveries d SET status = f.status, \
                    delivered_at = CASE WHEN f.status = 'delivered' THEN now() END, \
                    next_attempt_at = CASE WHEN f.status = 'pending' \
                        THEN now() + make_interval(secs => f.delay) ELSE d.next_attempt_at END, \
                    lease_expires_at = NULL, last_error = f.last_error, updated_at = now() \
             FROM unnest($1::uuid[], $3::int[], $8::text[], $9::float8[], $10::text[]) \
                  AS f(id, attempt, status, delay, last_error) \
             WHERE d.id = f.id AND d.status = 'sending' AND d.attempts = f.attempt \
               AND f.status IN ('delivered', 'pending', 'failed') \
             RETURNING d.id",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
        &ids,
        &tenants,
        &numbers,
        &statuses,
        &bodies,
        &errors,
        &latencies,
        &next_statuses,
        &delays,
        &last_errors,
    ];
    let moved_of = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<Uuid>, tokio_postgres::Error> {
        rows.iter().map(|r| r.try_get(0)).collect()
    };
    if items.iter().all(|(out, _, _)| out.endpoint_id.is_none()) {
        let moved = moved_of(client.query(&statement, &params).await?)?;
        return Ok(Finished {
            moved,
            ..Finished::default()
        });
    }
    let tx = client.transaction().await?;
    let moved = moved_of(tx.query(&statement, &params).await?)?;
    let (disabled, created, woken) = endpoint_health(&tx, items, &moved, disable_after).await?;
    tx.commit().await?;
    Ok(Finished {
        moved,
        created,
        disabled,
        woken,
    })
}

/// How a batch's attempts went for one endpoint.
#[derive(Default)]
struct Health {
    /// Attempts that ended: each frees a slot, and wakes one parked delivery.
    ended: i32,
    succeeded: bool,
    gone: bool,
    exhausted: bool,
}

/// Updates the health of the endpoints of the `moved` deliveries among `items`; returns the
/// endpoints disabled and the `endpoint.disabled` deliveries created.
async fn endpoint_health(
    tx: &deadpool_postgres::Transaction<'_>,
    items: &[(Outgoing, Attempt, Next)],
    moved: &[Uuid],
    disable_after: Duration,
) -> Result<(Vec<(String, String)>, Vec<Uuid>, Vec<Uuid>), tokio_postgres::Error> {
    let mut health: std::collections::BTreeMap<(&str, &str), Health> = Default::default();
    for (out, attempt, next) in items {
        let Some(endpoint) = out.endpoint_id.as_deref() else {
            continue;
        };
        if !moved.contains(&out.id) {
            continue;
        }
        let h = health
            .entry((out.tenant_id.as_str(), endpoint))
            .or_default();
        h.ended += 1;
        h.succeeded |= *next == Next::Delivered;
        h.gone |= attempt.response_status == Some(410);
        h.exhausted |= *next == Next::GiveUp;
    }
    if health.is_empty() {
        return Ok((Vec::new(), Vec::new(), Vec::new()));
    }
    let (tenants, endpoints): (Vec<&str>, Vec<&str>) = health.keys().copied().unzip();
    // In key order, as claims lock them.
    let locked = tx
        .query(
            "SELECT e.tenant_id, e.id, e.enabled, \
                    coalesce(e.failing_since, now()) <= now() - make_interval(secs => $3), \
                    e.failing_since IS NULL \
             FROM webhook_endpoints e JOIN unnest($1::text[], $2::text[]) AS w(t, i) \
               ON e.tenant_id = w.t AND e.id = w.i \
             ORDER BY e.tenant_id, e.id FOR NO KEY UPDATE OF e",
            &[&tenants, &endpoints, &disable_after.as_secs_f64()],
        )
        .await?;
    let (mut t, mut e, mut ok, mut reasons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut disabled = Vec::new();
    for row in &locked {
        let (tenant, endpoint): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let enabled: bool = row.try_get(2)?;
        let overdue: bool = row.try_get(3)?;
        let healthy: bool = row.try_get(4)?;
        let Some(h) = health.get(&(tenant.as_str(), endpoint.as_str())) else {
            continue;
        };
        let reason = if !enabled || h.succeeded {
            None
        } else if h.gone {
            Some("the endpoint answered 410 Gone".to_owned())
        } else if h.exhausted && overdue {
            Some(format!(
                "every attempt failed for longer than {}s and a delivery ran out of retries",
                disable_after.as_secs()
            ))
        } else {
            None
        };
        // The row is written only when something changes: a healthy endpoint's attempts leave
        // it alone, so that claims and finishes do not queue on it.
        if reason.is_none() && h.succeeded == healthy {
            continue;
        }
        if reason.is_some() {
            disabled.push((tenant.clone(), endpoint.clone()));
        }
        ok.push(h.succeeded);
        reasons.push(reason);
        t.push(tenant);
        e.push(endpoint);
    }
    tx.execute(
        "UPDATE webhook_endpoints e SET \
             failing_since = CASE WHEN u.ok THEN NULL ELSE coalesce(e.failing_since, now()) END, \
             enabled = e.enabled AND u.reason IS NULL, \
             disabled_at = CASE WHEN u.reason IS NULL THEN e.disabled_at ELSE now() END, \
             disabled_reason = coalesce(u.reason, e.disabled_reason), \
             updated_at = CASE WHEN u.reason IS NULL THEN e.updated_at ELSE now() END \
         FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[]) AS u(t, i, ok, reason) \
         WHERE e.tenant_id = u.t AND e.id = u.i",
        &[&t, &e, &ok, &reasons],
    )
    .await?;
    let mut events = Vec::new();
    for ((tenant, endpoint), reason) in t.iter().zip(&e).zip(&reasons) {
        let Some(reason) = reason else { continue };
        let event_id = Uuid::now_v7();
        tx.execute(
            "INSERT INTO webhook_endpoint_events (id, tenant_id, endpoint_id, type, reason) \
             VALUES ($1, $2, $3, 'endpoint.disabled', $4)",
            &[&event_id, tenant, endpoint, reason],
        )
        .await?;
        events.push(Event {
            tenant_id: tenant,
            project_id: None,
            event_type: crate::model::WebhookEvent::EndpointDisabled.as_str(),
            invocation_id: None,
            subject: event_id.to_string(),
            data: serde_json::json!({"endpointId": endpoint, "reason": reason, "eventId": event_id}),
        });
    }
    let created = fan_out(tx, &events).await?;
    // Each attempt that ended freed a slot of its endpoint: wake as many parked deliveries, the
    // oldest first. Locked after the endpoint (as claims lock), skipping any a claim holds.
    let ended: Vec<i32> = health.values().map(|h| h.ended).collect();
    let woken = tx
        .query(
            "UPDATE deliveries d SET parked_at = NULL, next_attempt_at = now(), updated_at = now() \
             FROM (SELECT p.id FROM unnest($1::text[], $2::text[], $3::int[]) AS w(t, i, n) \
                   CROSS JOIN LATERAL ( \
                       SELECT id FROM deliveries \
                       WHERE tenant_id = w.t AND endpoint_id = w.i AND status = 'pending' \
                         AND parked_at IS NOT NULL \
                       ORDER BY id LIMIT w.n FOR UPDATE SKIP LOCKED) p) u \
             WHERE d.id = u.id RETURNING d.id",
            &[&tenants, &endpoints, &ended],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    Ok((disabled, created, woken))
}

/// Deliveries that should be moving but are not: `pending` ones overdue by `grace` (their message
/// was lost), and `sending` ones whose lease expired (their notifier died mid-attempt). Puts them
/// back to `pending`, due now, and returns their ids to publish again.
pub async fn sweep_stalled(
    client: &impl GenericClient,
    grace: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            // Two locking reads in two CTEs: PostgreSQL refuses `FOR UPDATE` inside a UNION.
            &client.prepare_cached("WITH overdue AS ( \
                 SELECT id FROM deliveries WHERE status = 'pending' \
                   AND next_attempt_at < now() - make_interval(secs => $1) \
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             abandoned AS ( \
                 SELECT id FROM deliveries WHERE status = 'sending' AND lease_expires_at < now() \
                 ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries d SET status = 'pending', next_attempt_at = now(), lease_expires_at = NULL, \
                    updated_at = now() \
             WHERE d.id IN (SELECT id FROM overdue UNION ALL SELECT id FROM abandoned) \
             RETURNING d.id").await?,
            &[&grace.as_secs_f64(), &limit],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
