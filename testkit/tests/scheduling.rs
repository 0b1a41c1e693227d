//! The scheduler on the real PostgreSQL: the order `runs::claim_next` starts runs in across
//! tenants (weights), within a tenant (priority), around runs that wait (sessions, agent slots,
//! tenant quotas), and what it costs with many tenants waiting. Whole-stack fairness, with three
//! workers, is in `fairness.rs`.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use switchyard_common::runs::{self, NewRun};
use switchyard_common::{Run, db};
use switchyard_testkit::TestDb;
use uuid::Uuid;

fn pool(db: &TestDb) -> Pool {
    db::pool(&switchyard_common::config::DatabaseArgs {
        database_url: db.url.clone(),
        db_pool_size: 8,
        db_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(10),
    })
    .expect("pool builds")
}

/// A tenant with a project `p` and an echo agent `echo` (and `capped`, limited to `cap` runs at
/// once, when given).
async fn tenant(pool: &Pool, id: &str, weight: i32, max_running: Option<i32>, cap: Option<i32>) {
    let client = pool.get().await.expect("connection");
    client
        .batch_execute(&format!(
            "INSERT INTO tenants (id, name, weight) VALUES ('{id}', '{id}', {weight}); \
             INSERT INTO projects (tenant_id, id, name) VALUES ('{id}', 'p', 'p'); \
             INSERT INTO agents (tenant_id, id, project_id, name, kind) VALUES ('{id}', 'echo', 'p', 'e', 'echo');"
        ))
        .await
        .expect("tenant");
    if let Some(max) = max_running {
        client
            .execute(
                "UPDATE tenants SET max_running = $2 WHERE id = $1",
                &[&id, &max],
            )
            .await
            .expect("quota");
    }
    if let Some(cap) = cap {
        client
            .execute(
                "INSERT INTO agents (tenant_id, id, project_id, name, kind, max_concurrency) \
                 VALUES ($1, 'capped', 'p', 'c', 'echo', $2)",
                &[&id, &cap],
            )
            .await
            .expect("capped agent");
    }
}

fn run_of(tenant: &str) -> NewRun {
    switchyard_testkit::fixtures::new_run(tenant, "echo")
}

/// Accepts `runs` in batches of 50, as the ingress's group commit would.
async fn accept(pool: &Pool, runs: Vec<NewRun>) -> Vec<Run> {
    let client = pool.get().await.expect("connection");
    let mut inserted = Vec::new();
    for chunk in runs.chunks(50) {
        inserted.extend(runs::insert_batch(&client, chunk).await.expect("insert"));
    }
    inserted
}

/// Starts `n` runs, `per_pick` at a time, as workers would; returns them in the order started.
async fn start(pool: &Pool, n: usize, per_pick: usize) -> Vec<Run> {
    let mut client = pool.get().await.expect("connection");
    let mut started = Vec::new();
    while started.len() < n {
        let picked = runs::claim_next(
            &mut client,
            per_pick.min(n - started.len()),
            "w",
            Duration::from_secs(60),
        )
        .await
        .expect("claim");
        if picked.runs.is_empty() {
            assert!(
                picked.cut_short,
                "nothing more to start after {}",
                started.len()
            );
            continue;
        }
        started.extend(picked.runs.into_iter().map(|(run, _)| run));
    }
    started
}

fn count_by_tenant(runs: &[Run]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for run in runs {
        *counts.entry(run.tenant_id.clone()).or_default() += 1;
    }
    counts
}

async fn complete(pool: &Pool, run: &Run) -> Run {
    runs::complete(
        &pool.get().await.expect("c"),
        run.id,
        "w",
        &serde_json::json!({"output": "ok"}),
    )
    .await
    .expect("complete")
    .expect("it was running")
}

