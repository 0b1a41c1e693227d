//! Creating deliveries: a run's (for its own `webhookUrl` and every endpoint that selects its
//! event, with the trigger's `outputTransform` applied) and other events' (fanned out to the
//! endpoints only), each in the caller's transaction, idempotent per (event, url).

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::catalog::triggers::OutputTransform;

use crate::model::Run;

use super::{envelope, payload};

/// Creates the deliveries a run's terminal status calls for, inside the caller's transaction.
/// Idempotent: one delivery per (run, event type, url). Returns the ids created.
pub async fn create_for_run(
    client: &impl GenericClient,
    run: &Run,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    Ok(create_for_runs(client, std::slice::from_ref(run))
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// The `outputTransform`s of the triggers that started `runs`, by (tenant, trigger id); one
/// query, and none at all when no run came through a trigger.
async fn output_transforms(
    client: &impl GenericClient,
    runs: &[Run],
) -> Result<std::collections::HashMap<(String, String), OutputTransform>, tokio_postgres::Error> {
    let (tenants, triggers): (Vec<&str>, Vec<&str>) = runs
        .iter()
        .filter_map(|r| Some((r.tenant_id.as_str(), r.trigger_id.as_deref()?)))
        .unzip();
    if triggers.is_empty() {
        return Ok(Default::default());
    }
    let stmt = client
        .prepare_cached(
            "SELECT t.tenant_id, t.id, t.output_transform FROM triggers t \
             JOIN unnest($1::text[], $2::text[]) AS w(tenant_id, id) \
               ON t.tenant_id = w.tenant_id AND t.id = w.id \
             WHERE t.output_transform IS NOT NULL",
        )
        .await?;
    let rows = client.query(&stmt, &[&tenants, &triggers]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let ot: serde_json::Value = row.try_get(2).ok()?;
            Some((
                (row.try_get(0).ok()?, row.try_get(1).ok()?),
                serde_json::from_value(ot).ok()?,
            ))
        })
        .collect())
}

