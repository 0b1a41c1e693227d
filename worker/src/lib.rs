//! The Switchyard worker. Consumes run ids, claims each run in Postgres with a lease (then acks:
//! from there the lease, not the broker, owns the run), executes it while heartbeating, and
//! completes it in one transaction together with its webhook deliveries. Its maintenance loop
//! reaps expired leases and republishes what the broker may have lost.
//!
//! Architecture invariant: the worker never sends webhooks and never serves the public API; it
//! changes run status only through `switchyard_common::runs`.

pub mod executor;
pub mod http_agent;
pub mod openai;
pub mod outbound;
pub mod sink;

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use lapin::message::Delivery;
use switchyard_common::amqp::{self, Broker, Topology};
use switchyard_common::batch::{Batcher, answer_each};
use switchyard_common::config::{
    BrokerArgs, DatabaseArgs, RuntimeArgs, TelemetryArgs, parse_duration,
};
use switchyard_common::control::Control;
use switchyard_common::events::{EventKind, NewEvent};
use switchyard_common::lifecycle::{self, Left};
use switchyard_common::runs::{Completion, Pending};
use switchyard_common::{AgentSpec, Run, RunStatus, deliveries, runs, telemetry};

use crate::sink::Sink;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
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

/// One claim's answer: the run won (with its agent), or `None`; `Err` carries the cause.
type Claimed = Result<Claim, String>;

/// What a claim found for one message.
enum Claim {
    /// The run is ours to execute.
    Won(Box<(Run, AgentSpec)>),
    /// Someone else's, finished, cancelled, or not its turn: ack and move on.
    Skip,
    /// No such run: a poison message, for the dead-letter queue.
    Unknown,
}

#[derive(Clone)]
struct Ctx {
    pool: Pool,
    broker: Broker,
    owner: String,
    lease: Duration,
    shutdown: CancellationToken,
    grace: Duration,
    /// Claims of concurrent deliveries, batched into one UPDATE.
    claims: Batcher<Uuid, Claimed>,
    /// The runs executing here, with their cancel tokens.
    cancels: std::sync::Arc<Cancels>,
    /// The guarded client for agents, models and tools.
    http: reqwest::Client,
    guard: switchyard_common::egress::Guard,
    master_key: Option<switchyard_common::secrets::MasterKey>,
    /// Completions, batched into one transaction (runs and their deliveries).
    completions: Batcher<Completion, Result<bool, String>>,
    /// What one run may emit.
    caps: sink::Caps,
}

/// The cancel tokens of the runs this worker executes, and cancels heard for runs it has not
/// started yet (a claim and a cancel can cross), kept for a minute.
#[derive(Default)]
struct Cancels {
    inner: std::sync::Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    running: std::collections::HashMap<Uuid, CancellationToken>,
    early: std::collections::HashMap<Uuid, tokio::time::Instant>,
}

impl Cancels {
    /// The token of a run this worker starts; already cancelled if a cancel came first.
    fn register(&self, run_id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.early.remove(&run_id).is_some() {
            token.cancel();
        }
        state.running.insert(run_id, token.clone());
        token
    }

