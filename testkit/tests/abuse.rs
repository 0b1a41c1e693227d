//! Hostile tenants and hostile clients, one test per attack, each written as the attack it stops,
//! against the real binaries on the real PostgreSQL and RabbitMQ. Every one of them succeeded
//! before the boundary it checks was built.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::api::{
    assert_problem, delete, get, patch, post, project_with_agent, tenant,
};
use switchyard_testkit::fake_llm::{FakeLlm, Step};
use switchyard_testkit::{ADMIN_TOKEN, Stack, StackOptions, poll};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A key of `tenant` with `scopes`, limited to `projects` when given.
async fn key(
    stack: &Stack,
    tenant: &str,
    owner: &str,
    scopes: &[&str],
    projects: Option<&[&str]>,
) -> (String, String) {
    let mut body = json!({"name": "k", "scopes": scopes, "rateLimitPerMinute": 100_000});
    if let Some(projects) = projects {
        body["projectIds"] = json!(projects);
    }
    let made = post(
        stack,
        &format!("/manage/tenants/{tenant}/api-keys"),
        owner,
        body,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    (
        made.body["data"]["id"].as_str().expect("id").to_owned(),
        made.body["data"]["key"].as_str().expect("key").to_owned(),
    )
}

/// A credential `id` of `tenant`.
async fn credential(stack: &Stack, tenant: &str, owner: &str, id: &str, value: &str) {
    let made = post(
        stack,
        &format!("/manage/tenants/{tenant}/credentials"),
        owner,
        json!({"id": id, "name": id, "type": "signing_secret", "value": value}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
}

/// A trigger of `agent` in `project`.
async fn trigger(stack: &Stack, tenant: &str, key: &str, project: &str, agent: &str, body: Value) {
    let made = post(
        stack,
        &format!("/manage/tenants/{tenant}/projects/{project}/agents/{agent}/triggers"),
        key,
        body,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
}

/// Polls `GET /v1/runs/{id}` until the run has ended.
async fn ended(stack: &Stack, key: &str, id: &str) -> Value {
    poll(Duration::from_secs(30), || async {
        let r = get(stack, &format!("/v1/runs/{id}"), key).await;
        matches!(
            r.body["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "timed_out" | "expired")
        )
        .then_some(r.body)
    })
    .await
    .expect("the run ends")
}

/// 1. A project-limited key names a tenant credential in a tool, so that every tool call it
///    points at its own URL is signed with the tenant's secret (a signing oracle).
#[tokio::test]
async fn a_limited_key_cannot_get_tool_calls_signed_with_a_tenant_secret() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "a", "echo-a").await;
    credential(
        &stack,
        &t,
        &owner,
        "signing",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .await;
    let (_, limited) = key(&stack, &t, &owner, &["manage", "trigger"], Some(&["a"])).await;
    let agents = format!("/manage/tenants/{t}/projects/a/agents");
    let oracle = |url: &str| {
        json!({"baseUrl": "https://llm.example/v1", "model": "m",
               "tools": [{"name": "sign", "url": url, "credentialReferenceId": "signing"}]})
    };
    let made = post(&stack, &agents, &limited,
        json!({"id": "oracle", "name": "Oracle", "kind": "openai", "config": oracle("https://attacker.example/")})).await;
    assert_problem(&made, 403, "forbidden");
    // Nor by a PATCH that adds the credential to an agent it made.
    let plain = post(
        &stack,
        &agents,
        &limited,
        json!({"id": "plain", "name": "Plain", "kind": "openai",
        "config": {"baseUrl": "https://llm.example/v1", "model": "m"}}),
    )
    .await;
    assert_eq!(plain.status, 201, "{}", plain.body);
    let added = patch(
        &stack,
        &format!("{agents}/plain"),
        &limited,
        json!({"config": oracle("https://attacker.example/")}),
    )
    .await;
    assert_problem(&added, 403, "forbidden");
    // Nor by retargeting the tool of an agent the owner gave a credential.
    let owned = post(&stack, &agents, &owner,
        json!({"id": "owned", "name": "Owned", "kind": "openai", "config": oracle("https://tools.example/sign")})).await;
    assert_eq!(owned.status, 201, "{}", owned.body);
    for change in [
        json!({"config": oracle("https://attacker.example/")}),
        json!({"config": {"baseUrl": "https://attacker.example/v1", "model": "m",
            "tools": [{"name": "sign", "url": "https://tools.example/sign", "credentialReferenceId": "signing"}]}}),
        json!({"name": "Renamed"}),
    ] {
        assert_problem(
            &patch(&stack, &format!("{agents}/owned"), &limited, change).await,
            403,
            "forbidden",
        );
    }
    let stored = get(&stack, &format!("{agents}/owned"), &owner).await;
    assert_eq!(
        stored.body["data"]["config"]["tools"][0]["url"],
        "https://tools.example/sign"
    );
    stack.shutdown().await;
}

/// 2. A template of thousands of placeholders over a large field turns a small request into a
///    huge run; an output transform does the same on every read of the result.
#[tokio::test]
async fn templates_cannot_amplify_a_request_or_a_result() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    trigger(
        &stack,
        &t,
        &owner,
        "p",
        "echo",
        json!({"id": "amp", "name": "Amp", "messageTemplate": "{{a}}".repeat(2_000)}),
    )
    .await;
    let invoke = "/api/v1.0/project/p/trigger/amp";
    let refused = post(&stack, invoke, &owner, json!({"a": "x".repeat(5_000)})).await;
    assert_problem(&refused, 422, "unprocessable_entity");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("messageTemplate")),
        "{}",
        refused.body
    );
    let small = post(&stack, invoke, &owner, json!({"a": "x"})).await;
    assert_eq!(small.status, 202, "a small render is fine: {}", small.body);
    let listed = get(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents/echo/triggers/amp/invocations?limit=10"),
        &owner,
    )
    .await;
    assert!(
        listed.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .any(|i| i["outcome"] == "rejected"),
        "the refused render is a rejected invocation: {}",
        listed.body
    );
    // An output template longer than 64 KiB is refused on write.
    let long = post(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents/echo/triggers"),
        &owner,
        json!({"name": "Long", "outputTransform": {"template": "x".repeat(65 * 1024)}}),
    )
    .await;
    assert_problem(&long, 422, "unprocessable_entity");
    // One that would multiply the result is refused when it is read, with the run named.
    trigger(
        &stack,
        &t,
        &owner,
        "p",
        "echo",
        json!({"id": "mult", "name": "Mult", "waitForResponse": true,
        "outputTransform": {"template": "{{output}}".repeat(100)}}),
    )
    .await;
    let waited = post(
        &stack,
        "/api/v1.0/project/p/trigger/mult",
        &owner,
        json!({"instruction": "y".repeat(5_000)}),
    )
    .await;
    assert_problem(&waited, 422, "unprocessable_entity");
    let run_id = waited.body["runId"].as_str().expect("the run is named");
    let run = ended(&stack, &owner, run_id).await;
    assert_eq!(run["status"], "completed", "the run itself is fine");
    stack.shutdown().await;
}

/// 3. A tenant's own agent (or model, or tool) answers without end, to make a worker hold it
///    all in memory.
#[tokio::test]
async fn a_hostile_agent_cannot_make_a_worker_hold_unbounded_output() {
    let llm = FakeLlm::start(vec![]).await.expect("fake");
    let stack = Stack::start(StackOptions {
        workers: 1,
        worker_env: vec![(
            "SWITCHYARD_MAX_RUN_OUTPUT_BYTES",
            (2 * 1024 * 1024).to_string(),
        )],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    let agents = format!("/manage/tenants/{t}/projects/p/agents");
    let flood = post(
        &stack,
        &agents,
        &owner,
        json!({"id": "flood", "name": "Flood", "kind": "http",
        "maxAttempts": 1, "config": {"url": format!("{}/agent/flood", llm.origin)}}),
    )
    .await;
    assert_eq!(flood.status, 201, "{}", flood.body);
    let run = post(
        &stack,
        "/v1/runs",
        &owner,
        json!({"agentId": "flood", "message": "go"}),
    )
    .await;
    assert_eq!(run.status, 202, "{}", run.body);
    let done = ended(&stack, &owner, run.body["id"].as_str().expect("id")).await;
    assert_eq!(
        (done["status"].as_str(), done["errorCode"].as_str()),
        (Some("failed"), Some("output_too_large")),
        "{}",
        done["errorMessage"]
    );
    // A model whose tool calls carry megabytes of arguments.
    llm.script(vec![Step::Tools(vec![(
        "c1".into(),
        "lookup".into(),
        format!("{{\"q\":\"{}\"}}", "z".repeat(2 * 1024 * 1024)),
    )])]);
    let model = post(
        &stack,
        &agents,
        &owner,
        json!({"id": "model", "name": "Model", "kind": "openai",
        "maxAttempts": 1, "config": {"baseUrl": llm.base_url, "model": "m",
        "tools": [{"name": "lookup", "url": format!("{}/tools/lookup", llm.origin)}]}}),
    )
    .await;
    assert_eq!(model.status, 201, "{}", model.body);
    let run = post(
        &stack,
        "/v1/runs",
        &owner,
        json!({"agentId": "model", "message": "go"}),
    )
    .await;
    let done = ended(&stack, &owner, run.body["id"].as_str().expect("id")).await;
    assert_eq!(
        done["errorCode"], "output_too_large",
        "{}",
        done["errorMessage"]
    );
    // The worker is still there, and still works.
    let mut stack = stack;
    assert!(stack.workers[0].is_running());
    let run = post(
        &stack,
        "/v1/runs",
        &owner,
        json!({"agentId": "echo", "message": "still here"}),
    )
    .await;
    let done = ended(&stack, &owner, run.body["id"].as_str().expect("id")).await;
    assert_eq!(done["result"]["output"], "still here");
    stack.shutdown().await;
}

/// 4. Anyone on the internet posts forged webhooks to a trigger's public address, each with a
///    payload to be stored in the tenant's history.
#[tokio::test]
async fn forged_webhooks_store_nothing_and_are_cut_off() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    credential(&stack, &t, &owner, "gh", "It's a Secret to Everybody").await;
    trigger(&stack, &t, &owner, "p", "echo", json!({"id": "gh", "name": "GitHub",
        "signingSecretCredentialReferenceId": "gh",
        "signatureVerification": {"algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "header", "key": "X-Hub-Signature-256", "prefix": "sha256=", "regex": "([0-9a-f]+)"},
            "signedComponents": [{"source": "body"}]}})).await;
    let payload = json!({"marker": "PAYLOAD-OF-A-STRANGER", "pad": "p".repeat(10_000)}).to_string();
    let (mut refused, mut limited) = (0, 0);
    for _ in 0..20 {
        let answer = stack
            .http
            .post(format!("{}/hooks/{t}/gh", stack.base_url))
            .header("x-hub-signature-256", "sha256=00ff")
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await
            .expect("sent");
        match answer.status().as_u16() {
            401 => refused += 1,
            429 => {
                assert!(answer.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("a forgery answered {other}"),
        }
    }
    assert!(
        limited > 0,
        "past the refusal budget, forgeries are cut off"
    );
    let listed = get(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents/echo/triggers/gh/invocations?limit=100"),
        &owner,
    )
    .await;
    assert_eq!(
        listed.body["pagination"]["total"], refused,
        "only the refusals within the budget are recorded"
    );
    for invocation in listed.body["data"].as_array().expect("data") {
        assert_eq!(invocation["outcome"], "rejected");
        assert!(invocation["requestPayload"].is_null(), "{invocation}");
    }
    let db = stack.db.client().await.expect("db");
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM invocations WHERE request_payload::text LIKE '%PAYLOAD-OF-A-STRANGER%'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 0, "no stranger's payload is stored");
    stack.shutdown().await;
}

/// 5. A tenant runs its trigger through the test route as fast as it likes, and fans every run
///    event out to thousands of endpoints inside the workers' shared completion batch.
#[tokio::test]
async fn the_test_route_counts_against_the_limits_and_endpoints_are_capped() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    trigger(
        &stack,
        &t,
        &owner,
        "p",
        "echo",
        json!({"id": "tt", "name": "Tested"}),
    )
    .await;
    let slow = post(
        &stack,
        &format!("/manage/tenants/{t}/api-keys"),
        &owner,
        json!({"name": "slow", "scopes": ["manage"], "rateLimitPerMinute": 1}),
    )
    .await;
    let slow = slow.body["data"]["key"].as_str().expect("key").to_owned();
    let test = format!("/manage/tenants/{t}/projects/p/agents/echo/triggers/tt/test");
    assert_eq!(post(&stack, &test, &slow, json!({})).await.status, 202);
    let again = post(&stack, &test, &slow, json!({})).await;
    assert_problem(&again, 429, "too_many_requests");
    // Endpoints: the tenant's cap, set by the admin.
    let capped = patch(
        &stack,
        &format!("/manage/tenants/{t}"),
        ADMIN_TOKEN,
        json!({"maxWebhookEndpoints": 2}),
    )
    .await;
    assert_eq!(capped.status, 200, "{}", capped.body);
    assert_eq!(capped.body["data"]["maxWebhookEndpoints"], 2);
    let endpoints = format!("/manage/tenants/{t}/webhook-endpoints");
    for n in 0..2 {
        let made = post(
            &stack,
            &endpoints,
            &owner,
            json!({"url": format!("https://hooks.example/{n}")}),
        )
        .await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let third = post(
        &stack,
        &endpoints,
        &owner,
        json!({"url": "https://hooks.example/3"}),
    )
    .await;
    assert_problem(&third, 409, "conflict");
    assert_eq!(
        patch(
            &stack,
            &format!("/manage/tenants/{t}"),
            &owner,
            json!({"maxWebhookEndpoints": 100})
        )
        .await
        .status,
        403,
        "only the admin changes a tenant's caps"
    );
    patch(
        &stack,
        &format!("/manage/tenants/{t}"),
        ADMIN_TOKEN,
        json!({"maxWebhookEndpoints": 3}),
    )
    .await;
    let third = post(
        &stack,
        &endpoints,
        &owner,
        json!({"url": "https://hooks.example/3"}),
    )
    .await;
    assert_eq!(third.status, 201, "{}", third.body);
    stack.shutdown().await;
}

/// 6. A trigger's delivery URL carries its secret (`?token=`), and every run copies it: callers
///    that only trigger or read, endpoint receivers and webhook senders would all see it, and so
///    would anyone reading a failed call's error.
#[tokio::test]
async fn secret_bearing_urls_are_shown_only_to_manage_keys() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    let hook = format!("{}?token=URL-SECRET", stack.receiver.url);
    trigger(
        &stack,
        &t,
        &owner,
        "p",
        "echo",
        json!({"id": "slack", "name": "Slack", "webhookUrl": hook}),
    )
    .await;
    let endpoint = post(&stack, &format!("/manage/tenants/{t}/webhook-endpoints"), &owner,
        json!({"url": stack.receiver.url, "eventTypes": ["run.completed"], "secret": switchyard_testkit::WEBHOOK_SECRET})).await;
    assert_eq!(endpoint.status, 201, "{}", endpoint.body);
    let (_, caller) = key(&stack, &t, &owner, &["trigger", "runs:read"], None).await;
    let accepted = post(
        &stack,
        "/api/v1.0/project/p/trigger/slack",
        &caller,
        json!({"instruction": "hi"}),
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert!(accepted.body["webhookUrl"].is_null(), "{}", accepted.body);
    let id = accepted.body["id"].as_str().expect("id");
    let read = ended(&stack, &caller, id).await;
    assert!(read.get("webhookUrl").is_some_and(Value::is_null), "{read}");
    let managed = get(&stack, &format!("/v1/runs/{id}"), &owner).await;
    assert_eq!(
        managed.body["webhookUrl"],
        hook.as_str(),
        "a manage key sees it"
    );
    // Both webhooks (the run's own and the endpoint's) arrive without it.
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 2)
        .await
        .expect("two webhooks");
    for webhook in received {
        let body = String::from_utf8_lossy(&webhook.raw_body).into_owned();
        assert!(!body.contains("URL-SECRET"), "{body}");
    }
    // An agent's failure names its URL without the query or user info.
    let agent = post(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents"),
        &owner,
        json!({"id": "down", "name": "Down", "kind": "http", "maxAttempts": 1,
               "config": {"url": "http://user:pw@127.0.0.1:9/agent?token=URL-SECRET"}}),
    )
    .await;
    assert_eq!(agent.status, 201, "{}", agent.body);
    let run = post(
        &stack,
        "/v1/runs",
        &owner,
        json!({"agentId": "down", "message": "x"}),
    )
    .await;
    let failed = ended(&stack, &owner, run.body["id"].as_str().expect("id")).await;
    assert_eq!(failed["status"], "failed");
    let said = failed.to_string();
    assert!(
        !said.contains("URL-SECRET") && !said.contains("pw@"),
        "{said}"
    );
    let events = stack
        .http
        .get(format!(
            "{}/v1/runs/{}/events",
            stack.base_url,
            failed["id"].as_str().expect("id")
        ))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(!events.contains("URL-SECRET"), "{events}");
    stack.shutdown().await;
}

/// 7. A key is revoked, but the streams and waits it opened run on until their runs end; and
///    one key opens streams without end.
#[tokio::test]
async fn a_revoked_keys_streams_and_waits_end_at_once_and_streams_are_capped() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ingress_env: vec![("SWITCHYARD_MAX_STREAMS_PER_KEY", "3".into())],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    let slow = post(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents"),
        &owner,
        json!({"id": "slow", "name": "Slow", "kind": "echo", "config": {"delayMs": 60_000}}),
    )
    .await;
    assert_eq!(slow.status, 201, "{}", slow.body);
    let (key_id, doomed) = key(&stack, &t, &owner, &["trigger", "runs:read"], None).await;
    let run = post(
        &stack,
        "/v1/runs",
        &doomed,
        json!({"agentId": "slow", "message": "a b c"}),
    )
    .await;
    let id = run.body["id"].as_str().expect("id").to_owned();
    let events = format!("{}/v1/runs/{id}/events", stack.base_url);
    let stream = stack
        .http
        .get(&events)
        .bearer_auth(&doomed)
        .send()
        .await
        .expect("sent");
    assert_eq!(stream.status(), 200);
    let mut reader = switchyard_testkit::sse::Reader::new(stream);
    let wait = {
        let request = stack
            .http
            .get(format!("{}/v1/runs/{id}/wait?timeout=60", stack.base_url))
            .bearer_auth(&doomed);
        tokio::spawn(async move { request.send().await.expect("sent") })
    };
    // The wait is open once the ingress counts two.
    poll(Duration::from_secs(10), || async {
        (open_streams(&stack).await == 2).then_some(())
    })
    .await
    .expect("the stream and the wait are open");
    let second = stack
        .http
        .get(&events)
        .bearer_auth(&doomed)
        .send()
        .await
        .expect("sent");
    assert_eq!(second.status(), 200);
    // The third of the key's streams and waits is its last.
    let fourth = stack
        .http
        .get(&events)
        .bearer_auth(&doomed)
        .send()
        .await
        .expect("sent");
    assert_eq!(fourth.status(), 429, "{:?}", fourth.text().await);
    // Another key of the tenant is not held back by this one.
    let other = stack
        .http
        .get(&events)
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent");
    assert_eq!(other.status(), 200);
    drop(other);
    let revoked = delete(
        &stack,
        &format!("/manage/tenants/{t}/api-keys/{key_id}"),
        &owner,
    )
    .await;
    assert_eq!(revoked.status, 204);
    let started = Instant::now();
    // The stream closes, and the wait answers 401, long before the run's minute is up.
    while reader.next(Duration::from_secs(10)).await.is_some() {}
    assert!(reader.closed(), "the stream was closed");
    let waited = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the wait ends")
        .expect("joined");
    assert_eq!(waited.status(), 401);
    assert!(started.elapsed() < Duration::from_secs(20));
    // A revocation whose control message never arrives (here: written straight to the table)
    // still ends the key's streams, at the replica's next check.
    let (quiet_id, quiet) = key(&stack, &t, &owner, &["runs:read"], None).await;
    let stream = stack
        .http
        .get(&events)
        .bearer_auth(&quiet)
        .send()
        .await
        .expect("sent");
    assert_eq!(stream.status(), 200);
    let mut reader = switchyard_testkit::sse::Reader::new(stream);
    let db = stack.db.client().await.expect("db");
    db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1::text::uuid",
        &[&quiet_id],
    )
    .await
    .expect("revoked behind the ingress's back");
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while reader.next(Duration::from_secs(20)).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok() && reader.closed(), "the stream ended");
    stack.shutdown().await;
}

