//! How runs end other than by completing: cancel (queued and running), the agent's timeout, and
//! the queue ttl. Each ends with its final status event and its webhook.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::api::{get, post, run_events};
use switchyard_testkit::{Stack, StackOptions, poll};

async fn stack(workers: usize) -> Stack {
    Stack::start(StackOptions {
        workers,
        worker_lease: "3s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts")
}

/// An echo agent of the `default` project, made through the management API.
async fn agent(stack: &Stack, id: &str, spec: Value) {
    let mut body = json!({"id": id, "name": id, "kind": "echo"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), spec.as_object()) {
        body.extend(extra.clone());
    }
    let made = post(
        stack,
        "/manage/tenants/default/projects/default/agents",
        &stack.api_key,
        body,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
}

async fn create(stack: &Stack, body: Value) -> String {
    let mut body = body;
    body["webhookUrl"] = json!(stack.receiver.url);
    let made = post(stack, "/v1/runs", &stack.api_key, body).await;
    assert_eq!(made.status, 202, "{}", made.body);
    made.body["id"].as_str().expect("id").to_owned()
}

async fn cancel(stack: &Stack, run_id: &str) -> Value {
    let answer = post(
        stack,
        &format!("/v1/runs/{run_id}/cancel"),
        &stack.api_key,
        json!({}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

async fn status_becomes(stack: &Stack, run_id: &str, status: &str) -> Value {
    let found = poll(Duration::from_secs(20), || async {
        let run = stack.get_run(run_id).await.ok()?;
        (run["status"] == status).then_some(run)
    })
    .await;
    match found {
        Ok(run) => run,
        Err(_) => panic!(
            "run {run_id} did not become {status}; runs:\n{}",
            stack.scheduler_view(run_id).await
        ),
    }
}

async fn webhook(stack: &Stack, run_id: &str) -> Value {
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(15), |all| {
            all.iter().any(|r| r.body["data"]["id"] == run_id)
        })
        .await
        .expect("the webhook arrives");
    let hook = received
        .iter()
        .find(|r| r.body["data"]["id"] == run_id)
        .expect("found");
    assert!(hook.verified);
    hook.body.clone()
}

#[tokio::test]
async fn a_cancelled_queued_run_never_starts_and_does_not_hold_up_its_session() {
    let stack = stack(1).await;
    agent(&stack, "slow", json!({"config": {"delayMs": 1500}})).await;
    let first = create(
        &stack,
        json!({"agentId": "slow", "message": "first", "sessionId": "s"}),
    )
    .await;
    let second = create(
        &stack,
        json!({"agentId": "slow", "message": "second", "sessionId": "s"}),
    )
    .await;
    let third = create(
        &stack,
        json!({"agentId": "slow", "message": "third", "sessionId": "s"}),
    )
    .await;
    status_becomes(&stack, &first, "running").await;

    // The second waits behind the first: cancel it there.
    assert_eq!(cancel(&stack, &second).await, json!({"success": true}));
    let cancelled = stack.get_run(&second).await.expect("run");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["completedAt"].is_string());

    // The third runs after the first, and sees only the first's turn.
    let done = status_becomes(&stack, &third, "completed").await;
    assert_eq!(done["result"]["history"].as_array().map(Vec::len), Some(2));
    let never = stack.get_run(&second).await.expect("run");
    assert_eq!(never["status"], "cancelled");
    assert_eq!(never["startedAt"], Value::Null, "it never started");
    assert_eq!(never["attempt"], 0);

    let events = run_events(&stack, &second).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["status"], "cancelled");
    assert_eq!(webhook(&stack, &second).await["type"], "run.cancelled");

    // Cancel is idempotent, and a finished run stays as it is.
    assert_eq!(cancel(&stack, &second).await, json!({"success": true}));
    assert_eq!(cancel(&stack, &first).await, json!({"success": true}));
    assert_eq!(
        stack.get_run(&first).await.expect("run")["status"],
        "completed"
    );
    let unknown = post(
        &stack,
        "/v1/runs/01a2b3c4-0000-7000-8000-000000000000/cancel",
        &stack.api_key,
        json!({}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_running_run_is_stopped_by_its_worker_when_cancelled() {
    // A long lease: heartbeats come every 20 s, so a cancel within 5 s came by the control
    // exchange.
    let stack = Stack::start(StackOptions {
        workers: 2,
        worker_lease: "60s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    agent(&stack, "long", json!({"config": {"delayMs": 30000}})).await;
    let run_id = create(
        &stack,
        json!({"agentId": "long", "message": "a b c d e f g h i j"}),
    )
    .await;
    status_becomes(&stack, &run_id, "running").await;

    let asked = Instant::now();
    assert_eq!(cancel(&stack, &run_id).await, json!({"success": true}));
    let run = poll(Duration::from_secs(5), || async {
        let run = stack.get_run(&run_id).await.ok()?;
        (run["status"] == "cancelled").then_some(run)
    })
    .await
    .expect("cancelled well before a heartbeat could have noticed");
    eprintln!("cancelled {:?} after the request", asked.elapsed());
    assert!(run["result"].is_null());
    let events = run_events(&stack, &run_id).await;
    let last = events.last().expect("events");
    assert_eq!(last["type"], "status");
    assert_eq!(last["data"]["status"], "cancelled");
    assert_eq!(webhook(&stack, &run_id).await["type"], "run.cancelled");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_cancel_the_control_message_missed_is_seen_at_the_next_heartbeat() {
    let stack = stack(1).await;
    agent(&stack, "long", json!({"config": {"delayMs": 30000}})).await;
    let run_id = create(&stack, json!({"agentId": "long", "message": "unheard"})).await;
    status_becomes(&stack, &run_id, "running").await;
    // Asked for in the database only, as if the broker had lost the control message.
    let client = stack.db.client().await.expect("db");
    let marked = client
        .execute(
            "UPDATE runs SET cancel_requested_at = now() WHERE id = $1::text::uuid",
            &[&run_id],
        )
        .await
        .expect("update");
    assert_eq!(marked, 1);
    status_becomes(&stack, &run_id, "cancelled").await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_run_past_its_agents_timeout_ends_timed_out() {
    let stack = stack(1).await;
    agent(
        &stack,
        "dawdler",
        json!({"timeoutSeconds": 1, "config": {"delayMs": 20000}}),
    )
    .await;
    let listed = get(
        &stack,
        "/manage/tenants/default/projects/default/agents/dawdler",
        &stack.api_key,
    )
    .await;
    assert_eq!(listed.body["data"]["timeoutSeconds"], 1);
    let run_id = create(&stack, json!({"agentId": "dawdler", "message": "too slow"})).await;
    let run = status_becomes(&stack, &run_id, "timed_out").await;
    assert_eq!(run["errorCode"], "timeout");
    let events = run_events(&stack, &run_id).await;
    let n = events.len();
    assert_eq!(events[n - 2]["type"], "error");
    assert_eq!(events[n - 2]["data"]["errorCode"], "timeout");
    assert_eq!(events[n - 1]["data"]["status"], "timed_out");
    assert_eq!(webhook(&stack, &run_id).await["type"], "run.timed_out");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_run_not_started_within_its_ttl_expires() {
    let stack = stack(1).await;
    agent(&stack, "slow", json!({"config": {"delayMs": 3000}})).await;
    // The first run holds the session for 3 s; the second may wait 1 s.
    let first = create(
        &stack,
        json!({"agentId": "slow", "message": "first", "sessionId": "s"}),
    )
    .await;
    let hurried = create(
        &stack,
        json!({"agentId": "slow", "message": "hurried", "sessionId": "s", "ttl": 1}),
    )
    .await;
    let after = create(
        &stack,
        json!({"agentId": "slow", "message": "after", "sessionId": "s"}),
    )
    .await;
    let expired = status_becomes(&stack, &hurried, "expired").await;
    assert_eq!(expired["errorCode"], "ttl_expired");
    assert_eq!(expired["startedAt"], Value::Null);
    assert_eq!(webhook(&stack, &hurried).await["type"], "run.expired");
    let events = run_events(&stack, &hurried).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["status"], "expired");
    // The session goes on without it.
    status_becomes(&stack, &first, "completed").await;
    let done = status_becomes(&stack, &after, "completed").await;
    assert_eq!(done["result"]["history"].as_array().map(Vec::len), Some(2));
    // A ttl out of range is refused.
    let bad = post(
        &stack,
        "/v1/runs",
        &stack.api_key,
        json!({"agentId": "slow", "message": "x", "ttl": 0}),
    )
    .await;
    assert_eq!(bad.status, 400);
    stack.shutdown().await;
}

#[tokio::test]
async fn an_agents_concurrency_limit_holds_across_three_workers_and_runs_start_in_order() {
    let stack = stack(3).await;
    agent(
        &stack,
        "capped",
        json!({"maxConcurrency": 2, "config": {"delayMs": 600}}),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            create(
                &stack,
                json!({"agentId": "capped", "message": format!("m{n}")}),
            )
            .await,
        );
    }
    for id in &ids {
        status_becomes(&stack, id, "completed").await;
    }
    let client = stack.db.client().await.expect("db");
    let rows = client
        .query(
            "SELECT id::text, started_at, completed_at FROM runs WHERE agent_id = 'capped' ORDER BY id",
            &[],
        )
        .await
        .expect("runs");
    // The most runs running at any moment, from the database's own clock.
    let mut moments: Vec<(time::OffsetDateTime, i32)> = Vec::new();
    for row in &rows {
        moments.push((row.get(1), 1));
        moments.push((row.get(2), -1));
    }
    moments.sort();
    let (mut now, mut most) = (0, 0);
    for (_, change) in moments {
        now += change;
        most = most.max(now);
    }
    assert_eq!(most, 2, "at most two at once, and two did run together");
    // They started in the order they were accepted.
    let mut by_start: Vec<(time::OffsetDateTime, String)> =
        rows.iter().map(|r| (r.get(1), r.get(0))).collect();
    by_start.sort();
    let started: Vec<String> = by_start.into_iter().map(|(_, id)| id).collect();
    assert_eq!(started, ids);
    // Every slot was given back.
    let running: i32 = client
        .query_one("SELECT running FROM agents WHERE id = 'capped'", &[])
        .await
        .expect("agent")
        .get(0);
    assert_eq!(running, 0);
    stack.shutdown().await;
}

/// The agent's next run is asked for when a run that was still queued leaves, not only when one
/// that held a slot does: the run behind it was refused while it was not first, and nobody else
/// would publish it before the sweeper.
#[tokio::test]
async fn cancelling_the_head_of_an_agents_queue_starts_the_run_behind_it() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        // Far away, so only the cancel can start the second run in time.
        sweep_after: "10m",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    agent(&stack, "single", json!({"maxConcurrency": 1})).await;
    let head = create(&stack, json!({"agentId": "single", "message": "first"})).await;
    let behind = create(&stack, json!({"agentId": "single", "message": "second"})).await;
    // As a worker leaves them when the agent's slot is held: the head waits out of line for a
    // slot, the run behind it waits for the head, and both messages were spent on the pick.
    stack.purge("runs").await.expect("purge");
    stack
        .db
        .client()
        .await
        .expect("client")
        .execute(
            "UPDATE runs SET waiting = 'agent' WHERE id = ANY($1::text[]::uuid[])",
            &[&vec![head.clone(), behind.clone()]],
        )
        .await
        .expect("out of line");
    assert_eq!(cancel(&stack, &head).await, json!({"success": true}));
    stack.add_worker().expect("worker starts");
    status_becomes(&stack, &behind, "completed").await;
    assert_eq!(
        stack.get_run(&head).await.expect("run")["status"],
        "cancelled"
    );
    stack.shutdown().await;
}
