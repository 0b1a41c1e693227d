//! The Switchyard notifier. Consumes delivery ids, claims each delivery for one attempt, POSTs the
//! payload signed per Standard Webhooks, records the attempt, and schedules the next one in a
//! RabbitMQ TTL queue that dead-letters back to the delivery queue. Nothing waits in memory.
//!
//! Architecture invariant: the notifier only reads runs (through the payload stored on the
//! delivery) and changes delivery status only through `switchyard_common::deliveries`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use lapin::message::Delivery;
use switchyard_common::amqp::{self, Broker, Topology};
use switchyard_common::amqp::{Disposition, Handled};
use switchyard_common::batch::{Batcher, answer_each};
use switchyard_common::config::{
    BrokerArgs, DatabaseArgs, RuntimeArgs, Schedule, TelemetryArgs, parse_duration, parse_schedule,
};
use switchyard_common::deliveries::{self, Attempt, Claim, Next, Outgoing};
use switchyard_common::egress::{self, Guard, Refused};
use switchyard_common::secrets::{MasterKey, endpoint_context, tenant_webhook_context};
use switchyard_common::signing::Secret;
use switchyard_common::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

/// The most response body kept per attempt.
const CAPTURE_BYTES: usize = 4096;

/// Every notifier setting.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The `whsec_…` secret that signs webhooks to a run's or trigger's own `webhookUrl`.
    /// Endpoints have secrets of their own.
    #[arg(long, env = "SWITCHYARD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: String,

    /// 32 bytes, base64: the key that sealed the endpoints' secrets (the ingress's key).
    #[arg(long, env = "SWITCHYARD_MASTER_KEY", hide_env_values = true)]
    pub master_key: String,

    /// Where to serve `/metrics`, `/healthz` and `/readyz` (such as `0.0.0.0:9100`); unset, nowhere.
    #[arg(long, env = "SWITCHYARD_OPS_LISTEN")]
    pub ops_listen: Option<std::net::SocketAddr>,

    /// How long an endpoint may fail every attempt before a delivery that runs out of retries
    /// disables it.
    #[arg(long, env = "SWITCHYARD_ENDPOINT_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub endpoint_disable_after: Duration,

    /// Delays between attempts, comma-separated; after the last one the delivery fails.
    #[arg(
        long,
        env = "SWITCHYARD_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub retry_schedule: String,

    /// Timeout of each webhook request, connection included.
    #[arg(long = "webhook-timeout", env = "SWITCHYARD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Networks webhooks may reach besides public addresses, comma-separated CIDRs
    /// (e.g. `127.0.0.0/8` for local development). Everything else non-public is refused.
    #[arg(long, env = "SWITCHYARD_EGRESS_ALLOW", default_value = "")]
    pub egress_allow: String,

    /// Largest webhook body sent whole; a larger one is sent thin (the run's ids, status and URL).
    #[arg(long, env = "SWITCHYARD_WEBHOOK_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Deliveries attempted at once by this process.
    #[arg(
        long = "notifier-concurrency",
        env = "SWITCHYARD_NOTIFIER_CONCURRENCY",
        default_value_t = 64
    )]
    pub concurrency: usize,

    #[command(flatten)]
    pub db: DatabaseArgs,

    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Clone)]
struct Ctx {
    broker: Broker,
    http: reqwest::Client,
    guard: Guard,
    secret: Secret,
    master_key: MasterKey,
    schedule: Schedule,
    max_body_bytes: usize,
    /// Claims of concurrent messages, batched into one UPDATE.
    claims: Batcher<Uuid, Result<Option<Claim>, String>>,
    /// Attempt records, batched into one transaction.
    finishes: Batcher<(Outgoing, Attempt, Next), Result<bool, String>>,
}

/// How many claims or attempt records one statement takes at most.
const BATCH: usize = 64;
/// How many such statements run at once.
const BATCHES_IN_FLIGHT: usize = 4;

fn claimer(pool: Pool, lease: Duration) -> Batcher<Uuid, Result<Option<Claim>, String>> {
    Batcher::start(BATCH, BATCHES_IN_FLIGHT, move |ids: Vec<Uuid>| {
        let pool = pool.clone();
        async move {
            let claimed = async {
                let mut client = pool.get().await?;
                Ok::<_, anyhow::Error>(deliveries::claim_many(&mut client, &ids, lease).await?)
            }
            .await;
            answer_each(&ids, claimed, Claim::id)
        }
    })
}

