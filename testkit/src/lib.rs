//! The harness the integration tests, the quickstart and the bench share: fresh databases cloned
//! from a migrated template, unique broker prefixes, the real binaries as child processes, and a
//! webhook receiver that verifies every delivery with the Standard Webhooks algorithm.
//!
//! Everything it creates is removed again when dropped: databases, queues and processes.

pub mod api;
pub mod fake_llm;
pub mod fixtures;
pub mod otlp;
pub mod py;
pub mod receiver;
pub mod source;
pub mod sse;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use switchyard_common::amqp::Topology;
use switchyard_common::catalog::api_keys::Scope;
use tokio_postgres::NoTls;
use uuid::Uuid;

pub use receiver::{Received, Receiver};

/// The PostgreSQL server the tests use (trust auth).
pub fn postgres_base() -> String {
    std::env::var("SWITCHYARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The RabbitMQ the tests use.
pub fn amqp_url() -> String {
    std::env::var("SWITCHYARD_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The admin token every test stack's ingress accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The credential master key every test stack uses (32 bytes of 0x2a, base64).
pub const MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// The webhook secret every test stack signs with.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A short random suffix for names.
pub fn unique() -> String {
    Uuid::now_v7().simple().to_string()[20..].to_owned()
}

async fn admin() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&format!("{}/postgres", postgres_base()), NoTls)
        .await
        .context("connecting to PostgreSQL (is it running on 127.0.0.1:5432?)")?;
    tokio::spawn(conn);
    Ok(client)
}

/// A database of its own for one test, cloned from a template that holds every migration.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates the database. The template is built once per migration set, under an advisory
    /// lock, so parallel tests do not race to build it.
    pub async fn create() -> anyhow::Result<Self> {
        let template = template_name();
        let admin = admin().await?;
        admin
            .execute("SELECT pg_advisory_lock(7261001)", &[])
            .await?;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
            .await?
            .is_some();
        if !exists {
            // Templates of older migration sets are of no further use.
            let stale = admin
                .query(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'sy\\_template\\_%' AND datname <> $1",
                    &[&template],
                )
                .await?;
            for row in stale {
                let name: String = row.get(0);
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
            let building = format!("{template}_build");
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {building}"))
                .await?;
            switchyard_common::db::migrate(&format!("{}/{building}", postgres_base())).await?;
            admin
                .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
                .await?;
        }
        let name = format!("sy_test_{}", unique());
        let created = admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await;
        admin
            .execute("SELECT pg_advisory_unlock(7261001)", &[])
            .await?;
        created?;
        Ok(Self {
            url: format!("{}/{name}", postgres_base()),
            name,
        })
    }

    /// A client connected to this database.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", postgres_base()),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The template's name changes with the migrations, so an edited migration gets a fresh template.
fn template_name() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in MIGRATIONS {
        for b in migration.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("sy_template_{:012x}", hash & 0xffff_ffff_ffff)
}

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/V1__core.sql"),
    include_str!("../../migrations/V2__default_tenant.sql"),
    include_str!("../../migrations/V3__access_and_catalog.sql"),
    include_str!("../../migrations/V4__invocations.sql"),
    include_str!("../../migrations/V5__idempotency.sql"),
    include_str!("../../migrations/V6__rate_limits.sql"),
    include_str!("../../migrations/V7__conversations.sql"),
    include_str!("../../migrations/V8__cancel_timeouts_ttl.sql"),
    include_str!("../../migrations/V9__executors.sql"),
    include_str!("../../migrations/V10__concurrency_limits.sql"),
    include_str!("../../migrations/V11__webhook_endpoints.sql"),
    include_str!("../../migrations/V12__runs_by_tenant.sql"),
    include_str!("../../migrations/V13__trace_ids.sql"),
    include_str!("../../migrations/V14__console_sessions.sql"),
    include_str!("../../migrations/V15__hostile_tenants.sql"),
    include_str!("../../migrations/V16__fair_scheduling.sql"),
    include_str!("../../migrations/V17__shared_rate_limits.sql"),
    include_str!("../../migrations/V18__debounce.sql"),
    include_str!("../../migrations/V19__fair_keys.sql"),
    include_str!("../../migrations/V20__cheaper_turns.sql"),
];

/// How many migrations the repository holds.
pub fn migration_count() -> usize {
    MIGRATIONS.len()
}

/// Where the workspace's binaries are: next to the test executable's `deps/` folder.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts one of the workspace binaries with `serve` and the given environment.
    pub fn spawn(bin: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = bin_path(bin);
        let mut cmd = Command::new(&path);
        cmd.arg("serve")
            .env(
                "SWITCHYARD_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("SWITCHYARD_LOG_FORMAT", "text")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (run `cargo build --workspace --bins` first)",
                path.display()
            )
        })?;
        Ok(Self {
            name: bin.to_owned(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Settings of a test stack.
#[derive(Clone)]
pub struct StackOptions {
    pub workers: usize,
    pub worker_lease: &'static str,
    pub sweep_after: &'static str,
    pub retry_schedule: &'static str,
    /// Point the ingress at this AMQP URL instead of the real broker.
    pub ingress_amqp_url: Option<String>,
    /// Point the ingress at this database URL instead of the test database.
    pub ingress_database_url: Option<String>,
    pub receiver_script: Vec<u16>,
    /// `SWITCHYARD_EGRESS_ALLOW` of the notifier; loopback by default, since receivers live there.
    pub egress_allow: &'static str,
    /// `SWITCHYARD_WEBHOOK_TIMEOUT` of the notifier.
    pub webhook_timeout: &'static str,
    /// More environment for every ingress (after the harness's own, so it can override them).
    pub ingress_env: Vec<(&'static str, String)>,
    /// More environment for the notifier, likewise.
    pub notifier_env: Vec<(&'static str, String)>,
    /// More environment for every worker, likewise.
    pub worker_env: Vec<(&'static str, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            worker_lease: "30s",
            sweep_after: "30s",
            retry_schedule: "1s,1s,2s",
            ingress_amqp_url: None,
            ingress_database_url: None,
            receiver_script: Vec::new(),
            egress_allow: "127.0.0.0/8",
            webhook_timeout: "5s",
            ingress_env: Vec::new(),
            notifier_env: Vec::new(),
            worker_env: Vec::new(),
        }
    }
}

/// A whole Switchyard on its own database and broker prefix: ingress, workers, notifier, and a
/// verifying webhook receiver.
pub struct Stack {
    // Processes first: fields drop in order, and the database must outlive its clients.
    pub ingress: Proc,
    pub workers: Vec<Proc>,
    pub notifier: Proc,
    pub receiver: Receiver,
    pub prefix: String,
    pub base_url: String,
    /// A key of tenant `default` with every scope.
    pub api_key: String,
    pub http: reqwest::Client,
    options: StackOptions,
    pub db: TestDb,
}

impl Stack {
    /// Starts everything and waits until the ingress is ready.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let db = TestDb::create().await?;
        let prefix = format!("sy-test-{}.", unique());
        let receiver = Receiver::start(WEBHOOK_SECRET, options.receiver_script.clone()).await?;
        // A key of the seeded `default` tenant with every scope, made before the ingress starts
        // so that stacks whose ingress cannot reach the database still have one.
        let api_key = switchyard_common::catalog::api_keys::generate();
        switchyard_common::catalog::api_keys::insert_raw(
            &db.client().await?,
            "default",
            "test stack",
            &api_key,
            &[Scope::Trigger, Scope::RunsRead, Scope::Manage],
        )
        .await?;
        let (ingress, base_url) = spawn_ingress(&db, &prefix, &options)?;
        let mut stack = Self {
            workers: Vec::new(),
            notifier: Proc::spawn("switchyard-notifier", &notifier_env(&db, &prefix, &options))?,
            db,
            prefix,
            base_url,
            api_key,
            receiver,
            ingress,
            http: reqwest::Client::new(),
            options,
        };
        for _ in 0..stack.options.workers {
            stack.add_worker()?;
        }
        stack.wait_healthy().await?;
        Ok(stack)
    }

    /// Starts one more worker, named `worker-<index>` (its lease owner name).
    pub fn add_worker(&mut self) -> anyhow::Result<()> {
        let mut env = worker_env(&self.db, &self.prefix, &self.options);
        env.push((
            "SWITCHYARD_WORKER_ID",
            format!("worker-{}", self.workers.len()),
        ));
        self.workers.push(Proc::spawn("switchyard-worker", &env)?);
        Ok(())
    }

    /// Kills the notifier (SIGKILL) and starts a new one with the same settings.
    pub fn restart_notifier(&mut self) -> anyhow::Result<()> {
        self.notifier.kill9();
        self.notifier = Proc::spawn(
            "switchyard-notifier",
            &notifier_env(&self.db, &self.prefix, &self.options),
        )?;
        Ok(())
    }

    /// Waits until the ingress reports `ready` (both dependencies up), or only until it serves
    /// HTTP when a dependency was deliberately pointed elsewhere.
    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let broken =
            self.options.ingress_amqp_url.is_some() || self.options.ingress_database_url.is_some();
        let url = format!(
            "{}/{}",
            self.base_url,
            if broken { "healthz" } else { "readyz" }
        );
        wait_ready(&self.http, &url).await
    }

    /// `POST /v1/runs` with the test token.
    pub async fn create_run(&self, body: &serde_json::Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/v1/runs", self.base_url))
            .bearer_auth(&self.api_key)
            .json(body)
            .send()
            .await?)
    }

    /// `GET /v1/runs/{id}` as JSON.
    pub async fn get_run(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/v1/runs/{id}", self.base_url))
            .bearer_auth(&self.api_key)
            .send()
            .await?
            .json()
            .await?)
    }

    /// The scheduler's view of the runs still queued or running (status, what a queued run
    /// waits for, its turn, its lease), and of `also`: for the message of a test whose run
    /// did not finish, to tell a stuck run from a slow one.
    pub async fn scheduler_view(&self, also: &str) -> String {
        let Ok(client) = self.db.client().await else {
            return "the database is unreachable".into();
        };
        let rows = client
            .query(
                "SELECT r.id::text, r.status, coalesce(r.waiting, '-'), r.turn, r.attempt, \
                        coalesce(r.lease_owner, '-'), r.enqueued_at::text \
                 FROM runs r WHERE r.status IN ('queued', 'running') OR r.id::text = $1 ORDER BY r.id",
                &[&also],
            )
            .await;
        match rows {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {} waiting={} turn={} attempt={} lease={} enqueued={}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, f64>(3),
                        r.get::<_, i32>(4),
                        r.get::<_, String>(5),
                        r.get::<_, String>(6)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(err) => format!("cannot read the runs: {err}"),
        }
    }

    /// Starts one more ingress on the same database and broker prefix, and waits until it is
    /// ready; returns it with its base URL.
    pub async fn add_ingress(&self) -> anyhow::Result<(Proc, String)> {
        let (proc, base_url) = spawn_ingress(&self.db, &self.prefix, &self.options)?;
        wait_ready(&self.http, &format!("{base_url}/readyz")).await?;
        Ok((proc, base_url))
    }

    /// Adds an echo agent that waits `delay_ms` before answering.
    pub async fn add_echo_agent(&self, id: &str, delay_ms: u64) -> anyhow::Result<()> {
        let client = self.db.client().await?;
        client
            .execute(
                "INSERT INTO agents (tenant_id, id, project_id, name, kind, config) \
                 VALUES ('default', $1, 'default', $1, 'echo', $2)",
                &[&id, &serde_json::json!({ "delayMs": delay_ms })],
            )
            .await?;
        Ok(())
    }

    /// Empties one of this stack's queues, as if its messages had been lost (`runs`,
    /// `deliveries`, …: the name without the prefix). Returns how many it held.
    pub async fn purge(&self, queue: &str) -> anyhow::Result<u32> {
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let name = format!("{}{queue}", self.prefix);
        let purged = channel
            .queue_purge(
                name.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await?;
        let _ = connection.close(0, "purged".into()).await;
        Ok(purged)
    }

    /// The topology to delete on drop.
    fn topology(&self) -> Topology {
        let mut topology = Topology::new(&self.prefix);
        topology.retry_tiers =
            switchyard_common::config::parse_schedule(self.options.retry_schedule)
                .map(|s| s.0)
                .unwrap_or_default();
        topology
    }

    /// Stops every process and deletes the queues.
    pub async fn shutdown(mut self) {
        self.workers.clear();
        self.notifier.kill9();
        self.ingress.kill9();
        let _ = switchyard_common::amqp::delete_topology(&amqp_url(), &self.topology()).await;
    }
}

/// Polls a health URL until it answers `ok` or `ready`.
async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    poll(Duration::from_secs(30), || async {
        let response = http.get(url).send().await.ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        matches!(body["status"].as_str(), Some("ok" | "ready")).then_some(())
    })
    .await
    .context("the ingress did not become ready")
}

/// Starts an ingress on a free port; returns it with its base URL.
fn spawn_ingress(
    db: &TestDb,
    prefix: &str,
    options: &StackOptions,
) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let mut env = vec![
        ("SWITCHYARD_INGRESS_LISTEN", format!("127.0.0.1:{port}")),
        ("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("SWITCHYARD_MASTER_KEY", MASTER_KEY.into()),
        ("SWITCHYARD_KEY_USAGE_FLUSH", "200ms".into()),
        (
            "SWITCHYARD_DATABASE_URL",
            options
                .ingress_database_url
                .clone()
                .unwrap_or_else(|| db.url.clone()),
        ),
        (
            "SWITCHYARD_AMQP_URL",
            options.ingress_amqp_url.clone().unwrap_or_else(amqp_url),
        ),
        ("SWITCHYARD_AMQP_PREFIX", prefix.to_owned()),
        // Generous: four stacks share two cores under nextest.
        ("SWITCHYARD_ACCEPT_TIMEOUT", "10s".into()),
        ("SWITCHYARD_RUNTIME_THREADS", runtime_threads("0")),
    ];
    env.extend(options.ingress_env.iter().cloned());
    let proc = Proc::spawn("switchyard-ingress", &env)?;
    Ok((proc, format!("http://127.0.0.1:{port}")))
}

/// `SWITCHYARD_RUNTIME_THREADS` for a process: the caller's setting when it has one (the bench
/// sets it for every process), else single-threaded workers and notifier and a multi-threaded
/// ingress, so the suite covers both kinds of runtime.
fn runtime_threads(default: &str) -> String {
    std::env::var("SWITCHYARD_RUNTIME_THREADS").unwrap_or_else(|_| default.to_owned())
}

fn common_env(db: &TestDb, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHYARD_DATABASE_URL", db.url.clone()),
        ("SWITCHYARD_AMQP_URL", amqp_url()),
        ("SWITCHYARD_AMQP_PREFIX", prefix.to_owned()),
        ("SWITCHYARD_RUNTIME_THREADS", runtime_threads("1")),
    ]
}