/// `switchyard_open_streams` of the stack's ingress.
async fn open_streams(stack: &Stack) -> u64 {
    let text = stack
        .http
        .get(format!("{}/metrics", stack.base_url))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    text.lines()
        .find(|l| l.starts_with("switchyard_open_streams"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// 8. One list call asks for 200 runs of 200 KB each; one stream catch-up reads 500 events of
///    megabytes each.
#[tokio::test]
async fn run_lists_are_thin_and_event_pages_are_bounded_in_bytes() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (big, message) = ("b".repeat(150 * 1024), "m".repeat(60 * 1024));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let run = stack
            .create_run(&json!({"agentId": "echo", "inputs": {"big": big}, "message": message}))
            .await
            .expect("sent");
        assert_eq!(run.status(), 202);
        let run: Value = run.json().await.expect("json");
        ids.push(run["id"].as_str().expect("id").to_owned());
    }
    let response = stack
        .http
        .get(format!("{}/v1/runs?limit=200", stack.base_url))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("sent");
    let text = response.text().await.expect("text");
    assert!(
        text.len() < 20_000,
        "a page of summaries is small: {} bytes",
        text.len()
    );
    let page: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(page["data"].as_array().expect("data").len(), 5);
    assert!(page["data"][0]["inputs"].is_null() && page["data"][0].get("result").is_none());
    assert_eq!(
        page["data"][0]["messagePreview"].as_str().map(str::len),
        Some(200)
    );
    assert!(page["nextCursor"].is_null());
    // A page at a time, newest first, with no run twice.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let page = get(&stack, &format!("/v1/runs?limit=2{query}"), &stack.api_key).await;
        for run in page.body["data"].as_array().expect("data") {
            seen.push(run["id"].as_str().expect("id").to_owned());
        }
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    // Event pages stop at about a megabyte, whatever the count asked for.
    let pool = switchyard_common::db::pool(&switchyard_common::config::DatabaseArgs {
        database_url: stack.db.url.clone(),
        db_pool_size: 2,
        db_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(10),
    })
    .expect("pool");
    let db = pool.get().await.expect("db");
    let run = uuid::Uuid::parse_str(&ids[0]).expect("uuid");
    db.execute(
        "INSERT INTO run_events (run_id, seq, kind, data) \
         SELECT $1, n, 'delta', jsonb_build_object('text', repeat('e', 300000)) FROM generate_series(1, 10) n",
        &[&run],
    )
    .await
    .expect("events");
    let first = switchyard_common::events::after(&db, run, 0, 500)
        .await
        .expect("page");
    assert!(first.more, "the page stopped before the events did");
    assert!(
        (2..=5).contains(&first.events.len()),
        "{} events of 300 KB",
        first.events.len()
    );
    let mut all = first.events.len();
    let mut last = first.events.last().map_or(0, |e| e.seq);
    loop {
        let page = switchyard_common::events::after(&db, run, last, 500)
            .await
            .expect("page");
        all += page.events.len();
        last = page.events.last().map_or(last, |e| e.seq);
        if !page.more {
            break;
        }
    }
    assert_eq!(all, 10, "every event is read, a page at a time");
    stack.shutdown().await;
}

/// 9. One project's key claims another caller's `Idempotency-Key` first, or reads another
///    caller's run by replaying its key.
#[tokio::test]
async fn an_idempotency_key_belongs_to_the_api_key_that_sent_it() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    let (_, alice) = key(&stack, &t, &owner, &["trigger", "runs:read"], None).await;
    let (_, mallory) = key(&stack, &t, &owner, &["trigger"], None).await;
    let send = |key: String, message: &'static str| {
        let request = stack
            .http
            .post(format!("{}/v1/runs", stack.base_url))
            .bearer_auth(key)
            .header("idempotency-key", "order-42")
            .json(&json!({"agentId": "echo", "message": message}));
        async move {
            let r = request.send().await.expect("sent");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    // Mallory claims the key first, with another body.
    let (status, _) = send(mallory.clone(), "mallory's").await;
    assert_eq!(status, 202);
    let (status, alices) = send(alice.clone(), "pay invoice 42").await;
    assert_eq!(status, 202, "alice's key is her own: {alices}");
    assert_eq!(alices["message"], "pay invoice 42");
    // Mallory replays Alice's request: a run of Mallory's own, never Alice's.
    let (status, replayed) = send(mallory.clone(), "pay invoice 42").await;
    assert_eq!(status, 422, "{replayed}");
    assert_ne!(replayed["id"], alices["id"]);
    // Alice's replay is hers.
    let (status, again) = send(alice, "pay invoice 42").await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], alices["id"]);
    stack.shutdown().await;
}

