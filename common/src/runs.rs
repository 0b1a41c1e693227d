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
    r.traceparent";

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
    /// That request's span, as a W3C `traceparent`.
    pub traceparent: Option<String>,
}

/// What a run started by a trigger records about its invocation.
#[derive(Debug, Clone, Default)]
pub struct TriggerOrigin {
    pub trigger_id: String,
    pub environment: String,
    pub missing_placeholders: Vec<String>,
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
/// (`switchyard_run_queue_lag_seconds`).
fn observe_claimed<'a>(runs: impl Iterator<Item = &'a Run>) {
    for run in runs {
        if let Some(started) = run.started_at {
            metrics::histogram!(crate::metrics::QUEUE_LAG)
                .record((started - run.created_at).as_seconds_f64().max(0.0));
        }
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
        conversation_id: row.try_get("conversation_id")?,
        last_seq: row.try_get("last_seq").unwrap_or(0),
        holds_slot: row.try_get("holds_slot").unwrap_or(false),
        trace_id: row.try_get("trace_id")?,
        traceparent: row.try_get("traceparent")?,
        events: crate::events::from_json(row.try_get("events").ok().flatten()),
    })
}

/// Inserts a batch of runs as `queued` in one statement (group commit). Runs whose agent does not
/// exist in their tenant (or lies outside the run's allowed projects) are skipped; the returned
/// rows say which were inserted.
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
    let sql = format!(
        "INSERT INTO runs AS r (id, tenant_id, project_id, agent_id, status, message, inputs, metadata, \
                                webhook_url, max_attempts, trigger_id, environment, session_id, \
                                missing_placeholders, expires_at, chat_model_id, trace_id, traceparent) \
         SELECT n.id, n.tenant_id, a.project_id, n.agent_id, 'queued', n.message, n.inputs, n.metadata, \
                n.webhook_url, a.max_attempts, n.trigger_id, n.environment, n.session_id, \
                string_to_array(n.missing, E'\\n'), now() + make_interval(secs => n.ttl), n.model, n.trace, n.parent \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::text[], \
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::float8[], $14::text[], \
                     $15::text[], $16::text[]) \
              AS n(id, tenant_id, agent_id, message, inputs, metadata, webhook_url, projects, trigger_id, \
                   environment, session_id, missing, ttl, model, trace, parent) \
         JOIN agents a ON a.tenant_id = n.tenant_id AND a.id = n.agent_id \
         WHERE n.projects IS NULL OR a.project_id = ANY(string_to_array(n.projects, ',')) \
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
            ],
        )
        .await?;
    rows.iter().map(from_row).collect()
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
/// forever. Repeated ids count once.
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