#[tokio::test]
async fn a_tenant_that_arrives_behind_a_flood_starts_at_once() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "flood", 1, None, None).await;
    tenant(&pool, "quiet", 1, None, None).await;
    accept(&pool, (0..2000).map(|_| run_of("flood")).collect()).await;
    // Some of the flood has started already when the quiet tenant sends its runs.
    let first = start(&pool, 100, 16).await;
    assert!(first.iter().all(|r| r.tenant_id == "flood"));
    let quiet: Vec<Uuid> = accept(&pool, (0..5).map(|_| run_of("quiet")).collect())
        .await
        .iter()
        .map(|r| r.id)
        .collect();
    // Round robin from here: the quiet tenant's five are among the next ten started, not
    // behind the 1,900 runs of the flood.
    let next = start(&pool, 10, 4).await;
    let started_quiet = next.iter().filter(|r| quiet.contains(&r.id)).count();
    assert_eq!(started_quiet, 5, "{:?}", count_by_tenant(&next));
}

#[tokio::test]
async fn weights_share_the_starts_two_to_one() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "heavy", 2, None, None).await;
    tenant(&pool, "light", 1, None, None).await;
    // Interleaved arrivals, and more than either will get started.
    for _ in 0..4 {
        accept(&pool, (0..150).map(|_| run_of("light")).collect()).await;
        accept(&pool, (0..150).map(|_| run_of("heavy")).collect()).await;
    }
    let started = start(&pool, 600, 16).await;
    let counts = count_by_tenant(&started);
    let (heavy, light) = (counts["heavy"] as f64, counts["light"] as f64);
    let ratio = heavy / light;
    assert!(
        (1.8..=2.2).contains(&ratio),
        "weight 2 against 1 started {heavy} against {light} ({ratio:.2})"
    );
}

#[tokio::test]
async fn priority_orders_a_tenants_runs_within_its_share() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "a", 1, None, None).await;
    tenant(&pool, "b", 1, None, None).await;
    let mut batch = Vec::new();
    for n in 0..6 {
        batch.push(NewRun {
            priority: (n % 3 == 2).then_some(50),
            message: Some(format!("a{n}")),
            ..run_of("a")
        });
    }
    let a = accept(&pool, batch).await;
    let b = accept(&pool, (0..6).map(|_| run_of("b")).collect()).await;
    let started = start(&pool, 12, 1).await;
    // Within a: the two of priority 50 first, in acceptance order, then the rest in order.
    let order: Vec<Uuid> = started
        .iter()
        .filter(|r| r.tenant_id == "a")
        .map(|r| r.id)
        .collect();
    assert_eq!(
        order,
        vec![a[2].id, a[5].id, a[0].id, a[1].id, a[3].id, a[4].id]
    );
    let order_b: Vec<Uuid> = started
        .iter()
        .filter(|r| r.tenant_id == "b")
        .map(|r| r.id)
        .collect();
    assert_eq!(order_b, b.iter().map(|r| r.id).collect::<Vec<_>>());
    // Priority never takes a tenant past its share: neither gets ahead by more than a turn
    // (a tie of turns goes to the earlier run).
    let mut lead = 0i32;
    for run in &started {
        lead += if run.tenant_id == "a" { 1 } else { -1 };
        assert!(
            lead.abs() <= 2,
            "{:?}",
            started.iter().map(|r| &r.tenant_id).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_run_waiting_for_its_session_or_a_slot_holds_up_no_other_run() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, Some(1)).await;
    let in_session = |message: &str| NewRun {
        session_id: Some("s".into()),
        message: Some(message.into()),
        agent_id: "capped".into(),
        ..run_of("t")
    };
    // The head of the capped agent's queue is a session's second run, behind the session's
    // first; another run of the same agent and a run of another agent come after.
    let first = accept(&pool, vec![in_session("one")]).await.remove(0);
    let started = start(&pool, 1, 1).await;
    assert_eq!(started[0].id, first.id);
    let second = accept(&pool, vec![in_session("two")]).await.remove(0);
    let other_agent = accept(&pool, vec![run_of("t")]).await.remove(0);
    // The session's second run waits for the first; the agent's slot is held by the first, so
    // nothing of `capped` can start; the run of the other agent starts.
    let next = start(&pool, 1, 4).await;
    assert_eq!(next[0].id, other_agent.id);
    // The first ends: its session's next is put back in line, and starts.
    let done = complete(&pool, &first).await;
    let client = pool.get().await.expect("c");
    let back = runs::next_in_session(&client, &done).await.expect("q");
    assert_eq!(back.map(|n| n.id), Some(second.id));
    let last = start(&pool, 1, 1).await;
    assert_eq!(last[0].id, second.id);
}

