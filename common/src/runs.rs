//! The run state machine. Every change of `runs.status` in the code base is one of the functions
//! below, each a single guarded UPDATE: the `WHERE` names the status (and lease owner) it leaves,
//! so of two actors racing for the same transition exactly one wins.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::events::NewEvent;
use crate::model::{AgentSpec, Run, RunStatus};

/// The columns [`from_row`] reads, qualified by the alias `r`.
const COLUMNS: &str = "r.id, r.status, r.tenant_id, r.project_id, r.agent_id, r.message, r.inputs, \
    r.metadata, r.webhook_url, r.result, r.error_code, r.error_message, r.attempt, r.max_attempts, \
    r.created_at, r.started_at, r.completed_at, r.trigger_id, r.environment, r.session_id, \
    r.conversation_id, r.usage, r.artifacts, r.chat_model_id, r.holds_slot, r.trace_id, \
    r.traceparent, r.priority, r.concurrency_key, r.key_cap, \
    (SELECT t.max_running IS NOT NULL FROM tenants t WHERE t.id = r.tenant_id) AS tenant_limited";

/// The closing events of every run in `done` (a CTE that returned [`COLUMNS`] and `base`, the
/// number its first closing event takes, or NULL to follow the run's last event): `completed`
/// with the result, or `error` with the code; then `status` with the new status.
const CLOSING_EVENTS: &str = "ev AS ( \
    INSERT INTO run_events (run_id, seq, kind, data) \
    SELECT d.id, coalesce(d.base, (SELECT max(e.seq) FROM run_events e WHERE e.run_id = d.id) + 1, 1) \
               + row_number() OVER (PARTITION BY d.id ORDER BY k.n) - 1, k.kind, k.data \
    FROM done d CROSS JOIN LATERAL ( \
        SELECT 1 AS n, 'completed' AS kind, jsonb_build_object('result', d.result) AS data \
        WHERE d.status = 'completed' \
        UNION ALL SELECT 1, 'error', jsonb_build_object('errorCode', d.error_code, 'message', d.error_message) \
        WHERE d.status IN ('failed', 'timed_out') \
        UNION ALL SELECT 2, 'status', jsonb_build_object('status', d.status, 'attempt', d.attempt)) k \
    RETURNING run_id, seq, kind, data, created_at)";

/// The rows of `done` with the events the statement appended (the CTE `appended`: see
/// [`APPENDED_CLOSING`] and [`APPENDED_PENDING_AND_CLOSING`]), as the JSON array [`from_row`]
/// reads into `Run::events`. `appended` is referenced once, so PostgreSQL inlines it.
const RETURNED_WITH_EVENTS: &str = "SELECT d.*, (SELECT jsonb_agg(jsonb_build_object('runId', x.run_id, \
    'seq', x.seq, 'type', x.kind, 'data', x.data, 'createdAt', x.created_at) ORDER BY x.seq) \
    FROM appended x WHERE x.run_id = d.id) AS events \
    FROM done d";

/// The events appended: the closing ones only.
const APPENDED_CLOSING: &str = "appended AS (SELECT * FROM ev)";

/// The events appended: the run's pending ones ([`WRITE_PENDING`]) and the closing ones.
const APPENDED_PENDING_AND_CLOSING: &str =
    "appended AS (SELECT * FROM written UNION ALL SELECT * FROM ev)";

/// Gives back the agent slot of every run in `done` that held one. Part of every statement that
/// moves a run out of `running`.
const FREE_SLOTS: &str = "slots AS ( \
    UPDATE agents a SET running = greatest(a.running - f.n, 0) \
    FROM (SELECT tenant_id, agent_id, count(*) AS n FROM done WHERE holds_slot \
          GROUP BY tenant_id, agent_id) f \
    WHERE a.tenant_id = f.tenant_id AND a.id = f.agent_id)";

/// Frees the conversation of every run in `done` (a CTE that returned [`COLUMNS`]) that held it:
/// the next run of the session may start. Part of every statement that moves a run out of
/// `running`.
const FREE_CONVERSATIONS: &str = "freed AS ( \
    UPDATE conversations v SET active_run_id = NULL, updated_at = now() \
    FROM done WHERE v.id = done.conversation_id AND v.active_run_id = done.id)";

/// What the ingress records for a new run.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: Uuid,
    pub tenant_id: String,
    pub agent_id: String,
    pub message: Option<String>,
    pub inputs: Option<serde_json::Value>,
    pub metadata: serde_json::Value,
    pub webhook_url: Option<String>,
    /// The session (ChatHive's `sessionId`): the run joins its conversation, sees its earlier
    /// messages, and runs only after the session's earlier runs have finished.
    pub session_id: Option<String>,
    /// A run still queued this long after it was accepted never starts: it ends `expired`.
    pub ttl: Option<Duration>,
    /// The model to use instead of the agent's (`chatModelId`).
    pub chat_model_id: Option<String>,
    /// The projects the caller may start runs in (a project-limited API key); `None` for all.
    pub projects: Option<Vec<String>>,
    /// Set when a trigger started the run.
    pub trigger: Option<TriggerOrigin>,
    /// The trace of the request that accepted it, when tracing is on.
    pub trace_id: Option<String>,
    /// 0 to 100: within its tenant's share of the line, a higher one starts first. `None`: the
    /// agent's `priority`.
    pub priority: Option<i32>,
    /// That request's span, as a W3C `traceparent`.
    pub traceparent: Option<String>,
}

/// What a run started by a trigger records about its invocation.
#[derive(Debug, Clone, Default)]
pub struct TriggerOrigin {
    pub trigger_id: String,
    pub environment: String,
    pub missing_placeholders: Vec<String>,
    /// A trailing debounce: the run waits out of line this long, while later calls may replace
    /// its body ([`replace_debounced`]), then [`release_debounced`] puts it in line.
    pub hold: Option<Duration>,
}

/// Counts the runs among `runs` that have ended (`switchyard_runs_finished_total`). Callers call
/// it once the transaction that ended them has committed.
pub fn observe_finished(runs: &[Run]) {
    for run in runs.iter().filter(|r| r.status.is_terminal()) {
        metrics::counter!(crate::metrics::RUNS_FINISHED, "status" => run.status.as_str())
            .increment(1);
    }
}

/// Times how long runs claimed for the first time waited since they were accepted
/// (`switchyard_run_queue_lag_seconds`), by the band of the run's priority and of its tenant's
/// weight: a few label values each, whatever the tenants do.
fn observe_claimed<'a>(runs: impl Iterator<Item = (&'a Run, i32)>) {
    for (run, weight) in runs {
        if let Some(started) = run.started_at {
            metrics::histogram!(crate::metrics::QUEUE_LAG,
                "priority" => priority_band(run.priority), "weight" => weight_band(weight))
            .record((started - run.created_at).as_seconds_f64().max(0.0));
        }
    }
}

/// A run's priority as a metric label: `0`, `1-49` or `50-100`.
pub fn priority_band(priority: i32) -> &'static str {
    match priority {
        ..=0 => "0",
        1..=49 => "1-49",
        _ => "50-100",
    }
}

/// A tenant's weight as a metric label: `1`, `2-4`, `5-19` or `20-100`.
pub fn weight_band(weight: i32) -> &'static str {
    match weight {
        ..=1 => "1",
        2..=4 => "2-4",
        5..=19 => "5-19",
        _ => "20-100",
    }
}

