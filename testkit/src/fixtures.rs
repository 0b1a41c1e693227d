//! Rows the scheduler's tests and the bench set up directly in the database: a run as the
//! ingress would hand it over, and a tenant with a slow agent and a key.

use switchyard_common::catalog::api_keys::{self, Scope};
use switchyard_common::runs::NewRun;
use uuid::Uuid;

/// A run of `agent_id` in `tenant_id` saying "hi", with nothing else set.
pub fn new_run(tenant_id: &str, agent_id: &str) -> NewRun {
    NewRun {
        id: Uuid::now_v7(),
        tenant_id: tenant_id.into(),
        agent_id: agent_id.into(),
        message: Some("hi".into()),
        inputs: None,
        metadata: serde_json::json!({}),
        webhook_url: None,
        session_id: None,
        ttl: None,
        chat_model_id: None,
        projects: None,
        trigger: None,
        trace_id: None,
        traceparent: None,
        priority: None,
    }
}

/// A tenant `id` of weight `weight` with a project `p`, an echo agent `slow` that takes
/// `delay_ms`, and a key with `scopes`; returns the key.
pub async fn tenant_with_slow_agent(
    client: &tokio_postgres::Client,
    id: &str,
    weight: i32,
    delay_ms: u64,
    scopes: &[Scope],
) -> anyhow::Result<String> {
    client
        .execute(
            "INSERT INTO tenants (id, name, weight) VALUES ($1, $1, $2)",
            &[&id, &weight],
        )
        .await?;
    client
        .execute(
            "INSERT INTO projects (tenant_id, id, name) VALUES ($1, 'p', 'p')",
            &[&id],
        )
        .await?;
    client
        .execute(
            "INSERT INTO agents (tenant_id, id, project_id, name, kind, config) \
             VALUES ($1, 'slow', 'p', 'slow', 'echo', $2)",
            &[&id, &serde_json::json!({ "delayMs": delay_ms })],
        )
        .await?;
    let key = api_keys::generate();
    api_keys::insert_raw(client, id, "test", &key, scopes).await?;
    Ok(key)
}

/// `n` tenants `t1` … `tn`, each with a project `p` and an echo agent `echo`, in three
/// statements.
pub async fn many_tenants(client: &tokio_postgres::Client, n: usize) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "INSERT INTO tenants (id, name) SELECT 't' || n, 'x' FROM generate_series(1, {n}) n; \
             INSERT INTO projects (tenant_id, id, name) SELECT 't' || n, 'p', 'p' FROM generate_series(1, {n}) n; \
             INSERT INTO agents (tenant_id, id, project_id, name, kind) \
                 SELECT 't' || n, 'echo', 'p', 'e', 'echo' FROM generate_series(1, {n}) n;"
        ))
        .await?;
    Ok(())
}

/// Creates `n` runs of `slow` with `key` through `POST /v1/runs`, `concurrency` at a time;
/// returns the ids of those accepted (202).
pub async fn post_runs(stack: &crate::Stack, key: &str, n: usize, concurrency: usize) -> Vec<Uuid> {
    use futures::StreamExt as _;
    futures::stream::iter(0..n)
        .map(|i| async move {
            let answer = stack
                .http
                .post(format!("{}/v1/runs", stack.base_url))
                .bearer_auth(key)
                .json(&serde_json::json!({"agentId": "slow", "message": format!("run {i}")}))
                .send()
                .await
                .ok()?;
            if answer.status() != 202 {
                return None;
            }
            let body: serde_json::Value = answer.json().await.ok()?;
            body["id"].as_str()?.parse::<Uuid>().ok()
        })
        .buffer_unordered(concurrency)
        .filter_map(std::future::ready)
        .collect()
        .await
}