/// The claim: `limited` takes only runs of agents with a concurrency limit (the caller holds a
/// slot for each), the other form only runs of agents without one.
async fn claim_statement(
    client: &impl GenericClient,
    ids: &[Uuid],
    owner: &str,
    lease: Duration,
    limited: bool,
) -> Result<Vec<(Run, AgentSpec)>, tokio_postgres::Error> {
    // An id for each conversation that this claim may have to create.
    let fresh: Vec<Uuid> = ids.iter().map(|_| Uuid::now_v7()).collect();
    let which = if limited { "" } else { "NOT" };
    let sql = format!(
        "WITH c AS ( \
             SELECT r.id, r.tenant_id, r.project_id, r.agent_id, r.session_id, x.fresh, \
                    r.started_at IS NULL AS first_claim \
             FROM runs r JOIN unnest($1::uuid[], $4::uuid[]) AS x(id, fresh) ON x.id = r.id \
             WHERE r.status = 'queued' AND (r.expires_at IS NULL OR r.expires_at > now()) \
               AND {which} EXISTS (SELECT 1 FROM agents l WHERE l.tenant_id = r.tenant_id \
                                   AND l.id = r.agent_id AND l.max_concurrency IS NOT NULL) \
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
                lease_expires_at = now() + make_interval(secs => $3), \
                started_at = coalesce(r.started_at, clock_timestamp()), updated_at = now(), \
                conversation_id = coalesce(t.conversation_id, r.conversation_id), holds_slot = {limited} \
         FROM c LEFT JOIN taken t ON t.run_id = c.id \
              LEFT JOIN agents a ON a.tenant_id = c.tenant_id AND a.id = c.agent_id \
         WHERE r.id = c.id AND r.status = 'queued' AND (c.session_id IS NULL OR t.run_id IS NOT NULL) \
         RETURNING {COLUMNS}, \
             (SELECT coalesce(max(e.seq), 0) FROM run_events e WHERE e.run_id = r.id) AS last_seq, \
             a.kind AS agent_kind, a.config AS agent_config, a.timeout_seconds AS agent_timeout, \
             a.credential_id AS agent_credential, a.max_concurrency IS NOT NULL AS agent_limited, \
             c.first_claim"
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
        .map(|(_, (run, _))| run);
    observe_claimed(firsts);
    Ok(claimed)
}

/// Why some runs were not claimed, as far as it matters to the claimer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unclaimed {
    /// Queued runs whose agent has a concurrency limit: [`claim_limited`] claims them.
    pub limited: Vec<Uuid>,
    /// Ids of no run at all (poison messages).
    pub unknown: Vec<Uuid>,
}

/// Sorts `ids` that [`claim_many`] did not win.
pub async fn why_unclaimed(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Unclaimed, tokio_postgres::Error> {
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "SELECT x.id, r.id IS NULL, \
                            coalesce(r.status = 'queued' AND a.max_concurrency IS NOT NULL, false) \
                     FROM unnest($1::uuid[]) AS x(id) LEFT JOIN runs r ON r.id = x.id \
                     LEFT JOIN agents a ON a.tenant_id = r.tenant_id AND a.id = r.agent_id",
                )
                .await?,
            &[&ids],
        )
        .await?;
    let mut unclaimed = Unclaimed::default();
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        if row.try_get(1)? {
            unclaimed.unknown.push(id);
        } else if row.try_get(2)? {
            unclaimed.limited.push(id);
        }
    }
    Ok(unclaimed)
}

/// [`claim`] for a run whose agent has a concurrency limit, in one transaction: takes a slot of
/// the agent (a guarded UPDATE: `running < max_concurrency`, re-checked after any wait) only
/// for the agent's earliest queued run, then claims it as usual (its session too). If either
/// step fails, the transaction rolls back and nothing was taken. `None`: not its turn, no free
/// slot, or someone else's.
pub async fn claim_limited(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Option<(Run, AgentSpec)>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let slot = tx
        .execute(
            &tx.prepare_cached(
                "UPDATE agents a SET running = a.running + 1 FROM runs r \
                 WHERE r.id = $1 AND r.status = 'queued' \
                   AND a.tenant_id = r.tenant_id AND a.id = r.agent_id \
                   AND a.max_concurrency IS NOT NULL AND a.running < a.max_concurrency \
                   AND NOT EXISTS (SELECT 1 FROM runs e WHERE e.tenant_id = r.tenant_id \
                       AND e.agent_id = r.agent_id AND e.status = 'queued' AND e.id < r.id \
                       AND (e.expires_at IS NULL OR e.expires_at > now()))",
            )
            .await?,
            &[&id],
        )
        .await?;
    if slot != 1 {
        tx.rollback().await?;
        return Ok(None);
    }
    let claimed = claim_statement(&tx, &[id], owner, lease, true).await?.pop();
    if claimed.is_some() {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(claimed)
}

/// The next run of `run`'s agent to start, if the agent has a concurrency limit and a free
/// slot: its earliest queued run. Its message was refused while it was not first, so whoever
/// frees a slot (or takes one and sees more free) publishes it.
pub async fn next_for_agent(
    client: &impl GenericClient,
    run: &Run,
) -> Result<Option<Next>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT e.id, e.traceparent FROM runs e \
                     WHERE e.tenant_id = $1 AND e.agent_id = $2 AND e.status = 'queued' \
                       AND (e.expires_at IS NULL OR e.expires_at > now()) \
                       AND EXISTS (SELECT 1 FROM agents a WHERE a.tenant_id = $1 AND a.id = $2 \
                           AND a.max_concurrency IS NOT NULL AND a.running < a.max_concurrency) \
                     ORDER BY e.id LIMIT 1",
                )
                .await?,
            &[&run.tenant_id, &run.agent_id],
        )
        .await?;
    row.map(|r| next_of(&r)).transpose()
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