    fn unregister(&self, run_id: Uuid) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.running.remove(&run_id);
    }

    /// Cancels `run_id` if it runs here, or remembers the cancel in case it is about to.
    fn cancel(&self, run_id: Uuid) {
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
const BATCH: usize = 64;
/// How many such statements run at once, per worker.
const BATCHES_IN_FLIGHT: usize = 4;

fn claimer(pool: Pool, owner: String, lease: Duration) -> Batcher<Uuid, Claimed> {
    Batcher::start(BATCH, BATCHES_IN_FLIGHT, move |ids: Vec<Uuid>| {
        let (pool, owner) = (pool.clone(), owner.clone());
        async move {
            let claimed = async {
                let mut client = pool.get().await.context("getting a connection")?;
                let mut won = runs::claim_many(&client, &ids, &owner, lease)
                    .await
                    .context("claiming runs")?;
                let mut unknown = Vec::new();
                // What went wrong after some runs were won: those stay won (they are ours now),
                // the others are retried.
                let mut trouble = None;
                // Runs of agents with a concurrency limit each take a slot, one by one; ids of
                // no run at all are poison. Only asked when some runs were not won, which is
                // rare without limited agents and sessions.
                if won.len() < ids.len() {
                    let rest: Vec<Uuid> = ids
                        .iter()
                        .filter(|id| !won.iter().any(|(run, _)| run.id == **id))
                        .copied()
                        .collect();
                    match runs::why_unclaimed(&client, &rest).await {
                        Ok(unclaimed) => {
                            unknown = unclaimed.unknown;
                            for id in unclaimed.limited {
                                match runs::claim_limited(&mut client, id, &owner, lease).await {
                                    Ok(Some(claimed)) => won.push(claimed),
                                    Ok(None) => {}
                                    Err(err) => {
                                        trouble = Some(format!("claiming a limited run: {err}"));
                                        break;
                                    }
                                }
                            }
                        }
                        Err(err) => trouble = Some(format!("looking at unclaimed runs: {err}")),
                    }
                }
                anyhow::Ok((won, unknown, trouble))
            }
            .await;
            match claimed {
                Ok((won, unknown, trouble)) => {
                    let mut won: std::collections::HashMap<Uuid, (Run, AgentSpec)> =
                        won.into_iter().map(|c| (c.0.id, c)).collect();
                    ids.iter()
                        .map(|id| match won.remove(id) {
                            Some(claimed) => Ok(Claim::Won(Box::new(claimed))),
                            None if unknown.contains(id) => Ok(Claim::Unknown),
                            None => trouble.clone().map_or(Ok(Claim::Skip), Err),
                        })
                        .collect()
                }
                Err(err) => {
                    let cause = format!("{err:#}");
                    ids.iter().map(|_| Err(cause.clone())).collect()
                }
            }
        }
    })
}

fn completer(
    pool: Pool,
    broker: Broker,
    owner: String,
) -> Batcher<Completion, Result<bool, String>> {
    Batcher::start(BATCH, BATCHES_IN_FLIGHT, move |results: Vec<Completion>| {
        let (pool, broker, owner) = (pool.clone(), broker.clone(), owner.clone());
        async move {
            let complete = |results: Vec<Completion>| {
                let (pool, broker, owner) = (pool.clone(), broker.clone(), owner.clone());
                async move {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    let done = runs::complete_many(&tx, &owner, &results).await?;
                    // Each delivery message continues the trace of the run it reports.
                    let recorded = lifecycle::record(&tx, done, Left::Running)
                        .await?
                        .traced(results.iter().map(|c| (c.id, c.trace.clone())));
                    tx.commit().await?;
                    lifecycle::announce(&pool, &broker, &recorded).await;
                    Ok::<_, anyhow::Error>(recorded.runs)
                }
            };
            let mut completed = complete(results.clone()).await;
            if completed.is_err() && results.len() > 1 {
                // A result the database refuses must not hold back the others: complete them one
                // by one, so only the culprit is retried.
                let mut done = Vec::new();
                for result in &results {
                    if let Ok(runs) = complete(vec![result.clone()]).await {
                        done.extend(runs);
                    }
                }
                completed = Ok(done);
            }
            let ids: Vec<Uuid> = results.iter().map(|c| c.id).collect();
            answer_each(&ids, completed, |run| run.id)
                .into_iter()
                .map(|answer| answer.map(|run| run.is_some()))
                .collect()
        }
    })
}

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
        claims: claimer(pool.clone(), owner.clone(), config.lease),
        completions: completer(pool.clone(), broker.clone(), owner.clone()),
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
    let maintenance = tokio::spawn(maintain(ctx.clone(), config.clone()));
    let handler_ctx = ctx.clone();
    broker
        .consume(
            broker.topology().runs(),
            config.concurrency,
            shutdown.clone(),
            move |delivery| handle(handler_ctx.clone(), delivery),
        )
        .await;
    maintenance.abort();
    broker_shutdown.cancel();
    tracing::info!("worker stopped");
    Ok(())
}