/// Reads a run from a row that selected [`COLUMNS`].
pub fn from_row(row: &Row) -> Result<Run, tokio_postgres::Error> {
    let status: String = row.try_get("status")?;
    Ok(Run {
        id: row.try_get("id")?,
        // The CHECK constraint admits only known names.
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        agent_id: row.try_get("agent_id")?,
        message: row.try_get("message")?,
        inputs: row.try_get("inputs")?,
        metadata: row.try_get("metadata")?,
        webhook_url: row.try_get("webhook_url")?,
        result: row.try_get("result")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        trigger_id: row.try_get("trigger_id")?,
        environment: row.try_get("environment")?,
        session_id: row.try_get("session_id")?,
        usage: row.try_get("usage")?,
        artifacts: row
            .try_get::<_, serde_json::Value>("artifacts")
            .ok()
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or_default(),
        chat_model_id: row.try_get("chat_model_id")?,
        priority: row.try_get("priority")?,
        concurrency_key: row.try_get("concurrency_key")?,
        key_cap: row.try_get("key_cap")?,
        conversation_id: row.try_get("conversation_id")?,
        last_seq: row.try_get("last_seq").unwrap_or(0),
        holds_slot: row.try_get("holds_slot").unwrap_or(false),
        tenant_limited: row
            .try_get::<_, Option<bool>>("tenant_limited")
            .ok()
            .flatten()
            .unwrap_or(false),
        trace_id: row.try_get("trace_id")?,
        traceparent: row.try_get("traceparent")?,
        events: crate::events::from_json(row.try_get("events").ok().flatten()),
    })
}

/// Inserts a batch of runs as `queued` in one statement (group commit), each with its turn in
/// the line (see `migrations/V16__fair_scheduling.sql`): a tenant's new runs are spaced
/// 1/weight apart from the tenant's next turn or the head of the line, whichever is later (a
/// start tag, in fair-queueing terms), and the tenant's next turn moves on past them. Runs whose agent does not exist in their tenant (or lies
/// outside the run's allowed projects), and runs past their tenant's `max_queued`, are skipped;
/// the returned rows say which were inserted ([`refusal`] says why the others were not).
pub async fn insert_batch(
    client: &impl GenericClient,
    runs: &[NewRun],
) -> Result<Vec<Run>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let tenants: Vec<&str> = runs.iter().map(|r| r.tenant_id.as_str()).collect();
    let agents: Vec<&str> = runs.iter().map(|r| r.agent_id.as_str()).collect();
    let messages: Vec<Option<&str>> = runs.iter().map(|r| r.message.as_deref()).collect();
    let inputs: Vec<Option<&serde_json::Value>> = runs.iter().map(|r| r.inputs.as_ref()).collect();
    let metadata: Vec<&serde_json::Value> = runs.iter().map(|r| &r.metadata).collect();
    let hooks: Vec<Option<&str>> = runs.iter().map(|r| r.webhook_url.as_deref()).collect();
    // Project ids cannot hold a comma, so a joined list passes through unnest as one text.
    let triggers: Vec<Option<&str>> = runs
        .iter()
        .map(|r| r.trigger.as_ref().map(|t| t.trigger_id.as_str()))
        .collect();
    let environments: Vec<Option<&str>> = runs
        .iter()
        .map(|r| r.trigger.as_ref().map(|t| t.environment.as_str()))
        .collect();
    let sessions: Vec<Option<&str>> = runs.iter().map(|r| r.session_id.as_deref()).collect();
    // Arrays of arrays do not pass through unnest one per row; placeholder names hold no newline.
    let missing: Vec<Option<String>> = runs
        .iter()
        .map(|r| {
            r.trigger
                .as_ref()
                .filter(|t| !t.missing_placeholders.is_empty())
                .map(|t| t.missing_placeholders.join("\n"))
        })
        .collect();
    let projects: Vec<Option<String>> = runs
        .iter()
        .map(|r| r.projects.as_ref().map(|p| p.join(",")))
        .collect();
    let ttls: Vec<Option<f64>> = runs.iter().map(|r| r.ttl.map(secs)).collect();
    let models: Vec<Option<&str>> = runs.iter().map(|r| r.chat_model_id.as_deref()).collect();
    let traces: Vec<Option<&str>> = runs.iter().map(|r| r.trace_id.as_deref()).collect();
    let parents: Vec<Option<&str>> = runs.iter().map(|r| r.traceparent.as_deref()).collect();
    let priorities: Vec<Option<i32>> = runs.iter().map(|r| r.priority).collect();
    let holds: Vec<Option<f64>> = runs
        .iter()
        .map(|r| r.trigger.as_ref().and_then(|t| t.hold).map(secs))
        .collect();
    let sql = format!(
        "WITH n AS ( \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], \
                                  $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
                                  $13::float8[], $14::text[], $15::text[], $16::text[], $17::int[], \
                                  $18::float8[]) \
                  WITH ORDINALITY AS n(id, tenant_id, agent_id, message, inputs, metadata, webhook_url, \
                                       projects, trigger_id, environment, session_id, missing, ttl, model, \
                                       trace, parent, priority, hold, ord)), \
         ok AS ( \
             SELECT n.*, a.project_id, a.max_attempts, t.weight, t.max_queued, \
                    row_number() OVER (PARTITION BY n.tenant_id ORDER BY n.ord) AS k, \
                    row_number() OVER (PARTITION BY n.tenant_id, n.agent_id, {RUN_KEY} ORDER BY n.ord) AS kj, \
                    row_number() OVER (PARTITION BY n.tenant_id, ({RUN_KEY}) IS NULL ORDER BY n.ord) AS pk, \
                    {RUN_KEY} AS ckey, a.max_concurrency_per_key AS key_cap, a.priority AS agent_priority \
             FROM n JOIN agents a ON a.tenant_id = n.tenant_id AND a.id = n.agent_id \
                    JOIN tenants t ON t.id = n.tenant_id \
             WHERE n.projects IS NULL OR a.project_id = ANY(string_to_array(n.projects, ','))), \
         room AS ( \
             SELECT q.tenant_id, q.max_queued - (SELECT count(*) FROM (SELECT 1 FROM runs x \
                        WHERE x.tenant_id = q.tenant_id AND x.status = 'queued' LIMIT q.max_queued) c) AS left_ \
             FROM (SELECT DISTINCT tenant_id, max_queued FROM ok WHERE max_queued IS NOT NULL) q), \
         admitted AS ( \
             SELECT ok.*, CASE WHEN length(ok.ckey) > 255 \
                              THEN 'sha256:' || encode(sha256(convert_to(ok.ckey, 'UTF8')), 'hex') \
                              ELSE ok.ckey END AS skey \
             FROM ok LEFT JOIN room ON room.tenant_id = ok.tenant_id \
             WHERE room.left_ IS NULL OR ok.k <= room.left_), \
         counts AS ( \
             SELECT tenant_id, count(*)::float8 / max(weight) AS span, max(weight) AS weight, count(*) AS c, \
                    count(*) FILTER (WHERE skey IS NULL) AS pc \
             FROM admitted GROUP BY tenant_id), \
         {HEAD_OF_LINE}, \
         turns AS ( \
             INSERT INTO tenant_turns AS tt (tenant_id, finish, plain_finish) \
             SELECT c.tenant_id, h.v + c.span, h.v + c.pc::float8 / c.weight \
             FROM counts c CROSS JOIN head h ORDER BY c.tenant_id \
             ON CONFLICT (tenant_id) DO UPDATE \
                 SET finish = greatest(tt.finish, (SELECT v FROM head)) \
                              + (SELECT c.span FROM counts c WHERE c.tenant_id = tt.tenant_id), \
                     plain_finish = greatest(tt.plain_finish, (SELECT v FROM head)) \
                              + (SELECT c.pc::float8 / c.weight FROM counts c WHERE c.tenant_id = tt.tenant_id) \
             RETURNING tt.tenant_id, tt.finish, tt.plain_finish), \
         keyed AS ( \
             SELECT tenant_id, agent_id, skey, count(*)::float8 / max(weight) AS span, \
                    max(weight) AS weight, count(*) AS c \
             FROM admitted WHERE skey IS NOT NULL GROUP BY tenant_id, agent_id, skey), \
         kturns AS ( \
             INSERT INTO key_turns AS kt (tenant_id, agent_id, key, finish) \
             SELECT k.tenant_id, k.agent_id, k.skey, h.v + k.span FROM keyed k CROSS JOIN head h \
             ORDER BY k.tenant_id, k.agent_id, k.skey \
             ON CONFLICT (tenant_id, agent_id, key) DO UPDATE \
                 SET finish = greatest(kt.finish, (SELECT v FROM head)) \
                              + (SELECT k.span FROM keyed k WHERE k.tenant_id = kt.tenant_id \
                                   AND k.agent_id = kt.agent_id AND k.skey = kt.key) \
             RETURNING kt.tenant_id, kt.agent_id, kt.key, kt.finish) \
         INSERT INTO runs AS r (id, tenant_id, project_id, agent_id, status, message, inputs, metadata, \
                                webhook_url, max_attempts, trigger_id, environment, session_id, \
                                missing_placeholders, expires_at, chat_model_id, trace_id, traceparent, \
                                priority, turn, key_turn, concurrency_key, key_cap, waiting, not_before) \
         SELECT n.id, n.tenant_id, n.project_id, n.agent_id, 'queued', n.message, n.inputs, n.metadata, \
                n.webhook_url, n.max_attempts, n.trigger_id, n.environment, n.session_id, \
                string_to_array(n.missing, E'\\n'), now() + make_interval(secs => n.ttl), n.model, n.trace, \
                n.parent, coalesce(n.priority, n.agent_priority), \
                tu.finish - (c.c - n.k + 1)::float8 / c.weight, \
                CASE WHEN n.skey IS NULL THEN tu.plain_finish - (c.pc - n.pk + 1)::float8 / c.weight \
                     ELSE kt.finish - (kc.c - n.kj + 1)::float8 / kc.weight END, \
                n.skey, \
                CASE WHEN n.ckey IS NOT NULL THEN n.key_cap END, \
                CASE WHEN n.hold IS NOT NULL THEN 'debounce' END, now() + make_interval(secs => n.hold) \
         FROM admitted n JOIN counts c ON c.tenant_id = n.tenant_id JOIN turns tu ON tu.tenant_id = n.tenant_id \
              LEFT JOIN keyed kc ON kc.tenant_id = n.tenant_id AND kc.agent_id = n.agent_id AND kc.skey = n.skey \
              LEFT JOIN kturns kt ON kt.tenant_id = n.tenant_id AND kt.agent_id = n.agent_id AND kt.key = n.skey \
         RETURNING {COLUMNS}"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client
        .query(
            &stmt,
            &[
                &ids,
                &tenants,
                &agents,
                &messages,
                &inputs,
                &metadata,
                &hooks,
                &projects,
                &triggers,
                &environments,
                &sessions,
                &missing,
                &ttls,
                &models,
                &traces,
                &parents,
                &priorities,
                &holds,
            ],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// A run's concurrency key, from its agent (`a`) and the new run (`n`): the session id, or the
/// text at a JSON pointer into its inputs or metadata (a string as it is, anything else as JSON).
const RUN_KEY: &str = "CASE WHEN a.concurrency_key IS NULL THEN NULL \
    WHEN a.concurrency_key = 'sessionId' THEN n.session_id \
    WHEN a.concurrency_key LIKE '/inputs/%' \
        THEN n.inputs #>> switchyard_pointer_path(substr(a.concurrency_key, 9)) \
    WHEN a.concurrency_key LIKE '/metadata/%' \
        THEN n.metadata #>> switchyard_pointer_path(substr(a.concurrency_key, 11)) END";

/// The CTE `head` (one row, `v`): the line's virtual time (`switchyard_now_turn`: the latest
/// turn started, else the head of the line, else the last turn handed out), where a tenant with
/// nothing waiting starts, level with the others rather than ahead of them.
const HEAD_OF_LINE: &str = "head AS (SELECT switchyard_now_turn() AS v)";

/// Why [`insert_batch`] did not insert a run of `tenant_id` for `agent_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such agent in the tenant (or in the caller's projects).
    NoAgent,
    /// The tenant has `max_queued` runs queued already (the quota's value).
    QueueFull(i32),
}

