//! The run and delivery state machines against the real PostgreSQL: every transition is guarded,
//! so racing actors never both win.

use std::time::Duration;

use deadpool_postgres::Pool;
use switchyard_common::config::DatabaseArgs;
use switchyard_common::deliveries::{self, Attempt, Next};
use switchyard_common::events::{self, EventKind, NewEvent};
use switchyard_common::runs::{self, NewRun};
use switchyard_common::{RunStatus, conversations, db};
use switchyard_testkit::{TestDb, poll};
use uuid::Uuid;

fn pool(db: &TestDb) -> Pool {
    db::pool(&DatabaseArgs {
        database_url: db.url.clone(),
        db_pool_size: 16,
        db_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(10),
    })
    .expect("pool builds")
}

fn new_run(agent: &str, webhook: Option<&str>) -> NewRun {
    NewRun {
        message: Some("hello".into()),
        metadata: serde_json::json!({"k": "v"}),
        webhook_url: webhook.map(str::to_owned),
        ..switchyard_testkit::fixtures::new_run("default", agent)
    }
}

async fn insert(pool: &Pool, run: NewRun) -> switchyard_common::Run {
    let client = pool.get().await.expect("connection");
    let mut rows = runs::insert_batch(&client, &[run]).await.expect("insert");
    rows.pop().expect("one row inserted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_claims_exactly_one_wins() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    for _ in 0..5 {
        let run = insert(&pool, new_run("echo", None)).await;
        // Connections first, then all claims released together.
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(pool.get().await.expect("connection"));
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut racers = Vec::new();
        for (n, client) in clients.into_iter().enumerate() {
            let start = start.clone();
            racers.push(tokio::spawn(async move {
                start.wait().await;
                runs::claim(
                    &client,
                    run.id,
                    &format!("worker-{n}"),
                    Duration::from_secs(30),
                )
                .await
                .expect("claim query")
            }));
        }
        let mut winners = 0;
        for racer in racers {
            if let Some((claimed, agent)) = racer.await.expect("join") {
                winners += 1;
                assert_eq!(claimed.status, RunStatus::Running);
                assert_eq!(claimed.attempt, 1);
                assert_eq!(agent.kind, "echo");
            }
        }
        assert_eq!(winners, 1, "exactly one claim must win");
    }
}

#[tokio::test]
async fn a_finished_run_never_changes_again() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let run = insert(&pool, new_run("echo", None)).await;
    assert_eq!(run.status, RunStatus::Queued);
    runs::claim(&client, run.id, "w1", Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimed");
    // Only the lease owner may complete.
    let stranger = runs::complete(&client, run.id, "w2", &serde_json::json!({"output": "x"}))
        .await
        .expect("query");
    assert!(
        stranger.is_none(),
        "a worker without the lease must not complete the run"
    );
    let done = runs::complete(
        &client,
        run.id,
        "w1",
        &serde_json::json!({"output": "hello"}),
    )
    .await
    .expect("query")
    .expect("completed");
    assert_eq!(done.status, RunStatus::Completed);
    assert!(done.completed_at.is_some());
    assert!(
        runs::claim(&client, run.id, "w3", Duration::from_secs(30))
            .await
            .expect("q")
            .is_none()
    );
    assert!(
        runs::complete(&client, run.id, "w1", &serde_json::json!({}))
            .await
            .expect("q")
            .is_none()
    );
    assert!(
        runs::fail(&client, run.id, "w1", "x", "y")
            .await
            .expect("q")
            .is_none()
    );
    assert!(
        runs::heartbeat(&client, run.id, "w1", Duration::from_secs(30))
            .await
            .expect("q")
            .is_none()
    );
    assert!(
        runs::release(&client, run.id, "w1")
            .await
            .expect("q")
            .is_none()
    );
    let stored = runs::get(&client, "default", run.id)
        .await
        .expect("q")
        .expect("found");
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.result, Some(serde_json::json!({"output": "hello"})));
}

