//! The trigger route (ChatHive's semantics) against the real services: templates, filters,
//! inputSchema, waitForResponse, 404s, body checks, and the invocations it records.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::api::{
    assert_problem, delete, get, patch, post, project_with_agent, tenant,
};
use switchyard_testkit::{Stack, StackOptions, poll};

struct Fixture {
    stack: Stack,
    tenant: String,
    key: String,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(StackOptions {
            workers: 1,
            ..StackOptions::default()
        })
        .await
    }

    async fn with(options: StackOptions) -> Self {
        let stack = Stack::start(options).await.expect("stack starts");
        let (tenant, key) = tenant(&stack).await;
        project_with_agent(&stack, &tenant, &key, "shop", "echo").await;
        Self { stack, tenant, key }
    }

    fn triggers(&self, agent: &str) -> String {
        format!(
            "/manage/tenants/{}/projects/shop/agents/{agent}/triggers",
            self.tenant
        )
    }

    async fn trigger(&self, agent: &str, spec: Value) {
        let made = post(&self.stack, &self.triggers(agent), &self.key, spec).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }

    /// Invokes with `x-api-key`, as ChatHive documents.
    async fn invoke(&self, key: &str, body: Value) -> (u16, Value) {
        let response = self
            .stack
            .http
            .post(format!(
                "{}/api/v1.0/project/shop/trigger/{key}",
                self.stack.base_url
            ))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn finished(&self, run_id: &str) -> Value {
        poll(Duration::from_secs(20), || async {
            let run = get(&self.stack, &format!("/v1/runs/{run_id}"), &self.key).await;
            matches!(run.body["status"].as_str(), Some("completed" | "failed")).then_some(run.body)
        })
        .await
        .expect("the run finishes")
    }

    async fn invocations(&self, agent: &str, trigger: &str, query: &str) -> Value {
        let listed = get(
            &self.stack,
            &format!("{}/{trigger}/invocations{query}", self.triggers(agent)),
            &self.key,
        )
        .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        listed.body
    }
}

#[tokio::test]
async fn an_invocation_runs_the_agent_on_the_rendered_template() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "welcome", "name": "Welcome", "key": "Welcome_Mail",
        "messageTemplate": "Hello {{customer.name}} on {{context.plan}}{{missing.part}}!"}),
    )
    .await;
    let (status, run) = f
        .invoke(
            "wElCoMe_mAiL",
            json!({"customer": {"name": "Ada"}, "context": {"plan": "pro"},
        "sessionId": "s-1", "language": "en", "timezone": "Europe/Oslo"}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["triggerId"], "welcome");
    assert_eq!(run["environment"], "api");
    assert_eq!(run["sessionId"], "s-1");
    let id = run["id"].as_str().expect("id").to_owned();
    let done = f.finished(&id).await;
    assert_eq!(done["result"]["output"], "Hello Ada on pro!");

    let listed = f.invocations("echo", "welcome", "").await;
    let inv = &listed["data"][0];
    assert_eq!(inv["id"], id.as_str());
    assert_eq!(inv["runId"], id.as_str());
    assert_eq!(inv["status"], "success");
    assert_eq!(inv["outcome"], "accepted");
    assert_eq!(inv["conversationId"], "s-1");
    assert_eq!(inv["transformedPayload"], "Hello Ada on pro!");
    assert_eq!(inv["missingPlaceholders"], json!(["missing.part"]));
    assert_eq!(inv["requestPayload"]["customer"]["name"], "Ada");
    let one = get(
        &f.stack,
        &format!("{}/welcome/invocations/{id}", f.triggers("echo")),
        &f.key,
    )
    .await;
    assert_eq!(one.body["data"]["id"], id.as_str());
    f.stack.shutdown().await;
}