/// [`create_for_run`] for many runs in one statement: a delivery to each run's own
/// `webhookUrl`, and one to each enabled endpoint of the tenant whose filters select the event.
/// A run started by a trigger with an `outputTransform` is delivered with its result transformed.
/// Returns each delivery's id with its run's.
pub async fn create_for_runs(
    client: &impl GenericClient,
    runs: &[Run],
) -> Result<Vec<(Uuid, Uuid)>, tokio_postgres::Error> {
    let transforms = output_transforms(client, runs).await?;
    let mut ids = Vec::new();
    let mut tenants = Vec::new();
    let mut projects = Vec::new();
    let mut run_ids = Vec::new();
    let mut invocation_ids = Vec::new();
    let mut types = Vec::new();
    let mut urls = Vec::new();
    let mut message_ids = Vec::new();
    let mut payloads = Vec::new();
    for run in runs {
        let Some(event_type) = run.status.event_type() else {
            continue;
        };
        let id = Uuid::now_v7();
        ids.push(id);
        tenants.push(run.tenant_id.as_str());
        projects.push(run.project_id.as_str());
        run_ids.push(run.id);
        invocation_ids.push(run.trigger_id.as_ref().map(|_| run.id));
        types.push(event_type);
        urls.push(run.webhook_url.as_deref());
        message_ids.push(format!("msg_{}", id.simple()));
        let transform = run
            .trigger_id
            .as_ref()
            .and_then(|t| transforms.get(&(run.tenant_id.clone(), t.clone())));
        match (transform, &run.result) {
            (Some(ot), Some(result)) => {
                let mut shown = run.clone();
                let transformed = crate::transform::apply(ot, result);
                shown.result = transformed.as_ref().ok().cloned();
                let mut body = payload(event_type, &shown);
                if let Err(too_large) = transformed {
                    body["data"]["outputTransformError"] = serde_json::json!(format!(
                        "the trigger's outputTransform was not applied: {too_large}"
                    ));
                }
                payloads.push(body);
            }
            _ => payloads.push(payload(event_type, run)),
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &client
                .prepare_cached(&format!(
                    "WITH n AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], \
                                       $5::uuid[], $6::text[], $7::text[], $8::text[], $9::jsonb[]) \
                         AS n(id, tenant_id, project_id, run_id, invocation_id, event_type, url, \
                              message_id, payload)), \
                     direct AS ( \
                         INSERT INTO deliveries (id, tenant_id, run_id, invocation_id, subject, \
                                                 event_type, url, message_id, payload, status) \
                         SELECT n.id, n.tenant_id, n.run_id, n.invocation_id, n.run_id::text, \
                                n.event_type, n.url, n.message_id, n.payload, 'pending' \
                         FROM n WHERE n.url IS NOT NULL \
                         ON CONFLICT DO NOTHING RETURNING id, run_id), \
                     fanned AS ({FAN_OUT} \
                         SELECT n.tenant_id, n.project_id, n.event_type, n.run_id, n.invocation_id, \
                                n.run_id::text, n.payload FROM n {FAN_OUT_END}) \
                     SELECT id, run_id FROM direct UNION ALL SELECT id, run_id FROM fanned"
                ))
                .await?,
            &[
                &ids,
                &tenants,
                &projects,
                &run_ids,
                &invocation_ids,
                &types,
                &urls,
                &message_ids,
                &payloads,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The INSERT that hands an event to every enabled endpoint of its tenant whose event types and
/// project select it, once per (endpoint, subject, event type). Followed by a SELECT of
/// `(tenant_id, project_id, event_type, run_id, invocation_id, subject, payload)`; returns the
/// new deliveries' ids and run ids.
const FAN_OUT: &str = "\
    INSERT INTO deliveries (id, tenant_id, run_id, invocation_id, subject, endpoint_id, event_type, \
                            url, message_id, payload, status) \
    SELECT f.id, f.tenant_id, f.run_id, f.invocation_id, f.subject, f.endpoint_id, f.event_type, \
           f.url, 'msg_' || replace(f.id::text, '-', ''), f.payload, 'pending' \
    FROM (SELECT gen_random_uuid() AS id, ev.*, e.id AS endpoint_id, e.url \
          FROM webhook_endpoints e JOIN (";

const FAN_OUT_END: &str = ") AS ev(tenant_id, project_id, event_type, run_id, invocation_id, \
                                  subject, payload) \
            ON e.tenant_id = ev.tenant_id AND e.enabled \
           AND (e.project_id IS NULL OR e.project_id = ev.project_id) \
           AND (ev.event_type = ANY (e.event_types) OR '*' = ANY (e.event_types))) f \
    ON CONFLICT DO NOTHING RETURNING id, run_id";

/// An event that is not a run's: `invocation.dropped` or `endpoint.disabled`.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub tenant_id: &'a str,
    /// The project it belongs to; endpoints limited to a project see only its events.
    pub project_id: Option<&'a str>,
    pub event_type: &'a str,
    pub invocation_id: Option<Uuid>,
    /// What the event is about (the invocation's or the endpoint event's id): an endpoint gets
    /// one delivery per subject and type.
    pub subject: String,
    /// The `data` of the body.
    pub data: serde_json::Value,
}

/// Hands `events` to the endpoints that select them; returns the deliveries created.
pub async fn fan_out(
    client: &impl GenericClient,
    events: &[Event<'_>],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = events.iter().map(|e| e.tenant_id).collect();
    let projects: Vec<Option<&str>> = events.iter().map(|e| e.project_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let invocations: Vec<Option<Uuid>> = events.iter().map(|e| e.invocation_id).collect();
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    let payloads: Vec<serde_json::Value> = events
        .iter()
        .map(|e| envelope(e.event_type, e.data.clone()))
        .collect();
    let rows = client
        .query(
            &client
                .prepare_cached(&format!(
                    "{FAN_OUT} SELECT t, p, ty, NULL::uuid, i, s, pl FROM unnest($1::text[], \
                     $2::text[], $3::text[], $4::uuid[], $5::text[], $6::jsonb[]) \
                     AS u(t, p, ty, i, s, pl) {FAN_OUT_END}"
                ))
                .await?,
            &[
                &tenants,
                &projects,
                &types,
                &invocations,
                &subjects,
                &payloads,
            ],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
