//! The Switchyard ingress: authenticates, validates, records each invocation durably (group
//! commit), publishes it with a confirm, and serves runs back.
//!
//! Architecture invariant: the ingress never executes agents and never sends webhooks. It writes
//! a run only by inserting it as `queued`.

pub mod accept;
pub mod auth;
pub mod cache;
pub mod console;
pub mod control;
pub mod error;
pub mod extract;
pub mod limits;
pub mod live;
pub mod openapi;
pub mod render;
pub mod request;
pub mod routes;
pub mod serve;
pub mod streams;
pub mod verbs;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use deadpool_postgres::Pool;
use switchyard_common::amqp::{Broker, Topology};
use switchyard_common::config::{
    BrokerArgs, DatabaseArgs, RuntimeArgs, TelemetryArgs, parse_duration,
};
use switchyard_common::control::Control;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::{Accepter, Backlog};
use crate::auth::Auth;
use crate::auth::keys::{KeyCache, Usage};
use crate::error::ApiError;
use std::sync::Arc;
use switchyard_common::secrets::MasterKey;

/// Every ingress setting.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "SWITCHYARD_INGRESS_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// The operator's token: creates tenants and their first API keys. Unset, there is no admin.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// 32 bytes, base64: the key that seals credentials at rest (`openssl rand -base64 32`).
    #[arg(long, env = "SWITCHYARD_MASTER_KEY", hide_env_values = true)]
    pub master_key: String,

    /// Most active API keys per tenant, unless the tenant sets its own.
    #[arg(long, env = "SWITCHYARD_MAX_API_KEYS", default_value_t = 10)]
    pub max_api_keys: i32,

    /// Most webhook endpoints per tenant, unless the tenant sets its own (`maxWebhookEndpoints`).
    #[arg(long, env = "SWITCHYARD_MAX_WEBHOOK_ENDPOINTS", default_value_t = 20)]
    pub max_webhook_endpoints: i32,

    /// Longest an API key or a trigger stays cached (changes empty the caches sooner, via RabbitMQ).
    #[arg(long, env = "SWITCHYARD_KEY_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub key_cache_ttl: Duration,

    /// Invocations per minute per API key on the agent-app door (`POST /api/v1/runs`), as that API
    /// documents, unless the key sets its own (`rateLimitPerMinute`). The other doors limit a key
    /// only when it sets a limit.
    #[arg(long, env = "SWITCHYARD_RATE_LIMIT_PER_KEY", default_value_t = 30)]
    pub rate_limit_per_key: u32,

    /// Unauthenticated inbound webhooks recorded per trigger and minute (per replica); past it a
    /// refused webhook is answered 429 and not recorded.
    #[arg(
        long,
        env = "SWITCHYARD_HOOK_REFUSALS_PER_MINUTE",
        default_value_t = 60
    )]
    pub hook_refusals_per_minute: u32,

    /// How long an `Idempotency-Key` is remembered.
    #[arg(long, env = "SWITCHYARD_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// How long a trigger with `ignoreDuplicates` remembers a body.
    #[arg(long, env = "SWITCHYARD_DUPLICATE_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub duplicate_window: Duration,

    /// How often the keys' last-use times are written.
    #[arg(long, env = "SWITCHYARD_KEY_USAGE_FLUSH", default_value = "10s", value_parser = parse_duration)]
    pub key_usage_flush: Duration,

    /// How long a client may take to send a request's headers; a kept-alive connection with no
    /// next request is closed after it too.
    #[arg(long, env = "SWITCHYARD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a client may take to send a request's body, from its headers; past it, 408.
    #[arg(long, env = "SWITCHYARD_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// How long a write to a client may wait for the client to read; past it the connection
    /// closes.
    #[arg(long, env = "SWITCHYARD_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Most connections open at once; at the cap no more are accepted until one closes. Keep it
    /// below the process's file limit (`ulimit -n`).
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most connections open at once from one peer address, past which a new one is closed at
    /// once; 0 for no such cap (behind a proxy, whose address every connection has, use 0 and
    /// limit clients at the proxy).
    #[arg(
        long,
        env = "SWITCHYARD_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 1024
    )]
    pub max_connections_per_peer: usize,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Most runs inserted by one group-commit batch.
    #[arg(long, env = "SWITCHYARD_ACCEPT_BATCH", default_value_t = 128)]
    pub accept_batch: usize,

    /// Most group-commit batches in flight at once.
    #[arg(long, env = "SWITCHYARD_ACCEPT_INFLIGHT", default_value_t = 4)]
    pub accept_inflight: usize,

    /// Longest a request waits for its run to be recorded before answering 503.
    #[arg(long, env = "SWITCHYARD_ACCEPT_TIMEOUT", default_value = "900ms", value_parser = parse_duration)]
    pub accept_timeout: Duration,

    /// Longest any request waits for its run to finish (`wait` on the runs API, a trigger's
    /// `waitForResponse`), whatever it asks for. Keep it below the idle timeout of any proxy in
    /// front of the ingress.
    #[arg(long, env = "SWITCHYARD_MAX_WAIT", default_value = "300s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// Most event streams (SSE) and waits one API key holds open at once, per replica; one more
    /// is a 429 (a wait or stream asked for with a new run answers as if it were not asked for).
    #[arg(long, env = "SWITCHYARD_MAX_STREAMS_PER_KEY", default_value_t = 100)]
    pub max_streams_per_key: usize,

    /// Most event streams and waits one tenant holds open at once, per replica.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_STREAMS_PER_TENANT",
        default_value_t = 1000
    )]
    pub max_streams_per_tenant: usize,

    /// How often an idle event stream (SSE) gets a keep-alive comment.
    #[arg(long, env = "SWITCHYARD_SSE_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub sse_keep_alive: Duration,

    /// Longest one event stream (SSE) response lasts; the client resumes with `Last-Event-ID`.
    #[arg(long, env = "SWITCHYARD_MAX_STREAM", default_value = "1h", value_parser = parse_duration)]
    pub max_stream: Duration,

    /// How long a webhook endpoint's previous secret keeps signing after a rotation.
    #[arg(long, env = "SWITCHYARD_SECRET_ROTATION_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub secret_rotation_overlap: Duration,

    /// Always mark the console's session cookie `Secure`. Without it the cookie is `Secure` when
    /// the proxy in front says the request came over TLS (`X-Forwarded-Proto` or `Forwarded`).
    #[arg(
        long,
        env = "SWITCHYARD_CONSOLE_SECURE_COOKIE",
        default_value_t = false
    )]
    pub console_secure_cookie: bool,

    #[command(flatten)]
    pub db: DatabaseArgs,

    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Shared handles of every request.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub broker: Broker,
    pub accepter: Accepter,
    pub backlog: Backlog,
    pub auth: Arc<Auth>,
    pub compiled: Arc<verbs::trigger::CompiledTriggers>,
    /// Resolved triggers, by project and lowercase key or by id.
    pub triggers: Arc<verbs::trigger::TriggerCache>,
    pub limits: Arc<limits::RateLimits>,
    pub master_key: MasterKey,
    pub max_api_keys: i32,
    /// The default cap on a tenant's webhook endpoints.
    pub max_webhook_endpoints: i32,
    pub accept_timeout: Duration,
    pub idempotency_ttl: Duration,
    pub duplicate_window: Duration,
    /// The cap on every wait for a run's end (`SWITCHYARD_MAX_WAIT`).
    pub max_wait: Duration,
    /// Live run events on this replica.
    pub hub: Arc<live::Hub>,
    /// The event streams and waits open on this replica, per key and tenant.
    pub streams: Arc<streams::Streams>,
    pub sse_keep_alive: Duration,
    pub max_stream: Duration,
    /// How long a rotated-out endpoint secret keeps signing.
    pub secret_rotation_overlap: Duration,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Mark the console's session cookie `Secure` whatever the request says.
    pub console_secure_cookie: bool,
}