/// Says why a run was not inserted: asked only on that rare path.
pub async fn refusal(
    client: &impl GenericClient,
    tenant_id: &str,
    agent_id: &str,
    projects: Option<&[String]>,
) -> Result<Refusal, tokio_postgres::Error> {
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM agents a WHERE a.tenant_id = $1 AND a.id = $2 \
                                    AND ($3::text[] IS NULL OR a.project_id = ANY($3))), \
                            (SELECT t.max_queued FROM tenants t WHERE t.id = $1)",
                )
                .await?,
            &[&tenant_id, &agent_id, &projects],
        )
        .await?;
    let exists: bool = row.try_get(0)?;
    let quota: Option<i32> = row.try_get(1)?;
    Ok(match (exists, quota) {
        (true, Some(quota)) => Refusal::QueueFull(quota),
        _ => Refusal::NoAgent,
    })
}

/// One run of one tenant; `None` for another tenant's run as for a missing one.
pub async fn get(
    client: &impl GenericClient,
    tenant_id: &str,
    id: Uuid,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM runs r WHERE r.tenant_id = $1 AND r.id = $2");
    let row = client
        .query_opt(&client.prepare_cached(&sql).await?, &[&tenant_id, &id])
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// What a list of runs is narrowed to; every member is optional.
#[derive(Debug, Default)]
pub struct RunFilter<'a> {
    /// Any of these statuses (none: all).
    pub statuses: &'a [&'a str],
    pub agent_id: Option<&'a str>,
    pub trigger_id: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// Created at or after.
    pub since: Option<time::OffsetDateTime>,
    /// Created before.
    pub until: Option<time::OffsetDateTime>,
    /// Older than this run (ids are time-ordered): the cursor of the next page.
    pub before: Option<Uuid>,
}