#[tokio::test]
async fn expired_leases_are_requeued_then_failed_when_attempts_run_out() {
    let db = TestDb::create().await.expect("test db");
    let raw = db.client().await.expect("client");
    raw.execute(
        "INSERT INTO agents (tenant_id, id, project_id, name, kind, max_attempts) \
         VALUES ('default', 'twice', 'default', 'twice', 'echo', 2)",
        &[],
    )
    .await
    .expect("agent");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let run = insert(&pool, new_run("twice", Some("http://127.0.0.1:9/hook"))).await;

    runs::claim(&client, run.id, "dead-1", Duration::ZERO)
        .await
        .expect("q")
        .expect("claimed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reaped = runs::reap_expired(&client, 10).await.expect("reap");
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        reaped[0].status,
        RunStatus::Queued,
        "attempts remain, so back to the queue"
    );
    assert!(
        runs::heartbeat(&client, run.id, "dead-1", Duration::from_secs(30))
            .await
            .expect("q")
            .is_none()
    );

    let (second, _) = runs::claim(&client, run.id, "dead-2", Duration::ZERO)
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(second.attempt, 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reaped = runs::reap_expired(&client, 10).await.expect("reap");
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].status, RunStatus::Failed, "no attempts left");
    assert_eq!(reaped[0].error_code.as_deref(), Some("lease_expired"));
    assert!(
        runs::reap_expired(&client, 10)
            .await
            .expect("reap")
            .is_empty()
    );
}

#[tokio::test]
async fn a_released_run_keeps_its_attempt_and_can_be_claimed_again() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let run = insert(&pool, new_run("echo", None)).await;
    runs::claim(&client, run.id, "w1", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert!(
        runs::release(&client, run.id, "w1")
            .await
            .expect("q")
            .is_some()
    );
    let (again, _) = runs::claim(&client, run.id, "w2", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(again.attempt, 1, "a hand-back does not spend an attempt");
}

#[tokio::test]
async fn runs_of_unknown_agents_are_not_inserted_and_batches_insert_the_rest() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let mut batch: Vec<NewRun> = (0..50).map(|_| new_run("echo", None)).collect();
    let mut other_tenant = new_run("echo", None);
    other_tenant.tenant_id = "someone-else".into();
    batch.push(other_tenant.clone());
    batch.push(new_run("no-such-agent", None));
    let inserted = runs::insert_batch(&client, &batch).await.expect("insert");
    assert_eq!(inserted.len(), 50);
    assert!(
        inserted
            .iter()
            .all(|r| r.status == RunStatus::Queued && r.project_id == "default")
    );
    assert!(!inserted.iter().any(|r| r.id == other_tenant.id));
    // Another tenant cannot read the run.
    assert!(
        runs::get(&client, "someone-else", inserted[0].id)
            .await
            .expect("q")
            .is_none()
    );
}

#[tokio::test]
async fn unclaimed_runs_are_swept_once_per_threshold() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let run = insert(&pool, new_run("echo", None)).await;
    assert!(
        runs::sweep_unclaimed(&client, Duration::from_secs(60), 10)
            .await
            .expect("q")
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let swept = runs::sweep_unclaimed(&client, Duration::from_millis(200), 10)
        .await
        .expect("q");
    assert_eq!(swept, vec![run.id]);
    assert!(
        runs::sweep_unclaimed(&client, Duration::from_millis(200), 10)
            .await
            .expect("q")
            .is_empty(),
        "a swept run waits a whole threshold again"
    );
}