#[tokio::test]
async fn a_tenants_running_quota_holds_its_runs_back_but_not_others() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "capped", 1, Some(2), None).await;
    tenant(&pool, "free", 1, None, None).await;
    accept(&pool, (0..20).map(|_| run_of("capped")).collect()).await;
    accept(&pool, (0..20).map(|_| run_of("free")).collect()).await;
    let started = start(&pool, 22, 8).await;
    let counts = count_by_tenant(&started);
    assert_eq!(counts.get("capped"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("free"), Some(&20), "{counts:?}");
    let mut client = pool.get().await.expect("c");
    let more = runs::claim_next(&mut client, 4, "w", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(more.runs.is_empty(), "the capped tenant is at its quota");
    // One ends: one of its runs is put back in line and starts; still never more than two.
    let ended = started
        .iter()
        .find(|r| r.tenant_id == "capped")
        .expect("one");
    complete(&pool, ended).await;
    let back = runs::next_for_tenants(&mut client, &["capped"])
        .await
        .expect("q");
    assert_eq!(back.len(), 1);
    let next = start(&pool, 1, 4).await;
    assert_eq!(next[0].tenant_id, "capped");
    let running: i64 = client
        .query_one(
            "SELECT count(*) FROM runs WHERE tenant_id = 'capped' AND status = 'running'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(running, 2);
}

#[tokio::test]
async fn the_queued_quota_refuses_runs_past_it() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let client = pool.get().await.expect("c");
    client
        .execute("UPDATE tenants SET max_queued = 3 WHERE id = 't'", &[])
        .await
        .expect("quota");
    let inserted = accept(&pool, (0..5).map(|_| run_of("t")).collect()).await;
    assert_eq!(inserted.len(), 3, "a batch is cut at the quota");
    assert_eq!(
        runs::refusal(&client, "t", "echo", None).await.expect("q"),
        runs::Refusal::QueueFull(3)
    );
    assert_eq!(
        runs::refusal(&client, "t", "nobody", None)
            .await
            .expect("q"),
        runs::Refusal::NoAgent
    );
    // Starting one makes room for one.
    start(&pool, 1, 1).await;
    assert_eq!(
        accept(&pool, (0..2).map(|_| run_of("t")).collect())
            .await
            .len(),
        1
    );
}

/// What one pick costs, in the database's own work: buffers touched, which neither the machine's
/// drift nor a slow client changes. With a thousand tenants waiting it must stay within twice
/// the cost with ten.
#[tokio::test]
async fn a_picks_cost_does_not_grow_with_the_tenants_waiting() {
    let mut costs = Vec::new();
    // The same 5,000 runs waiting, of 10 tenants or of 1,000.
    for tenants in [10usize, 1000] {
        let db = TestDb::create().await.expect("test db");
        let pool = pool(&db);
        let client = pool.get().await.expect("c");
        switchyard_testkit::fixtures::many_tenants(&client, tenants)
            .await
            .expect("tenants");
        let each = 5000 / tenants;
        // Arriving round robin, as many tenants' runs would.
        let batch: Vec<NewRun> = (0..each)
            .flat_map(|_| (1..=tenants).map(|n| run_of(&format!("t{n}"))))
            .collect();
        accept(&pool, batch).await;
        client
            .batch_execute("VACUUM ANALYZE runs")
            .await
            .expect("analyze");
        let mut total = 0i64;
        for _ in 0..20 {
            let rows = client
                .query(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM switchyard_pick(8)",
                    &[],
                )
                .await
                .expect("explain");
            let plan: serde_json::Value = rows[0].get(0);
            let node = &plan[0]["Plan"];
            total += node["Shared Hit Blocks"].as_i64().unwrap_or(0)
                + node["Shared Read Blocks"].as_i64().unwrap_or(0);
            // Start what was picked (the explained pick rolled nothing forward but its swaps),
            // so that the next pick finds the next heads.
            let started = runs::claim_next(
                &mut pool.get().await.expect("c"),
                8,
                "w",
                Duration::from_secs(60),
            )
            .await
            .expect("claim");
            assert_eq!(started.runs.len(), 8);
        }
        costs.push(total);
    }
    assert!(costs[0] > 0, "the pick touched no buffer? {costs:?}");
    assert!(
        costs[1] <= costs[0] * 2,
        "20 picks with 1,000 tenants waiting touched {} buffers, against {} with 10",
        costs[1],
        costs[0]
    );
    eprintln!("buffers touched by 20 picks of 8: {costs:?} (10 tenants, 1,000 tenants)");
}

#[tokio::test]
async fn a_concurrency_key_at_its_cap_holds_up_no_other_key() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let mut client = pool.get().await.expect("c");
    client
        .execute(
            "INSERT INTO agents (tenant_id, id, project_id, name, kind, concurrency_key, \
                                 max_concurrency_per_key) \
             VALUES ('t', 'keyed', 'p', 'k', 'echo', '/inputs/customer', 1)",
            &[],
        )
        .await
        .expect("agent");
    let of = |customer: &str| NewRun {
        agent_id: "keyed".into(),
        inputs: Some(serde_json::json!({ "customer": customer })),
        ..run_of("t")
    };
    let runs = accept(
        &pool,
        vec![of("k1"), of("k1"), of("k1"), of("k2"), of("k2")],
    )
    .await;
    assert_eq!(runs[0].concurrency_key.as_deref(), Some("k1"));
    // One of each key starts; the rest of each key waits out of line, holding up nobody.
    let started = start(&pool, 2, 8).await;
    let ids: Vec<Uuid> = started.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![runs[0].id, runs[3].id]);
    let mut again = pool.get().await.expect("c");
    let more = runs::claim_next(&mut again, 8, "w", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(more.runs.is_empty());
    // k1's run ends: k1's next is put back in line and starts.
    let done = complete(&pool, &started[0]).await;
    let back = runs::next_for_key(&mut client, &done).await.expect("q");
    assert_eq!(back.map(|n| n.id), Some(runs[1].id));
    let next = start(&pool, 1, 8).await;
    assert_eq!(next[0].id, runs[1].id);
}