/// The tenant's runs (within `projects`) that `filter` selects, newest first, at most `limit`,
/// as summaries: the query reads no run's content, so a page costs the same whatever the runs
/// hold.
pub async fn list(
    client: &impl GenericClient,
    tenant_id: &str,
    projects: Option<&[String]>,
    filter: &RunFilter<'_>,
    limit: i64,
) -> Result<Vec<crate::model::RunSummary>, tokio_postgres::Error> {
    let sql = "SELECT r.id, r.status, r.tenant_id, r.project_id, r.agent_id, \
                      left(r.message, $11) AS message_preview, r.error_code, r.attempt, \
                      r.created_at, r.started_at, r.completed_at, r.trigger_id, r.environment, \
                      r.session_id, r.chat_model_id, r.trace_id \
               FROM runs r WHERE r.tenant_id = $1 \
                 AND ($2::text[] IS NULL OR r.project_id = ANY($2)) \
                 AND (cardinality($3::text[]) = 0 OR r.status = ANY($3)) \
                 AND ($5::text IS NULL OR r.agent_id = $5) \
                 AND ($6::text IS NULL OR r.trigger_id = $6) \
                 AND ($7::text IS NULL OR r.environment = $7) \
                 AND ($8::timestamptz IS NULL OR r.created_at >= $8) \
                 AND ($9::timestamptz IS NULL OR r.created_at < $9) \
                 AND ($10::uuid IS NULL OR r.id < $10) \
               ORDER BY r.id DESC LIMIT $4";
    let rows = client
        .query(
            &client.prepare_cached(sql).await?,
            &[
                &tenant_id,
                &projects,
                &filter.statuses,
                &limit,
                &filter.agent_id,
                &filter.trigger_id,
                &filter.environment,
                &filter.since,
                &filter.until,
                &filter.before,
                &crate::model::RunSummary::PREVIEW_CHARS,
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(crate::model::RunSummary {
                id: row.try_get("id")?,
                status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
                tenant_id: row.try_get("tenant_id")?,
                project_id: row.try_get("project_id")?,
                agent_id: row.try_get("agent_id")?,
                message_preview: row.try_get("message_preview")?,
                error_code: row.try_get("error_code")?,
                attempt: row.try_get("attempt")?,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                completed_at: row.try_get("completed_at")?,
                trigger_id: row.try_get("trigger_id")?,
                environment: row.try_get("environment")?,
                session_id: row.try_get("session_id")?,
                chat_model_id: row.try_get("chat_model_id")?,
                trace_id: row.try_get("trace_id")?,
            })
        })
        .collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `queued → running`: takes the run for `owner` with a lease, counting one more attempt.
/// `None` means someone else has it, it was cancelled, or it is finished: ack and move on.
pub async fn claim(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Option<(Run, AgentSpec)>, tokio_postgres::Error> {
    Ok(claim_many(client, &[id], owner, lease).await?.pop())
}

/// [`claim`] for many runs in one statement. Returns the runs won; the others are someone
/// else's, cancelled, finished, or waiting for their session. A run whose agent was deleted is
/// still claimed (with the kind [`AgentSpec::DELETED`]), so that it fails instead of waiting
/// forever. Repeated ids count once. Runs of agents with a concurrency limit are left alone:
/// only [`claim_next`] starts them, having taken a slot.
///
/// A run with a session is claimed only when no earlier run of its session is queued or running,
/// and when it takes the session's conversation (created on first use), which no other run
/// holds: so the runs of one session run one at a time, in the order they were accepted. The
/// conversation is taken with a guarded upsert (`active_run_id` from NULL), which re-checks the
/// newest row after waiting for a concurrent writer, so two workers cannot both win it. An
/// earlier run seen `running` blocks too, even if it is being handed back as this runs: it will
/// be queued again, and must not be overtaken.
///
/// Locks are taken in one order everywhere: every run row first, in id order; then the
/// conversations, in key order (the sort in `turn` consumes all of `c` before the first upsert).
/// So concurrent batches that overlap wait for each other instead of deadlocking, then see the
/// run is no longer queued.
pub async fn claim_many(
    client: &impl GenericClient,
    ids: &[Uuid],
    owner: &str,
    lease: Duration,
) -> Result<Vec<(Run, AgentSpec)>, tokio_postgres::Error> {
    // A run offered twice (a republished message) would reach the conversation upsert twice.
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    claim_statement(client, &ids, owner, lease, false).await
}

/// What [`claim_next`] did.
#[derive(Debug, Default)]
pub struct Started {
    /// The runs won, in the order they were picked.
    pub runs: Vec<(Run, AgentSpec)>,
    /// The pick stopped before it had looked for as many runs as were wanted (another claimer
    /// held a lock it needed, or it took many runs out of line): the caller's unused messages
    /// go back to the queue instead of being dropped.
    pub cut_short: bool,
    /// Runs the pick locked and left in line: another claimer may have passed them by while they
    /// were locked, spending its message on nothing, so the caller publishes them again.
    pub passed: Vec<Uuid>,
    /// The messages, of those given to [`claim_for_messages`], that name no run at all.
    pub unknown: Vec<Uuid>,
}

/// Claims up to `wanted` runs in fair order, in one transaction: `switchyard_pick` chooses
/// them (the head of the line, then its tenant's best run; runs that cannot start now leave
/// the line with what they wait for; a limited agent's slot is taken) and locks them, then
/// the claim statement takes them as [`claim_many`] would. A picked run the claim did not win
/// (its conversation was held after all) gives its slot back and waits out of line for its
/// session, where the sweeper finds it if nobody puts it back.
pub async fn claim_next(
    client: &mut deadpool_postgres::Client,
    wanted: usize,
    owner: &str,
    lease: Duration,
) -> Result<Started, tokio_postgres::Error> {
    let tokens: Vec<Option<Uuid>> = vec![None; wanted];
    claim_turns(client, &tokens, owner, lease).await
}

/// [`claim_next`] for the run messages of a worker's batch, one turn each: the messages that
/// name no run at all are poison (`Started::unknown`) and are no turn, so a run is never spent
/// on one.
pub async fn claim_for_messages(
    client: &mut deadpool_postgres::Client,
    messages: &[Uuid],
    owner: &str,
    lease: Duration,
) -> Result<Started, tokio_postgres::Error> {
    let tokens: Vec<Option<Uuid>> = messages.iter().copied().map(Some).collect();
    claim_turns(client, &tokens, owner, lease).await
}

async fn claim_turns(
    client: &mut deadpool_postgres::Client,
    tokens: &[Option<Uuid>],
    owner: &str,
    lease: Duration,
) -> Result<Started, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let named: Vec<Uuid> = tokens.iter().flatten().copied().collect();
    let blank = i32::try_from(tokens.len() - named.len()).unwrap_or(i32::MAX);
    let row = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT p.picked, p.cut_short, p.passed, u.unknown \
                 FROM (SELECT coalesce(array_agg(x), '{}') AS unknown FROM unnest($1::uuid[]) x \
                       WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = x)) u \
                 CROSS JOIN LATERAL switchyard_pick(cardinality($1::uuid[]) - cardinality(u.unknown) + $2) p",
            )
            .await?,
            &[&named, &blank],
        )
        .await?;
    let picked: Vec<Uuid> = row.try_get(0)?;
    let cut_short: bool = row.try_get(1)?;
    let passed: Vec<Uuid> = row.try_get(2)?;
    let unknown: Vec<Uuid> = row.try_get(3)?;
    let mut started = Started {
        runs: Vec::new(),
        cut_short,
        passed,
        unknown,
    };
    if !picked.is_empty() {
        let mut ids = picked.clone();
        ids.sort_unstable();
        let mut won = claim_statement(&tx, &ids, owner, lease, true).await?;
        if won.len() < picked.len() {
            let lost: Vec<Uuid> = picked
                .iter()
                .filter(|id| !won.iter().any(|(run, _)| run.id == **id))
                .copied()
                .collect();
            tx.execute(
                &tx.prepare_cached(
                    "WITH lost AS ( \
                         UPDATE runs r SET waiting = 'session', enqueued_at = now() \
                         WHERE r.id = ANY($1) AND r.status = 'queued' RETURNING r.tenant_id, r.agent_id) \
                     UPDATE agents a SET running = greatest(a.running - f.n, 0) \
                     FROM (SELECT tenant_id, agent_id, count(*) AS n FROM lost GROUP BY tenant_id, agent_id) f \
                     WHERE a.tenant_id = f.tenant_id AND a.id = f.agent_id AND a.max_concurrency IS NOT NULL",
                )
                .await?,
                &[&lost],
            )
            .await?;
        }
        // In the order they were picked: the fair order.
        won.sort_by_key(|(run, _)| picked.iter().position(|id| *id == run.id));
        started.runs = won;
    }
    tx.commit().await?;
    Ok(started)
}

/// [`claim_statement`]'s filter without slots: runs of agents without a concurrency limit.
const ONLY_UNLIMITED: &str = "AND NOT EXISTS (SELECT 1 FROM agents l WHERE l.tenant_id = r.tenant_id \
    AND l.id = r.agent_id AND l.max_concurrency IS NOT NULL)";

