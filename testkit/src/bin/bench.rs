//! `bench`: measures Switchyard on this machine with the echo agent, beside the raw pgbench
//! single-row INSERT rate taken in the same run. Prints a Markdown report.
//!
//! - durable accept: `POST /v1/runs` throughput and latency at several concurrencies, workers off;
//! - end to end: invocation → echo run → verified webhook, latency and throughput, with the CPU
//!   time the ingress, workers and notifier spent per run;
//! - SSE fan-out: how long a run's live events take from their commit to many clients streaming
//!   them from two ingress replicas;
//! - webhook delivery: how fast one notifier drains a backlog of deliveries, to runs' own
//!   `webhookUrl` or fanned out to webhook endpoints;
//! - the noisy neighbour: quiet tenants' wait behind another tenant's flood, the throughput beside
//!   one tenant alone, and what one pick of the scheduler costs with 10 or 1,000 tenants waiting.
//!
//! Run it through `scripts/bench.sh`, which builds the release binaries first.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::{Value, json};
use switchyard_testkit::{Stack, StackOptions, postgres_base, unique};
use tokio::sync::Semaphore;

#[path = "bench/noisy.rs"]
mod noisy;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Switchyard throughput and latency on this machine"
)]
struct Args {
    /// Requests per accept measurement.
    #[arg(long, default_value_t = 5000)]
    accept_requests: usize,
    /// Client concurrencies to measure accept at.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    accept_concurrency: Vec<usize>,
    /// Client concurrencies to measure accept through the trigger route at.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    trigger_concurrency: Vec<usize>,
    /// Runs per end-to-end measurement.
    #[arg(long, default_value_t = 3000)]
    e2e_runs: usize,
    /// Client concurrencies to measure end to end at.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    e2e_concurrency: Vec<usize>,
    /// Offered rates (runs per second) for the fixed-rate latency measurement.
    #[arg(long, value_delimiter = ',', default_value = "100,300,600")]
    e2e_rates: Vec<u32>,
    /// Seconds each fixed-rate measurement sends for.
    #[arg(long, default_value_t = 10)]
    e2e_seconds: u32,
    /// Workers in the end-to-end stack.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds each pgbench measurement runs.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u32,
    /// Clients streaming one run's events, for the SSE fan-out measurement.
    #[arg(long, value_delimiter = ',', default_value = "10,100,400")]
    sse_clients: Vec<usize>,
    /// Deliveries per delivery-throughput measurement.
    #[arg(long, default_value_t = 6000)]
    deliveries: usize,
    /// Webhook endpoints each run fans out to, per delivery measurement (0: the run's own
    /// `webhookUrl`).
    #[arg(long, value_delimiter = ',', default_value = "0,4")]
    delivery_endpoints: Vec<usize>,
    /// Runs of the loud tenant in the noisy-neighbour measurement (0: skip it).
    #[arg(long, default_value_t = 3000)]
    noisy_runs: usize,
    /// Milliseconds each of those runs takes.
    #[arg(long, default_value_t = 1000)]
    noisy_delay_ms: u64,
    /// Quiet tenants arriving behind the flood, and the runs each sends.
    #[arg(long, default_value_t = 10)]
    quiet_tenants: usize,
    #[arg(long, default_value_t = 3)]
    quiet_runs: usize,
    /// The endpoints' `maxConcurrency` values to measure delivery at (10 is the default).
    #[arg(long, value_delimiter = ',', default_value = "10,64")]
    delivery_max_concurrency: Vec<u32>,
    /// Measure only pgbench and the fixed-rate end to end (with its breakdown per hop).
    #[arg(long)]
    only_rates: bool,
    /// At each fixed rate, list the N statements that took PostgreSQL the most time (needs
    /// `pg_stat_statements` in `shared_preload_libraries`; 0: none).
    #[arg(long, default_value_t = 0)]
    statements: usize,
    /// Before the fixed rates, measure the CPU of an idle stack for this many seconds (0: not).
    #[arg(long, default_value_t = 0)]
    idle_seconds: u32,
}