#[tokio::test]
async fn keys_below_their_caps_take_turns_within_a_tenant() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let client = pool.get().await.expect("c");
    client
        .execute(
            "INSERT INTO agents (tenant_id, id, project_id, name, kind, concurrency_key, \
                                 max_concurrency_per_key) \
             VALUES ('t', 'keyed', 'p', 'k', 'echo', '/inputs/customer', 100)",
            &[],
        )
        .await
        .expect("agent");
    let of = |customer: &str| NewRun {
        agent_id: "keyed".into(),
        inputs: Some(serde_json::json!({ "customer": customer })),
        ..run_of("t")
    };
    // Customer a floods the tenant's agent; b and then c send three runs each, later, and so
    // does another agent of the tenant's, which has no key.
    let flood = accept(&pool, (0..40).map(|_| of("a")).collect()).await;
    let b = accept(&pool, (0..3).map(|_| of("b")).collect()).await;
    let c = accept(&pool, (0..3).map(|_| of("c")).collect()).await;
    let plain = accept(&pool, (0..3).map(|_| run_of("t")).collect()).await;
    // No key is at its cap, so nothing waits: the tenant's starts go round the keys (the runs
    // without one are a flow of their own), not down the flood first. Within the first thirteen
    // starts, b's, c's and the keyless runs have all started.
    let started = start(&pool, 13, 1).await;
    let key_of = |run: &Run| run.concurrency_key.clone().unwrap_or_default();
    let order: Vec<String> = started.iter().map(key_of).collect();
    for (name, runs) in [("b", &b), ("c", &c), ("keyless", &plain)] {
        for run in runs.iter() {
            assert!(
                started.iter().any(|s| s.id == run.id),
                "{name}'s runs start within the first thirteen: {order:?}"
            );
        }
    }
    // Each key's own runs keep their acceptance order.
    let a_started: Vec<Uuid> = started
        .iter()
        .filter(|r| key_of(r) == "a")
        .map(|r| r.id)
        .collect();
    let a_first: Vec<Uuid> = flood.iter().take(a_started.len()).map(|r| r.id).collect();
    assert_eq!(a_started, a_first);
}