/// The next run of `run`'s session once `run` has left `running`: the earliest queued one. Its
/// message was refused while the session was busy, so whoever frees the session publishes it.
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
                    "SELECT id, traceparent FROM runs WHERE tenant_id = $1 AND project_id = $2 \
                     AND session_id = $3 AND status = 'queued' ORDER BY id LIMIT 1",
                )
                .await?,
            &[&run.tenant_id, &run.project_id, session_id],
        )
        .await?;
    row.map(|r| next_of(&r)).transpose()
}

/// Queued runs nobody claimed within `older_than` (their publish may have been lost): marks them
/// as enqueued now and returns their ids, to be published again. Not a status change. A run that
/// waits for its session (an earlier run of it is queued or running), or for a slot of its
/// agent (it is not the agent's first queued run, or no slot is free), is not due: whoever frees
/// the session or the slot publishes it.
pub async fn sweep_unclaimed(
    client: &impl GenericClient,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    sweep(client, older_than, limit, "").await
}

/// [`sweep_unclaimed`] for runs that wait their turn alone: runs of sessions and of agents with
/// a concurrency limit. Meant to run even while run messages wait in the queue: such a run had
/// its own message refused (and acked) while it was not its turn, so the one publish that starts
/// it, by whoever freed the session or the slot, is all it has. Were that publish lost, the run
/// must not wait for a backlog to drain.
pub async fn sweep_waiting(
    client: &impl GenericClient,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    sweep(client, older_than, limit, WAITING_ALONE).await
}

/// The runs [`sweep_waiting`] looks at: of a session, or of an agent with a concurrency limit.
const WAITING_ALONE: &str = "AND (session_id IS NOT NULL OR EXISTS (SELECT 1 FROM agents l \
    WHERE l.tenant_id = q.tenant_id AND l.id = q.agent_id AND l.max_concurrency IS NOT NULL))";

async fn sweep(
    client: &impl GenericClient,
    older_than: Duration,
    limit: i64,
    only: &str,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let sql = format!(
        "WITH stale AS ( \
             SELECT id FROM runs q WHERE status = 'queued' {only} \
               AND enqueued_at < now() - make_interval(secs => $1) \
               AND (session_id IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM runs e WHERE e.tenant_id = q.tenant_id AND e.project_id = q.project_id \
                     AND e.session_id = q.session_id AND e.status IN ('queued', 'running') \
                     AND (e.status = 'running' OR e.id < q.id))) \
               AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.tenant_id = q.tenant_id AND a.id = q.agent_id \
                   AND a.max_concurrency IS NOT NULL AND (a.running >= a.max_concurrency \
                     OR EXISTS (SELECT 1 FROM runs f WHERE f.tenant_id = q.tenant_id \
                         AND f.agent_id = q.agent_id AND f.status = 'queued' AND f.id < q.id))) \
             ORDER BY enqueued_at LIMIT $2 FOR UPDATE OF q SKIP LOCKED) \
         UPDATE runs r SET enqueued_at = now() FROM stale WHERE r.id = stale.id RETURNING r.id"
    );
    let rows = client
        .query(
            &client.prepare_cached(&sql).await?,
            &[&secs(older_than), &limit],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