impl AppState {
    /// Tells every replica (this one included) that API keys or triggers changed: each empties its
    /// caches.
    /// When the broker does not confirm the message, the change is already committed but other
    /// replicas may still hold the key for up to the cache TTL: the caller answers 503 so that
    /// the client retries (revoking is idempotent).
    pub async fn announce_change(&self, message: &Control) -> Result<(), ApiError> {
        self.auth.keys.invalidate();
        self.triggers.invalidate();
        streams::apply_control(&self.streams, message);
        self.broker.publish_control(message).await.map_err(|err| {
            tracing::warn!(error = %err, "could not announce an API key change");
            ApiError::unavailable_because(
                "the change is saved, but RabbitMQ did not confirm telling the other ingress \
                 replicas; retry the request",
            )
        })
    }
}

/// The router, with its middleware, and the OpenAPI document generated from the same routes.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let (api, doc) = openapi::routes().split_for_parts();
    api.merge(openapi::docs(doc))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .route("/console", get(console::page))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route(
            "/console/session",
            get(console::current)
                .post(console::sign_in)
                .delete(console::sign_out),
        )
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::no_method)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(request::context))
        .with_state(state)
}

/// Deletes expired idempotency keys, duplicate marks, console sessions and full rate-limit
/// buckets every ten minutes.
async fn purge_expired_guards(pool: Pool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        if let Ok(client) = pool.get().await {
            if let Err(err) = switchyard_common::dedupe::purge_expired(&client).await {
                tracing::warn!(error = %err, "could not purge expired idempotency keys");
            }
            if let Err(err) = auth::sessions::purge_expired(&client).await {
                tracing::warn!(error = %err, "could not purge expired console sessions");
            }
            if let Err(err) = limits::purge_full(&client).await {
                tracing::warn!(error = %err, "could not purge full rate-limit buckets and passed key turns");
            }
        }
    }
}

