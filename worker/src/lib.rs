//! The Switchyard worker. Consumes run ids, claims each run in Postgres with a lease (then acks:
//! from there the lease, not the broker, owns the run), executes it while heartbeating, and
//! completes it in one transaction together with its webhook deliveries. Its maintenance loop
//! reaps expired leases and republishes what the broker may have lost.
//!
//! This file is the wiring; each lifecycle of a run has a module: `claim` (a message becomes a
//! run of this worker's), `execute` (the agent runs under a heartbeat, a timeout and a cancel
//! token), `finish` (the outcome is recorded through `switchyard_common::lifecycle`) and
//! `maintain` (the reaper, the ttl expiry and the sweepers).
//!
//! Architecture invariant: the worker never sends webhooks and never serves the public API; it
//! changes run status only through `switchyard_common::runs`.

mod claim;
mod execute;
pub mod executor;
mod finish;
mod maintain;
pub mod sink;

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use switchyard_common::amqp::{self, Broker, Topology};
use switchyard_common::batch::Batcher;
use switchyard_common::config::{
    BrokerArgs, DatabaseArgs, RuntimeArgs, TelemetryArgs, parse_duration,
};
use switchyard_common::control::Control;
use switchyard_common::runs::Completion;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Every worker setting.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// This worker's name as lease owner [default: <host name>-<process id>-<random suffix>].
    #[arg(long, env = "SWITCHYARD_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Runs executed at once by this process.
    #[arg(
        long = "worker-concurrency",
        env = "SWITCHYARD_WORKER_CONCURRENCY",
        default_value_t = 16
    )]
    pub concurrency: usize,

    /// How long a claim holds a run without a heartbeat; heartbeats come every third of it.
    #[arg(long, env = "SWITCHYARD_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,

    /// How often the maintenance loop reaps expired leases and sweeps for lost messages.
    #[arg(long, env = "SWITCHYARD_MAINTENANCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub maintenance_interval: Duration,

    /// A queued run unclaimed for this long is published again (its message may be lost).
    #[arg(long, env = "SWITCHYARD_SWEEP_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub sweep_after: Duration,

    /// A pending delivery overdue by this long is published again.
    #[arg(long, env = "SWITCHYARD_DELIVERY_SWEEP_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub delivery_sweep_after: Duration,

    /// Where to serve `/metrics`, `/healthz` and `/readyz` (such as `0.0.0.0:9100`); unset, nowhere.
    #[arg(long, env = "SWITCHYARD_OPS_LISTEN")]
    pub ops_listen: Option<std::net::SocketAddr>,

    /// On SIGTERM, how long running runs may take to finish before they are handed back.
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// 32 bytes, base64: the key that unseals credentials (the same as the ingress's). Without
    /// it, agents that name a credential fail with `credential_unavailable`.
    #[arg(long, env = "SWITCHYARD_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// Most bytes of events one run may emit (text, tool calls and results, artifacts); past it
    /// the run ends `failed` with `errorCode: "output_too_large"`.
    #[arg(long, env = "SWITCHYARD_MAX_RUN_OUTPUT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_run_output_bytes: usize,

    /// Most events one run may emit besides pieces of text (tool calls and results, artifacts,
    /// retries); past it the run ends `failed` with `errorCode: "output_too_large"`.
    #[arg(long, env = "SWITCHYARD_MAX_RUN_EVENTS", default_value_t = 10_000)]
    pub max_run_events: usize,

    /// Networks agents, models and tools may reach besides public addresses, comma-separated
    /// CIDRs (e.g. `127.0.0.0/8` for a model on this host). Everything else non-public is refused.
    #[arg(long, env = "SWITCHYARD_EGRESS_ALLOW", default_value = "")]
    pub egress_allow: String,

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
pub(crate) struct Ctx {
    pub(crate) pool: Pool,
    pub(crate) broker: Broker,
    pub(crate) owner: String,
    pub(crate) lease: Duration,
    pub(crate) shutdown: CancellationToken,
    pub(crate) grace: Duration,
    /// Claims of concurrent deliveries, batched into one UPDATE.
    pub(crate) claims: Batcher<Uuid, claim::Claimed>,
    /// The runs executing here, with their cancel tokens.
    pub(crate) cancels: std::sync::Arc<Cancels>,
    /// The guarded client for agents, models and tools.
    pub(crate) http: reqwest::Client,
    pub(crate) guard: switchyard_common::egress::Guard,
    pub(crate) master_key: Option<switchyard_common::secrets::MasterKey>,
    /// Completions, batched into one transaction (runs and their deliveries).
    pub(crate) completions: Batcher<Completion, Result<bool, String>>,
    /// What one run may emit.
    pub(crate) caps: sink::Caps,
}