#[tokio::test]
async fn a_concurrency_key_is_read_from_inputs_metadata_or_the_session() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let client = pool.get().await.expect("c");
    for (id, key) in [
        ("by-input", "/inputs/a~1b/0"),
        ("by-meta", "/metadata/org"),
        ("by-session", "sessionId"),
    ] {
        client
            .execute(
                "INSERT INTO agents (tenant_id, id, project_id, name, kind, concurrency_key, \
                                     max_concurrency_per_key) VALUES ('t', $1, 'p', 'k', 'echo', $2, 2)",
                &[&id, &key],
            )
            .await
            .expect("agent");
    }
    let long = "x".repeat(300);
    let runs = accept(
        &pool,
        vec![
            NewRun {
                agent_id: "by-input".into(),
                inputs: Some(serde_json::json!({"a/b": [7]})),
                ..run_of("t")
            },
            NewRun {
                agent_id: "by-meta".into(),
                metadata: serde_json::json!({"org": long}),
                ..run_of("t")
            },
            NewRun {
                agent_id: "by-session".into(),
                session_id: Some("s-1".into()),
                ..run_of("t")
            },
            NewRun {
                agent_id: "by-input".into(),
                inputs: Some(serde_json::json!({"other": 1})),
                ..run_of("t")
            },
        ],
    )
    .await;
    assert_eq!(runs[0].concurrency_key.as_deref(), Some("7"));
    let hashed = runs[1].concurrency_key.as_deref().expect("a key");
    assert!(
        hashed.starts_with("sha256:") && hashed.len() == 7 + 64,
        "{hashed}"
    );
    assert_eq!(runs[2].concurrency_key.as_deref(), Some("s-1"));
    assert_eq!(runs[3].concurrency_key, None, "no value, no key");
    assert_eq!(runs[0].key_cap, Some(2));
    assert_eq!(runs[3].key_cap, None);
}

/// A run that ends while a pick is sending the next run of its session out of line (the pick has
/// not committed yet) still puts that run back: the put-back waits for the pick's lock on the
/// run, then sees its mark.
#[tokio::test]
async fn a_run_sent_out_of_line_while_its_wait_ends_is_put_back() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let in_session = |message: &str| NewRun {
        session_id: Some("s".into()),
        message: Some(message.into()),
        ..run_of("t")
    };
    let first = accept(&pool, vec![in_session("one")]).await.remove(0);
    let running = start(&pool, 1, 1).await.remove(0);
    assert_eq!(running.id, first.id);
    let second = accept(&pool, vec![in_session("two")]).await.remove(0);
    // A pick, not yet committed, sends the second out of line: its session's first is running.
    let mut picker = pool.get().await.expect("c");
    let pick = picker.transaction().await.expect("tx");
    let row = pick
        .query_one("SELECT picked FROM switchyard_pick(1)", &[])
        .await
        .expect("pick");
    assert!(row.get::<_, Vec<Uuid>>(0).is_empty());
    // Meanwhile the first ends, and its put-back of the session's next looks.
    let done = complete(&pool, &first).await;
    let readier = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let client = pool.get().await.expect("c");
            runs::next_in_session(&client, &done).await.expect("q")
        })
    };
    // It waits for the pick's lock on the run...
    let watcher = pool.get().await.expect("c");
    switchyard_testkit::poll(Duration::from_secs(10), || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%switchyard_ready%'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (waiting > 0).then_some(())
    })
    .await
    .expect("the put-back waits for the pick");
    // ...and once the pick commits, sees the mark and puts the run back.
    pick.commit().await.expect("commit");
    let back = readier.await.expect("task");
    assert_eq!(back.map(|n| n.id), Some(second.id));
    let started = start(&pool, 1, 1).await;
    assert_eq!(started[0].id, second.id);
}