#[tokio::test]
async fn filters_drop_events_with_400_and_the_drop_is_recorded() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "big-orders", "name": "Big orders", "filters": {"all": [
        {"pointer": "/order/total", "op": "gte", "value": 100},
        {"not": {"pointer": "/order/test", "op": "equals", "value": true}}]}}),
    )
    .await;
    let (status, body) = f
        .invoke("big-orders", json!({"order": {"total": 20}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("dropped")
    );
    let (status, _) = f
        .invoke("big-orders", json!({"order": {"total": 500, "test": true}}))
        .await;
    assert_eq!(status, 400);
    let (status, run) = f
        .invoke("big-orders", json!({"order": {"total": 500}}))
        .await;
    assert_eq!(status, 202);
    f.finished(run["id"].as_str().expect("id")).await;

    let failed = f.invocations("echo", "big-orders", "?status=failed").await;
    assert_eq!(failed["pagination"]["total"], 2);
    assert_eq!(failed["data"][0]["outcome"], "dropped");
    assert!(
        failed["data"][0]["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("filters")
    );
    assert_eq!(failed["data"][0]["requestPayload"]["order"]["test"], true);
    let ok = f.invocations("echo", "big-orders", "?status=success").await;
    assert_eq!(ok["pagination"]["total"], 1);
    let later = f
        .invocations("echo", "big-orders", "?from=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(later["pagination"]["total"], 0);
    let elsewhere = f.invocations("echo", "big-orders", "?environment=ci").await;
    assert_eq!(elsewhere["pagination"]["total"], 0);
    let bad = get(
        &f.stack,
        &format!("{}/big-orders/invocations?status=maybe", f.triggers("echo")),
        &f.key,
    )
    .await;
    assert_problem(&bad, 400, "bad_request");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn schema_violations_answer_422_listing_every_pointer() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "orders", "name": "Orders", "inputSchema": {
        "type": "object", "required": ["order"],
        "properties": {
            "amount": {"type": "number", "minimum": 0},
            "order": {"type": "object", "properties": {"id": {"type": "string"}}}
        }}}),
    )
    .await;
    let (status, body) = f
        .invoke("orders", json!({"amount": -1, "order": {"id": 5}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "unprocessable_entity");
    let mut pointers: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    pointers.sort_unstable();
    assert_eq!(pointers, ["/amount", "/order/id"]);
    let (status, _) = f
        .invoke("orders", json!({"amount": 3, "order": {"id": "A-1"}}))
        .await;
    assert_eq!(status, 202);
    let rejected = f.invocations("echo", "orders", "?status=failed").await;
    assert_eq!(rejected["data"][0]["outcome"], "rejected");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn missing_paused_and_deleted_triggers_answer_404() {
    let f = Fixture::new().await;
    f.trigger("echo", json!({"id": "t", "name": "T", "key": "pausable"}))
        .await;
    assert_eq!(f.invoke("pausable", json!({})).await.0, 202);
    assert_eq!(f.invoke("no-such-key", json!({})).await.0, 404);
    let paused = patch(
        &f.stack,
        &format!("{}/t", f.triggers("echo")),
        &f.key,
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(paused.status, 200);
    let (status, body) = f.invoke("pausable", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
    assert_eq!(
        delete(&f.stack, &format!("{}/t", f.triggers("echo")), &f.key)
            .await
            .status,
        204
    );
    assert_eq!(f.invoke("pausable", json!({})).await.0, 404);
    f.stack.shutdown().await;
}

#[tokio::test]
async fn wait_for_response_answers_200_with_the_transformed_result_or_408_with_the_run() {
    let f = Fixture::new().await;
    let slow = post(
        &f.stack,
        &format!("/manage/tenants/{}/projects/shop/agents", f.tenant),
        &f.key,
        json!({"id": "slow", "name": "Slow", "kind": "echo", "config": {"delayMs": 3000}}),
    )
    .await;
    assert_eq!(slow.status, 201);
    f.trigger(
        "echo",
        json!({"id": "quick", "name": "Quick", "waitForResponse": true,
        "outputTransform": {"pointer": "/output"}, "messageTemplate": "answer for {{q}}"}),
    )
    .await;
    f.trigger(
        "slow",
        json!({"id": "late", "name": "Late", "waitForResponse": true, "waitTimeoutSeconds": 1}),
    )
    .await;

    let (status, done) = f.invoke("quick", json!({"q": "42"})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["result"], "answer for 42",
        "outputTransform picked /output"
    );

    let (status, timeout) = f
        .invoke("late", json!({"instruction": "take your time"}))
        .await;
    assert_eq!(status, 408, "{timeout}");
    assert_eq!(timeout["code"], "request_timeout");
    let run_id = timeout["runId"].as_str().expect("runId").to_owned();
    assert_eq!(timeout["runUrl"], format!("/v1/runs/{run_id}"));
    let finished = f.finished(&run_id).await;
    assert_eq!(
        finished["status"], "completed",
        "the run went on after the 408"
    );
    assert_eq!(finished["result"]["output"], "take your time");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn no_wait_outlasts_the_operators_cap() {
    let f = Fixture::with(StackOptions {
        workers: 1,
        ingress_env: vec![("SWITCHYARD_MAX_WAIT", "1s".into())],
        ..StackOptions::default()
    })
    .await;
    let slow = post(
        &f.stack,
        &format!("/manage/tenants/{}/projects/shop/agents", f.tenant),
        &f.key,
        json!({"id": "slow", "name": "Slow", "kind": "echo", "config": {"delayMs": 4000}}),
    )
    .await;
    assert_eq!(slow.status, 201);
    // The trigger would wait 60 s, long enough for the run; the operator's cap answers first.
    f.trigger(
        "slow",
        json!({"id": "patient", "name": "Patient", "waitForResponse": true, "waitTimeoutSeconds": 60}),
    )
    .await;
    let (status, timeout) = f.invoke("patient", json!({"instruction": "hi"})).await;
    assert_eq!(status, 408, "{timeout}");
    assert_eq!(
        timeout["detail"],
        "the run did not finish within 1s; it continues"
    );
    let run_id = timeout["runId"].as_str().expect("runId").to_owned();

    // The native door's `wait` is capped the same way: 202 with the run, still going.
    let native = post(
        &f.stack,
        "/v1/runs",
        &f.key,
        json!({"agentId": "slow", "message": "hello", "wait": 60}),
    )
    .await;
    assert_eq!(native.status, 202, "{}", native.body);
    assert!(
        matches!(native.body["status"].as_str(), Some("queued" | "running")),
        "{}",
        native.body
    );
    assert_eq!(f.finished(&run_id).await["status"], "completed");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn the_body_is_checked_before_anything_runs() {
    let f = Fixture::new().await;
    f.trigger("echo", json!({"id": "t", "name": "T"})).await;
    for bad in [
        json!({"language": "xx"}),
        json!({"timezone": "Moon/Base"}),
        json!({"context": {"deep": {"no": 1}}}),
        json!({"instruction": 12}),
        json!([1, 2]),
    ] {
        let (status, body) = f.invoke("t", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let huge = "x".repeat(300 * 1024);
    let (status, body) = f.invoke("t", json!({"instruction": huge})).await;
    assert_eq!(status, 413, "{body}");
    let empty = f
        .stack
        .http
        .post(format!(
            "{}/api/v1.0/project/shop/trigger/t",
            f.stack.base_url
        ))
        .header("x-api-key", &f.key)
        .send()
        .await
        .expect("sent");
    assert_eq!(empty.status(), 202, "the body is optional");
    // Without the trigger scope, or outside the key's projects, nothing happens.
    let read_only = post(
        &f.stack,
        &format!("/manage/tenants/{}/api-keys", f.tenant),
        &f.key,
        json!({"name": "r", "scopes": ["runs:read"]}),
    )
    .await;
    let read_only = read_only.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    let refused = f
        .stack
        .http
        .post(format!(
            "{}/api/v1.0/project/shop/trigger/t",
            f.stack.base_url
        ))
        .header("x-api-key", &read_only)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 403);
    let listed = f.invocations("echo", "t", "").await;
    assert_eq!(
        listed["pagination"]["total"], 1,
        "only the accepted call reached the trigger's pipeline"
    );
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_repeated_body_is_dropped_with_409_naming_the_first_run() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "once", "name": "Once", "ignoreDuplicates": true}),
    )
    .await;
    let (status, first) = f
        .invoke(
            "once",
            json!({"order": {"id": 7, "lines": [1, 2]}, "note": "x"}),
        )
        .await;
    assert_eq!(status, 202);
    let first_id = first["id"].as_str().expect("id").to_owned();
    // The same document with its members in another order is the same body.
    let (status, dup) = f
        .invoke(
            "once",
            json!({"note": "x", "order": {"lines": [1, 2], "id": 7}}),
        )
        .await;
    assert_eq!(status, 409, "{dup}");
    assert_eq!(dup["code"], "conflict");
    assert_eq!(dup["runId"], first_id.as_str());
    let (status, _) = f.invoke("once", json!({"order": {"id": 8}})).await;
    assert_eq!(status, 202, "another body runs");
    let dropped = f.invocations("echo", "once", "?status=failed").await;
    assert_eq!(dropped["pagination"]["total"], 1);
    assert!(
        dropped["data"][0]["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains(&first_id)
    );
    f.stack.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_original_run_and_refuses_another_request() {
    let f = Fixture::new().await;
    f.trigger("echo", json!({"id": "t", "name": "T"})).await;
    let create = |key: &'static str, body: Value| {
        let f = &f;
        async move {
            let r = f
                .stack
                .http
                .post(format!("{}/v1/runs", f.stack.base_url))
                .bearer_auth(&f.key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .expect("sent");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let body = json!({"agentId": "echo", "message": "charge card 42"});
    let (status, first) = create("order-42", body.clone()).await;
    assert_eq!(status, 202);
    let (status, again) = create("order-42", body.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    let (status, other) = create(
        "order-42",
        json!({"agentId": "echo", "message": "charge card 43"}),
    )
    .await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(other["code"], "unprocessable_entity");
    let runs: i64 = f
        .stack
        .db
        .client()
        .await
        .expect("db")
        .query_one(
            "SELECT count(*) FROM runs WHERE message LIKE 'charge card%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(runs, 1, "one run for one key");

    // The trigger route honours it too.
    let invoke = || async {
        let r = f
            .stack
            .http
            .post(format!(
                "{}/api/v1.0/project/shop/trigger/t",
                f.stack.base_url
            ))
            .header("x-api-key", &f.key)
            .header("Idempotency-Key", "hook-1")
            .json(&json!({"a": 1}))
            .send()
            .await
            .expect("sent");
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let (s1, r1) = invoke().await;
    let (s2, r2) = invoke().await;
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(r1["id"], r2["id"]);
    let bad = f
        .stack
        .http
        .post(format!("{}/v1/runs", f.stack.base_url))
        .bearer_auth(&f.key)
        .header("Idempotency-Key", "")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    f.stack.shutdown().await;
}

/// Invokes `trigger` with `key`; returns the status and the rate-limit headers.
async fn invoke_as(f: &Fixture, trigger: &str, key: &str) -> (u16, [Option<String>; 4]) {
    let r = f
        .stack
        .http
        .post(format!(
            "{}/api/v1.0/project/shop/trigger/{trigger}",
            f.stack.base_url
        ))
        .header("x-api-key", key)
        .send()
        .await
        .expect("sent");
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let headers = [
        h("x-ratelimit-limit"),
        h("x-ratelimit-remaining"),
        h("x-ratelimit-reset"),
        h("retry-after"),
    ];
    (r.status().as_u16(), headers)
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_key_and_per_trigger() {
    let f = Fixture::new().await;
    f.trigger("echo", json!({"id": "open", "name": "Open"}))
        .await;
    f.trigger(
        "echo",
        json!({"id": "narrow", "name": "Narrow", "rateLimitPerMinute": 2}),
    )
    .await;
    let make_key = |limit: u32| {
        let f = &f;
        async move {
            let made = post(
                &f.stack,
                &format!("/manage/tenants/{}/api-keys", f.tenant),
                &f.key,
                json!({"name": format!("limit {limit}"), "rateLimitPerMinute": limit}),
            )
            .await;
            assert_eq!(made.status, 201, "{}", made.body);
            made.body["data"]["key"]
                .as_str()
                .expect("secret")
                .to_owned()
        }
    };
    // 3 a minute: a burst of 3, then one every 20 s.
    let three = make_key(3).await;
    for remaining in ["2", "1", "0"] {
        let (status, [limit, left, _, _]) = invoke_as(&f, "open", &three).await;
        assert_eq!(status, 202);
        assert_eq!(limit.as_deref(), Some("3"));
        assert_eq!(left.as_deref(), Some(remaining));
    }
    let (status, [limit, left, reset, retry_after]) = invoke_as(&f, "open", &three).await;
    assert_eq!(status, 429);
    assert_eq!(limit.as_deref(), Some("3"));
    assert_eq!(left.as_deref(), Some("0"));
    let retry: u64 = retry_after
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("Retry-After");
    assert!(
        (1..=20).contains(&retry),
        "one call's worth of refill: {retry}s"
    );
    let reset: u64 = reset
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("reset");
    assert!(
        reset > retry && reset <= 60,
        "the whole burst is back later: {reset}s"
    );
    // Another key is not affected by that one...
    let roomy = make_key(100).await;
    assert_eq!(invoke_as(&f, "open", &roomy).await.0, 202);
    // ...but a trigger's own limit (2 a minute: a burst of 2) binds every caller together.
    let other = make_key(100).await;
    assert_eq!(invoke_as(&f, "narrow", &roomy).await.0, 202);
    assert_eq!(invoke_as(&f, "narrow", &other).await.0, 202);
    assert_eq!(invoke_as(&f, "narrow", &other).await.0, 429);
    assert_eq!(invoke_as(&f, "narrow", &roomy).await.0, 429);
    // A key that sets nothing has no limit of its own on this door (the tenant's quotas bound it).
    let plain = post(
        &f.stack,
        &format!("/manage/tenants/{}/api-keys", f.tenant),
        &f.key,
        json!({"name": "plain"}),
    )
    .await;
    let plain = plain.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    for _ in 0..8 {
        let (status, [limit, ..]) = invoke_as(&f, "open", &plain).await;
        assert_eq!(status, 202);
        assert_eq!(limit, None, "no limit, no rate-limit headers");
    }
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_test_run_uses_the_schema_example_and_is_marked_as_a_test() {
    let f = Fixture::new().await;
    f.trigger("echo", json!({"id": "tried", "name": "Tried", "enabled": false, "rateLimitPerMinute": 2,
        "messageTemplate": "about {{q}}",
        "inputSchema": {"type": "object", "required": ["q"], "properties": {"q": {"type": "string"}},
                        "examples": [{"q": "sample"}]}})).await;
    let test = format!("{}/tried/test", f.triggers("echo"));
    let first = f
        .stack
        .http
        .post(format!("{}{test}", f.stack.base_url))
        .bearer_auth(&f.key)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        first.status(),
        202,
        "a paused trigger can be tested, with no body"
    );
    let run: Value = first.json().await.expect("run");
    assert_eq!(run["metadata"]["test"], true);
    assert_eq!(run["environment"], "test");
    assert_eq!(
        f.finished(run["id"].as_str().expect("id")).await["result"]["output"],
        "about sample"
    );
    let second = post(&f.stack, &test, &f.key, json!({"q": "given"})).await;
    assert_eq!(second.status, 202, "{}", second.body);
    assert_eq!(
        f.finished(second.body["id"].as_str().expect("id")).await["result"]["output"],
        "about given"
    );
    // A test costs what a call does: the trigger's burst (its 2 a minute) is spent.
    assert_problem(
        &post(&f.stack, &test, &f.key, json!({"q": 3})).await,
        429,
        "too_many_requests",
    );
    assert_eq!(
        f.invoke("tried", json!({"q": "real"})).await.0,
        404,
        "still paused for real calls"
    );
    f.stack.shutdown().await;
}

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_make_one_run_and_no_error() {
    let f = Fixture::new().await;
    let body = json!({"agentId": "echo", "message": "pay invoice 9"});
    let attempts = (0..6).map(|_| {
        let (f, body) = (&f, body.clone());
        async move {
            let r = f
                .stack
                .http
                .post(format!("{}/v1/runs", f.stack.base_url))
                .bearer_auth(&f.stack.api_key)
                .header("Idempotency-Key", "invoice-9")
                .json(&body)
                .send()
                .await
                .expect("sent");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    });
    let answers = futures::future::join_all(attempts).await;
    for (status, body) in &answers {
        assert!(matches!(status, 200 | 202 | 409), "{status}: {body}");
    }
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .filter(|(s, _)| *s != 409)
        .filter_map(|(_, b)| b["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the same run: {answers:?}");
    let runs: i64 = f
        .stack
        .db
        .client()
        .await
        .expect("db")
        .query_one(
            "SELECT count(*) FROM runs WHERE message = 'pay invoice 9'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(runs, 1);
    f.stack.shutdown().await;
}

#[tokio::test]
async fn pausing_a_trigger_reaches_every_replica_within_a_second() {
    let f = Fixture::new().await;
    f.trigger("echo", json!({"id": "shared", "name": "Shared"}))
        .await;
    let (_second, second_url) = f.stack.add_ingress().await.expect("second ingress");
    poll(Duration::from_secs(10), || async {
        let ready: Value = f
            .stack
            .http
            .get(format!("{second_url}/readyz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["keyCache"] == "live").then_some(())
    })
    .await
    .expect("the second replica's caches go live");
    let on_second = || async {
        f.stack
            .http
            .post(format!("{second_url}/api/v1.0/project/shop/trigger/shared"))
            .header("x-api-key", &f.key)
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16()
    };
    assert_eq!(
        on_second().await,
        202,
        "resolved, and now cached, on the second replica"
    );
    let paused = patch(
        &f.stack,
        &format!("{}/shared", f.triggers("echo")),
        &f.key,
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(paused.status, 200);
    poll(Duration::from_secs(1), || async {
        (on_second().await == 404).then_some(())
    })
    .await
    .expect("the second replica stops serving the paused trigger within a second");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn the_webhook_of_a_trigger_run_carries_the_transformed_result() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "shaped", "name": "Shaped", "messageTemplate": "{{q}}",
        "outputTransform": {"template": "Answer: {{output}}"}, "webhookUrl": f.stack.receiver.url}),
    )
    .await;
    let (status, run) = f.invoke("shaped", json!({"q": "forty-two"})).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    let received = f
        .stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| {
            r.iter().any(|d| d.body["data"]["id"] == id.as_str())
        })
        .await
        .expect("the webhook arrives");
    let delivery = received
        .iter()
        .find(|d| d.body["data"]["id"] == id.as_str())
        .expect("ours");
    assert!(delivery.verified);
    assert_eq!(delivery.body["data"]["result"], "Answer: forty-two");
    // The run itself keeps the agent's own result.
    let stored = get(&f.stack, &format!("/v1/runs/{id}"), &f.key).await;
    assert_eq!(stored.body["result"]["output"], "forty-two");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_sessions_runs_execute_one_at_a_time_in_order_across_three_workers() {
    let f = Fixture::with(StackOptions {
        workers: 3,
        ..StackOptions::default()
    })
    .await;
    // Slow enough that three workers would overlap the runs if nothing kept them apart.
    let paced = post(
        &f.stack,
        &format!("/manage/tenants/{}/projects/shop/agents", f.tenant),
        &f.key,
        json!({"id": "paced", "name": "Paced", "kind": "echo", "config": {"delayMs": 60}}),
    )
    .await;
    assert_eq!(paced.status, 201);
    f.trigger("paced", json!({"id": "chat", "name": "Chat"}))
        .await;

    // Twenty rapid invocations in session "a", interleaved with five in session "b".
    let mut session_a = Vec::new();
    let mut session_b = Vec::new();
    for n in 0..20 {
        let (status, run) = f
            .invoke(
                "chat",
                json!({"instruction": format!("a{n}"), "sessionId": "a"}),
            )
            .await;
        assert_eq!(status, 202, "{run}");
        session_a.push(run["id"].as_str().expect("id").to_owned());
        if n % 4 == 0 {
            let (status, run) = f
                .invoke(
                    "chat",
                    json!({"instruction": format!("b{n}"), "sessionId": "b"}),
                )
                .await;
            assert_eq!(status, 202, "{run}");
            session_b.push(run["id"].as_str().expect("id").to_owned());
        }
    }

    // Each run saw exactly the turns of the runs before it in its own session: so each started
    // only after the one before it had completed, in the order they were accepted.
    for (session, ids, prefix) in [("a", &session_a, "a"), ("b", &session_b, "b")] {
        let mut expected = Vec::new();
        for id in ids {
            let run = f.finished(id).await;
            assert_eq!(run["status"], "completed", "{run}");
            assert_eq!(run["sessionId"], session);
            assert_eq!(
                run["result"]["history"],
                json!(expected),
                "{session}: {run}"
            );
            let said = run["result"]["output"].as_str().expect("output").to_owned();
            assert!(said.starts_with(prefix), "{said}");
            expected.push(json!({"role": "user", "content": said}));
            expected.push(json!({"role": "assistant", "content": said}));
        }
    }
    // The database's own clock agrees: no run of "a" started before the one before it ended.
    let client = f.stack.db.client().await.expect("db");
    let overlaps: i64 = client
        .query_one(
            "SELECT count(*) FROM ( \
                 SELECT started_at, lag(completed_at) OVER (ORDER BY id) AS before \
                 FROM runs WHERE session_id = 'a') s \
             WHERE started_at < before",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(overlaps, 0);

    // The native runs API joins the same conversation by its sessionId.
    let native = post(
        &f.stack,
        "/v1/runs",
        &f.key,
        json!({"agentId": "paced", "message": "native", "sessionId": "a"}),
    )
    .await;
    assert_eq!(native.status, 202, "{}", native.body);
    let run = f.finished(native.body["id"].as_str().expect("id")).await;
    assert_eq!(
        run["result"]["history"].as_array().map(Vec::len),
        Some(40),
        "{run}"
    );
    assert_eq!(run["result"]["history"][38]["content"], "a19");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_triggers_or_agents_priority_is_the_default_of_its_runs() {
    let f = Fixture::with(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let agent = patch(
        &f.stack,
        &format!("/manage/tenants/{}/projects/shop/agents/echo", f.tenant),
        &f.key,
        json!({"priority": 20}),
    )
    .await;
    assert_eq!(agent.status.as_u16(), 200, "{}", agent.body);
    assert_eq!(agent.body["data"]["priority"], 20);
    f.trigger(
        "echo",
        json!({"id": "urgent", "name": "Urgent", "priority": 80}),
    )
    .await;
    f.trigger("echo", json!({"id": "plain", "name": "Plain"}))
        .await;
    let (status, run) = f.invoke("urgent", json!({"text": "now"})).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["priority"], 80, "the trigger's");
    let (_, run) = f.invoke("plain", json!({"text": "later"})).await;
    assert_eq!(run["priority"], 20, "the agent's");
    let direct = post(
        &f.stack,
        "/v1/runs",
        &f.key,
        json!({"agentId": "echo", "message": "mine", "priority": 5}),
    )
    .await;
    assert_eq!(direct.body["priority"], 5, "the caller's own");
    let bad = post(
        &f.stack,
        "/v1/runs",
        &f.key,
        json!({"agentId": "echo", "message": "mine", "priority": 101}),
    )
    .await;
    assert_problem(&bad, 400, "bad_request");
    f.stack.shutdown().await;
}

/// The `request_payload`s of a trigger's dropped invocations that name `run_id`, oldest first.
async fn debounced_into(f: &Fixture, trigger: &str, run_id: &str) -> Vec<Value> {
    let client = f.stack.db.client().await.expect("client");
    let run: uuid::Uuid = run_id.parse().expect("uuid");
    client
        .query(
            "SELECT request_payload FROM invocations \
             WHERE tenant_id = $1 AND trigger_id = $2 AND duplicate_of = $3 AND outcome = 'dropped' \
             ORDER BY created_at, id",
            &[&f.tenant, &trigger, &run],
        )
        .await
        .expect("invocations")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_leading_debounce_runs_the_first_call_of_a_burst_and_records_the_rest() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "lead", "name": "Lead", "messageTemplate": "pr {{pr}} v{{n}}",
               "debounce": {"key": "/pr", "periodSeconds": 2, "mode": "leading"}}),
    )
    .await;
    let (status, first) = f.invoke("lead", json!({"pr": 1, "n": 1})).await;
    assert_eq!(status, 202, "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    for n in 2..=3 {
        let (status, joined) = f.invoke("lead", json!({"pr": 1, "n": n})).await;
        assert_eq!(status, 202, "{joined}");
        assert_eq!(joined["id"], first_id.as_str(), "the burst's run answers");
    }
    let (status, other) = f.invoke("lead", json!({"pr": 2, "n": 1})).await;
    assert_eq!(status, 202);
    assert_ne!(
        other["id"],
        first_id.as_str(),
        "another key has its own period"
    );
    assert_eq!(
        f.finished(&first_id).await["result"]["output"],
        "pr 1 v1",
        "the first body ran"
    );
    assert_eq!(
        debounced_into(&f, "lead", &first_id).await,
        [json!({"pr": 1, "n": 2}), json!({"pr": 1, "n": 3})],
        "the dropped calls are recorded, naming the run"
    );
    // The period is 2 s from the first call: past it, the key starts a run again.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, later) = f.invoke("lead", json!({"pr": 1, "n": 4})).await;
    assert_eq!(status, 202);
    assert_ne!(later["id"], first_id.as_str());
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_trailing_debounce_runs_the_last_body_once_the_period_ends() {
    let f = Fixture::new().await;
    f.trigger(
        "echo",
        json!({"id": "trail", "name": "Trail", "messageTemplate": "pr {{pr}} v{{n}}",
               "debounce": {"key": "/pr", "periodSeconds": 2, "mode": "trailing"}}),
    )
    .await;
    let (status, first) = f.invoke("trail", json!({"pr": 1, "n": 1})).await;
    assert_eq!(status, 202, "{first}");
    let run_id = first["id"].as_str().expect("id").to_owned();
    for n in 2..=4 {
        let (status, joined) = f.invoke("trail", json!({"pr": 1, "n": n})).await;
        assert_eq!(status, 202, "{joined}");
        assert_eq!(joined["id"], run_id.as_str(), "one run for the burst");
    }
    let (_, other) = f.invoke("trail", json!({"pr": 2, "n": 9})).await;
    let other_id = other["id"].as_str().expect("id").to_owned();
    assert_ne!(other_id, run_id);
    let done = f.finished(&run_id).await;
    assert_eq!(done["result"]["output"], "pr 1 v4", "the last body ran");
    assert_eq!(f.finished(&other_id).await["result"]["output"], "pr 2 v9");
    // It started once the period was over, not before.
    let client = f.stack.db.client().await.expect("client");
    let waited: f64 = client
        .query_one(
            "SELECT extract(epoch FROM started_at - created_at)::float8 FROM runs WHERE id = $1",
            &[&run_id.parse::<uuid::Uuid>().expect("uuid")],
        )
        .await
        .expect("run")
        .get(0);
    assert!(waited >= 2.0, "started {waited}s after it was accepted");
    assert_eq!(
        debounced_into(&f, "trail", &run_id).await,
        [
            json!({"pr": 1, "n": 1}),
            json!({"pr": 1, "n": 2}),
            json!({"pr": 1, "n": 3})
        ],
        "the replaced bodies are recorded as dropped, naming the run"
    );
    // The run has started: the next call opens a new period.
    let (status, next) = f.invoke("trail", json!({"pr": 1, "n": 5})).await;
    assert_eq!(status, 202);
    assert_ne!(next["id"], run_id.as_str());
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_debounce_outside_its_bounds_is_refused() {
    let f = Fixture::new().await;
    for debounce in [
        json!({"periodSeconds": 0}),
        json!({"periodSeconds": 3601}),
        json!({"key": "pr", "periodSeconds": 5}),
        json!({"periodSeconds": 5, "mode": "sideways"}),
    ] {
        let made = post(
            &f.stack,
            &f.triggers("echo"),
            &f.key,
            json!({"name": "Bad", "debounce": debounce}),
        )
        .await;
        assert!(
            made.status == 400 || made.status == 422,
            "{debounce}: {} {}",
            made.status,
            made.body
        );
    }
    f.stack.shutdown().await;
}