async fn handle(ctx: Ctx, delivery: Delivery) {
    let Some(run_id) = amqp::parse_id(&delivery) else {
        tracing::warn!("malformed run message; dead-lettering it");
        amqp::dead_letter(&delivery).await;
        return;
    };
    let span = amqp::process_span(&delivery, &ctx.broker.topology().runs(), run_id);
    async move {
        let claimed = ctx
            .claims
            .submit(run_id)
            .instrument(tracing::info_span!("claim", %run_id))
            .await
            .unwrap_or_else(|gone| Err(gone.to_string()));
        match claimed {
            Ok(Claim::Won(claimed)) => {
                let (run, agent) = *claimed;
                // The lease owns the run from here; a failed ack only means a duplicate later.
                amqp::ack(&delivery).await;
                let span = tracing::info_span!(
                    "execute",
                    otel.name = %format!("execute {}", agent.kind),
                    run_id = %run.id,
                    tenant_id = %run.tenant_id,
                    agent_id = %run.agent_id,
                    attempt = run.attempt,
                );
                // Execution time per attempt, by agent: from the claim to the recorded end.
                let labels = [
                    ("tenant", run.tenant_id.clone()),
                    ("agent", run.agent_id.clone()),
                ];
                let started = std::time::Instant::now();
                execute(&ctx, run, agent).instrument(span).await;
                metrics::histogram!(switchyard_common::metrics::EXECUTION, &labels)
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(Claim::Skip) => {
                tracing::debug!(
                    "run already claimed, cancelled, finished, or not its turn; skipping"
                );
                amqp::ack(&delivery).await;
            }
            Ok(Claim::Unknown) => {
                tracing::warn!("no such run; dead-lettering the message");
                amqp::dead_letter(&delivery).await;
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot claim; requeueing the message"
                );
                amqp::requeue_after(&delivery, Duration::from_secs(1)).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// How a run's execution ended here.
enum Outcome {
    /// The executor answered.
    Done(Result<executor::Output, executor::ExecError>),
    /// It took longer than the agent's `timeoutSeconds`.
    TimedOut,
    /// A cancel was asked for.
    Cancelled,
    /// The worker is shutting down and the grace period is over: give the run back.
    HandBack,
}

async fn execute(ctx: &Ctx, run: Run, agent: AgentSpec) {
    if agent.limited {
        // More slots may be free than messages came: start the agent's next run too.
        lifecycle::start_next_for_agent(&ctx.pool, &ctx.broker, &run).await;
    }
    let lost = CancellationToken::new();
    let cancel = ctx.cancels.register(run.id);
    // Dropped on every way out of here, a panic included: a heartbeat that outlived its
    // execution would hold the lease (and the run) forever.
    let _heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(heartbeat(
        ctx.clone(),
        run.id,
        lost.clone(),
        cancel.clone(),
    )));
    let _registered = Registered(ctx, run.id);
    let history = match conversation(ctx, &run).await {
        Ok(history) => history,
        Err(err) => {
            tracing::warn!(run_id = %run.id, error = format!("{err:#}"), "cannot read the conversation; handing the run back");
            hand_back(ctx, run.id).await;
            return;
        }
    };
    let drained = async {
        ctx.shutdown.cancelled().await;
        tokio::time::sleep(ctx.grace).await;
    };
    let sink = Sink::start(
        ctx.pool.clone(),
        ctx.broker.clone(),
        ctx.owner.clone(),
        run.id,
        run.last_seq + 1,
        vec![NewEvent {
            kind: EventKind::Status,
            data: serde_json::json!({"status": "running", "attempt": run.attempt}),
        }],
        ctx.caps,
    );
    let env = outbound::Env {
        http: ctx.http.clone(),
        guard: ctx.guard.clone(),
        credentials: credentials(ctx, &run, &agent).await,
        attempts: u32::try_from(run.max_attempts).unwrap_or(1),
    };
    let executing = tokio::time::timeout(
        agent.timeout,
        executor::execute(&agent, &run, &history, &sink.emitter, &env),
    );
    let budget = std::sync::Arc::clone(&sink.budget);
    // Leaving the `select!` drops the executor, which aborts its requests to the provider.
    let outcome = tokio::select! {
        // A run past its output caps ends at once, whatever its executor was doing: what a
        // tenant's agent, model or tool sends cannot grow a worker's memory without bound.
        biased;
        error = budget.exceeded() => {
            tracing::warn!(run_id = %run.id, "output past its limits; ending the run");
            Some(Outcome::Done(Err(error)))
        }
        outcome = executing => Some(outcome.map_or(Outcome::TimedOut, Outcome::Done)),
        () = cancel.cancelled() => {
            tracing::info!(run_id = %run.id, "cancelled");
            Some(Outcome::Cancelled)
        }
        () = lost.cancelled() => {
            tracing::warn!(run_id = %run.id, "lease lost; abandoning the run");
            None
        }
        () = drained => {
            tracing::warn!(run_id = %run.id, "shutting down; handing the run back");
            Some(Outcome::HandBack)
        }
    };
    // An executor that noticed the caps itself may have ended before the budget's branch was
    // polled: the caps decide, whatever it answered.
    let outcome = match outcome {
        Some(Outcome::Done(Ok(_))) if budget.is_spent() => {
            Some(Outcome::Done(Err(budget.exceeded().await)))
        }
        other => other,
    };
    // Whatever the sink has not written goes in with the outcome; it writes nothing after this.
    let pending = sink.finish().await;
    match outcome {
        Some(Outcome::HandBack) => hand_back(ctx, run.id).await,
        // The heartbeat keeps the lease while the outcome is recorded, however long that takes.
        Some(outcome) => finish(ctx, &run, &agent, outcome, pending).await,
        None => {}
    }
}

/// Takes a run off the worker's cancel list when its execution ends, however it ends.
struct Registered<'a>(&'a Ctx, Uuid);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.cancels.unregister(self.1);
    }
}