#[tokio::test]
async fn a_delivery_is_claimed_once_and_every_attempt_is_recorded() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let mut client = pool.get().await.expect("connection");
    let run = insert(&pool, new_run("echo", Some("http://127.0.0.1:9/hook"))).await;
    runs::claim(&client, run.id, "w", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    let done = runs::complete(
        &client,
        run.id,
        "w",
        &serde_json::json!({"output": "hello"}),
    )
    .await
    .expect("q")
    .expect("completed");
    let ids = deliveries::create_for_run(&client, &done)
        .await
        .expect("create");
    assert_eq!(ids.len(), 1);
    assert!(
        deliveries::create_for_run(&client, &done)
            .await
            .expect("again")
            .is_empty(),
        "idempotent"
    );

    let first = deliveries::claim(&mut client, ids[0], Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert!(
        deliveries::claim(&mut client, ids[0], Duration::from_secs(30))
            .await
            .expect("q")
            .is_none()
    );
    assert_eq!(first.attempt, 1);
    assert_eq!(first.payload["type"], "run.completed");
    assert_eq!(first.payload["data"]["id"], run.id.to_string());
    let failed = Attempt {
        response_status: Some(500),
        response_body: Some("boom".into()),
        error: None,
        latency: Duration::from_millis(3),
    };
    assert!(
        deliveries::finish(
            &mut client,
            &first,
            &failed,
            Next::RetryAfter(Duration::ZERO)
        )
        .await
        .expect("q")
    );
    let second = deliveries::claim(&mut client, ids[0], Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.message_id, first.message_id,
        "webhook-id is stable across attempts"
    );
    let ok = Attempt {
        response_status: Some(204),
        response_body: None,
        error: None,
        latency: Duration::from_millis(1),
    };
    assert!(
        deliveries::finish(&mut client, &second, &ok, Next::Delivered)
            .await
            .expect("q")
    );
    assert!(
        !deliveries::finish(&mut client, &second, &ok, Next::Delivered)
            .await
            .expect("q"),
        "already finished"
    );
    let row = client
        .query_one(
            "SELECT d.status, count(a.*) FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id \
             WHERE d.id = $1 GROUP BY d.status",
            &[&ids[0]],
        )
        .await
        .expect("q");
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert_eq!(row.get::<_, i64>(1), 2);
}

#[tokio::test]
async fn concurrent_migrations_apply_each_migration_once() {
    let db = TestDb::create().await.expect("test db");
    // A second, empty database migrated by several processes' worth of callers at once.
    let raw = db.client().await.expect("client");
    let empty = format!("{}_empty", db.name);
    raw.batch_execute(&format!("CREATE DATABASE {empty}"))
        .await
        .expect("create");
    let url = format!("{}/{empty}", switchyard_testkit::postgres_base());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { db::migrate(&url).await }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.expect("join").expect("migrate succeeds");
    }
    let expected = switchyard_testkit::migration_count();
    assert_eq!(
        applied, expected,
        "each migration applied exactly once across all callers"
    );
    let (check, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let n: i64 = check
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, expected as i64);
    drop(check);
    driver.abort();
    raw.batch_execute(&format!("DROP DATABASE {empty} WITH (FORCE)"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_batched_claims_neither_deadlock_nor_double_claim() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    for _ in 0..5 {
        let client = pool.get().await.expect("connection");
        let batch: Vec<NewRun> = (0..50).map(|_| new_run("echo", None)).collect();
        let ids: Vec<Uuid> = runs::insert_batch(&client, &batch)
            .await
            .expect("insert")
            .iter()
            .map(|r| r.id)
            .collect();
        drop(client);
        // Four workers claim the same runs at once, each listing them in its own order.
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(4));
        let mut racers = Vec::new();
        for n in 0..4 {
            let mut order = ids.clone();
            if n % 2 == 1 {
                order.reverse();
            }
            order.rotate_left(n * 7);
            let (pool, start) = (pool.clone(), start.clone());
            racers.push(tokio::spawn(async move {
                let client = pool.get().await.expect("connection");
                start.wait().await;
                runs::claim_many(
                    &client,
                    &order,
                    &format!("worker-{n}"),
                    Duration::from_secs(30),
                )
                .await
                .expect("no deadlock, no error")
            }));
        }
        let mut claimed = Vec::new();
        for racer in racers {
            claimed.extend(
                racer
                    .await
                    .expect("join")
                    .into_iter()
                    .map(|(run, _)| run.id),
            );
        }
        claimed.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(claimed, expected, "every run claimed exactly once");
    }
}

#[tokio::test]
async fn one_batch_of_attempts_can_deliver_retry_and_fail_at_once() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let mut client = pool.get().await.expect("connection");
    let mut outgoing = Vec::new();
    for _ in 0..3 {
        let run = insert(&pool, new_run("echo", Some("http://127.0.0.1:9/hook"))).await;
        runs::claim(&client, run.id, "w", Duration::from_secs(30))
            .await
            .expect("q")
            .expect("claimed");
        let done = runs::complete(&client, run.id, "w", &serde_json::json!({"output": "x"}))
            .await
            .expect("q")
            .expect("completed");
        let id = deliveries::create_for_run(&client, &done)
            .await
            .expect("create")[0];
        outgoing.push(
            deliveries::claim(&mut client, id, Duration::from_secs(30))
                .await
                .expect("q")
                .expect("claimed"),
        );
    }
    let attempt = |status| Attempt {
        response_status: Some(status),
        response_body: None,
        error: None,
        latency: Duration::from_millis(2),
    };
    let items = vec![
        (outgoing[0].clone(), attempt(200), Next::Delivered),
        (
            outgoing[1].clone(),
            attempt(500),
            Next::RetryAfter(Duration::from_secs(60)),
        ),
        (outgoing[2].clone(), attempt(410), Next::GiveUp),
    ];
    let moved = deliveries::finish_many(&mut client, &items, deliveries::DEFAULT_DISABLE_AFTER)
        .await
        .expect("finish");
    assert_eq!(moved.moved.len(), 3);
    let status_of = |id: Uuid| {
        let client = &client;
        async move {
            let row = client
                .query_one("SELECT status, next_attempt_at > now() + interval '50 seconds', last_error FROM deliveries WHERE id = $1", &[&id])
                .await
                .expect("q");
            (
                row.get::<_, String>(0),
                row.get::<_, bool>(1),
                row.get::<_, Option<String>>(2),
            )
        }
    };
    assert_eq!(
        status_of(outgoing[0].id).await,
        ("delivered".into(), false, None)
    );
    assert_eq!(
        status_of(outgoing[1].id).await,
        (
            "pending".into(),
            true,
            Some("the endpoint answered 500".into())
        )
    );
    assert_eq!(
        status_of(outgoing[2].id).await,
        (
            "failed".into(),
            false,
            Some("the endpoint answered 410".into())
        )
    );
    // The same batch again changes nothing: every delivery has left `sending`.
    assert!(
        deliveries::finish_many(&mut client, &items, deliveries::DEFAULT_DISABLE_AFTER)
            .await
            .expect("finish")
            .moved
            .is_empty()
    );
}