/// [`claim_statement`]'s `holds_slot` with slots taken: the runs of limited agents hold one.
const HOLDS_IF_LIMITED: &str = "coalesce(a.max_concurrency IS NOT NULL, false)";

/// The claim: with `slots_taken`, the caller took a slot of each limited agent's run (they
/// are claimed holding it); without, runs of limited agents are not claimed.
async fn claim_statement(
    client: &impl GenericClient,
    ids: &[Uuid],
    owner: &str,
    lease: Duration,
    slots_taken: bool,
) -> Result<Vec<(Run, AgentSpec)>, tokio_postgres::Error> {
    // An id for each conversation that this claim may have to create.
    let fresh: Vec<Uuid> = ids.iter().map(|_| Uuid::now_v7()).collect();
    let (only, holds) = if slots_taken {
        ("", HOLDS_IF_LIMITED)
    } else {
        (ONLY_UNLIMITED, "false")
    };
    let sql = format!(
        "WITH c AS ( \
             SELECT r.id, r.tenant_id, r.project_id, r.agent_id, r.session_id, x.fresh, \
                    r.started_at IS NULL AS first_claim \
             FROM runs r JOIN unnest($1::uuid[], $4::uuid[]) AS x(id, fresh) ON x.id = r.id \
             WHERE r.status = 'queued' AND (r.expires_at IS NULL OR r.expires_at > now()) {only} \
             ORDER BY r.id FOR UPDATE OF r), \
         turn AS ( \
             SELECT c.* FROM c WHERE c.session_id IS NOT NULL AND NOT EXISTS ( \
                 SELECT 1 FROM runs e WHERE e.tenant_id = c.tenant_id AND e.project_id = c.project_id \
                   AND e.session_id = c.session_id AND e.status IN ('queued', 'running') AND e.id < c.id) \
             ORDER BY c.tenant_id, c.project_id, c.session_id), \
         taken AS ( \
             INSERT INTO conversations AS v (id, tenant_id, project_id, session_id, active_run_id) \
             SELECT fresh, tenant_id, project_id, session_id, id FROM turn \
             ON CONFLICT (tenant_id, project_id, session_id) DO UPDATE \
                 SET active_run_id = EXCLUDED.active_run_id, updated_at = now() \
                 WHERE v.active_run_id IS NULL \
             RETURNING v.id AS conversation_id, v.active_run_id AS run_id) \
         UPDATE runs r SET status = 'running', attempt = r.attempt + 1, lease_owner = $2, \
                lease_expires_at = now() + make_interval(secs => $3), waiting = NULL, \
                started_at = coalesce(r.started_at, clock_timestamp()), updated_at = now(), \
                conversation_id = coalesce(t.conversation_id, r.conversation_id), holds_slot = {holds} \
         FROM c LEFT JOIN taken t ON t.run_id = c.id \
              LEFT JOIN agents a ON a.tenant_id = c.tenant_id AND a.id = c.agent_id \
         WHERE r.id = c.id AND r.status = 'queued' AND (c.session_id IS NULL OR t.run_id IS NOT NULL) \
         RETURNING {COLUMNS}, \
             (SELECT coalesce(max(e.seq), 0) FROM run_events e WHERE e.run_id = r.id) AS last_seq, \
             a.kind AS agent_kind, a.config AS agent_config, a.timeout_seconds AS agent_timeout, \
             a.credential_id AS agent_credential, a.max_concurrency IS NOT NULL AS agent_limited, \
             c.first_claim, (SELECT w.weight FROM tenants w WHERE w.id = r.tenant_id) AS tenant_weight"
    );
    let rows = client
        .query(
            &client.prepare_cached(&sql).await?,
            &[&ids, &owner, &secs(lease), &fresh],
        )
        .await?;
    let claimed = rows
        .iter()
        .map(|row| {
            Ok((
                from_row(row)?,
                // An agent deleted since the run was accepted has no kind: the executor fails it.
                AgentSpec {
                    kind: row
                        .try_get::<_, Option<String>>("agent_kind")?
                        .unwrap_or_else(|| AgentSpec::DELETED.to_owned()),
                    config: row
                        .try_get::<_, Option<serde_json::Value>>("agent_config")?
                        .unwrap_or_default(),
                    timeout: Duration::from_secs(
                        row.try_get::<_, Option<i32>>("agent_timeout")?
                            .and_then(|t| u64::try_from(t).ok())
                            .unwrap_or(900),
                    ),
                    credential_id: row.try_get("agent_credential")?,
                    limited: row
                        .try_get::<_, Option<bool>>("agent_limited")?
                        .unwrap_or(false),
                },
            ))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let firsts = rows
        .iter()
        .zip(&claimed)
        .filter(|(row, _)| row.try_get::<_, bool>("first_claim").unwrap_or(false))
        .map(|(row, (run, _))| {
            let weight = row
                .try_get::<_, Option<i32>>("tenant_weight")
                .ok()
                .flatten()
                .unwrap_or(1);
            (run, weight)
        });
    observe_claimed(firsts);
    Ok(claimed)
}

/// Puts back in line the next run of `run`'s agent, if the agent has a concurrency limit and
/// a free slot and its best queued run (of those not waiting for something else) waits out of
/// line for a slot. Called by whoever frees a slot, and by a worker that took one (more slots
/// may be free than runs came forward).
pub async fn next_for_agent(
    client: &impl GenericClient,
    run: &Run,
) -> Result<Option<Next>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT id, traceparent FROM switchyard_ready(ARRAY( \
                         SELECT e.id FROM runs e \
                         WHERE e.tenant_id = $1 AND e.agent_id = $2 AND e.status = 'queued' \
                           AND (e.waiting IS NULL OR e.waiting = 'agent') \
                           AND (e.expires_at IS NULL OR e.expires_at > now()) \
                           AND EXISTS (SELECT 1 FROM agents a WHERE a.tenant_id = $1 AND a.id = $2 \
                               AND a.max_concurrency IS NOT NULL AND a.running < a.max_concurrency) \
                         ORDER BY e.priority DESC, e.id LIMIT 1))",
                )
                .await?,
            &[&run.tenant_id, &run.agent_id],
        )
        .await?;
    row.map(|r| next_of(&r)).transpose()
}

/// Puts back in line the best run waiting for room under `run`'s concurrency key, once `run`
/// has left `running`.
pub async fn next_for_key(
    client: &mut deadpool_postgres::Client,
    run: &Run,
) -> Result<Option<Next>, tokio_postgres::Error> {
    let Some(key) = &run.concurrency_key else {
        return Ok(None);
    };
    // The pick marks a key's runs as waiting under this lock: taken first, it makes the query
    // below see every mark committed before it (a statement's snapshot is taken at its start).
    let tx = client.transaction().await?;
    tx.execute(
        &tx.prepare_cached("SELECT pg_advisory_xact_lock(16018, hashtext($1))")
            .await?,
        &[&format!("{}/{}/{key}", run.tenant_id, run.agent_id)],
    )
    .await?;
    let row = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT id, traceparent FROM switchyard_ready(ARRAY( \
                     SELECT e.id FROM runs e WHERE e.tenant_id = $1 AND e.agent_id = $2 \
                       AND e.concurrency_key = $3 AND e.status = 'queued' AND e.waiting = 'key' \
                     ORDER BY e.priority DESC, e.id LIMIT 1))",
            )
            .await?,
            &[&run.tenant_id, &run.agent_id, key],
        )
        .await?;
    tx.commit().await?;
    row.map(|r| next_of(&r)).transpose()
}