/// A message naming no run is poison: no run is started on its turn, and the worker is told, so
/// that it dead-letters it while the real messages of its batch start their runs.
#[tokio::test]
async fn a_message_naming_no_run_is_no_turn() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let runs = accept(&pool, vec![run_of("t"), run_of("t")]).await;
    let poison = Uuid::now_v7();
    let mut client = pool.get().await.expect("c");
    let started = runs::claim_for_messages(
        &mut client,
        &[poison, runs[1].id],
        "w",
        Duration::from_secs(60),
    )
    .await
    .expect("claim");
    assert_eq!(started.unknown, vec![poison]);
    assert_eq!(started.runs.len(), 1, "one turn, for the one real message");
    // The fairest run started, whichever the message named.
    assert_eq!(started.runs[0].0.id, runs[0].id);
}

/// A pick that finds every run in line held by someone else (another pick, or a put-back
/// looking at it) hands its turn back instead of spending it: the holder may leave the run in
/// line, and that run would then have no message.
#[tokio::test]
async fn a_pick_that_finds_the_line_held_hands_its_turn_back() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let run = accept(&pool, vec![run_of("t")]).await.remove(0);
    let mut holder = pool.get().await.expect("c");
    let hold = holder.transaction().await.expect("tx");
    hold.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", &[&run.id])
        .await
        .expect("hold");
    let mut client = pool.get().await.expect("c");
    let started = runs::claim_next(&mut client, 1, "w", Duration::from_secs(60))
        .await
        .expect("claim");
    assert!(started.runs.is_empty());
    assert!(started.cut_short, "the turn is handed back");
    hold.rollback().await.expect("release");
    let again = start(&pool, 1, 1).await;
    assert_eq!(again[0].id, run.id);
}

#[tokio::test]
async fn a_debounced_run_stays_out_of_line_until_its_period_ends_whoever_asks() {
    let db = TestDb::create().await.expect("test db");
    let pool = pool(&db);
    tenant(&pool, "t", 1, None, None).await;
    let held = NewRun {
        trigger: Some(runs::TriggerOrigin {
            hold: Some(Duration::from_secs(60)),
            ..Default::default()
        }),
        ..run_of("t")
    };
    let runs = accept(&pool, vec![held]).await;
    let client = pool.get().await.expect("c");
    // A put-back (the session's next run, a sweep) asks for it: it stays held.
    let released = client
        .query("SELECT id FROM switchyard_ready($1)", &[&vec![runs[0].id]])
        .await
        .expect("ready");
    assert!(released.is_empty(), "released before its period ended");
    assert!(
        runs::release_debounced(&client, 10)
            .await
            .expect("release")
            .is_empty()
    );
    assert!(start_none(&pool).await, "nothing in line to start");
    // Its period over, the release puts it in line, once.
    client
        .execute(
            "UPDATE runs SET not_before = now() - interval '1 second' WHERE id = $1",
            &[&runs[0].id],
        )
        .await
        .expect("period ends");
    let out = runs::release_debounced(&client, 10).await.expect("release");
    assert_eq!(out, vec![runs[0].id]);
    assert!(
        runs::release_debounced(&client, 10)
            .await
            .expect("again")
            .is_empty()
    );
    let started = start(&pool, 1, 1).await;
    assert_eq!(started[0].id, runs[0].id);
}

/// Whether a pick finds nothing to start.
async fn start_none(pool: &Pool) -> bool {
    let mut client = pool.get().await.expect("connection");
    runs::claim_next(&mut client, 1, "w", Duration::from_secs(60))
        .await
        .expect("claim")
        .runs
        .is_empty()
}