fn in_session(session: &str, message: &str) -> NewRun {
    NewRun {
        session_id: Some(session.into()),
        message: Some(message.into()),
        ..new_run("echo", None)
    }
}

async fn claimed_ids(pool: &Pool, ids: &[Uuid], owner: &str) -> Vec<Uuid> {
    let client = pool.get().await.expect("connection");
    runs::claim_many(&client, ids, owner, Duration::from_secs(30))
        .await
        .expect("claim")
        .into_iter()
        .map(|(run, _)| run.id)
        .collect()
}

#[tokio::test]
async fn a_session_runs_one_run_at_a_time_in_acceptance_order_and_keeps_its_conversation() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let batch = vec![
        in_session("s", "first"),
        in_session("s", "second"),
        in_session("s", "third"),
        in_session("other", "elsewhere"),
    ];
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    let (s1, s2, s3, o1) = (ids[0], ids[1], ids[2], ids[3]);
    runs::insert_batch(&client, &batch).await.expect("insert");

    // One batch holding the whole session, in any order and with a repeat: only its first run
    // is claimed, and the other session does not wait for it.
    let mut won = claimed_ids(&pool, &[s3, s2, s1, s1, o1, o1], "w1").await;
    won.sort();
    assert_eq!(won, vec![s1, o1]);
    assert!(claimed_ids(&pool, &[s2], "w2").await.is_empty(), "s1 runs");
    // The fair pick takes the rest of the session out of line, and starts nothing.
    let mut other = pool.get().await.expect("connection");
    let picked = runs::claim_next(&mut other, 4, "w2", Duration::from_secs(30))
        .await
        .expect("pick");
    assert!(picked.runs.is_empty() && !picked.cut_short);
    let waiting: Vec<Option<String>> = client
        .query(
            "SELECT waiting FROM runs WHERE id = ANY($1) ORDER BY id",
            &[&vec![s2, s3]],
        )
        .await
        .expect("q")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(waiting, vec![Some("session".to_owned()); 2]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        runs::sweep_unclaimed(&client, Duration::ZERO, 10)
            .await
            .expect("sweep")
            .is_empty(),
        "runs waiting for their session are not swept"
    );

    let done = runs::complete(&client, s1, "w1", &serde_json::json!({"output": "one"}))
        .await
        .expect("q")
        .expect("completed");
    let conversation = done.conversation_id.expect("joined a conversation");
    let loner = insert(&pool, new_run("echo", None)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Had the publish of the session's next run been lost, the sweeper puts it back in line.
    assert_eq!(
        runs::sweep_waiting(&client, Duration::ZERO, 10)
            .await
            .expect("sweep"),
        vec![s2],
        "only the session's next run is due, and runs in line are left alone"
    );
    assert_eq!(
        runs::next_in_session(&client, &done).await.expect("q"),
        None,
        "it is in line already"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut swept = runs::sweep_unclaimed(&client, Duration::ZERO, 10)
        .await
        .expect("sweep");
    swept.sort();
    assert_eq!(swept, vec![s2, loner.id]);
    assert!(
        claimed_ids(&pool, &[s3], "w2").await.is_empty(),
        "s2 is first"
    );
    let (second, _) = runs::claim(&client, s2, "w2", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(second.conversation_id, Some(conversation));
    let said = |role: &str, content: &str| conversations::Message {
        role: role.into(),
        content: content.into(),
    };
    let turn = vec![said("user", "first"), said("assistant", "one")];
    assert_eq!(
        conversations::history(&client, "default", conversation)
            .await
            .expect("q"),
        turn
    );
    assert!(
        conversations::history(&client, "someone-else", conversation)
            .await
            .expect("q")
            .is_empty(),
        "scoped by tenant"
    );

    // A failed run frees the session but adds nothing to the conversation.
    runs::fail(&client, s2, "w2", "boom", "it broke")
        .await
        .expect("q")
        .expect("failed");
    let (third, _) = runs::claim(&client, s3, "w3", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(third.conversation_id, Some(conversation));
    assert_eq!(
        conversations::history(&client, "default", conversation)
            .await
            .expect("q"),
        turn
    );
    // A hand-back and an expired lease free it too.
    assert!(runs::release(&client, s3, "w3").await.expect("q").is_some());
    runs::claim(&client, s3, "w4", Duration::ZERO)
        .await
        .expect("q")
        .expect("claimed after the hand-back");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        runs::reap_expired(&client, 10).await.expect("reap").len(),
        1
    );
    runs::claim(&client, s3, "w5", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed after the reaper");
    runs::complete(&client, s3, "w5", &serde_json::json!({"answer": 3}))
        .await
        .expect("q")
        .expect("completed");
    let history = conversations::history(&client, "default", conversation)
        .await
        .expect("q");
    assert_eq!(history.len(), 4);
    assert_eq!(history[2], said("user", "third"));
    assert_eq!(
        history[3],
        said("assistant", r#"{"answer": 3}"#),
        "a result without a text output is kept as JSON"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_workers_never_run_two_runs_of_a_session_at_once() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let batch: Vec<NewRun> = (0..24)
        .map(|n| in_session("busy", &format!("m{n}")))
        .collect();
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    runs::insert_batch(&pool.get().await.expect("connection"), &batch)
        .await
        .expect("insert");
    let finished = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut workers = Vec::new();
    for w in 0..6 {
        let (pool, ids, finished) = (pool.clone(), ids.clone(), finished.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            while finished.lock().await.len() < ids.len() {
                assert!(tokio::time::Instant::now() < deadline, "the session stalled");
                // Every worker offers every run each time, as redelivered messages would.
                for id in claimed_ids(&pool, &ids, &owner).await {
                    let client = pool.get().await.expect("connection");
                    let running: i64 = client
                        .query_one(
                            "SELECT count(*) FROM runs WHERE session_id = 'busy' AND status = 'running'",
                            &[],
                        )
                        .await
                        .expect("q")
                        .get(0);
                    assert_eq!(running, 1, "two runs of one session ran at once");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    finished.lock().await.push(id);
                    runs::complete(&client, id, &owner, &serde_json::json!({"output": "ok"}))
                        .await
                        .expect("q")
                        .expect("completed");
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    assert_eq!(
        *finished.lock().await,
        ids,
        "the runs finished in the order they were accepted"
    );
}

#[tokio::test]
async fn a_run_handed_back_is_not_overtaken_by_the_next_of_its_session() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let batch = vec![in_session("s", "first"), in_session("s", "second")];
    let (s1, s2) = (batch[0].id, batch[1].id);
    runs::insert_batch(&pool.get().await.expect("connection"), &batch)
        .await
        .expect("insert");
    assert_eq!(claimed_ids(&pool, &[s1], "w1").await, vec![s1]);

    // The hand-back holds the conversation's row, uncommitted, while the next run is offered:
    // that claim sees the first run still running, and must not wait to take the session once
    // it is free, since the first run will be queued again.
    let mut holder = pool.get().await.expect("connection");
    let handing_back = holder.transaction().await.expect("begin");
    assert!(
        runs::release(&handing_back, s1, "w1")
            .await
            .expect("release")
            .is_some()
    );
    let claimer = {
        let pool = pool.clone();
        tokio::spawn(async move { claimed_ids(&pool, &[s2], "w2").await })
    };
    let watcher = db.client().await.expect("client");
    poll(Duration::from_secs(10), || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.datname = current_database()",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (claimer.is_finished() || waiting > 0).then_some(())
    })
    .await
    .expect("the claim finished or waits for a lock");
    handing_back.commit().await.expect("commit");
    assert!(
        claimer.await.expect("claim").is_empty(),
        "the second run overtook the first"
    );
    assert_eq!(claimed_ids(&pool, &[s2, s1], "w3").await, vec![s1]);
}

#[tokio::test]
async fn a_runs_events_are_numbered_without_gaps_through_every_transition() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let delta = |text: &str| NewEvent {
        kind: EventKind::Delta,
        data: serde_json::json!({ "text": text }),
    };
    let run = insert(&pool, new_run("echo", None)).await;
    let (claimed, _) = runs::claim(&client, run.id, "w1", Duration::ZERO)
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(claimed.last_seq, 0);
    let written = events::append(&client, run.id, "w1", 1, &[delta("a"), delta("b")])
        .await
        .expect("append");
    assert_eq!(written.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(
        events::append(&client, run.id, "stranger", 3, &[delta("x")])
            .await
            .expect("append")
            .is_empty(),
        "only the lease holder appends"
    );

    // The reaper requeues it (lease zero): its `status` event comes next.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reaped = runs::reap_expired(&client, 10).await.expect("reap");
    let numbers = |events: &[events::RunEvent]| -> Vec<(i64, String)> {
        events
            .iter()
            .map(|e| (e.seq, e.kind.as_str().to_owned()))
            .collect()
    };
    assert_eq!(numbers(&reaped[0].events), [(3, "status".to_owned())]);
    assert_eq!(reaped[0].events[0].data["status"], "queued");

    // The next holder's unwritten events, then the closing ones, in the completion statement.
    let (again, _) = runs::claim(&client, run.id, "w2", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    assert_eq!(again.last_seq, 3);
    let done = runs::complete_many(
        &client,
        "w2",
        &[runs::Completion {
            id: run.id,
            result: serde_json::json!({"output": "ab"}),
            usage: None,
            artifacts: Vec::new(),
            pending: runs::Pending {
                next_seq: Some(4),
                events: vec![delta("c")],
            },
            trace: Default::default(),
        }],
    )
    .await
    .expect("complete")
    .pop()
    .expect("completed");
    assert_eq!(
        numbers(&done.events),
        [
            (4, "delta".to_owned()),
            (5, "completed".to_owned()),
            (6, "status".to_owned())
        ]
    );
    assert_eq!(done.events[1].data["result"]["output"], "ab");
    let stored = events::after(&client, run.id, 0, 100)
        .await
        .expect("read")
        .events;
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(stored[5].final_status(), Some(RunStatus::Completed));

    // A failure ends with `error`, then `status`.
    let other = insert(&pool, new_run("echo", None)).await;
    runs::claim(&client, other.id, "w1", Duration::from_secs(30))
        .await
        .expect("q")
        .expect("claimed");
    let failed = runs::fail(&client, other.id, "w1", "boom", "it broke")
        .await
        .expect("q")
        .expect("failed");
    assert_eq!(
        numbers(&failed.events),
        [(1, "error".to_owned()), (2, "status".to_owned())]
    );
    assert_eq!(failed.events[0].data["errorCode"], "boom");
    assert_eq!(failed.events[1].final_status(), Some(RunStatus::Failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_never_pass_an_agents_concurrency_limit_and_take_runs_in_order() {
    let db = TestDb::create().await.expect("test db");
    db.client()
        .await
        .expect("client")
        .execute(
            "INSERT INTO agents (tenant_id, id, project_id, name, kind, max_concurrency) \
             VALUES ('default', 'capped', 'default', 'capped', 'echo', 2)",
            &[],
        )
        .await
        .expect("agent");
    let pool = pool(&db);
    let batch: Vec<NewRun> = (0..12).map(|_| new_run("capped", None)).collect();
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    runs::insert_batch(&pool.get().await.expect("connection"), &batch)
        .await
        .expect("insert");
    // The plain claim leaves them to the fair pick, which takes a slot for each.
    assert!(claimed_ids(&pool, &ids, "w").await.is_empty());
    let started = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut workers = Vec::new();
    for w in 0..6 {
        let (pool, ids, started) = (pool.clone(), ids.clone(), started.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            while started.lock().await.len() < ids.len() {
                assert!(tokio::time::Instant::now() < deadline, "the runs stalled");
                let mut client = pool.get().await.expect("connection");
                let picked = runs::claim_next(&mut client, 2, &owner, Duration::from_secs(30))
                    .await
                    .expect("claim");
                if picked.runs.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                for (run, agent) in picked.runs {
                    assert!(agent.limited);
                    assert!(run.holds_slot);
                    let running: i64 = client
                        .query_one(
                            "SELECT count(*) FROM runs WHERE agent_id = 'capped' AND status = 'running'",
                            &[],
                        )
                        .await
                        .expect("q")
                        .get(0);
                    assert!(running <= 2, "{running} runs of a limited agent ran at once");
                    // The order runs were started is the order of their `started_at`, stamped by
                    // the claim inside its transaction, which holds the agent's row until it
                    // commits. The order this task gets to record them is not: it can be held up
                    // here (the query above, the lock, the scheduler) while the other slot starts
                    // and finishes later runs.
                    let at = run.started_at.expect("a claimed run has started");
                    started.lock().await.push((at, run.id));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let done = runs::complete(&client, run.id, &owner, &serde_json::json!({"output": "ok"}))
                        .await
                        .expect("q")
                        .expect("completed");
                    // What the lifecycle does once a slot is free: the agent's next run back in line.
                    runs::next_for_agent(&client, &done).await.expect("next");
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    // Two may start in either order, as two slots free up together; overall they go in order.
    let mut started = started.lock().await.clone();
    started.sort_by_key(|(at, _)| *at);
    for (n, (_, id)) in started.iter().enumerate() {
        let accepted = ids.iter().position(|i| i == id).expect("known");
        assert!(accepted.abs_diff(n) <= 1, "run {accepted} started {n}th");
    }
    let running: i32 = pool
        .get()
        .await
        .expect("c")
        .query_one("SELECT running FROM agents WHERE id = 'capped'", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(running, 0, "every slot was given back");
}

/// The delivery sweeper hands out again what should be moving and is not: a `pending` delivery
/// overdue past the grace (its message was lost) and a `sending` one whose lease expired (its
/// notifier died); it leaves alone one that is due soon and one whose attempt is still under way.
#[tokio::test]
async fn the_delivery_sweeper_republishes_lost_and_abandoned_deliveries_only() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    let client = pool.get().await.expect("connection");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let run = insert(&pool, new_run("echo", Some("http://127.0.0.1:9/hook"))).await;
        runs::claim(&client, run.id, "w", Duration::from_secs(30))
            .await
            .expect("q")
            .expect("claimed");
        let done = runs::complete(&client, run.id, "w", &serde_json::json!({"output": "x"}))
            .await
            .expect("q")
            .expect("completed");
        ids.extend(
            deliveries::create_for_run(&client, &done)
                .await
                .expect("create"),
        );
    }
    let [lost, due_soon, abandoned, under_way] = ids[..] else {
        panic!("four deliveries, got {ids:?}")
    };
    let set = |sql: &'static str, id: Uuid| {
        let client = &client;
        async move { client.execute(sql, &[&id]).await.expect("set") }
    };
    set(
        "UPDATE deliveries SET next_attempt_at = now() - interval '1 minute' WHERE id = $1",
        lost,
    )
    .await;
    set(
        "UPDATE deliveries SET next_attempt_at = now() + interval '1 minute' WHERE id = $1",
        due_soon,
    )
    .await;
    set(
        "UPDATE deliveries SET status = 'sending', lease_expires_at = now() - interval '1 second' WHERE id = $1",
        abandoned,
    )
    .await;
    set(
        "UPDATE deliveries SET status = 'sending', lease_expires_at = now() + interval '1 minute' WHERE id = $1",
        under_way,
    )
    .await;

    let mut swept = deliveries::sweep_stalled(&client, Duration::from_secs(10), 10)
        .await
        .expect("the sweep's statement runs");
    swept.sort();
    let mut expected = vec![lost, abandoned];
    expected.sort();
    assert_eq!(swept, expected);
    let states = client
        .query(
            "SELECT id, status, lease_expires_at IS NULL, next_attempt_at <= now() FROM deliveries",
            &[],
        )
        .await
        .expect("read");
    for row in states {
        let id: Uuid = row.get(0);
        let status: String = row.get(1);
        if expected.contains(&id) {
            assert_eq!(status, "pending");
            assert!(
                row.get::<_, bool>(2) && row.get::<_, bool>(3),
                "due now, no lease"
            );
        } else if id == under_way {
            assert_eq!(status, "sending");
        } else {
            assert_eq!(status, "pending");
            assert!(!row.get::<_, bool>(3), "still due later");
        }
    }
    assert!(
        deliveries::sweep_stalled(&client, Duration::from_secs(10), 10)
            .await
            .expect("again")
            .is_empty(),
        "what was swept is due now, not overdue"
    );
}