/// The secrets the agent names (its own credential, and its tools'), revealed for this run.
/// One that cannot be read is left out: the executor that needs it fails the run with
/// `credential_unavailable`.
async fn credentials(
    ctx: &Ctx,
    run: &Run,
    agent: &AgentSpec,
) -> std::collections::HashMap<String, String> {
    let mut ids: Vec<String> = agent.credential_id.iter().cloned().collect();
    if let Some(tools) = agent
        .config
        .get("tools")
        .and_then(serde_json::Value::as_array)
    {
        ids.extend(
            tools
                .iter()
                .filter_map(|t| t.get("credentialReferenceId")?.as_str().map(str::to_owned)),
        );
    }
    let mut revealed = std::collections::HashMap::new();
    let (Some(key), false) = (&ctx.master_key, ids.is_empty()) else {
        return revealed;
    };
    let Ok(client) = ctx.pool.get().await else {
        return revealed;
    };
    for id in ids {
        match switchyard_common::catalog::credentials::reveal(&client, key, &run.tenant_id, &id)
            .await
        {
            Ok(secret) => {
                revealed.insert(id, secret);
            }
            Err(err) => {
                tracing::warn!(run_id = %run.id, credential = %id, error = %err, "cannot read a credential")
            }
        }
    }
    revealed
}

/// The earlier messages of the run's conversation; none without a session.
async fn conversation(
    ctx: &Ctx,
    run: &Run,
) -> anyhow::Result<Vec<switchyard_common::conversations::Message>> {
    let Some(conversation_id) = run.conversation_id else {
        return Ok(Vec::new());
    };
    let client = ctx.pool.get().await?;
    Ok(switchyard_common::conversations::history(&client, &run.tenant_id, conversation_id).await?)
}

/// `running → queued` without spending the attempt, then publishes the run so that a worker can
/// start it at once (or, if a cancel was asked for, `→ cancelled` with its deliveries). Should
/// the release fail, the lease expires and the reaper requeues it.
async fn hand_back(ctx: &Ctx, run_id: Uuid) {
    let released = async {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let released = runs::release(&tx, run_id, &ctx.owner).await?;
        let recorded =
            lifecycle::record(&tx, released.into_iter().collect(), Left::Running).await?;
        tx.commit().await?;
        anyhow::Ok(recorded)
    };
    // The broker outlives the consumers, so another worker can start it now.
    if let Ok(recorded) = released.await {
        lifecycle::announce(&ctx.pool, &ctx.broker, &recorded).await;
    }
}

