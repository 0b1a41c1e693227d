//! The Switchyard ingress: authenticates, validates, records each invocation durably (group
//! commit), publishes it with a confirm, and serves runs back.
//!
//! Architecture invariant: the ingress never executes agents and never sends webhooks. It writes
//! a run only by inserting it as `queued`.

pub mod accept;
pub mod auth;
pub mod error;
pub mod json;
pub mod request;
pub mod routes;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use switchyard_common::amqp::{Broker, Topology};
use switchyard_common::config::{
    BrokerArgs, DatabaseArgs, RuntimeArgs, TelemetryArgs, parse_duration,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accept::{Accepter, Backlog};

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

    /// The static bearer token that authenticates API calls (for the `default` tenant).
    #[arg(long, env = "SWITCHYARD_API_TOKEN", hide_env_values = true)]
    pub api_token: String,

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
    pub token_digest: [u8; 32],
    pub accept_timeout: Duration,
}

/// The router, with its middleware.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/runs", post(routes::runs::create))
        .route("/v1/runs/{id}", get(routes::runs::get))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .fallback(routes::runs::no_route)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(request::context))
        .with_state(state)
}

/// Serves on `listener` until `shutdown`, then drains in-flight requests.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.api_token.trim().is_empty(),
        "SWITCHYARD_API_TOKEN must not be empty"
    );
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
    let state = AppState {
        pool,
        broker,
        accepter,
        backlog,
        token_digest: auth::digest(config.api_token.trim()),
        accept_timeout: config.accept_timeout,
    };
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, "ingress listening");
    let served = axum::serve(listener, app(state, config.max_body_bytes))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving HTTP");
    broker_shutdown.cancel();
    served
}
