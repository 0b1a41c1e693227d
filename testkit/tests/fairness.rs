//! Fair scheduling through the whole stack, with three workers: a quiet tenant behind another's
//! flood, weights, a worker killed while it schedules, and the tenant quotas as a caller meets
//! them. Orders are read from the runs' own `started_at`, never from timings: a slow machine
//! changes when runs start, not in which order.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use switchyard_common::catalog::api_keys::Scope;
use switchyard_testkit::{ADMIN_TOKEN, Stack, StackOptions, fixtures, poll};
use uuid::Uuid;

/// A tenant with weight `weight`, a project `p`, an echo agent `slow` taking `delay_ms`, and a
/// key that may trigger runs, read them and manage the tenant's resources.
async fn tenant(stack: &Stack, id: &str, weight: i32, delay_ms: u64) -> String {
    let client = stack.db.client().await.expect("client");
    fixtures::tenant_with_slow_agent(
        &client,
        id,
        weight,
        delay_ms,
        &[Scope::Trigger, Scope::RunsRead, Scope::Manage],
    )
    .await
    .expect("tenant")
}

/// Creates `n` runs of `slow` with `key`, 16 requests at a time; returns their ids.
async fn flood(stack: &Stack, key: &str, n: usize) -> Vec<Uuid> {
    let ids = fixtures::post_runs(stack, key, n, 16).await;
    assert_eq!(ids.len(), n, "every run was accepted");
    ids
}

/// Waits until every run of `ids` has completed.
async fn all_completed(
    client: &tokio_postgres::Client,
    ids: &[Uuid],
    within: Duration,
) -> anyhow::Result<()> {
    poll(within, || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM runs WHERE id = ANY($1) AND status = 'completed'",
                &[&ids],
            )
            .await
            .ok()?
            .get(0);
        (usize::try_from(n).ok()? == ids.len()).then_some(())
    })
    .await
}

fn three_workers() -> StackOptions {
    StackOptions {
        workers: 3,
        worker_env: vec![("SWITCHYARD_WORKER_CONCURRENCY", "2".into())],
        ..StackOptions::default()
    }
}