/// Serves on `listener` until `shutdown`, then drains in-flight requests.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let master_key = MasterKey::from_base64(&config.master_key)
        .context("SWITCHYARD_MASTER_KEY is not usable")?;
    anyhow::ensure!(
        (1..=1000).contains(&config.max_api_keys),
        "SWITCHYARD_MAX_API_KEYS must be from 1 to 1000"
    );
    anyhow::ensure!(
        (1..=1000).contains(&config.max_webhook_endpoints),
        "SWITCHYARD_MAX_WEBHOOK_ENDPOINTS must be from 1 to 1000"
    );
    let admin_digest = match config.admin_token.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(token) if token.len() < 16 => {
            anyhow::bail!("SWITCHYARD_ADMIN_TOKEN must be at least 16 characters")
        }
        Some(token) => Some(auth::digest(token)),
    };
    let metrics = switchyard_common::metrics::install("switchyard-ingress")?;
    let pool = switchyard_common::db::pool(&config.db)?;
    // The broker outlives the HTTP server, so requests still draining can publish.
    let broker_shutdown = CancellationToken::new();
    let broker = Broker::start(
        &config.broker.amqp_url,
        Topology::new(&config.broker.amqp_prefix),
        config.broker.publish_timeout,
        broker_shutdown.clone(),
    );
    let accepter = Accepter::start(pool.clone(), config.accept_batch, config.accept_inflight);
    let backlog = Backlog::start(broker.clone(), 100_000);
    let keys = Arc::new(KeyCache::new(config.key_cache_ttl));
    let triggers = Arc::new(verbs::trigger::TriggerCache::new(config.key_cache_ttl));
    let usage = Arc::new(Usage::default());
    let background = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let open_streams =
        streams::Streams::new(config.max_streams_per_key, config.max_streams_per_tenant);
    tasks.spawn(control::follow_control(
        broker.clone(),
        background.clone(),
        Arc::clone(&keys),
        Arc::clone(&triggers),
        Arc::clone(&open_streams),
    ));
    tasks.spawn(Arc::clone(&usage).flush_every(
        pool.clone(),
        config.key_usage_flush,
        background.clone(),
    ));
    let auth = Arc::new(Auth {
        admin_digest,
        keys,
        usage,
    });
    let hub = live::Hub::start(broker.clone(), pool.clone(), background.clone());
    let limits = Arc::new(limits::RateLimits::new(
        pool.clone(),
        config.rate_limit_per_key,
        config.hook_refusals_per_minute,
    ));
    let state = AppState {
        pool,
        broker,
        accepter,
        backlog,
        auth,
        compiled: Arc::default(),
        triggers,
        limits,
        master_key,
        max_api_keys: config.max_api_keys,
        max_webhook_endpoints: config.max_webhook_endpoints,
        accept_timeout: config.accept_timeout,
        idempotency_ttl: config.idempotency_ttl,
        duplicate_window: config.duplicate_window,
        max_wait: config.max_wait,
        hub,
        streams: open_streams,
        sse_keep_alive: config.sse_keep_alive,
        max_stream: config.max_stream,
        secret_rotation_overlap: config.secret_rotation_overlap,
        metrics,
        console_secure_cookie: config.console_secure_cookie,
    };
    tasks.spawn(purge_expired_guards(state.pool.clone(), background.clone()));
    tasks.spawn(Arc::clone(&state.streams).check_revoked(state.pool.clone(), background.clone()));
    // On shutdown, open event streams and waits end at once: their clients resume or ask again
    // on another replica, instead of holding this one for up to `SWITCHYARD_MAX_STREAM`.
    let closing = Arc::clone(&state.streams);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        closing.close_all();
    });
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, "ingress listening");
    let limits = serve::Limits {
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
        write_timeout: config.write_timeout,
        max_connections: config.max_connections,
        max_connections_per_peer: config.max_connections_per_peer,
    };
    serve::serve(
        listener,
        app(state, config.max_body_bytes),
        limits,
        shutdown,
    )
    .await;
    background.cancel();
    tasks.close();
    tasks.wait().await;
    broker_shutdown.cancel();
    Ok(())
}
