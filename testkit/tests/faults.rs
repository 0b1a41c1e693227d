//! Failure paths with the real binaries: a killed worker, an unreachable broker, an unreachable
//! database, and a webhook receiver that fails.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::{Stack, StackOptions, free_port, poll};

async fn run_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.expect("json");
    run["id"].as_str().expect("id").to_owned()
}

/// Adds an echo agent that takes `delay_ms`, starts a run on it, and waits until it is running.
async fn start_slow_run(
    stack: &Stack,
    agent: &str,
    delay_ms: u64,
    message: &str,
    webhook: Option<&String>,
) -> String {
    stack.add_echo_agent(agent, delay_ms).await.expect("agent");
    let mut body = json!({"agentId": agent, "message": message});
    if let Some(hook) = webhook {
        body["webhookUrl"] = json!(hook);
    }
    let id = run_id(stack.create_run(&body).await.expect("request")).await;
    wait_status(stack, &id, "running", Duration::from_secs(15)).await;
    id
}

async fn wait_status(stack: &Stack, id: &str, status: &str, timeout: Duration) -> Value {
    let found = poll(timeout, || async {
        let run = stack.get_run(id).await.ok()?;
        (run["status"] == status).then_some(run)
    })
    .await;
    match found {
        Ok(run) => run,
        Err(_) => panic!(
            "run {id} did not become {status}; runs:\n{}",
            stack.scheduler_view(id).await
        ),
    }
}