/// Puts back in line up to as many of each tenant's runs waiting for its running quota as it
/// has room for (at most 100 a tenant), best first. Called with the tenants of runs that left
/// `running` whose tenant has a quota.
pub async fn next_for_tenants(
    client: &mut deadpool_postgres::Client,
    tenants: &[&str],
) -> Result<Vec<Next>, tokio_postgres::Error> {
    // The pick marks a tenant's runs as waiting under this lock (see `next_for_key`); taken in
    // one order, so readers of several tenants never wait for each other in a cycle.
    let mut sorted = tenants.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let tx = client.transaction().await?;
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(16017, hashtext($1))")
        .await?;
    for tenant in &sorted {
        tx.execute(&lock, &[tenant]).await?;
    }
    let rows = tx
        .query(
            &tx.prepare_cached(
                "WITH room AS ( \
                     SELECT t.id, CASE WHEN t.max_running IS NULL THEN 100 \
                         ELSE least(100, t.max_running - (SELECT count(*) FROM (SELECT 1 FROM runs x \
                              WHERE x.tenant_id = t.id AND x.status = 'running' LIMIT t.max_running) c)) END AS n \
                     FROM tenants t WHERE t.id = ANY($1)) \
                 SELECT id, traceparent FROM switchyard_ready(ARRAY( \
                     SELECT w.id FROM room CROSS JOIN LATERAL ( \
                         SELECT e.id FROM runs e WHERE e.tenant_id = room.id AND e.status = 'queued' \
                           AND e.waiting = 'tenant' ORDER BY e.priority DESC, e.id \
                         LIMIT greatest(room.n, 0)) w))",
            )
            .await?,
            &[&sorted],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(next_of).collect()
}

/// A queued run to publish: its id, and the `traceparent` of the request that accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub id: Uuid,
    pub traceparent: Option<String>,
}

fn next_of(row: &Row) -> Result<Next, tokio_postgres::Error> {
    Ok(Next {
        id: row.try_get(0)?,
        traceparent: row.try_get(1)?,
    })
}

/// Extends the lease `owner` holds. `None` means the lease is lost (reaped, or the run ended):
/// the holder must stop working on the run. `Some(true)` means a cancel was asked for: the
/// holder stops the run and records it `cancelled` (the heartbeat is how a holder that missed
/// the control message learns of it).
pub async fn heartbeat(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Option<bool>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &client.prepare_cached("UPDATE runs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now() \
             WHERE id = $1 AND status = 'running' AND lease_owner = $2 \
             RETURNING cancel_requested_at IS NOT NULL").await?,
            &[&id, &owner, &secs(lease)],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

/// What the lease holder hands in with a transition out of `running`: the events it has not
/// written yet, and the number the first of them takes. The closing events follow them.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    /// `None`: number after the run's last written event.
    pub next_seq: Option<i64>,
    pub events: Vec<NewEvent>,
}

impl Pending {
    fn closing_seq(&self) -> Option<i64> {
        self.next_seq
            .map(|n| n + i64::try_from(self.events.len()).unwrap_or(0))
    }
}

/// One run's completion: its result and its unwritten events.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: Uuid,
    pub result: serde_json::Value,
    /// Token usage, when the executor reports it.
    pub usage: Option<serde_json::Value>,
    /// Named outputs, stored on the run.
    pub artifacts: Vec<serde_json::Value>,
    pub pending: Pending,
    /// AMQP headers carrying the span that finished the run: the messages of its deliveries
    /// continue its trace.
    pub trace: lapin::types::FieldTable,
}

/// `running → completed`, only while `owner` holds the lease.
pub async fn complete(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    result: &serde_json::Value,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let completion = Completion {
        id,
        result: result.clone(),
        usage: None,
        artifacts: Vec::new(),
        pending: Pending::default(),
        trace: lapin::types::FieldTable::default(),
    };
    Ok(complete_many(client, owner, &[completion]).await?.pop())
}

/// [`complete`] for many runs of one lease owner in one statement; returns the runs completed
/// (those whose lease `owner` still held), each with the events written (`Run::events`): its
/// pending ones, then `completed` and `status`.
pub async fn complete_many(
    client: &impl GenericClient,
    owner: &str,
    completions: &[Completion],
) -> Result<Vec<Run>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = completions.iter().map(|c| c.id).collect();
    let values: Vec<&serde_json::Value> = completions.iter().map(|c| &c.result).collect();
    let bases: Vec<Option<i64>> = completions
        .iter()
        .map(|c| c.pending.closing_seq())
        .collect();
    let (ev_runs, ev_seqs, ev_kinds, ev_data) = flatten(completions);
    let usages: Vec<Option<&serde_json::Value>> =
        completions.iter().map(|c| c.usage.as_ref()).collect();
    let artifacts: Vec<serde_json::Value> = completions
        .iter()
        .map(|c| serde_json::Value::Array(c.artifacts.clone()))
        .collect();
    // A completed run of a session adds its turn to the conversation: the message it was given
    // (or its inputs) and its answer (`output` when that is text, else the whole result). Only
    // the conversation's holder appends, so numbering from the last message cannot collide.
    let sql = format!(
        "WITH done AS ( \
             UPDATE runs r SET status = 'completed', result = c.result, usage = c.usage, \
                    artifacts = c.artifacts, lease_owner = NULL, \
                    lease_expires_at = NULL, completed_at = clock_timestamp(), updated_at = now() \
             FROM unnest($1::uuid[], $2::jsonb[], $4::bigint[], $9::jsonb[], $10::jsonb[]) \
                  AS c(id, result, base, usage, artifacts) \
             WHERE r.id = c.id AND r.status = 'running' AND r.lease_owner = $3 \
             RETURNING {COLUMNS}, c.base), \
         {FREE_CONVERSATIONS}, \
         {FREE_SLOTS}, \
         said AS ( \
             INSERT INTO messages (conversation_id, seq, tenant_id, run_id, role, content) \
             SELECT d.conversation_id, \
                    coalesce((SELECT max(m.seq) FROM messages m WHERE m.conversation_id = d.conversation_id), 0) + t.n, \
                    d.tenant_id, d.id, t.role, t.content \
             FROM done d CROSS JOIN LATERAL (VALUES \
                 (1, 'user', coalesce(d.message, d.inputs::text, '')), \
                 (2, 'assistant', CASE WHEN jsonb_typeof(d.result -> 'output') = 'string' \
                                       THEN d.result ->> 'output' ELSE coalesce(d.result::text, '') END) \
             ) AS t(n, role, content) \
             WHERE d.conversation_id IS NOT NULL), \
         {WRITE_PENDING}, \
         {CLOSING_EVENTS}, \
         {APPENDED_PENDING_AND_CLOSING} \
         {RETURNED_WITH_EVENTS}"
    );
    let rows = client
        .query(
            &client.prepare_cached(&sql).await?,
            &[
                &ids, &values, &owner, &bases, &ev_runs, &ev_seqs, &ev_kinds, &ev_data, &usages,
                &artifacts,
            ],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Writes the pending events (`$5`…`$8`) of the runs in `done`.
const WRITE_PENDING: &str = "written AS ( \
    INSERT INTO run_events (run_id, seq, kind, data) \
    SELECT p.run_id, p.seq, p.kind, p.data \
    FROM unnest($5::uuid[], $6::bigint[], $7::text[], $8::jsonb[]) AS p(run_id, seq, kind, data) \
    WHERE p.run_id IN (SELECT id FROM done) \
    RETURNING run_id, seq, kind, data, created_at)";

type Flat<'a> = (
    Vec<Uuid>,
    Vec<i64>,
    Vec<&'static str>,
    Vec<&'a serde_json::Value>,
);