/// One row of the delivery table: `deliveries` webhooks made while the notifier is down (runs
/// with a `webhookUrl`, or runs fanned out to `endpoints` wildcard endpoints), then drained by one
/// freshly started notifier into the bench's verifying receiver.
async fn delivery_drain(
    deliveries: usize,
    endpoints: usize,
    max_concurrency: u32,
    workers: usize,
) -> anyhow::Result<String> {
    let mut stack = Stack::start(StackOptions {
        workers,
        ..StackOptions::default()
    })
    .await?;
    let http = authed(&stack, 64);
    for n in 0..endpoints {
        let made = http
            .post(format!(
                "{}/manage/tenants/default/webhook-endpoints",
                stack.base_url
            ))
            .json(
                &json!({"id": format!("bench-{n}"), "url": stack.receiver.url,
                          "secret": switchyard_testkit::WEBHOOK_SECRET,
                          "maxConcurrency": max_concurrency}),
            )
            .send()
            .await?;
        anyhow::ensure!(
            made.status() == 201,
            "creating an endpoint: {}",
            made.status()
        );
    }
    stack.notifier.kill9();
    let runs = deliveries / endpoints.max(1);
    let hook = stack.receiver.url.clone();
    let webhook = (endpoints == 0).then_some(hook.as_str());
    let sent = load(&stack, runs, 64, webhook).await;
    let expected = sent.sent_at.len() * endpoints.max(1);
    let db = stack.db.client().await?;
    switchyard_testkit::poll(Duration::from_secs(300), || async {
        let row = db
            .query_one("SELECT count(*) FROM deliveries", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) as usize >= expected).then_some(())
    })
    .await
    .context("every run completes with its deliveries")?;
    let cpu_before = Cpu::now(&stack);
    let started = Instant::now();
    stack.restart_notifier()?;
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(600), |r| r.len() >= expected)
        .await?;
    let elapsed = started.elapsed();
    let cpu = Cpu::now(&stack).since(cpu_before);
    let verified = received.iter().filter(|r| r.verified).count();
    stack.shutdown().await;
    Ok(format!(
        "| {} | {expected} | {:.0} | {verified}/{expected} | {} |",
        if endpoints == 0 {
            "run's own `webhookUrl`".to_owned()
        } else {
            format!("{endpoints} endpoints per run, `maxConcurrency` {max_concurrency}")
        },
        expected as f64 / elapsed.as_secs_f64(),
        cpu.per_run(expected),
    ))
}

/// One row of the SSE fan-out table: `clients` streams of one echo run (40 words over 4 s), half
/// from each of two ingress replicas (with the per-key stream cap lifted above `clients`). Latency is from the event's `createdAt` (its INSERT, on the
/// database's clock) to its arrival at a client, for events created after every client was
/// listening.
async fn sse_fanout(clients: usize) -> anyhow::Result<String> {
    // Every client streams with the one key: lift the per-key cap on open streams above them.
    let cap = (clients + 10).to_string();
    let stack = Stack::start(StackOptions {
        workers: 1,
        ingress_env: vec![
            ("SWITCHYARD_MAX_STREAMS_PER_KEY", cap.clone()),
            ("SWITCHYARD_MAX_STREAMS_PER_TENANT", cap),
        ],
        ..StackOptions::default()
    })
    .await?;
    let (_second, other) = stack.add_ingress().await?;
    stack.add_echo_agent("bench-sse", 4000).await?;
    let http = authed(&stack, clients);
    let message: Vec<String> = (0..40).map(|n| format!("w{n}")).collect();
    let created: Value = http
        .post(format!("{}/v1/runs", stack.base_url))
        .json(&json!({"agentId": "bench-sse", "message": message.join(" ")}))
        .send()
        .await?
        .json()
        .await?;
    let run_id = created["id"].as_str().context("run id")?.to_owned();
    let mut streams = Vec::with_capacity(clients);
    for n in 0..clients {
        let base = if n % 2 == 0 { &stack.base_url } else { &other };
        let response = http
            .get(format!("{base}/v1/runs/{run_id}/events"))
            .send()
            .await?;
        streams.push(switchyard_testkit::sse::Reader::new(response));
    }
    let listening = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(100);
    let mut readers = Vec::with_capacity(clients);
    for mut reader in streams {
        readers.push(tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let mut complete = false;
            while let Some(event) = reader.next_event(Duration::from_secs(30)).await {
                let at = time::OffsetDateTime::now_utc();
                let data = event.json();
                let created = data["createdAt"].as_str().and_then(|c| {
                    time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339)
                        .ok()
                });
                if let Some(created) = created {
                    arrivals.push((created, at));
                }
                if data["type"] == "status" && data["data"]["status"] == "completed" {
                    complete = true;
                }
            }
            (arrivals, complete)
        }));
    }
    let mut latencies = Vec::new();
    let mut complete = 0;
    for reader in readers {
        let (arrivals, done) = reader.await?;
        complete += usize::from(done);
        for (created, at) in arrivals {
            if created > listening {
                latencies.push((at - created).unsigned_abs());
            }
        }
    }
    latencies.sort();
    stack.shutdown().await;
    Ok(format!(
        "| {clients} | {} | {} | {} | {} | {complete}/{clients} |",
        latencies.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// pgbench's rate of single-row INSERT commits with `clients` connections.
fn pgbench(clients: u32, seconds: u32) -> anyhow::Result<f64> {
    let db = format!("sy_pgbench_{}", unique());
    let base = postgres_base();
    let psql = |sql: &str| {
        Command::new("psql")
            .args([&format!("{base}/postgres"), "-qc", sql])
            .status()
    };
    psql(&format!("CREATE DATABASE {db}"))?;
    let url = format!("{base}/{db}");
    Command::new("psql")
        .args([&url, "-qc", "CREATE TABLE t (id bigserial PRIMARY KEY, payload text NOT NULL, at timestamptz NOT NULL DEFAULT now())"])
        .status()?;
    let script = std::env::temp_dir().join(format!("{db}.sql"));
    std::fs::write(
        &script,
        "INSERT INTO t (payload) VALUES ('{\"message\":\"hello\"}');\n",
    )?;
    let out = Command::new("pgbench")
        .args(["-n", "-f"])
        .arg(&script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
            &url,
        ])
        .output()
        .context("running pgbench (apt-get install postgresql-contrib if it is missing)")?;
    let _ = std::fs::remove_file(&script);
    psql(&format!("DROP DATABASE {db} WITH (FORCE)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {text}"))
}

/// CPU seconds a process has used: its own user + system time, plus that of children it has
/// reaped (PostgreSQL's postmaster reaps the backends that exit).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime, cutime, cstime are fields 14 to 17 of the line: 11 to 14 after the name.
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

/// Pids of every process whose command name is one of `names`.
fn pids_named(names: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim()))
        })
        .collect()
}