fn finisher(
    pool: Pool,
    broker: Broker,
    disable_after: Duration,
) -> Batcher<(Outgoing, Attempt, Next), Result<bool, String>> {
    Batcher::start(
        BATCH,
        BATCHES_IN_FLIGHT,
        move |items: Vec<(Outgoing, Attempt, Next)>| {
            let (pool, broker) = (pool.clone(), broker.clone());
            async move {
                let record = |items: Vec<(Outgoing, Attempt, Next)>| {
                    let (pool, broker) = (pool.clone(), broker.clone());
                    async move {
                        let mut client = pool.get().await?;
                        let done =
                            deliveries::finish_many(&mut client, &items, disable_after).await?;
                        for (tenant, endpoint) in &done.disabled {
                            tracing::warn!(tenant, endpoint, "webhook endpoint disabled");
                        }
                        let queue = broker.topology().deliveries();
                        let due: Vec<Uuid> =
                            done.created.iter().chain(&done.woken).copied().collect();
                        if let Err(err) = broker.publish_ids(&queue, &due).await {
                            tracing::warn!(error = %err, "deliveries due but not queued; the sweeper will");
                        }
                        Ok::<_, anyhow::Error>(done.moved)
                    }
                };
                let mut recorded = record(items.clone()).await;
                if recorded.is_err() && items.len() > 1 {
                    // One row the database refuses must not hold back the others: record them one
                    // by one, so only the culprit is left to its lease.
                    let mut moved = Vec::new();
                    for item in &items {
                        if let Ok(ids) = record(vec![item.clone()]).await {
                            moved.extend(ids);
                        }
                    }
                    recorded = Ok(moved);
                }
                let ids: Vec<Uuid> = items.iter().map(|(out, _, _)| out.id).collect();
                answer_each(&ids, recorded, |id| *id)
                    .into_iter()
                    .map(|answer| answer.map(|moved| moved.is_some()))
                    .collect()
            }
        },
    )
}

/// Delivers webhooks until `shutdown`; attempts under way finish first.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let secret = Secret::parse(&config.webhook_secret)
        .context("SWITCHYARD_WEBHOOK_SECRET is not a whsec_ secret")?;
    let master_key = MasterKey::from_base64(&config.master_key)
        .context("SWITCHYARD_MASTER_KEY is not usable")?;
    let schedule = parse_schedule(&config.retry_schedule).map_err(anyhow::Error::msg)?;
    let metrics = switchyard_common::metrics::install("switchyard-notifier")?;
    let pool = switchyard_common::db::pool(&config.db)?;
    let broker_shutdown = CancellationToken::new();
    let mut topology = Topology::new(&config.broker.amqp_prefix);
    topology.retry_tiers = schedule.0.clone();
    let broker = Broker::start(
        &config.broker.amqp_url,
        topology,
        config.broker.publish_timeout,
        broker_shutdown.clone(),
    );
    if let Some(addr) = config.ops_listen {
        tokio::spawn(sample_oldest_pending(pool.clone(), broker_shutdown.clone()));
        let ops = switchyard_common::ops::serve_ops(
            addr,
            metrics,
            pool.clone(),
            broker.clone(),
            broker_shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(err) = ops.await {
                tracing::error!(error = format!("{err:#}"), "the ops listener stopped");
            }
        });
    }
    let guard = Guard::parse(&config.egress_allow).map_err(anyhow::Error::msg)?;
    let http = egress::client(
        &guard,
        config.request_timeout,
        concat!("Switchyard-Webhooks/", env!("CARGO_PKG_VERSION")),
    )
    .context("building the HTTP client")?;
    // Long enough that a live attempt is never swept from under us.
    let lease = config.request_timeout * 2 + Duration::from_secs(10);
    let ctx = Ctx {
        claims: claimer(pool.clone(), lease),
        finishes: finisher(pool, broker.clone(), config.endpoint_disable_after),
        broker: broker.clone(),
        http,
        guard,
        secret,
        master_key,
        schedule,
        max_body_bytes: config.max_body_bytes,
    };
    tracing::info!(concurrency = config.concurrency, "notifier starting");
    broker
        .consume(
            broker.topology().deliveries(),
            config.concurrency,
            shutdown,
            move |delivery| handle(ctx.clone(), delivery),
        )
        .await;
    broker_shutdown.cancel();
    tracing::info!("notifier stopped");
    Ok(())
}