async fn heartbeat(ctx: Ctx, run_id: Uuid, lost: CancellationToken, cancel: CancellationToken) {
    let every = ctx.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let beat = async {
            let client = ctx.pool.get().await.ok()?;
            runs::heartbeat(&client, run_id, &ctx.owner, ctx.lease)
                .await
                .ok()
        };
        match beat.await {
            Some(Some(false)) => {}
            // A cancel the control exchange did not bring.
            Some(Some(true)) => cancel.cancel(),
            Some(None) => {
                lost.cancel();
                return;
            }
            // The database is unreachable: keep trying until the lease runs out.
            None => tracing::warn!(%run_id, "heartbeat failed"),
        }
    }
}

/// Records the outcome and its deliveries in one transaction (batched with other runs'
/// completions), then publishes the delivery ids. Retries while the database is unreachable, for
/// as long as the lease could still be ours.
async fn finish(ctx: &Ctx, run: &Run, agent: &AgentSpec, outcome: Outcome, pending: Pending) {
    let deadline = tokio::time::Instant::now() + ctx.lease;
    loop {
        let recorded = match &outcome {
            Outcome::Done(Ok(output)) => ctx
                .completions
                .submit(Completion {
                    id: run.id,
                    result: output.result.clone(),
                    usage: output.usage.clone(),
                    artifacts: output.artifacts.clone(),
                    pending: pending.clone(),
                    trace: telemetry::current_trace_headers(),
                })
                .await
                .unwrap_or_else(|gone| Err(gone.to_string())),
            other => record_end(ctx, run, agent, other, &pending)
                .await
                .map_err(|e| format!("{e:#}")),
        };
        match recorded {
            Ok(true) => {
                tracing::info!(run_id = %run.id, "run finished");
                return;
            }
            Ok(false) => {
                tracing::warn!(run_id = %run.id, "the lease was lost before completion; result dropped");
                // Or an earlier try committed and only its answer was lost: then the next runs
                // are ours to start. A needless publish is refused by its claim.
                lifecycle::start_next(&ctx.pool, &ctx.broker, run, Left::Running).await;
                return;
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(run_id = %run.id, error = %err, "cannot record the outcome; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                tracing::error!(run_id = %run.id, error = %err, "giving up recording; the reaper will requeue");
                return;
            }
        }
    }
}

/// Records an end other than success (`failed`, `timed_out`, `cancelled`) with its deliveries,
/// in one transaction; then publishes its events and deliveries. `false`: the lease was lost.
async fn record_end(
    ctx: &Ctx,
    run: &Run,
    agent: &AgentSpec,
    outcome: &Outcome,
    pending: &Pending,
) -> anyhow::Result<bool> {
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let ended = match outcome {
        Outcome::Done(Ok(_)) => anyhow::bail!("a success is recorded by the completer"),
        Outcome::Done(Err(err)) => {
            runs::end_with_error(
                &tx,
                run.id,
                &ctx.owner,
                RunStatus::Failed,
                err.code,
                &err.message,
                pending,
            )
            .await?
        }
        Outcome::TimedOut => {
            let message = format!(
                "the run took longer than its agent's timeoutSeconds ({} s)",
                agent.timeout.as_secs()
            );
            runs::end_with_error(
                &tx,
                run.id,
                &ctx.owner,
                RunStatus::TimedOut,
                "timeout",
                &message,
                pending,
            )
            .await?
        }
        Outcome::Cancelled => runs::cancel_running(&tx, run.id, &ctx.owner, pending).await?,
        Outcome::HandBack => anyhow::bail!("a hand-back is not an end"),
    };
    let Some(ended) = ended else {
        return Ok(false);
    };
    let recorded = lifecycle::record(&tx, vec![ended], Left::Running).await?;
    tx.commit().await?;
    lifecycle::announce(&ctx.pool, &ctx.broker, &recorded).await;
    Ok(true)
}

/// Sets `switchyard_runs{status}` for the runs queued and running now (two partial indexes).
async fn sample_run_counts(ctx: &Ctx) -> anyhow::Result<()> {
    let client = ctx.pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM runs WHERE status = 'queued'), \
                    (SELECT count(*) FROM runs WHERE status = 'running')",
            &[],
        )
        .await?;
    for (i, status) in ["queued", "running"].into_iter().enumerate() {
        let n: i64 = row.get(i);
        metrics::gauge!(switchyard_common::metrics::RUNS, "status" => status).set(n as f64);
    }
    Ok(())
}