/// CPU seconds so far of Switchyard's processes (in all, and by binary), PostgreSQL and
/// RabbitMQ.
#[derive(Clone, Copy, Default)]
struct Cpu {
    switchyard: f64,
    ingress: f64,
    workers: f64,
    notifier: f64,
    postgres: f64,
    rabbitmq: f64,
}

impl Cpu {
    fn now(stack: &Stack) -> Self {
        let sum = |pids: Vec<u32>| pids.into_iter().map(cpu_seconds).sum::<f64>();
        let ingress = cpu_seconds(stack.ingress.pid());
        let notifier = cpu_seconds(stack.notifier.pid());
        let workers = sum(stack.workers.iter().map(|w| w.pid()).collect());
        Self {
            switchyard: ingress + notifier + workers,
            ingress,
            workers,
            notifier,
            postgres: sum(pids_named(&["postgres", "postmaster"])),
            rabbitmq: sum(pids_named(&["beam.smp", "erl_child_setup"])),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            switchyard: self.switchyard - before.switchyard,
            ingress: self.ingress - before.ingress,
            workers: self.workers - before.workers,
            notifier: self.notifier - before.notifier,
            postgres: self.postgres - before.postgres,
            rabbitmq: self.rabbitmq - before.rabbitmq,
        }
    }

    /// `ingress / workers / notifier`, in ms per run.
    fn by_binary(self, runs: usize) -> String {
        let per = |s: f64| s * 1e3 / runs.max(1) as f64;
        format!(
            "{:.2} / {:.2} / {:.2}",
            per(self.ingress),
            per(self.workers),
            per(self.notifier)
        )
    }

    /// `switchyard / postgres / rabbitmq | total`, in ms per run.
    fn per_run(self, runs: usize) -> String {
        let per = |s: f64| s * 1e3 / runs.max(1) as f64;
        format!(
            "{:.2} / {:.2} / {:.2} | {:.2}",
            per(self.switchyard),
            per(self.postgres),
            per(self.rabbitmq),
            per(self.switchyard + self.postgres + self.rabbitmq)
        )
    }
}

struct Load {
    latencies: Vec<Duration>,
    elapsed: Duration,
    sent_at: HashMap<String, Instant>,
    /// When each accepted run's 202 came back (its headers).
    answered_at: HashMap<String, Instant>,
    failures: usize,
}

/// One request's outcome: the run id when accepted, when it was sent, how long the answer took.
type Sent = (Option<String>, Instant, Duration);

async fn send_one(http: reqwest::Client, url: String, body: Value) -> Sent {
    let sent = Instant::now();
    let response = http.post(url).json(&body).send().await;
    let latency = sent.elapsed();
    let id = match response {
        Ok(r) if r.status() == 202 => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned)),
        _ => None,
    };
    (id, sent, latency)
}