/// The runs of `tenant_id` started so far, in the order they started.
async fn started(stack: &Stack, tenant_id: &str) -> Vec<(Uuid, time::OffsetDateTime)> {
    stack
        .db
        .client()
        .await
        .expect("client")
        .query(
            "SELECT id, started_at FROM runs WHERE tenant_id = $1 AND started_at IS NOT NULL \
             ORDER BY started_at",
            &[&tenant_id],
        )
        .await
        .expect("q")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_quiet_tenant_is_not_stuck_behind_anothers_flood() {
    let stack = Stack::start(three_workers()).await.expect("stack starts");
    let loud = tenant(&stack, "loud", 1, 200).await;
    let quiet = tenant(&stack, "quiet", 1, 200).await;
    flood(&stack, &loud, 150).await;
    let accepted = time::OffsetDateTime::now_utc();
    let mine = flood(&stack, &quiet, 5).await;
    let done = poll(Duration::from_secs(60), || async {
        let started = started(&stack, "quiet").await;
        (started.len() == mine.len()).then_some(started)
    })
    .await
    .expect("the quiet tenant's runs start");
    let last = done.last().expect("five").1;
    // Between the quiet tenant's arrival and its last start, the loud tenant started about as
    // many runs as it (round robin), not the rest of its flood; and the flood was still waiting.
    let loud_started = started(&stack, "loud").await;
    let overtaking = loud_started
        .iter()
        .filter(|(_, at)| *at > accepted && *at < last)
        .count();
    assert!(
        overtaking <= 5 + 6,
        "{overtaking} of the loud tenant's runs started while the quiet tenant's five waited"
    );
    let queued: i64 = stack
        .db
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FROM runs WHERE tenant_id = 'loud' AND started_at > $1",
            &[&last],
        )
        .await
        .expect("q")
        .get(0);
    let queued_now: i64 = stack
        .db
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FROM runs WHERE tenant_id = 'loud' AND status = 'queued'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert!(
        queued + queued_now >= 50,
        "the flood had drained before the quiet tenant's runs started"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn weights_two_to_one_hold_across_three_workers() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..three_workers()
    })
    .await
    .expect("stack starts");
    let heavy = tenant(&stack, "heavy", 2, 100).await;
    let light = tenant(&stack, "light", 1, 100).await;
    // Both backlogs are there before any worker starts.
    for _ in 0..3 {
        flood(&stack, &light, 50).await;
        flood(&stack, &heavy, 50).await;
    }
    for _ in 0..3 {
        stack.add_worker().expect("worker");
    }
    let first = poll(Duration::from_secs(90), || async {
        let mut all = started(&stack, "heavy").await;
        let heavy = all.len();
        all.extend(started(&stack, "light").await);
        (all.len() >= 150).then(|| {
            all.sort_by_key(|(_, at)| *at);
            (heavy, all)
        })
    })
    .await
    .expect("runs start");
    let (_, all) = first;
    let earliest: Vec<Uuid> = all.iter().take(120).map(|(id, _)| *id).collect();
    let heavy_ids: std::collections::HashSet<Uuid> = started(&stack, "heavy")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let heavy_n = earliest.iter().filter(|id| heavy_ids.contains(id)).count() as f64;
    let light_n = 120.0 - heavy_n;
    let ratio = heavy_n / light_n;
    assert!(
        (1.8..=2.2).contains(&ratio),
        "of the first 120 runs started, {heavy_n} were the weight-2 tenant's and {light_n} the weight-1 tenant's"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_worker_killed_while_it_schedules_loses_and_duplicates_nothing() {
    let mut stack = Stack::start(StackOptions {
        worker_lease: "2s",
        sweep_after: "3s",
        ..three_workers()
    })
    .await
    .expect("stack starts");
    let a = tenant(&stack, "a", 1, 150).await;
    let b = tenant(&stack, "b", 1, 150).await;
    let mut ids = flood(&stack, &a, 40).await;
    ids.extend(flood(&stack, &b, 40).await);
    poll(Duration::from_secs(30), || async {
        let n: i64 = stack
            .db
            .client()
            .await
            .ok()?
            .query_one("SELECT count(*) FROM runs WHERE status = 'completed'", &[])
            .await
            .ok()?
            .get(0);
        (n >= 10).then_some(())
    })
    .await
    .expect("some runs complete");
    stack.workers[0].kill9();
    let client = stack.db.client().await.expect("client");
    all_completed(&client, &ids, Duration::from_secs(90))
        .await
        .expect("every run completes, those of the killed worker included");
    let once: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT run_id FROM run_events WHERE run_id = ANY($1) \
             AND kind = 'completed' GROUP BY run_id HAVING count(*) = 1) x",
            &[&ids],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(once, ids.len() as i64, "every run completed exactly once");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(left, 0);
    stack.shutdown().await;
}

#[tokio::test]
async fn tenant_quotas_answer_429_naming_the_quota_and_show_the_counts() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let key = tenant(&stack, "small", 1, 0).await;
    let admin = |method: reqwest::Method, path: &str| {
        stack
            .http
            .request(method, format!("{}{path}", stack.base_url))
            .bearer_auth(ADMIN_TOKEN)
    };
    let patched: Value = admin(reqwest::Method::PATCH, "/manage/tenants/small")
        .json(&json!({"maxQueued": 2, "maxRunning": 1, "weight": 3}))
        .send()
        .await
        .expect("patch")
        .json()
        .await
        .expect("json");
    let patched = &patched["data"];
    assert_eq!(
        (
            &patched["maxQueued"],
            &patched["maxRunning"],
            &patched["weight"]
        ),
        (&json!(2), &json!(1), &json!(3)),
        "{patched}"
    );
    flood(&stack, &key, 2).await;
    let refused = stack
        .http
        .post(format!("{}/v1/runs", stack.base_url))
        .bearer_auth(&key)
        .json(&json!({"agentId": "slow", "message": "one too many"}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["quota"], json!({"name": "maxQueued", "limit": 2}));
    assert!(body["requestId"].as_str().is_some_and(|id| !id.is_empty()));
    let shown: Value = admin(reqwest::Method::GET, "/manage/tenants/small")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&shown["data"]["queued"], &shown["data"]["running"]),
        (&json!(2), &json!(0)),
        "{shown}"
    );
    // Out of range is refused, as every setting is.
    let bad = admin(reqwest::Method::PATCH, "/manage/tenants/small")
        .json(&json!({"weight": 0}))
        .send()
        .await
        .expect("patch");
    assert_eq!(bad.status(), 422);
    stack.shutdown().await;
}