/// Sets `switchyard_deliveries_oldest_pending_seconds` every five seconds until `shutdown`.
async fn sample_oldest_pending(pool: deadpool_postgres::Pool, shutdown: CancellationToken) {
    loop {
        if let Ok(client) = pool.get().await
            && let Ok(row) = client
                .query_one(
                    "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 \
                     FROM deliveries WHERE status = 'pending'",
                    &[],
                )
                .await
        {
            metrics::gauge!(switchyard_common::metrics::OLDEST_PENDING_DELIVERY)
                .set(row.get::<_, f64>(0));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Claims the delivery a message names and attempts it: the message is acked once the
/// attempt is recorded (or once it is deferred or parked), requeued while the database is down,
/// and dead-lettered when malformed.
async fn handle(ctx: Ctx, message: Delivery) -> Handled {
    let Some(delivery_id) = amqp::parse_id(&message) else {
        tracing::warn!("malformed delivery message; dead-lettering it");
        return Disposition::DeadLetter.into();
    };
    let span = amqp::process_span(&message, &ctx.broker.topology().deliveries(), delivery_id);
    async move {
        let claimed = ctx
            .claims
            .submit(delivery_id)
            .await
            .unwrap_or_else(|gone| Err(gone.to_string()));
        match claimed {
            Ok(Some(Claim::Send(out))) => {
                attempt_and_record(&ctx, &out).await;
            }
            Ok(Some(Claim::Defer(id, wait))) => {
                // The endpoint is at a limit: the message waits in the defer queue instead of
                // holding one of this notifier's slots.
                let queue = ctx.broker.topology().defer_queue();
                if let Err(err) = ctx.broker.publish_id_for(&queue, id, wait).await {
                    tracing::warn!(error = %err, "deferral not queued; the sweeper will");
                }
            }
            // Parked until an attempt to its endpoint ends; or nothing to do (a duplicate, or
            // not yet due).
            Ok(Some(Claim::Parked(_)) | None) => {}
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot claim the delivery; requeueing"
                );
                return Disposition::Requeue(Duration::from_secs(1)).into();
            }
        }
        Disposition::Ack.into()
    }
    .instrument(span)
    .await
}

async fn attempt_and_record(ctx: &Ctx, out: &Outgoing) {
    // An HTTP client span (OpenTelemetry's conventions). The URL's path and query may carry a
    // receiver's token, so only its host is recorded.
    let span = tracing::info_span!(
        "webhook attempt",
        otel.name = "POST",
        otel.kind = "client",
        http.request.method = "POST",
        server.address = %host_of(&out.url),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        attempt = out.attempt,
        endpoint = out.endpoint_id.as_deref(),
    );
    let (attempt, refused, retry_after) = send(ctx, out).instrument(span.clone()).await;
    match (attempt.response_status, &attempt.error) {
        (Some(status), _) => {
            span.record("http.response.status_code", status);
        }
        (None, Some(_)) => {
            span.record("error.type", "transport");
        }
        (None, None) => {}
    }
    // A refused destination will not become allowed by waiting.
    let next = if refused {
        Next::GiveUp
    } else {
        let jitter = rand::random_range(-JITTER..=JITTER);
        decide(&ctx.schedule, out.attempt, &attempt, retry_after, jitter)
    };
    tracing::info!(
        delivery_id = %out.id,
        run_id = ?out.run_id,
        attempt = out.attempt,
        status = attempt.response_status,
        error = attempt.error.as_deref(),
        next = ?next,
        "webhook attempted"
    );
    metrics::histogram!(switchyard_common::metrics::DELIVERY_DURATION)
        .record(attempt.latency.as_secs_f64());
    let outcome = if next == Next::Delivered {
        "success"
    } else {
        "failure"
    };
    metrics::counter!(switchyard_common::metrics::DELIVERY_ATTEMPTS, "outcome" => outcome)
        .increment(1);
    let recorded = ctx
        .finishes
        .submit((out.clone(), attempt, next))
        .await
        .unwrap_or_else(|gone| Err(gone.to_string()));
    match recorded {
        Ok(true) => {
            let ended = match next {
                Next::Delivered => Some("delivered"),
                Next::GiveUp => Some("failed"),
                Next::RetryAfter(_) => None,
            };
            if let Some(status) = ended {
                metrics::counter!(switchyard_common::metrics::DELIVERIES_FINISHED, "status" => status)
                    .increment(1);
            }
            if let Next::RetryAfter(wait) = next
                && let Some(tier) = ctx
                    .schedule
                    .delay_after(u32::try_from(out.attempt).unwrap_or(u32::MAX))
            {
                // The tier queue of the scheduled delay holds it for `wait` (its own TTL is
                // twice the delay, the longest wait there can be).
                let queue = ctx.broker.topology().retry_queue(tier);
                if let Err(err) = ctx.broker.publish_id_for(&queue, out.id, wait).await {
                    tracing::warn!(error = %err, "retry recorded but not queued; the sweeper will");
                }
            }
        }
        Ok(false) => {
            tracing::warn!(delivery_id = %out.id, "the delivery was swept meanwhile; outcome not recorded")
        }
        // The lease will expire and the sweeper will hand the delivery out again.
        Err(err) => tracing::warn!(error = %err, "cannot record the attempt"),
    }
}

/// How far a scheduled delay is moved at random, either way.
const JITTER: f64 = 0.2;

/// Only 2xx succeeds. 410 Gone stops retrying. Everything else (3xx, 4xx, 5xx, timeouts, refused
/// connections) is retried on the schedule until it runs out. The wait is the scheduled delay
/// moved by `jitter` (a fraction, ±20 %), or the receiver's `Retry-After` kept within [the
/// delay, twice the delay].
pub fn decide(
    schedule: &Schedule,
    attempt_number: i32,
    attempt: &Attempt,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Next {
    match attempt.response_status {
        Some(s) if (200..300).contains(&s) => Next::Delivered,
        Some(410) => Next::GiveUp,
        _ => {
            let failures = u32::try_from(attempt_number).unwrap_or(u32::MAX);
            let Some(delay) = schedule.delay_after(failures) else {
                return Next::GiveUp;
            };
            let wait = match retry_after {
                Some(asked) => asked.clamp(delay, delay * 2),
                None => delay.mul_f64((1.0 + jitter.clamp(-JITTER, JITTER)).max(0.0)),
            };
            Next::RetryAfter(wait)
        }
    }
}

/// Makes one attempt; the flag says the SSRF guard refused the destination, and the duration is
/// the receiver's `Retry-After` (seconds), if it sent one.
async fn send(ctx: &Ctx, out: &Outgoing) -> (Attempt, bool, Option<Duration>) {
    let started = Instant::now();
    let refusal = match reqwest::Url::parse(&out.url) {
        Ok(url) => egress::check_url(&ctx.guard, &url)
            .err()
            .map(|r| r.to_string()),
        Err(_) => Some("the webhook URL is not valid".to_owned()),
    };
    if let Some(reason) = refusal {
        let attempt = Attempt {
            response_status: None,
            response_body: None,
            error: Some(reason),
            latency: started.elapsed(),
        };
        return (attempt, true, None);
    }
    let secrets = match signing_secrets(ctx, out) {
        Ok(secrets) => secrets,
        Err(reason) => {
            let attempt = Attempt {
                response_status: None,
                response_body: None,
                error: Some(reason),
                latency: started.elapsed(),
            };
            return (attempt, false, None);
        }
    };
    let mut body = Vec::new();
    if !out.thin {
        body = serde_json::to_vec(&out.payload).unwrap_or_default();
    }
    if out.thin || body.len() > ctx.max_body_bytes {
        body = serde_json::to_vec(&thin(&out.payload)).unwrap_or_default();
    }
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    // During a rotation's overlap both secrets sign: receivers holding either one verify.
    let signature = secrets
        .iter()
        .map(|s| s.sign(&out.message_id, timestamp, &body))
        .collect::<Vec<_>>()
        .join(" ");
    let mut request = ctx
        .http
        .post(&out.url)
        .header("content-type", "application/json")
        .header("webhook-id", &out.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    for (name, value) in telemetry::current_trace_http_headers() {
        request = request.header(name, value);
    }
    match request.body(body).send().await {
        Ok(mut response) => {
            let status = i32::from(response.status().as_u16());
            let retry_after = egress::retry_after(&response);
            let mut captured = Vec::new();
            while captured.len() < CAPTURE_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => captured.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            captured.truncate(CAPTURE_BYTES);
            let attempt = Attempt {
                response_status: Some(status),
                // PostgreSQL text cannot hold NUL; one such body must not fail its batch.
                response_body: Some(String::from_utf8_lossy(&captured).replace('\0', "\u{FFFD}")),
                error: None,
                latency: started.elapsed(),
            };
            (attempt, false, retry_after)
        }
        Err(err) => {
            let refused = refused_by_guard(&err);
            let attempt = Attempt {
                response_status: None,
                response_body: None,
                error: Some(describe(&err)),
                latency: started.elapsed(),
            };
            (attempt, refused, None)
        }
    }
}

/// The secrets that sign `out`: the endpoint's, or for a run's own `webhookUrl` the tenant's
/// (current, then previous during an overlap); the deployment's default secret when the tenant
/// has none of its own.
fn signing_secrets(ctx: &Ctx, out: &Outgoing) -> Result<Vec<Secret>, String> {
    if out.sealed_secrets.is_empty() {
        return Ok(vec![ctx.secret.clone()]);
    }
    let context = match &out.endpoint_id {
        Some(endpoint) => endpoint_context(&out.tenant_id, endpoint),
        None => tenant_webhook_context(&out.tenant_id),
    };
    let mut secrets = out
        .sealed_secrets
        .iter()
        .map(|sealed| {
            Secret::unseal(&ctx.master_key, &context, sealed).ok_or_else(|| {
                "the signing secret does not open under this notifier's master key".to_owned()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if out.also_default_secret {
        secrets.push(ctx.secret.clone());
    }
    Ok(secrets)
}

/// The thin form of a webhook body: the event and the ids, status, timings and error code of
/// what it is about, with the URL to read a run from (`data.thin` is true).
pub fn thin(payload: &serde_json::Value) -> serde_json::Value {
    let data = &payload["data"];
    let mut slim = serde_json::Map::new();
    for field in [
        "id",
        "status",
        "outcome",
        "reason",
        "tenantId",
        "projectId",
        "agentId",
        "triggerId",
        "invocationId",
        "endpointId",
        "sessionId",
        "errorCode",
        "attempt",
        "createdAt",
        "startedAt",
        "completedAt",
    ] {
        if let Some(value) = data.get(field) {
            slim.insert(field.to_owned(), value.clone());
        }
    }
    let is_run = payload["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("run."));
    if let Some(id) = data["id"].as_str()
        && is_run
    {
        slim.insert("url".into(), serde_json::json!(format!("/v1/runs/{id}")));
    }
    slim.insert("thin".into(), serde_json::json!(true));
    serde_json::json!({"type": payload["type"], "timestamp": payload["timestamp"], "data": slim})
}

/// The host of a URL, for logs: the path and query may carry tokens.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

fn refused_by_guard(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<Refused>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

fn describe(err: &reqwest::Error) -> String {
    if refused_by_guard(err) {
        "refused by the egress guard: the host resolves to no public or allow-listed address".into()
    } else if err.is_timeout() {
        "the request timed out".into()
    } else if err.is_connect() {
        "could not connect to the endpoint".into()
    } else {
        format!("request failed: {}", egress::describe(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<i32>) -> Attempt {
        Attempt {
            response_status: status,
            response_body: None,
            error: status.is_none().then(|| "refused".into()),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn only_2xx_is_delivered_and_failures_follow_the_schedule() {
        let schedule = parse_schedule("1s,2s").expect("valid");
        let decide = |n, status| decide(&schedule, n, &outcome(status), None, 0.0);
        assert_eq!(decide(1, Some(204)), Next::Delivered);
        assert_eq!(
            decide(1, Some(500)),
            Next::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            decide(2, Some(302)),
            Next::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(decide(3, None), Next::GiveUp);
        assert_eq!(decide(1, Some(410)), Next::GiveUp);
        assert_eq!(decide(1, None), Next::RetryAfter(Duration::from_secs(1)));
    }

    #[test]
    fn thin_bodies_keep_the_ids_status_and_a_url() {
        let full = serde_json::json!({"type": "run.completed", "timestamp": "t",
            "data": {"id": "r1", "status": "completed", "result": {"output": "long"}, "metadata": {"k": 1}}});
        assert_eq!(
            thin(&full),
            serde_json::json!({"type": "run.completed", "timestamp": "t",
                "data": {"id": "r1", "status": "completed", "url": "/v1/runs/r1", "thin": true}})
        );
    }

    #[test]
    fn delays_are_jittered_and_retry_after_is_kept_within_one_to_two_delays() {
        let schedule = parse_schedule("10s").expect("valid");
        let failed = outcome(Some(503));
        let wait = |retry_after, jitter| decide(&schedule, 1, &failed, retry_after, jitter);
        assert_eq!(wait(None, 0.2), Next::RetryAfter(Duration::from_secs(12)));
        assert_eq!(wait(None, -0.2), Next::RetryAfter(Duration::from_secs(8)));
        assert_eq!(
            wait(None, 5.0),
            Next::RetryAfter(Duration::from_secs(12)),
            "jitter is capped"
        );
        let asked = |secs| wait(Some(Duration::from_secs(secs)), 0.2);
        assert_eq!(asked(15), Next::RetryAfter(Duration::from_secs(15)));
        assert_eq!(asked(1), Next::RetryAfter(Duration::from_secs(10)));
        assert_eq!(asked(3600), Next::RetryAfter(Duration::from_secs(20)));
    }
}