/// 10. A shared cache keeps a new key's secret; a page on another subdomain plants a console
///     cookie.
#[tokio::test]
async fn secrets_are_never_cached_and_the_secure_console_cookie_is_host_only() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    let created = stack
        .http
        .post(format!("{}/manage/tenants/{t}/api-keys", stack.base_url))
        .bearer_auth(&owner)
        .json(&json!({"name": "new", "scopes": ["manage", "runs:read"]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let made: Value = created.json().await.expect("json");
    let secret = stack
        .http
        .get(format!(
            "{}/manage/tenants/{t}/webhook-secret",
            stack.base_url
        ))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent");
    assert_eq!(secret.status(), 200);
    assert_eq!(secret.headers()["cache-control"], "no-store");
    let signed_in = stack
        .http
        .post(format!("{}/console/session", stack.base_url))
        .header("x-forwarded-proto", "https")
        .json(&json!({"key": made["data"]["key"]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(signed_in.status(), 201);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(cookie.starts_with("__Host-sy_console="), "{cookie}");
    assert!(cookie.contains("; Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"));
    let pair = cookie.split(';').next().expect("pair");
    let me = stack
        .http
        .get(format!("{}/console/session", stack.base_url))
        .header("cookie", pair)
        .send()
        .await
        .expect("sent");
    assert_eq!(me.status(), 200, "the prefixed cookie signs in");
    stack.shutdown().await;
}

/// 11. A tenant's `inputSchema` nests without end, or its `pattern` backtracks without end on a
///     crafted body.
#[tokio::test]
async fn hostile_json_schemas_cannot_stall_or_crash_the_ingress() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "echo").await;
    let triggers = format!("/manage/tenants/{t}/projects/p/agents/echo/triggers");
    let mut deep = json!({"type": "string"});
    for _ in 0..100 {
        deep = json!({"type": "array", "items": deep});
    }
    assert_problem(
        &post(
            &stack,
            &triggers,
            &owner,
            json!({"name": "Deep", "inputSchema": deep}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(
            &stack,
            &triggers,
            &owner,
            json!({"name": "Look", "inputSchema": {"type": "string", "pattern": "(?<=a)b"}}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    trigger(&stack, &t, &owner, "p", "echo", json!({"id": "evil", "name": "Evil",
        "inputSchema": {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|a)*(a+)+$"}}}})).await;
    let hostile = json!({"s": format!("{}!", "a".repeat(100_000))});
    let calls = (0..4).map(|_| {
        post(
            &stack,
            "/api/v1.0/project/p/trigger/evil",
            &owner,
            hostile.clone(),
        )
    });
    let answers = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("hostile bodies are answered, not stalled on");
    for answer in answers {
        assert_problem(&answer, 422, "unprocessable_entity");
    }
    let health = get(&stack, "/healthz", &owner).await;
    assert_eq!(health.status, 200);
    stack.shutdown().await;
}

/// 12. Slow clients: headers a byte at a time, a body that never finishes, and connections that
///     are opened and left, from one address or several.
#[tokio::test]
async fn slow_clients_cannot_hold_the_ingress() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ingress_env: vec![
            ("SWITCHYARD_HEADER_READ_TIMEOUT", "3s".into()),
            ("SWITCHYARD_BODY_READ_TIMEOUT", "2s".into()),
            ("SWITCHYARD_MAX_CONNECTIONS", "8".into()),
            ("SWITCHYARD_MAX_CONNECTIONS_PER_PEER", "4".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let addr = stack.base_url.trim_start_matches("http://").to_owned();
    // Headers that never end: the connection is closed.
    let mut slowloris = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slowloris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slowloris.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow headers' connection was closed");
    assert!(started.elapsed() >= Duration::from_millis(500));
    // A body that stops halfway: 408.
    let mut half = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    half.write_all(
        format!(
            "POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"agentId\":",
            stack.api_key
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    // Connections opened and left. One address holds at most four; past that a new one is
    // closed at once.
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{ip}:0").parse().expect("address"))
            .expect("bind");
        let addr = addr.parse().expect("address");
        async move { socket.connect(addr).await.expect("connect") }
    };
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(from("127.0.0.1").await);
    }
    let mut fifth = from("127.0.0.1").await;
    let mut byte = [0u8; 1];
    let refused = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut byte)).await;
    assert!(
        matches!(refused, Ok(Ok(0) | Err(_))),
        "a fifth connection from one address is closed"
    );
    // At once, not by the header deadline: the four opened before it, which that deadline
    // would have closed first, are still open. (An order, not a timing: a loaded machine is
    // slow to close, not out of order.)
    for conn in &idle {
        let mut probe = [0u8; 1];
        assert!(
            matches!(conn.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the fifth connection was closed by the header deadline, not refused at once"
        );
    }
    // At the cap of eight in all, no more are accepted until the idle ones time out.
    for _ in 0..4 {
        idle.push(from("127.0.0.2").await);
    }
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let blocked = tokio::time::timeout(
        Duration::from_millis(300),
        elsewhere.get(format!("{}/healthz", stack.base_url)).send(),
    )
    .await;
    assert!(blocked.is_err(), "at the cap, a new connection waits");
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        elsewhere.get(format!("{}/healthz", stack.base_url)).send(),
    )
    .await
    .expect("served once the idle connections time out")
    .expect("answered");
    assert_eq!(served.status(), 200);
    drop(idle);
    stack.shutdown().await;
}

/// 13. The app API's create, asked with `Accept: text/event-stream`, held the caller until the
///     run ended and then answered 503 for a run it had created.
#[tokio::test]
async fn the_app_api_answers_at_once_whatever_accept_says() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    stack.add_echo_agent("slow", 10_000).await.expect("agent");
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        stack
            .http
            .post(format!("{}/api/v1/runs", stack.base_url))
            .bearer_auth(&stack.api_key)
            .header("accept", "text/event-stream")
            .json(&json!({"appId": "slow", "inputs": {"q": 1}}))
            .send(),
    )
    .await
    .expect("answered before the run ends")
    .expect("sent");
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["appId"], "slow");
    stack.shutdown().await;
}