impl Load {
    async fn gather(tasks: Vec<tokio::task::JoinHandle<Sent>>, started: Instant) -> Self {
        let mut load = Self {
            latencies: Vec::with_capacity(tasks.len()),
            elapsed: Duration::ZERO,
            sent_at: HashMap::new(),
            answered_at: HashMap::new(),
            failures: 0,
        };
        for task in tasks {
            match task.await {
                Ok((Some(id), sent, latency)) => {
                    load.latencies.push(latency);
                    load.answered_at.insert(id.clone(), sent + latency);
                    load.sent_at.insert(id, sent);
                }
                _ => load.failures += 1,
            }
        }
        load.elapsed = started.elapsed();
        load.latencies.sort();
        load
    }
}

/// A client that sends the stack's API key on every request.
fn authed(stack: &Stack, idle: usize) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", stack.api_key))
    {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// Where the load goes in: the native runs API, or a trigger (ChatHive's route).
enum Door {
    Runs,
    Trigger(&'static str),
}

impl Door {
    fn url(&self, base: &str) -> String {
        match self {
            Self::Runs => format!("{base}/v1/runs"),
            Self::Trigger(key) => format!("{base}/api/v1.0/project/default/trigger/{key}"),
        }
    }

    fn body(&self, n: usize, webhook: Option<&str>) -> Value {
        match self {
            Self::Runs => {
                let mut body = json!({"agentId": "echo", "message": format!("bench {n}")});
                if let Some(hook) = webhook {
                    body["webhookUrl"] = json!(hook);
                }
                body
            }
            Self::Trigger(_) => json!({"instruction": format!("bench {n}"), "context": {"n": n}}),
        }
    }
}

/// A trigger on the `default` tenant's echo agent, with a template, for the trigger door.
async fn bench_trigger(stack: &Stack) -> anyhow::Result<()> {
    let made = authed(stack, 1)
        .post(format!(
            "{}/manage/tenants/default/projects/default/agents/echo/triggers",
            stack.base_url
        ))
        .json(&json!({"id": "bench", "name": "bench", "messageTemplate": "{{instruction}} #{{context.n}}"}))
        .send()
        .await?;
    anyhow::ensure!(
        made.status() == 201,
        "creating the bench trigger: {}",
        made.status()
    );
    Ok(())
}

/// One row of an accept table: `requests` creates through `door` at concurrency `c`, workers off,
/// after 200 warm-up requests.
async fn accept_row(door: &Door, c: usize, requests: usize) -> anyhow::Result<String> {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await?;
    if matches!(door, Door::Trigger(_)) {
        bench_trigger(&stack).await?;
    }
    let _ = load_through(&stack, door, 200.min(requests), c, None).await;
    let run = load_through(&stack, door, requests, c, None).await;
    stack.shutdown().await;
    Ok(format!(
        "| {c} | {requests} | {:.0} | {} | {} | {} |",
        run.latencies.len() as f64 / run.elapsed.as_secs_f64(),
        ms(percentile(&run.latencies, 50.0)),
        ms(percentile(&run.latencies, 99.0)),
        run.failures
    ))
}

async fn load(stack: &Stack, total: usize, concurrency: usize, webhook: Option<&str>) -> Load {
    load_through(stack, &Door::Runs, total, concurrency, webhook).await
}

async fn load_through(
    stack: &Stack,
    door: &Door,
    total: usize,
    concurrency: usize,
    webhook: Option<&str>,
) -> Load {
    let http = authed(stack, concurrency);
    let url = door.url(&stack.base_url);
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let http = http.clone();
        let url = url.clone();
        let body = door.body(n, webhook);
        tasks.push(tokio::spawn(async move {
            let sent = send_one(http, url, body).await;
            drop(permit);
            sent
        }));
    }
    Load::gather(tasks, started).await
}

/// Open loop: sends `rate` runs per second for `seconds`, whatever the answers' pace.
async fn paced(stack: &Stack, rate: u32, seconds: u32, webhook: &str) -> Load {
    let http = authed(stack, 64);
    let url = format!("{}/v1/runs", stack.base_url);
    let total = (rate * seconds) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        tick.tick().await;
        let http = http.clone();
        let url = url.clone();
        let body =
            json!({"agentId": "echo", "message": format!("paced {n}"), "webhookUrl": webhook});
        tasks.push(tokio::spawn(send_one(http, url, body)));
    }
    Load::gather(tasks, started).await
}