#[tokio::test]
async fn runs_of_one_concurrency_key_never_overlap_while_other_keys_run() {
    let stack = Stack::start(three_workers()).await.expect("stack starts");
    let key = tenant(&stack, "keys", 1, 0).await;
    let manage = |body: Value| {
        stack
            .http
            .post(format!(
                "{}/manage/tenants/keys/projects/p/agents",
                stack.base_url
            ))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let half = manage(json!({"id": "half", "name": "half", "kind": "echo",
        "concurrencyKey": "/inputs/customer"}))
    .await
    .expect("request");
    assert_eq!(half.status(), 422, "a key needs its cap");
    let made = manage(json!({"id": "per-customer", "name": "per customer", "kind": "echo",
        "config": {"delayMs": 300}, "concurrencyKey": "/inputs/customer", "maxConcurrencyPerKey": 1}))
    .await
    .expect("request");
    assert_eq!(made.status(), 201);
    let ids: Vec<Uuid> = futures::stream::iter(0..8)
        .map(|i| {
            let key = key.clone();
            let stack = &stack;
            async move {
                let customer = if i % 2 == 0 { "acme" } else { "globex" };
                let answer: Value = stack
                    .http
                    .post(format!("{}/v1/runs", stack.base_url))
                    .bearer_auth(&key)
                    .json(&json!({"agentId": "per-customer", "inputs": {"customer": customer}}))
                    .send()
                    .await
                    .expect("request")
                    .json()
                    .await
                    .expect("json");
                assert_eq!(answer["concurrencyKey"], customer, "{answer}");
                answer["id"]
                    .as_str()
                    .expect("id")
                    .parse::<Uuid>()
                    .expect("uuid")
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let client = stack.db.client().await.expect("client");
    all_completed(&client, &ids, Duration::from_secs(60))
        .await
        .expect("every run completes");
    // No two runs of one customer overlapped; runs of the two customers did.
    let overlaps = |same: bool| {
        let client = &client;
        let ids = &ids;
        async move {
            let n: i64 = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM runs a JOIN runs b ON a.id < b.id \
                         AND a.started_at < b.completed_at AND b.started_at < a.completed_at \
                         WHERE a.id = ANY($1) AND b.id = ANY($1) \
                           AND (a.concurrency_key = b.concurrency_key) = {same}"
                    ),
                    &[ids],
                )
                .await
                .expect("q")
                .get(0);
            n
        }
    };
    assert_eq!(overlaps(true).await, 0, "two runs of one key ran at once");
    assert!(
        overlaps(false).await > 0,
        "the two keys never ran side by side"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_run_left_out_of_line_is_swept_back_even_with_the_queue_empty() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        sweep_after: "1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let key = tenant(&stack, "t", 1, 0).await;
    let client = stack.db.client().await.expect("client");
    client
        .execute(
            "UPDATE agents SET max_concurrency = 1 WHERE tenant_id = 't' AND id = 'slow'",
            &[],
        )
        .await
        .expect("limit");
    let ids = flood(&stack, &key, 1).await;
    // As a worker leaves it when the agent's slot is held, and the publish that would have put
    // it back once the slot was free is lost: out of line, no message anywhere.
    stack.purge("runs").await.expect("purge");
    client
        .execute(
            "UPDATE runs SET waiting = 'agent' WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .expect("out of line");
    stack.add_worker().expect("worker");
    poll(Duration::from_secs(30), || async {
        let status: String = client
            .query_one("SELECT status FROM runs WHERE id = $1", &[&ids[0]])
            .await
            .ok()?
            .get(0);
        (status == "completed").then_some(())
    })
    .await
    .expect("the sweeper puts it back in line and it runs");
    stack.shutdown().await;
}