fn worker_env(db: &TestDb, prefix: &str, options: &StackOptions) -> Vec<(&'static str, String)> {
    let mut env = common_env(db, prefix);
    env.push(("SWITCHYARD_LEASE", options.worker_lease.into()));
    env.push(("SWITCHYARD_SWEEP_AFTER", options.sweep_after.into()));
    env.push((
        "SWITCHYARD_DELIVERY_SWEEP_AFTER",
        options.sweep_after.into(),
    ));
    env.push(("SWITCHYARD_MAINTENANCE_INTERVAL", "500ms".into()));
    env.push(("SWITCHYARD_MASTER_KEY", MASTER_KEY.into()));
    // Fake models, tools and agents listen on loopback.
    env.push(("SWITCHYARD_EGRESS_ALLOW", options.egress_allow.into()));
    env.push(("SWITCHYARD_SHUTDOWN_GRACE", "2s".into()));
    env.extend(options.worker_env.iter().cloned());
    env
}

fn notifier_env(db: &TestDb, prefix: &str, options: &StackOptions) -> Vec<(&'static str, String)> {
    let mut env = common_env(db, prefix);
    env.push(("SWITCHYARD_WEBHOOK_SECRET", WEBHOOK_SECRET.into()));
    env.push(("SWITCHYARD_MASTER_KEY", MASTER_KEY.into()));
    env.push(("SWITCHYARD_RETRY_SCHEDULE", options.retry_schedule.into()));
    env.push(("SWITCHYARD_WEBHOOK_TIMEOUT", options.webhook_timeout.into()));
    env.push(("SWITCHYARD_EGRESS_ALLOW", options.egress_allow.into()));
    env.extend(options.notifier_env.iter().cloned());
    env
}

/// Calls `probe` every 50 ms until it yields a value or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