/// End-to-end latencies (send → verified webhook received) of the runs in `load`, how many
/// webhooks verified, and when the last arrived.
fn e2e_latencies(
    received: &[switchyard_testkit::Received],
    load: &Load,
) -> (Vec<Duration>, usize, Option<Instant>) {
    let mut latencies: Vec<Duration> = received
        .iter()
        .filter_map(|r| {
            let id = r.body["data"]["id"].as_str()?;
            load.sent_at.get(id).map(|sent| r.at.duration_since(*sent))
        })
        .collect();
    latencies.sort();
    let verified = received.iter().filter(|r| r.verified).count();
    let last = received.iter().map(|r| r.at).max();
    (latencies, verified, last)
}

/// Maps the bench's `Instant`s to wall-clock seconds since the epoch, to set them beside the
/// database's timestamps (one host, one clock).
struct WallClock {
    wall: f64,
    at: Instant,
}

impl WallClock {
    fn now() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        Self {
            wall,
            at: Instant::now(),
        }
    }

    fn of(&self, at: Instant) -> f64 {
        if at >= self.at {
            self.wall + at.duration_since(self.at).as_secs_f64()
        } else {
            self.wall - self.at.duration_since(at).as_secs_f64()
        }
    }
}

/// The PostgreSQL settings that move these figures, as `name=value` pairs. Stock PostgreSQL runs
/// autovacuum; a machine that turns it off measures bloated tables and plans never re-made.
async fn postgres_settings() -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(
        &format!("{}/postgres", postgres_base()),
        tokio_postgres::NoTls,
    )
    .await
    .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT name || '=' || current_setting(name) FROM pg_settings \
             WHERE name IN ('autovacuum', 'synchronous_commit', 'shared_buffers', 'fsync', \
                            'shared_preload_libraries') ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Empties `pg_stat_statements` (created in the stack's database when the library is loaded).
async fn reset_statements(stack: &Stack) -> anyhow::Result<()> {
    let client = stack.db.client().await?;
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();",
        )
        .await
        .context("pg_stat_statements (is it in shared_preload_libraries?)")?;
    Ok(())
}