/// The cancel tokens of the runs this worker executes, and cancels heard for runs it has not
/// started yet (a claim and a cancel can cross), kept for a minute.
#[derive(Default)]
pub(crate) struct Cancels {
    inner: std::sync::Mutex<CancelState>,
}

#[derive(Default)]
pub(crate) struct CancelState {
    running: std::collections::HashMap<Uuid, CancellationToken>,
    early: std::collections::HashMap<Uuid, tokio::time::Instant>,
}

impl Cancels {
    /// The token of a run this worker starts; already cancelled if a cancel came first.
    pub(crate) fn register(&self, run_id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.early.remove(&run_id).is_some() {
            token.cancel();
        }
        state.running.insert(run_id, token.clone());
        token
    }

    pub(crate) fn unregister(&self, run_id: Uuid) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.running.remove(&run_id);
    }

    /// Cancels `run_id` if it runs here, or remembers the cancel in case it is about to.
    pub(crate) fn cancel(&self, run_id: Uuid) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = state.running.get(&run_id) {
            token.cancel();
            return;
        }
        let now = tokio::time::Instant::now();
        state
            .early
            .retain(|_, heard| now.duration_since(*heard) < Duration::from_secs(60));
        state.early.insert(run_id, now);
    }
}

/// How many claims or completions one statement takes at most.
pub(crate) const BATCH: usize = 64;
/// How many such statements run at once, per worker.
pub(crate) const BATCHES_IN_FLIGHT: usize = 4;

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &Uuid::now_v7().simple().to_string()[24..]
    )
}

/// Runs the worker until `shutdown`, then drains: no new runs are taken, running ones get
/// `shutdown_grace` to finish and are handed back otherwise.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = switchyard_common::metrics::install("switchyard-worker")?;
    let pool = switchyard_common::db::pool(&config.db)?;
    let broker_shutdown = CancellationToken::new();
    let broker = Broker::start(
        &config.broker.amqp_url,
        Topology::new(&config.broker.amqp_prefix),
        config.broker.publish_timeout,
        broker_shutdown.clone(),
    );
    if let Some(addr) = config.ops_listen {
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
    let owner = config.worker_id.clone().unwrap_or_else(default_worker_id);
    let guard = switchyard_common::egress::Guard::parse(&config.egress_allow)
        .map_err(anyhow::Error::msg)?;
    let http = switchyard_common::egress::client(
        &guard,
        // Each request sets its own timeout; a model's stream is bounded by the run's.
        Duration::from_secs(24 * 3600),
        concat!("Switchyard-Worker/", env!("CARGO_PKG_VERSION")),
    )
    .context("building the HTTP client")?;
    let master_key = config
        .master_key
        .as_deref()
        .map(switchyard_common::secrets::MasterKey::from_base64)
        .transpose()
        .context("SWITCHYARD_MASTER_KEY is not usable")?;
    let ctx = Ctx {
        http,
        guard,
        master_key,
        claims: claim::claimer(pool.clone(), broker.clone(), owner.clone(), config.lease),
        completions: finish::completer(pool.clone(), broker.clone(), owner.clone()),
        pool,
        broker: broker.clone(),
        owner,
        lease: config.lease,
        shutdown: shutdown.clone(),
        grace: config.shutdown_grace,
        cancels: std::sync::Arc::default(),
        caps: sink::Caps {
            max_bytes: config.max_run_output_bytes,
            max_events: config.max_run_events,
        },
    };
    // Cancels reach the worker holding a run through the control exchange.
    let cancels = std::sync::Arc::clone(&ctx.cancels);
    let control_broker = broker.clone();
    let control_shutdown = broker_shutdown.clone();
    tokio::spawn(async move {
        control_broker
            .subscribe_control(control_shutdown, |event| {
                if let amqp::ControlEvent::Message(body) = event
                    && let Some(Control::RunCancel { run_id }) = Control::decode(body)
                {
                    cancels.cancel(run_id);
                }
            })
            .await;
    });
    tracing::info!(worker_id = %ctx.owner, concurrency = config.concurrency, "worker starting");
    let maintenance = tokio::spawn(maintain::maintain(ctx.clone(), config.clone()));
    let handler_ctx = ctx.clone();
    broker
        .consume(
            broker.topology().runs(),
            config.concurrency,
            shutdown.clone(),
            move |delivery| claim::handle(handler_ctx.clone(), delivery),
        )
        .await;
    maintenance.abort();
    broker_shutdown.cancel();
    tracing::info!("worker stopped");
    Ok(())
}