/// How often a worker that serves metrics counts the runs queued and running.
const SAMPLE_RUNS_EVERY: Duration = Duration::from_secs(10);

/// The maintenance loop: reaper and sweepers. Every worker runs it; `SKIP LOCKED` keeps them from
/// doing the same row twice. A worker that serves metrics also samples `switchyard_runs`.
async fn maintain(ctx: Ctx, config: Config) {
    let mut tick = tokio::time::interval(config.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        if config.ops_listen.is_some() && sampled.is_none_or(|at| at.elapsed() >= SAMPLE_RUNS_EVERY)
        {
            sampled = Some(tokio::time::Instant::now());
            if let Err(err) = sample_run_counts(&ctx).await {
                tracing::debug!(error = format!("{err:#}"), "cannot count the runs");
            }
        }
        if let Err(err) = maintain_once(&ctx, &config).await {
            tracing::debug!(error = format!("{err:#}"), "maintenance pass failed");
        }
    }
}

async fn maintain_once(ctx: &Ctx, config: &Config) -> anyhow::Result<()> {
    const SWEEP_BATCH: i64 = 500;
    let topology = ctx.broker.topology();
    // Reap: expired leases go back to the queue, or fail once their attempts are spent.
    let reaped = {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let reaped = runs::reap_expired(&tx, SWEEP_BATCH).await?;
        let recorded = lifecycle::record(&tx, reaped, Left::Running).await?;
        tx.commit().await?;
        recorded
    };
    if !reaped.is_empty() {
        let requeued = reaped
            .runs
            .iter()
            .filter(|r| !r.status.is_terminal())
            .count();
        tracing::warn!(
            requeued,
            failed = reaped.runs.len() - requeued,
            "reaped expired leases"
        );
        lifecycle::announce(&ctx.pool, &ctx.broker, &reaped).await;
    }

    // Expire: queued runs whose ttl passed before any worker started them.
    let expired = {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        let expired = runs::expire_overdue(&tx, SWEEP_BATCH).await?;
        let recorded = lifecycle::record(&tx, expired, Left::Queued).await?;
        tx.commit().await?;
        recorded
    };
    if !expired.is_empty() {
        tracing::info!(
            expired = expired.runs.len(),
            "expired runs whose ttl passed"
        );
        lifecycle::announce(&ctx.pool, &ctx.broker, &expired).await;
    }

    // Sweep: queued runs and pending deliveries whose messages may have been lost.
    if !ctx.broker.is_connected() {
        return Ok(());
    }
    let client = ctx.pool.get().await?;
    // While run messages wait in the queue, an old queued run is most likely one of them, not a
    // lost one: republishing would only pile duplicates onto a backlog. Sweep once it drains.
    // An unknown count (a slow broker) counts as a backlog.
    let backlog = ctx.broker.ready_count(&topology.runs()).await;
    // The next runs of sessions are swept whatever the backlog: their messages are not in it.
    let unclaimed = if backlog == Some(0) {
        runs::sweep_unclaimed(&client, config.sweep_after, SWEEP_BATCH).await?
    } else {
        runs::sweep_waiting(&client, config.sweep_after, SWEEP_BATCH).await?
    };
    if !unclaimed.is_empty() {
        let sent = ctx
            .broker
            .publish_ids(&topology.runs(), &unclaimed)
            .await
            .unwrap_or(0);
        tracing::info!(found = unclaimed.len(), sent, "republished unclaimed runs");
    }
    let stalled =
        deliveries::sweep_stalled(&client, config.delivery_sweep_after, SWEEP_BATCH).await?;
    if !stalled.is_empty() {
        let sent = ctx
            .broker
            .publish_ids(&topology.deliveries(), &stalled)
            .await
            .unwrap_or(0);
        tracing::info!(
            found = stalled.len(),
            sent,
            "republished stalled deliveries"
        );
    }
    Ok(())
}