/// The `n` statements with the most execution and planning time since the reset, per run.
async fn top_statements(stack: &Stack, n: usize, runs: f64) -> anyhow::Result<String> {
    let client = stack.db.client().await?;
    let rows = client
        .query(
            "SELECT calls::float8, total_exec_time, total_plan_time, shared_blks_hit::float8, \
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 90) \
             FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT $1",
            &[&(n as i64)],
        )
        .await?;
    let mut table = String::from(
        "| calls per run | exec ms per run | plan ms per run | buffer hits per call | statement |\n|---|---|---|---|---|",
    );
    for row in rows {
        let (calls, exec, plan, hits): (f64, f64, f64, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let query: String = row.get(4);
        table.push_str(&format!(
            "\n| {:.2} | {:.3} | {:.3} | {:.0} | `{}` |",
            calls / runs,
            exec / runs,
            plan / runs,
            hits / calls.max(1.0),
            query.replace('|', "\\|").replace('`', "'"),
        ));
    }
    Ok(table)
}

/// The database's commit count (this database) and WAL bytes (the cluster), for per-run deltas.
async fn db_work(stack: &Stack) -> anyhow::Result<(i64, f64)> {
    let client = stack.db.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), \
                    (SELECT wal_bytes::float8 FROM pg_stat_wal)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Where the time of the runs in `load` went, hop by hop, from the runs' own timestamps (each is
/// its statement's transaction start, `now()`) and the bench's send and receipt times: p50 and
/// p99 in ms of each hop, as a Markdown row.
async fn hops(
    stack: &Stack,
    received: &[switchyard_testkit::Received],
    load: &Load,
    clock: &WallClock,
) -> anyhow::Result<String> {
    let ids: Vec<uuid::Uuid> = load
        .sent_at
        .keys()
        .filter_map(|id| id.parse().ok())
        .collect();
    let client = stack.db.client().await?;
    let rows = client
        .query(
            "SELECT r.id::text, extract(epoch FROM r.created_at)::float8, \
                    extract(epoch FROM r.started_at)::float8, extract(epoch FROM r.completed_at)::float8, \
                    extract(epoch FROM a.created_at)::float8 - a.latency_ms / 1000.0, \
                    extract(epoch FROM a.created_at)::float8 \
             FROM runs r JOIN deliveries d ON d.run_id = r.id \
                  JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = 1 \
             WHERE r.id = ANY($1) AND r.started_at IS NOT NULL AND r.completed_at IS NOT NULL",
            &[&ids],
        )
        .await?;
    let receipts: HashMap<&str, Instant> = received
        .iter()
        .filter_map(|r| Some((r.body["data"]["id"].as_str()?, r.at)))
        .collect();
    // send → accept txn, accept → 202, 202 → claim, claim → completion, completion → POST, POST,
    // completion → receipt.
    let mut hops: [Vec<Duration>; 7] = Default::default();
    let span = |from: f64, to: f64| Duration::from_secs_f64((to - from).max(0.0));
    for row in &rows {
        let id: String = row.get(0);
        let (Some(sent), Some(got)) = (load.sent_at.get(&id), receipts.get(id.as_str())) else {
            continue;
        };
        let Some(answered) = load.answered_at.get(&id) else {
            continue;
        };
        let (sent, got, answered) = (clock.of(*sent), clock.of(*got), clock.of(*answered));
        let (created, started, completed, post, posted): (f64, f64, f64, f64, f64) =
            (row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        hops[0].push(span(sent, created));
        hops[1].push(span(created, answered));
        hops[2].push(span(answered, started));
        hops[3].push(span(started, completed));
        hops[4].push(span(completed, post));
        hops[5].push(span(post, posted));
        hops[6].push(span(completed, got));
    }
    for hop in &mut hops {
        hop.sort();
    }
    let cells: Vec<String> = hops
        .iter()
        .map(|h| format!("{} / {}", ms(percentile(h, 50.0)), ms(percentile(h, 99.0))))
        .collect();
    Ok(format!("| {} | {} |", hops[0].len(), cells.join(" | ")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("## Run of {}\n", time::OffsetDateTime::now_utc().date());
    println!(
        "Machine: {cores} cores, shared by PostgreSQL, RabbitMQ, Switchyard and the load generator."
    );
    let threads = std::env::var("SWITCHYARD_RUNTIME_THREADS").unwrap_or_else(|_| "0".into());
    println!("Switchyard processes run with SWITCHYARD_RUNTIME_THREADS={threads}.");
    println!("PostgreSQL: {}.\n", postgres_settings().await?);

    eprintln!("[bench] pgbench");
    let pg1 = pgbench(1, args.pgbench_seconds)?;
    let pg32 = pgbench(32, args.pgbench_seconds)?;
    println!("### Baseline: pgbench single-row INSERT commits\n");
    println!("| clients | INSERT commits/s |\n|---|---|");
    println!("| 1 | {pg1:.0} |\n| 32 | {pg32:.0} |\n");

    if !args.only_rates {
        println!("### Durable accept (`POST /v1/runs` → 202; workers off)\n");
        println!(
            "| concurrency | requests | accepted/s | p50 ms | p99 ms | failures |\n|---|---|---|---|---|---|"
        );
        for &c in &args.accept_concurrency {
            eprintln!("[bench] accept at concurrency {c}");
            println!(
                "{}",
                accept_row(&Door::Runs, c, args.accept_requests).await?
            );
        }

        println!(
            "\n### Durable accept through the trigger route (`POST /api/v1.0/project/…/trigger/{{key}}`; workers off)\n"
        );
        println!(
            "The trigger renders a template; each call also reads the trigger (one indexed SELECT).\n"
        );
        println!(
            "| concurrency | requests | accepted/s | p50 ms | p99 ms | failures |\n|---|---|---|---|---|---|"
        );
        for &c in &args.trigger_concurrency {
            eprintln!("[bench] trigger accept at concurrency {c}");
            println!(
                "{}",
                accept_row(&Door::Trigger("bench"), c, args.accept_requests).await?
            );
        }

        println!(
            "\n### End to end, saturated (invocation → echo run → verified webhook; {} workers)\n",
            args.workers
        );
        println!(
            "Closed loop: each client sends its next run as soon as the last was accepted, so runs queue up"
        );
        println!(
            "and latency is mostly waiting in the queue. CPU in ms per run: Switchyard / PostgreSQL / RabbitMQ | total,"
        );
        println!("and Switchyard's by binary: ingress / workers (all) / notifier.\n");
        println!(
            "| concurrency | runs | completed/s | p50 ms | p99 ms | verified | CPU ms per run | total | by binary |\n|---|---|---|---|---|---|---|---|---|"
        );
        for &c in &args.e2e_concurrency {
            eprintln!("[bench] end to end at concurrency {c}");
            let stack = Stack::start(StackOptions {
                workers: args.workers,
                ..StackOptions::default()
            })
            .await?;
            let hook = stack.receiver.url.clone();
            let _ = load(&stack, 200.min(args.e2e_runs), c, Some(&hook)).await;
            stack
                .receiver
                .wait_for(Duration::from_secs(60), |r| {
                    r.len() >= 200.min(args.e2e_runs)
                })
                .await?;
            let base = stack.receiver.received().len();
            let cpu_before = Cpu::now(&stack);
            let started = Instant::now();
            let run = load(&stack, args.e2e_runs, c, Some(&hook)).await;
            let expected = base + run.sent_at.len();
            let received = stack
                .receiver
                .wait_for(Duration::from_secs(300), |r| r.len() >= expected)
                .await?;
            let cpu = Cpu::now(&stack).since(cpu_before);
            let (e2e, verified, last) = e2e_latencies(&received[base..], &run);
            println!(
                "| {c} | {} | {:.0} | {} | {} | {verified}/{} | {} | {} |",
                run.sent_at.len(),
                e2e.len() as f64
                    / last
                        .unwrap_or(started)
                        .duration_since(started)
                        .as_secs_f64(),
                ms(percentile(&e2e, 50.0)),
                ms(percentile(&e2e, 99.0)),
                e2e.len(),
                cpu.per_run(e2e.len()),
                cpu.by_binary(e2e.len()),
            );
            stack.shutdown().await;
        }
    }

    if args.idle_seconds > 0 {
        eprintln!("[bench] idle stack");
        let stack = Stack::start(StackOptions {
            workers: args.workers,
            ..StackOptions::default()
        })
        .await?;
        // Past the start-up: one run end to end, then a few quiet seconds.
        let hook = stack.receiver.url.clone();
        let _ = paced(&stack, 1, 1, &hook).await;
        stack
            .receiver
            .wait_for(Duration::from_secs(60), |r| !r.is_empty())
            .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (before, work_before) = (Cpu::now(&stack), db_work(&stack).await?);
        tokio::time::sleep(Duration::from_secs(u64::from(args.idle_seconds))).await;
        let cpu = Cpu::now(&stack).since(before);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let work_after = db_work(&stack).await?;
        let per_s = |s: f64| s * 1e3 / f64::from(args.idle_seconds);
        println!(
            "\n### Idle\n\nIdle stack ({} workers, {} s, no runs): CPU ms per second {:.1} / {:.1} / {:.1} \
             (Switchyard / PostgreSQL / RabbitMQ), {:.1} commits per second (the {} s of \
             statistics flush after it included).\n",
            args.workers,
            args.idle_seconds,
            per_s(cpu.switchyard),
            per_s(cpu.postgres),
            per_s(cpu.rabbitmq),
            (work_after.0 - work_before.0) as f64 / (f64::from(args.idle_seconds) + 11.0),
            11,
        );
        stack.shutdown().await;
    }
    println!(
        "\n### End to end at a fixed offered rate ({} workers, {} s each)\n",
        args.workers, args.e2e_seconds
    );
    println!(
        "Open loop: runs are sent at a steady rate, as independent callers would. CPU as above; the load"
    );
    println!("generator and the webhook receiver (the bench process) are not counted.\n");
    println!(
        "| offered/s | runs | p50 ms | p99 ms | max ms | verified | CPU ms per run | total | commits per run | WAL bytes per run |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut breakdown = Vec::new();
    let mut statements = Vec::new();
    for &rate in &args.e2e_rates {
        eprintln!("[bench] end to end at {rate}/s");
        let stack = Stack::start(StackOptions {
            workers: args.workers,
            ..StackOptions::default()
        })
        .await?;
        let hook = stack.receiver.url.clone();
        let _ = paced(&stack, rate.min(100), 1, &hook).await;
        let warm = rate.min(100) as usize;
        stack
            .receiver
            .wait_for(Duration::from_secs(60), |r| r.len() >= warm)
            .await?;
        let base = stack.receiver.received().len();
        let cpu_before = Cpu::now(&stack);
        let work_before = db_work(&stack).await?;
        if args.statements > 0 {
            reset_statements(&stack).await?;
        }
        let clock = WallClock::now();
        let run = paced(&stack, rate, args.e2e_seconds, &hook).await;
        let expected = base + run.sent_at.len();
        let received = stack
            .receiver
            .wait_for(Duration::from_secs(300), |r| r.len() >= expected)
            .await?;
        let cpu = Cpu::now(&stack).since(cpu_before);
        // Backends publish their statistics when idle, at most every 10 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let work_after = db_work(&stack).await?;
        let (e2e, verified, _) = e2e_latencies(&received[base..], &run);
        let runs = e2e.len().max(1) as f64;
        println!(
            "| {rate} | {} | {} | {} | {} | {verified}/{} | {} | {:.1} | {:.0} |",
            run.sent_at.len(),
            ms(percentile(&e2e, 50.0)),
            ms(percentile(&e2e, 99.0)),
            ms(e2e.last().copied().unwrap_or_default()),
            e2e.len(),
            cpu.per_run(e2e.len()),
            (work_after.0 - work_before.0) as f64 / runs,
            (work_after.1 - work_before.1) / runs,
        );
        breakdown.push((rate, hops(&stack, &received[base..], &run, &clock).await?));
        if args.statements > 0 {
            statements.push((rate, top_statements(&stack, args.statements, runs).await?));
        }
        stack.shutdown().await;
    }
    println!(
        "\nWhere the time goes, p50 / p99 ms per hop, from the runs' own timestamps (each its \
         transaction's start) and the bench's send and receipt: send → accept (HTTP, the accept \
         batch's wait), accept → 202 (commit, publish confirm, answer), 202 → claim (broker delivery, \
         the claim batch's wait, pick), claim → completion (the echo run), completion → POST (delivery publish, the notifier's claim), POST (signing, the \
         receiver), completion → receipt. Commits count every transaction of the database in the \
         window (the maintenance loops' included); WAL bytes are the cluster's.\n"
    );
    println!(
        "| offered/s | runs | send → accept | accept → 202 | 202 → claim | claim → completion | completion → POST | POST | completion → receipt |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (rate, row) in breakdown {
        println!("| {rate} |{}", row.trim_start_matches('|'));
    }
    for (rate, table) in statements {
        println!(
            "\nAt {rate}/s, the statements that took PostgreSQL the most time (`pg_stat_statements`, \
             every database; execution time includes lock waits, not the commit):\n"
        );
        println!("{table}");
    }
    if args.only_rates {
        return Ok(());
    }

    println!("\n### SSE fan-out (one run's live events to many clients, 2 ingress replicas)\n");
    println!(
        "From an event's INSERT (`createdAt`) to its arrival at a client, for events created after every"
    );
    println!("client was listening; deltas are gathered for 50 ms before they are written.\n");
    println!(
        "| clients | events measured | p50 ms | p99 ms | max ms | streams complete |\n|---|---|---|---|---|---|"
    );
    for &clients in &args.sse_clients {
        eprintln!("[bench] SSE fan-out to {clients} clients");
        println!("{}", sse_fanout(clients).await?);
    }

    if args.noisy_runs > 0 {
        println!(
            "\n### The noisy neighbour ({} workers × 16; one tenant's flood, then quiet tenants)\n",
            args.workers
        );
        println!(
            "A loud tenant sends its flood of slow runs; two seconds later each quiet tenant sends a few. Throughput is"
        );
        println!(
            "runs per second from the first start to the last end, beside the same number of runs sent by the loud"
        );
        println!(
            "tenant alone (same session). Wait: a quiet run's acceptance to its start, from the runs' timestamps.\n"
        );
        println!(
            "| load | alone, runs/s | shared, runs/s | quiet wait p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"
        );
        eprintln!("[bench] noisy neighbour");
        let noisy = noisy::Noisy {
            workers: args.workers,
            flood: args.noisy_runs,
            delay_ms: args.noisy_delay_ms,
            quiet_tenants: args.quiet_tenants,
            quiet_runs: args.quiet_runs,
        };
        println!("{}", noisy::measure(&noisy).await?);
        println!(
            "\nOne pick of the scheduler (`runs::claim_next` of 8, the claim included), 5,000 runs waiting:\n"
        );
        println!("| tenants waiting | ms per pick |\n|---|---|");
        for tenants in [10, 1000] {
            eprintln!("[bench] pick cost with {tenants} tenants");
            println!("| {tenants} | {:.2} |", noisy::pick_cost(tenants).await?);
        }
    }

    println!("\n### Webhook delivery (one notifier draining a backlog)\n");
    println!(
        "Deliveries are made while the notifier is down, then one notifier is started and drains them into"
    );
    println!(
        "a local verifying receiver. Rate from its start to the last delivery, which includes its startup. CPU"
    );
    println!("in ms per delivery: Switchyard / PostgreSQL / RabbitMQ | total.\n");
    println!(
        "| deliveries to | deliveries | delivered/s | verified | CPU ms per delivery | total |\n|---|---|---|---|---|---|"
    );
    for &endpoints in &args.delivery_endpoints {
        let caps: &[u32] = if endpoints == 0 {
            &[0]
        } else {
            &args.delivery_max_concurrency
        };
        for &cap in caps {
            eprintln!("[bench] delivery drain, {endpoints} endpoints, maxConcurrency {cap}");
            println!(
                "{}",
                delivery_drain(args.deliveries, endpoints, cap.max(1), args.workers).await?
            );
        }
    }
    Ok(())
}
