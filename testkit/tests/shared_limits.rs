//! Rate limits shared by every ingress replica: a caller spread over three replicas gets what
//! one replica would give it, within ±10 %, and a tenant's ceiling binds keys that set more.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_common::catalog::api_keys::Scope;
use switchyard_testkit::{Stack, StackOptions, fixtures};

/// A tenant `id` with an echo agent `slow` and a key limited to `per_minute`; returns the key.
async fn limited_tenant(stack: &Stack, id: &str, per_minute: i32) -> String {
    let client = stack.db.client().await.expect("client");
    let key = fixtures::tenant_with_slow_agent(&client, id, 1, 0, &[Scope::Trigger])
        .await
        .expect("tenant");
    client
        .execute(
            "UPDATE api_keys SET rate_limit_per_minute = $2 WHERE tenant_id = $1",
            &[&id, &per_minute],
        )
        .await
        .expect("limit");
    key
}

/// One `POST /v1/runs` with `key` at `base`; its status.
async fn call(stack: &Stack, base: &str, key: &str) -> u16 {
    stack
        .http
        .post(format!("{base}/v1/runs"))
        .bearer_auth(key)
        .json(&json!({"agentId": "slow", "message": "m"}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Calls with `key` through `bases` in turn, one every 25 ms (20 times the limit below), until
/// the first refusal: the burst is spent. Then counts the calls admitted over `window`.
async fn admitted_after_the_burst(
    stack: &Stack,
    bases: &[String],
    key: &str,
    window: Duration,
) -> usize {
    let mut turn = 0usize;
    let mut next = || {
        turn += 1;
        bases[turn % bases.len()].clone()
    };
    let mut spent = false;
    for _ in 0..400 {
        let status = call(stack, &next(), key).await;
        assert!(status == 202 || status == 429, "status {status}");
        if status == 429 {
            spent = true;
            break;
        }
    }
    assert!(spent, "the burst of 120 ran out within 400 calls");
    let start = Instant::now();
    let mut admitted = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    while start.elapsed() < window {
        tick.tick().await;
        let status = call(stack, &next(), key).await;
        assert!(status == 202 || status == 429, "status {status}");
        admitted += usize::from(status == 202);
    }
    admitted
}

#[tokio::test]
async fn a_key_limit_holds_within_ten_percent_through_one_replica_or_three() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (_second, second_url) = stack.add_ingress().await.expect("second ingress");
    let (_third, third_url) = stack.add_ingress().await.expect("third ingress");
    // 120 a minute: a burst of 120, then one call every 500 ms.
    let alone = limited_tenant(&stack, "alone", 120).await;
    let spread = limited_tenant(&stack, "spread", 120).await;
    let one = [stack.base_url.clone()];
    let three = [stack.base_url.clone(), second_url, third_url];
    let window = Duration::from_secs(12);
    let (through_one, through_three) = tokio::join!(
        admitted_after_the_burst(&stack, &one, &alone, window),
        admitted_after_the_burst(&stack, &three, &spread, window),
    );
    // 2 a second for 12 s: 24, and ±10 % of it.
    for (replicas, admitted) in [(1, through_one), (3, through_three)] {
        assert!(
            (22..=26).contains(&admitted),
            "{admitted} calls admitted in 12 s through {replicas} replica(s), where the limit \
             allows 24"
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn a_tenants_ceiling_binds_a_key_that_sets_more_on_every_replica() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (_second, second_url) = stack.add_ingress().await.expect("second ingress");
    let key = limited_tenant(&stack, "capped", 1000).await;
    let client = stack.db.client().await.expect("client");
    client
        .execute(
            "UPDATE tenants SET rate_limit_per_minute = 3 WHERE id = 'capped'",
            &[],
        )
        .await
        .expect("ceiling");
    let bases = [stack.base_url.clone(), second_url];
    for n in 0..3 {
        assert_eq!(call(&stack, &bases[n % 2], &key).await, 202, "call {n}");
    }
    for base in &bases {
        let refused = stack
            .http
            .post(format!("{base}/v1/runs"))
            .bearer_auth(&key)
            .json(&json!({"agentId": "slow", "message": "m"}))
            .send()
            .await
            .expect("sent");
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.expect("problem");
        assert_eq!(
            body["quota"],
            json!({"name": "rateLimitPerMinute", "limit": 3}),
            "{body}"
        );
        assert!(body["detail"].as_str().unwrap_or("").contains("tenant"));
    }
    stack.shutdown().await;
}

/// The statement that serves the calls arriving together: calls are taken in order, each all or
/// none, and each sees the buckets as the calls before it in the same batch left them.
#[tokio::test]
async fn one_take_statement_serves_many_calls_in_order_each_all_or_none() {
    let db = switchyard_testkit::TestDb::create().await.expect("db");
    let client = db.client().await.expect("client");
    let take = |requests: Vec<i32>, names: Vec<&'static str>, limits: Vec<i32>| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT req, refused, remaining FROM switchyard_take_many($1, $2, $3)",
                    &[&requests, &names, &limits],
                )
                .await
                .expect("take")
                .iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1), r.get::<_, i32>(2)))
                .collect::<Vec<_>>()
        }
    };
    // A key of 2 a minute and a tenant of 3: calls 1 and 2 are admitted; call 3 is refused by
    // the key (its first bucket) and so takes nothing from the tenant; call 4, on another key of
    // the same tenant, gets the tenant's last call; call 5 finds the tenant empty (its second
    // bucket) and leaves its own key untouched.
    let answers = take(
        vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5],
        vec![
            "k:a", "t:x", "k:a", "t:x", "k:a", "t:x", "k:b", "t:x", "k:c", "t:x",
        ],
        vec![2, 3, 2, 3, 2, 3, 2, 3, 2, 3],
    )
    .await;
    assert_eq!(
        answers,
        vec![(1, 0, 1), (2, 0, 0), (3, 1, 0), (4, 0, 1), (5, 2, 0)],
        "(call, refused bucket, remaining of its first)"
    );
    // The batch's takes were written: key a is empty, key c was never charged.
    assert_eq!(take(vec![1], vec!["k:a"], vec![2]).await, vec![(1, 1, 0)]);
    assert_eq!(take(vec![1], vec!["k:c"], vec![2]).await, vec![(1, 0, 1)]);
    // The one-call function that older replicas call is the same take.
    let one = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT refused, remaining FROM switchyard_take($1, $2)",
                    &[&vec![name], &vec![2i32]],
                )
                .await
                .expect("take");
            (row.get::<_, i32>(0), row.get::<_, i32>(1))
        }
    };
    assert_eq!(one("k:c").await, (0, 0), "key c's second call of two");
    assert_eq!(one("k:c").await, (1, 0), "key c is empty");
}

/// Sixty calls at once over three replicas, with a key of 20 a minute: each replica's pre-check
/// lets its 20 through to the batched takes, which admit the burst of 20 and no more.
#[tokio::test]
async fn concurrent_calls_over_three_replicas_get_exactly_the_burst() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (_second, second_url) = stack.add_ingress().await.expect("second ingress");
    let (_third, third_url) = stack.add_ingress().await.expect("third ingress");
    let key = limited_tenant(&stack, "bursty", 20).await;
    let bases = [stack.base_url.clone(), second_url, third_url];
    let calls = (0..60).map(|n| call(&stack, &bases[n % 3], &key));
    let statuses = futures::future::join_all(calls).await;
    let admitted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + refused, 60, "{statuses:?}");
    // The bucket refills one call every 3 s: a slow machine may see that one more.
    assert!(
        (20..=21).contains(&admitted),
        "admitted {admitted}: {statuses:?}"
    );
}