/// The pending events of many runs as parallel arrays, numbered from each run's `next_seq`.
fn flatten(completions: &[Completion]) -> Flat<'_> {
    let mut flat: Flat<'_> = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in completions {
        let Some(first) = c.pending.next_seq else {
            continue;
        };
        for (n, event) in (first..).zip(&c.pending.events) {
            flat.0.push(c.id);
            flat.1.push(n);
            flat.2.push(event.kind.as_str());
            flat.3.push(&event.data);
        }
    }
    flat
}

/// `running → failed` with an error code, only while `owner` holds the lease.
pub async fn fail(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    error_code: &str,
    error_message: &str,
) -> Result<Option<Run>, tokio_postgres::Error> {
    end_with_error(
        client,
        id,
        owner,
        RunStatus::Failed,
        error_code,
        error_message,
        &Pending::default(),
    )
    .await
}

/// `running → failed` or `running → timed_out` (`status`) with an error code, only while
/// `owner` holds the lease; writes the pending events, then `error` and `status`.
pub async fn end_with_error(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    status: RunStatus,
    error_code: &str,
    error_message: &str,
    pending: &Pending,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let status = match status {
        RunStatus::TimedOut => RunStatus::TimedOut,
        _ => RunStatus::Failed,
    };
    end_running(
        client,
        id,
        owner,
        status,
        Some((error_code, error_message)),
        pending,
    )
    .await
}

/// `running → cancelled`, only while `owner` holds the lease; writes the pending events, then
/// `status`.
pub async fn cancel_running(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    pending: &Pending,
) -> Result<Option<Run>, tokio_postgres::Error> {
    end_running(client, id, owner, RunStatus::Cancelled, None, pending).await
}