#[tokio::test]
async fn killed_worker_run_completes_once() {
    let mut stack = Stack::start(StackOptions {
        workers: 1,
        worker_lease: "3s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let id = start_slow_run(
        &stack,
        "slow-echo",
        4000,
        "survive",
        Some(&stack.receiver.url),
    )
    .await;

    // kill -9 mid-run, then bring up a replacement.
    stack.workers[0].kill9();
    stack.add_worker().expect("new worker");

    let done = wait_status(&stack, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(done["result"]["output"], "survive");
    // At least one more execution, by the new worker (two if a late heartbeat let it reap once).
    assert!(
        done["attempt"].as_i64().is_some_and(|a| a >= 2),
        "attempt: {}",
        done["attempt"]
    );

    let _received = stack
        .receiver
        .wait_for(Duration::from_secs(15), |r| !r.is_empty())
        .await
        .expect("the completion webhook arrives");
    // Give a duplicate the time it would need (sweeps run every 500 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = stack.receiver.received();
    assert_eq!(
        received.len(),
        1,
        "exactly one completion webhook: {received:?}"
    );
    assert!(received[0].verified);
    assert_eq!(received[0].body["data"]["id"], id.as_str());
    let client = stack.db.client().await.expect("db");
    let deliveries: i64 = client
        .query_one(
            "SELECT count(*) FROM deliveries WHERE run_id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(deliveries, 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_session_goes_on_in_order_after_its_worker_is_killed_mid_run() {
    let mut stack = Stack::start(StackOptions {
        workers: 1,
        worker_lease: "3s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    stack
        .add_echo_agent("slow-chat", 1500)
        .await
        .expect("agent");
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = json!({"agentId": "slow-chat", "message": format!("m{n}"), "sessionId": "s"});
        ids.push(run_id(stack.create_run(&body).await.expect("request")).await);
    }
    wait_status(&stack, &ids[0], "running", Duration::from_secs(15)).await;
    stack.workers[0].kill9();
    stack.add_worker().expect("new worker");

    // The dead worker held the session until its lease expired; then the first run ran again,
    // and only after it the others, each seeing the turns before it.
    let mut history = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let done = wait_status(&stack, id, "completed", Duration::from_secs(30)).await;
        assert_eq!(done["result"]["history"], json!(history), "{done}");
        if n == 0 {
            assert!(done["attempt"].as_i64().is_some_and(|a| a >= 2), "{done}");
        }
        for role in ["user", "assistant"] {
            history.push(json!({"role": role, "content": format!("m{n}")}));
        }
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn runs_accepted_while_the_broker_is_unreachable_complete_once_it_is_back() {
    // The ingress's broker is a closed port; the workers' is the real one, and their sweeper
    // publishes what the ingress could not.
    let closed = free_port().expect("port");
    let stack = Stack::start(StackOptions {
        ingress_amqp_url: Some(format!("amqp://guest:guest@127.0.0.1:{closed}/%2f")),
        sweep_after: "1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");

    let ready: Value = stack
        .http
        .get(format!("{}/readyz", stack.base_url))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["rabbitmq"], "down");

    let mut ids = Vec::new();
    for n in 0..10 {
        let started = Instant::now();
        let response = stack
            .create_run(&json!({"agentId": "echo", "message": format!("offline {n}"), "webhookUrl": stack.receiver.url}))
            .await
            .expect("request");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "accept must not hang on the broker"
        );
        ids.push(run_id(response).await);
    }
    for id in &ids {
        wait_status(&stack, id, "completed", Duration::from_secs(30)).await;
    }
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 10)
        .await
        .expect("ten webhooks");
    let runs: HashSet<&str> = received
        .iter()
        .filter_map(|r| r.body["data"]["id"].as_str())
        .collect();
    assert_eq!(runs.len(), 10);
    assert!(received.iter().all(|r| r.verified));
    stack.shutdown().await;
}

#[tokio::test]
async fn database_down_answers_503_with_retry_after_within_a_second() {
    let closed = free_port().expect("port");
    let stack = Stack::start(StackOptions {
        workers: 0,
        ingress_database_url: Some(format!("postgres://postgres@127.0.0.1:{closed}/nowhere")),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    for _ in 0..3 {
        let started = Instant::now();
        let response = stack
            .create_run(&json!({"agentId": "echo", "message": "x"}))
            .await
            .expect("request");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(response.status(), 503);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body: Value = response.json().await.expect("problem");
        assert_eq!(body["code"], "service_unavailable");
        assert!(body["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let started = Instant::now();
    let get = stack
        .get_run("01890a5d-ac96-774b-bcce-b302099a8057")
        .await
        .expect("get");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(get["status"], 503);
    let ready = stack
        .http
        .get(format!("{}/readyz", stack.base_url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    stack.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured_within_one_to_two_scheduled_delays() {
    let stack = Stack::start(StackOptions {
        receiver_script: vec![429],
        retry_schedule: "1s,1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    stack
        .create_run(&json!({"agentId": "echo", "message": "later please", "webhookUrl": stack.receiver.url}))
        .await
        .expect("request");
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(30), |r| r.len() >= 2)
        .await
        .expect("two attempts");
    assert_eq!(received[0].answered, 429);
    assert_eq!(received[1].answered, 200);
    // `Retry-After: 10` against a 1 s delay: kept to twice the delay, 2 s, where the schedule
    // alone would have waited 0.8 to 1.2 s, and the header alone 10 s.
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(1900), "waited {gap:?}");
    assert!(
        gap < Duration::from_secs(8),
        "Retry-After is capped at twice the delay: {gap:?}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn failing_receiver_gets_the_same_webhook_id_with_a_fresh_signature() {
    let stack = Stack::start(StackOptions {
        receiver_script: vec![500, 500],
        // At least 1.6 s apart even with the jitter, so each attempt falls in another second of
        // `webhook-timestamp` (two attempts within one second would rightly sign the same).
        retry_schedule: "2s,2s,2s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let id = run_id(
        stack
            .create_run(&json!({"agentId": "echo", "message": "retry me", "webhookUrl": stack.receiver.url}))
            .await
            .expect("request"),
    )
    .await;
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(30), |r| r.len() >= 3)
        .await
        .expect("three attempts");
    let statuses: Vec<u16> = received.iter().map(|r| r.answered).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    assert!(
        received.iter().all(|r| r.verified),
        "every attempt is signed validly"
    );
    assert!(
        received
            .iter()
            .all(|r| r.webhook_id == received[0].webhook_id),
        "webhook-id is stable"
    );
    assert_ne!(
        received[0].signature, received[1].signature,
        "each attempt is signed afresh"
    );
    assert_ne!(received[1].signature, received[2].signature);
    assert!(received[1].timestamp > received[0].timestamp);
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(1550),
        "the retry waited its delay, 2 s ± 20 % ({gap:?})"
    );

    let client = stack.db.client().await.expect("db");
    // The notifier records the attempt just after the receiver answers: poll for it.
    let row = poll(Duration::from_secs(10), || async {
        let row = client
            .query_one(
                "SELECT d.status, d.attempts, (SELECT count(*) FROM delivery_attempts a WHERE a.delivery_id = d.id) \
                 FROM deliveries d WHERE d.run_id = $1::text::uuid",
                &[&id],
            )
            .await
            .ok()?;
        (row.get::<_, String>(0) == "delivered").then_some(row)
    })
    .await
    .expect("the delivery is recorded as delivered");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(row.get::<_, i64>(2), 3, "every attempt recorded");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_delivery_that_exhausts_its_schedule_is_marked_failed() {
    let stack = Stack::start(StackOptions {
        receiver_script: vec![503, 503, 503, 503],
        retry_schedule: "1s,1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let id = run_id(
        stack
            .create_run(
                &json!({"agentId": "echo", "message": "doomed", "webhookUrl": stack.receiver.url}),
            )
            .await
            .expect("request"),
    )
    .await;
    let client = stack.db.client().await.expect("db");
    let (status, attempts) = poll(Duration::from_secs(30), || async {
        let row = client
            .query_one(
                "SELECT status, attempts FROM deliveries WHERE run_id = $1::text::uuid",
                &[&id],
            )
            .await
            .ok()?;
        let status: String = row.get(0);
        (status == "failed").then(|| (status, row.get::<_, i32>(1)))
    })
    .await
    .expect("the delivery fails after its last tier");
    assert_eq!(status, "failed");
    assert_eq!(attempts, 3, "one first attempt plus one per tier");
    assert_eq!(stack.receiver.received().len(), 3);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_terminated_worker_finishes_its_run_before_exiting() {
    let mut stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let id = start_slow_run(&stack, "one-second", 1000, "graceful", None).await;
    let exit = stack.workers[0].terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM exits cleanly: {exit:?}"
    );
    let run = stack.get_run(&id).await.expect("get");
    assert_eq!(
        run["status"], "completed",
        "the run in hand finished within the grace period"
    );
    assert_eq!(run["attempt"], 1);
    stack.shutdown().await;
}

#[tokio::test]
async fn webhooks_to_private_addresses_are_refused_without_a_request() {
    let stack = Stack::start(StackOptions {
        egress_allow: "",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let literal = stack.receiver.url.clone();
    let by_name = literal.replace("127.0.0.1", "localhost");
    let mut ids = Vec::new();
    for hook in [&literal, &by_name] {
        ids.push(
            run_id(
                stack
                    .create_run(&json!({"agentId": "echo", "message": "nope", "webhookUrl": hook}))
                    .await
                    .expect("request"),
            )
            .await,
        );
    }
    let client = stack.db.client().await.expect("db");
    for id in &ids {
        let (attempts, error) = poll(Duration::from_secs(20), || async {
            let row = client
                .query_one("SELECT status, attempts, last_error FROM deliveries WHERE run_id = $1::text::uuid", &[id])
                .await
                .ok()?;
            (row.get::<_, String>(0) == "failed").then(|| (row.get::<_, i32>(1), row.get::<_, Option<String>>(2)))
        })
        .await
        .expect("the delivery fails at once");
        assert_eq!(attempts, 1, "a refused destination is not retried");
        let error = error.unwrap_or_default();
        assert!(
            error.contains("not a public address") || error.contains("egress guard"),
            "{error}"
        );
    }
    assert!(
        stack.receiver.received().is_empty(),
        "no request reached the private address"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_run_outlasting_the_shutdown_grace_is_handed_to_another_worker_at_once() {
    let mut stack = Stack::start(StackOptions {
        workers: 2,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let id = start_slow_run(&stack, "six-seconds", 6000, "handed over", None).await;
    let client = stack.db.client().await.expect("db");
    let owner: String = client
        .query_one(
            "SELECT lease_owner FROM runs WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("query")
        .get(0);
    let index: usize = owner
        .trim_start_matches("worker-")
        .parse()
        .expect("worker index");
    let started = Instant::now();
    // The grace is 2 s in test stacks: the run is handed back long before it could finish.
    let exit = stack.workers[index].terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM exits cleanly: {exit:?}"
    );
    let done = wait_status(&stack, &id, "completed", Duration::from_secs(20)).await;
    assert_eq!(done["attempt"], 1, "a hand-back does not spend an attempt");
    // Well under the 30 s sweep: the hand-back republished the run itself.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let finisher: Option<String> = client
        .query_one(
            "SELECT lease_owner FROM runs WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(finisher, None, "the lease is released on completion");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_database_that_accepts_but_never_answers_still_gets_a_prompt_503() {
    // A TCP listener that accepts connections and never speaks PostgreSQL.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let stack = Stack::start(StackOptions {
        workers: 0,
        ingress_database_url: Some(format!("postgres://postgres@127.0.0.1:{port}/silent")),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let started = Instant::now();
    let response = stack
        .create_run(&json!({"agentId": "echo", "message": "x"}))
        .await
        .expect("request");
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    // The pool gives up connecting after SWITCHYARD_DB_TIMEOUT (800 ms); the rest is slack for a
    // loaded CI machine.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    stack.shutdown().await;
    holder.abort();
}

#[tokio::test]
async fn redirects_are_not_followed_and_count_as_failures() {
    let stack = Stack::start(StackOptions {
        receiver_script: vec![302],
        retry_schedule: "1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let id = run_id(
        stack
            .create_run(
                &json!({"agentId": "echo", "message": "moved", "webhookUrl": stack.receiver.url}),
            )
            .await
            .expect("request"),
    )
    .await;
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 2)
        .await
        .expect("a retry after the redirect");
    assert_eq!(received[0].answered, 302);
    assert_eq!(received[1].answered, 200);
    assert_eq!(received[0].webhook_id, received[1].webhook_id);
    assert_eq!(
        stack.receiver.followed_redirects(),
        0,
        "the Location was never requested"
    );
    let client = stack.db.client().await.expect("db");
    let first: Option<i32> = client
        .query_one(
            "SELECT a.response_status FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
             WHERE d.run_id = $1::text::uuid AND a.attempt = 1",
            &[&id],
        )
        .await
        .expect("the first attempt is recorded")
        .get(0);
    assert_eq!(first, Some(302));
    stack.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_hangs_is_timed_out_and_retried() {
    let stack = Stack::start(StackOptions {
        webhook_timeout: "1s",
        retry_schedule: "1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    stack.receiver.hang_next(Duration::from_secs(5));
    let id = run_id(
        stack
            .create_run(&json!({"agentId": "echo", "message": "slowpoke", "webhookUrl": stack.receiver.url}))
            .await
            .expect("request"),
    )
    .await;
    stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 2)
        .await
        .expect("the attempt after the timeout");
    let client = stack.db.client().await.expect("db");
    let (error, latency) = poll(Duration::from_secs(10), || async {
        let row = client
            .query_one(
                "SELECT a.error, a.latency_ms FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
                 WHERE d.run_id = $1::text::uuid AND a.attempt = 1",
                &[&id],
            )
            .await
            .ok()?;
        Some((row.get::<_, Option<String>>(0), row.get::<_, i32>(1)))
    })
    .await
    .expect("the first attempt is recorded");
    assert_eq!(error.as_deref(), Some("the request timed out"));
    assert!(
        (900..4000).contains(&latency),
        "cut off near the 1 s timeout, not after 5 s: {latency} ms"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn poison_run_messages_are_dead_lettered_without_holding_up_the_others() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let conn = lapin::Connection::connect(
        &switchyard_testkit::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    let runs_queue = format!("{}runs", stack.prefix);
    let dead_queue = format!("{}runs.dead", stack.prefix);
    let unknown = json!({"id": uuid::Uuid::now_v7()}).to_string();
    for body in [b"not json at all".as_slice(), unknown.as_bytes()] {
        channel
            .basic_publish(
                "".into(),
                runs_queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    // Real runs sent after the poison still complete.
    let mut ids = Vec::new();
    for n in 0..5 {
        let response = stack
            .create_run(&json!({"agentId": "echo", "message": format!("after poison {n}")}))
            .await
            .expect("request");
        ids.push(run_id(response).await);
    }
    for id in &ids {
        wait_status(&stack, id, "completed", Duration::from_secs(20)).await;
    }
    let dead = poll(Duration::from_secs(20), || async {
        let declared = channel
            .queue_declare(
                dead_queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..lapin::options::QueueDeclareOptions::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .ok()?;
        (declared.message_count() == 2).then_some(())
    })
    .await;
    assert!(
        dead.is_ok(),
        "both poison messages are in the dead-letter queue"
    );
    let _ = conn.close(200, "bye".into()).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn failed_deliveries_are_listed_inspected_redelivered_and_recovered() {
    use switchyard_testkit::api::{get, post};
    let stack = Stack::start(StackOptions {
        receiver_script: vec![500, 500, 500, 500],
        retry_schedule: "1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let since = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let mut runs = Vec::new();
    for n in 0..2 {
        runs.push(
            run_id(
                stack
                    .create_run(&json!({"agentId": "echo", "message": format!("doomed {n}"), "webhookUrl": stack.receiver.url}))
                    .await
                    .expect("request"),
            )
            .await,
        );
    }
    let base = "/manage/tenants/default/deliveries";
    let failed = poll(Duration::from_secs(30), || async {
        let page = get(&stack, &format!("{base}?status=failed"), &stack.api_key).await;
        (page.body["pagination"]["total"] == 2).then_some(page.body)
    })
    .await
    .expect("both deliveries fail after their two attempts");
    let first = failed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["runId"] == runs[0].as_str()))
        .expect("the first run's delivery")
        .clone();
    let id = first["id"].as_str().expect("id");
    assert_eq!(first["attemptCount"], 2);
    let detail = get(&stack, &format!("{base}/{id}"), &stack.api_key).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let attempts = detail.body["data"]["attempts"]
        .as_array()
        .expect("attempts")
        .clone();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .all(|a| a["responseStatus"] == 500 && a["latencyMs"].is_number())
    );
    let by_run = get(&stack, &format!("{base}?runId={}", runs[1]), &stack.api_key).await;
    assert_eq!(by_run.body["pagination"]["total"], 1);
    assert_eq!(
        get(&stack, &format!("{base}?status=lost"), &stack.api_key)
            .await
            .status,
        400
    );

    // Redeliver one: sent again with the same webhook-id, and now delivered.
    let again = post(
        &stack,
        &format!("{base}/{id}/redeliver"),
        &stack.api_key,
        json!({}),
    )
    .await;
    assert_eq!(again.status, 202, "{}", again.body);
    let message_id = first["messageId"].as_str().expect("message id").to_owned();
    poll(Duration::from_secs(15), || async {
        let d = get(&stack, &format!("{base}/{id}"), &stack.api_key).await;
        (d.body["data"]["status"] == "delivered").then_some(())
    })
    .await
    .expect("redelivered");
    let received = stack.receiver.received();
    let last = received.last().expect("received");
    assert_eq!(last.answered, 200);
    assert_eq!(last.webhook_id, message_id);
    assert!(last.verified);

    // Recover the rest since a time.
    let since = since
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let recovered = post(
        &stack,
        &format!("{base}/recover"),
        &stack.api_key,
        json!({"since": since}),
    )
    .await;
    assert_eq!(recovered.status, 202, "{}", recovered.body);
    assert_eq!(recovered.body["data"]["recovered"], 1);
    poll(Duration::from_secs(15), || async {
        let page = get(&stack, &format!("{base}?status=delivered"), &stack.api_key).await;
        (page.body["pagination"]["total"] == 2).then_some(())
    })
    .await
    .expect("both delivered");
    // Another tenant sees none of it.
    let (_, other_key) = switchyard_testkit::api::tenant(&stack).await;
    assert_eq!(
        get(&stack, &format!("{base}/{id}"), &other_key)
            .await
            .status,
        404
    );
    stack.shutdown().await;
}

/// The worker's publish of a delivery can be lost (it died after the commit, or the broker lost
/// the message): the delivery row stays `pending`, and the sweeper hands it out again.
#[tokio::test]
async fn a_delivery_whose_message_was_lost_is_swept_and_delivered() {
    let mut stack = Stack::start(StackOptions {
        workers: 1,
        sweep_after: "1s",
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    // No notifier to take the message before it is lost.
    stack.notifier.kill9();
    let id = run_id(
        stack
            .create_run(
                &json!({"agentId": "echo", "message": "lost", "webhookUrl": stack.receiver.url}),
            )
            .await
            .expect("request"),
    )
    .await;
    wait_status(&stack, &id, "completed", Duration::from_secs(15)).await;
    poll(Duration::from_secs(10), || async {
        (stack.purge("deliveries").await.ok()? > 0).then_some(())
    })
    .await
    .expect("the delivery's message reached the queue, and is now lost");
    stack.restart_notifier().expect("notifier starts");
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(20), |all| {
            all.iter().any(|r| r.body["data"]["id"] == id)
        })
        .await
        .expect("the sweeper republished the delivery");
    let hook = received
        .iter()
        .find(|r| r.body["data"]["id"] == id)
        .expect("found");
    assert!(hook.verified);
    assert_eq!(hook.body["type"], "run.completed");
    stack.shutdown().await;
}