/// `running → status` (a final one), with the error, while `owner` holds the lease.
async fn end_running(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
    status: RunStatus,
    error: Option<(&str, &str)>,
    pending: &Pending,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let status = status.as_str();
    let (error_code, error_message) = error.unzip();
    let completion = Completion {
        id,
        result: serde_json::Value::Null,
        usage: None,
        artifacts: Vec::new(),
        pending: pending.clone(),
        trace: lapin::types::FieldTable::default(),
    };
    let (ev_runs, ev_seqs, ev_kinds, ev_data) = flatten(std::slice::from_ref(&completion));
    let sql = format!(
        "WITH done AS ( \
             UPDATE runs r SET status = $9, error_code = $3, error_message = $4, lease_owner = NULL, \
                    lease_expires_at = NULL, completed_at = clock_timestamp(), updated_at = now() \
             WHERE r.id = $1 AND r.status = 'running' AND r.lease_owner = $2 \
             RETURNING {COLUMNS}, $10::bigint AS base), \
         {FREE_CONVERSATIONS}, \
         {FREE_SLOTS}, \
         {WRITE_PENDING}, \
         {CLOSING_EVENTS}, \
         {APPENDED_PENDING_AND_CLOSING} \
         {RETURNED_WITH_EVENTS}"
    );
    let row = client
        .query_opt(
            &client.prepare_cached(&sql).await?,
            &[
                &id,
                &owner,
                &error_code,
                &error_message,
                &ev_runs,
                &ev_seqs,
                &ev_kinds,
                &ev_data,
                &status,
                &pending.closing_seq(),
            ],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// `running → queued` without spending the attempt: a worker shutting down hands its run back so
/// another can start it at once instead of waiting for the lease to expire. A run whose cancel
/// was asked for ends `cancelled` instead. Returns the run, with its `status` event, when `owner`
/// held it.
pub async fn release(
    client: &impl GenericClient,
    id: Uuid,
    owner: &str,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let sql = format!(
        "WITH done AS ( \
             UPDATE runs r SET \
                    status = CASE WHEN r.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END, \
                    completed_at = CASE WHEN r.cancel_requested_at IS NULL THEN NULL ELSE clock_timestamp() END, \
                    attempt = greatest(r.attempt - 1, 0), lease_owner = NULL, \
                    lease_expires_at = NULL, enqueued_at = now(), updated_at = now() \
             WHERE r.id = $1 AND r.status = 'running' AND r.lease_owner = $2 \
             RETURNING {COLUMNS}, NULL::bigint AS base), \
         {FREE_CONVERSATIONS}, \
         {FREE_SLOTS}, \
         {CLOSING_EVENTS}, \
         {APPENDED_CLOSING} \
         {RETURNED_WITH_EVENTS}"
    );
    let row = client
        .query_opt(&client.prepare_cached(&sql).await?, &[&id, &owner])
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// `queued → cancelled`, for a run of `tenant_id` that no worker has started. Returns the run
/// with its `status` event; `None` if it is not queued (running, finished, or another
/// tenant's).
pub async fn cancel_queued(
    client: &impl GenericClient,
    tenant_id: &str,
    id: Uuid,
) -> Result<Option<Run>, tokio_postgres::Error> {
    let sql = format!(
        "WITH done AS ( \
             UPDATE runs r SET status = 'cancelled', completed_at = clock_timestamp(), updated_at = now() \
             WHERE r.tenant_id = $1 AND r.id = $2 AND r.status = 'queued' \
             RETURNING {COLUMNS}, NULL::bigint AS base), \
         {CLOSING_EVENTS}, \
         {APPENDED_CLOSING} \
         {RETURNED_WITH_EVENTS}"
    );
    let row = client
        .query_opt(&client.prepare_cached(&sql).await?, &[&tenant_id, &id])
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Asks the worker holding a running run of `tenant_id` to cancel it (not a status change: the
/// holder records `cancelled`). `false` if the run is not running.
pub async fn request_cancel(
    client: &impl GenericClient,
    tenant_id: &str,
    id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            &client
                .prepare_cached(
                    "UPDATE runs SET cancel_requested_at = coalesce(cancel_requested_at, now()), \
                     updated_at = now() WHERE tenant_id = $1 AND id = $2 AND status = 'running'",
                )
                .await?,
            &[&tenant_id, &id],
        )
        .await?;
    Ok(n == 1)
}

/// `queued → expired` for runs whose `ttl` passed before any worker started them, at most
/// `limit`. Returns them with their `status` events.
pub async fn expire_overdue(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Run>, tokio_postgres::Error> {
    let sql = format!(
        "WITH overdue AS ( \
             SELECT id FROM runs WHERE status = 'queued' AND expires_at <= now() \
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
         done AS ( \
             UPDATE runs r SET status = 'expired', error_code = 'ttl_expired', \
                    error_message = 'the run did not start within its ttl', \
                    completed_at = clock_timestamp(), updated_at = now() \
             FROM overdue WHERE r.id = overdue.id AND r.status = 'queued' \
             RETURNING {COLUMNS}, NULL::bigint AS base), \
         {CLOSING_EVENTS}, \
         {APPENDED_CLOSING} \
         {RETURNED_WITH_EVENTS}"
    );
    let rows = client
        .query(&client.prepare_cached(&sql).await?, &[&limit])
        .await?;
    rows.iter().map(from_row).collect()
}

/// `running → queued` (or `→ failed` once attempts are spent, or `→ cancelled` when a cancel
/// was asked for) for runs whose lease expired: their worker died or stalled. Returns the runs changed, at most `limit`.
pub async fn reap_expired(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Run>, tokio_postgres::Error> {
    let sql = format!(
        "WITH expired AS ( \
             SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < now() \
             ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
         done AS ( \
         UPDATE runs r SET \
             status = CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled' \
                           WHEN r.attempt >= r.max_attempts THEN 'failed' ELSE 'queued' END, \
             error_code = CASE WHEN r.cancel_requested_at IS NULL AND r.attempt >= r.max_attempts \
                 THEN 'lease_expired' ELSE r.error_code END, \
             error_message = CASE WHEN r.cancel_requested_at IS NULL AND r.attempt >= r.max_attempts \
                 THEN 'the worker running this run stopped answering, and no attempts are left' \
                 ELSE r.error_message END, \
             completed_at = CASE WHEN r.cancel_requested_at IS NOT NULL OR r.attempt >= r.max_attempts \
                 THEN clock_timestamp() ELSE NULL END, \
             lease_owner = NULL, lease_expires_at = NULL, enqueued_at = now(), updated_at = now() \
         FROM expired WHERE r.id = expired.id AND r.status = 'running' \
         RETURNING {COLUMNS}, NULL::bigint AS base), \
         {FREE_CONVERSATIONS}, \
         {FREE_SLOTS}, \
         {CLOSING_EVENTS}, \
         {APPENDED_CLOSING} \
         {RETURNED_WITH_EVENTS}"
    );
    let rows = client
        .query(&client.prepare_cached(&sql).await?, &[&limit])
        .await?;
    rows.iter().map(from_row).collect()
}

/// Puts back in line the next run of `run`'s session once `run` has left `running`: the
/// earliest queued one, if it waits out of line (a run in line needs nobody's help).
pub async fn next_in_session(
    client: &impl GenericClient,
    run: &Run,
) -> Result<Option<Next>, tokio_postgres::Error> {
    let Some(session_id) = &run.session_id else {
        return Ok(None);
    };
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT id, traceparent FROM switchyard_ready(ARRAY( \
                         SELECT e.id FROM runs e WHERE e.tenant_id = $1 AND e.project_id = $2 \
                           AND e.session_id = $3 AND e.status = 'queued' ORDER BY e.id LIMIT 1))",
                )
                .await?,
            &[&run.tenant_id, &run.project_id, session_id],
        )
        .await?;
    row.map(|r| next_of(&r)).transpose()
}

/// Runs in line that nobody claimed within `older_than` (their message may have been lost):
/// marks them as enqueued now and returns their ids, to be published again. Not a status
/// change. Runs waiting out of line are [`sweep_waiting`]'s.
pub async fn sweep_unclaimed(
    client: &impl GenericClient,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "WITH stale AS ( \
                         SELECT id FROM runs q WHERE status = 'queued' AND waiting IS NULL \
                           AND enqueued_at < now() - make_interval(secs => $1) \
                         ORDER BY enqueued_at LIMIT $2 FOR UPDATE OF q SKIP LOCKED) \
                     UPDATE runs r SET enqueued_at = now() FROM stale WHERE r.id = stale.id RETURNING r.id",
                )
                .await?,
            &[&secs(older_than), &limit],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Puts in line the runs of trailing debounces whose period has ended (at most `limit`), with
/// fresh turns; returns their ids, to publish. Two workers releasing the same run release it once
/// (`switchyard_ready` locks, then takes only runs still out of line).
pub async fn release_debounced(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT id FROM switchyard_ready(ARRAY( \
                 SELECT id FROM runs WHERE status = 'queued' AND waiting = 'debounce' \
                   AND not_before <= now() ORDER BY not_before LIMIT $1))",
        )
        .await?;
    let rows = client.query(&stmt, &[&limit]).await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Gives the held run of a trailing debounce the body of a later call, while it still waits for
/// its period to end. Returns the body it had (the call it drops), or `None` when the run is no
/// longer held (released, cancelled): then the call starts a run of its own.
pub async fn replace_debounced(
    client: &impl GenericClient,
    tenant_id: &str,
    run_id: Uuid,
    message: Option<&str>,
    inputs: &serde_json::Value,
    missing_placeholders: &[String],
) -> Result<Option<Option<serde_json::Value>>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "WITH held AS ( \
                 SELECT id, inputs FROM runs \
                 WHERE tenant_id = $1 AND id = $2 AND status = 'queued' AND waiting = 'debounce' \
                 FOR UPDATE) \
             UPDATE runs r SET message = $3, inputs = $4, missing_placeholders = $5 \
             FROM held WHERE r.id = held.id RETURNING held.inputs",
        )
        .await?;
    let missing: Option<&[String]> =
        (!missing_placeholders.is_empty()).then_some(missing_placeholders);
    let row = client
        .query_opt(&stmt, &[&tenant_id, &run_id, &message, inputs, &missing])
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

/// Runs waiting out of line for longer than `older_than` whose wait is over (their session's
/// earlier runs ended; their agent has a free slot and they are its next; their tenant is under
/// its running quota; their concurrency key under its cap): puts them back in line and returns their ids, to be published. Meant to
/// run even while run messages wait in the queue: such a run has no message of its own, only
/// the one publish by whoever ended its wait. Were that lost, the run must not wait for a
/// backlog to drain.
pub async fn sweep_waiting(
    client: &impl GenericClient,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    // Every run looked at is marked as looked at now, so a run whose wait goes on is looked at
    // again only after `older_than`: a sweep costs at most `limit` rows, however many wait.
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "WITH due AS ( \
                         SELECT q.id, ( \
                             (q.session_id IS NULL OR NOT EXISTS ( \
                               SELECT 1 FROM runs e WHERE e.tenant_id = q.tenant_id AND e.project_id = q.project_id \
                                 AND e.session_id = q.session_id AND e.status IN ('queued', 'running') \
                                 AND (e.status = 'running' OR e.id < q.id))) \
                           AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.tenant_id = q.tenant_id AND a.id = q.agent_id \
                               AND a.max_concurrency IS NOT NULL AND (a.running >= a.max_concurrency \
                                 OR EXISTS (SELECT 1 FROM runs f WHERE f.tenant_id = q.tenant_id \
                                     AND f.agent_id = q.agent_id AND f.status = 'queued' \
                                     AND (f.waiting IS NULL OR f.waiting = 'agent') \
                                     AND (f.priority > q.priority OR (f.priority = q.priority AND f.id < q.id))))) \
                           AND NOT (q.waiting = 'key' AND q.key_cap <= (SELECT count(*) FROM ( \
                               SELECT 1 FROM runs x WHERE x.tenant_id = q.tenant_id AND x.agent_id = q.agent_id \
                                 AND x.concurrency_key = q.concurrency_key AND x.status = 'running' \
                               LIMIT q.key_cap) k)) \
                           AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = q.tenant_id \
                               AND t.max_running IS NOT NULL AND t.max_running <= (SELECT count(*) FROM ( \
                                   SELECT 1 FROM runs x WHERE x.tenant_id = q.tenant_id AND x.status = 'running' \
                                   LIMIT t.max_running) c))) AS over \
                         FROM runs q WHERE q.status = 'queued' AND q.waiting IS NOT NULL \
                           AND q.waiting <> 'debounce' \
                           AND q.enqueued_at < now() - make_interval(secs => $1) \
                         ORDER BY q.enqueued_at LIMIT $2 FOR UPDATE OF q SKIP LOCKED) \
                     UPDATE runs r SET enqueued_at = now() \
                     FROM due WHERE r.id = due.id RETURNING r.id, due.over",
                )
                .await?,
            &[&secs(older_than), &limit],
        )
        .await?;
    let mut over = Vec::new();
    for row in rows {
        if row.try_get::<_, bool>(1)? {
            over.push(row.try_get::<_, Uuid>(0)?);
        }
    }
    if over.is_empty() {
        return Ok(over);
    }
    // Back in line with fresh turns, like any run whose wait ended.
    let rows = client
        .query(
            &client
                .prepare_cached("SELECT id FROM switchyard_ready($1)")
                .await?,
            &[&over],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
