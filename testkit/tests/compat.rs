//! The hosted products' own examples, replayed against Switchyard: each vendor's curl, JavaScript
//! `fetch` and Python `requests` snippets (kept verbatim under `testkit/compat/`) run as real
//! programs, pointed at a test stack, and the documented outcome is checked.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use switchyard_common::signing::Secret;
use switchyard_testkit::api::{post, project_with_agent, tenant};
use switchyard_testkit::{Receiver, Stack, StackOptions};

/// A vendor snippet from `testkit/compat/`, with its host, key and ids replaced.
fn snippet(path: &str, replacements: &[(&str, &str)]) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("compat")
        .join(path);
    let mut text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "{path} names {from}");
        text = text.replace(from, to);
    }
    let file_name = source
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snippet");
    let out = std::env::temp_dir().join(format!("sy-{}-{file_name}", switchyard_testkit::unique()));
    std::fs::write(&out, text).expect("write the snippet");
    out
}

/// Runs a snippet with the interpreter its extension names; panics unless it exits 0.
fn run(script: &PathBuf) -> String {
    let venv = std::env::var("SWITCHYARD_PY_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/switchyard/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let program = match script.extension().and_then(|e| e.to_str()) {
        Some("py") => format!("{venv}/bin/python"),
        Some("js") => "node".to_owned(),
        _ => "bash".to_owned(),
    };
    let output = std::process::Command::new(&program)
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let _ = std::fs::remove_file(script);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {}: {stdout}{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn relevance_ais_examples_trigger_the_agent_and_its_result_reaches_the_destination() {
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    project_with_agent(&stack, &tenant, &key, "support", "triage").await;
    // The agent's destination: a webhook endpoint of the tenant.
    let secret = Secret::generate().to_whsec();
    let destination = Receiver::start(&secret, Vec::new())
        .await
        .expect("receiver");
    let made = post(
        &stack,
        &format!("/manage/tenants/{tenant}/webhook-endpoints"),
        &key,
        json!({"url": destination.url, "secret": secret, "eventTypes": ["run.completed"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);

    let replacements = [
        (
            "https://api-f1db6c.stack.tryrelevance.com",
            stack.base_url.as_str(),
        ),
        ("[YOUR_API_KEY]", key.as_str()),
        ("[YOUR_AGENT_ID_GOES_HERE]", "triage"),
    ];
    for file in [
        "relevance/curl.sh",
        "relevance/fetch.js",
        "relevance/requests.py",
    ] {
        run(&snippet(file, &replacements));
    }
    let got = destination
        .wait_for(Duration::from_secs(30), |r| r.len() >= 3)
        .await
        .expect("one result per example reaches the destination");
    for hook in &got {
        assert!(hook.verified);
        assert_eq!(hook.body["type"], "run.completed");
        assert_eq!(hook.body["data"]["agentId"], "triage");
        assert_eq!(hook.body["data"]["message"], "Hello");
        assert_eq!(hook.body["data"]["result"]["output"], "Hello");
    }

    // The documented body, answered as accepted; what it gets wrong, as a problem.
    let url = format!("{}/latest/agents/trigger", stack.base_url);
    let send = |body: serde_json::Value| {
        let (http, url, key) = (stack.http.clone(), url.clone(), key.clone());
        async move {
            let response = http
                .post(url)
                .header("Authorization", key)
                .json(&body)
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, location, body)
        }
    };
    let (status, location, run) =
        send(json!({"message": {"role": "user", "content": "Hello"}, "agent_id": "triage"})).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(
        location,
        Some(format!("/v1/runs/{}", run["id"].as_str().expect("id")))
    );
    for (body, detail) in [
        (
            json!({"message": {"role": "user", "content": "Hi"}}),
            "missing field `agent_id`",
        ),
        (
            json!({"message": {"role": "assistant", "content": "Hi"}, "agent_id": "triage"}),
            "`message.role` must be `user`",
        ),
        (
            json!({"message": {"role": "user", "content": " "}, "agent_id": "triage"}),
            "`message.content` may not be empty",
        ),
        (
            json!({"message": {"role": "user", "content": "Hi"}, "agent_id": "no such/agent"}),
            "`agent_id` must be",
        ),
    ] {
        let (status, _, problem) = send(body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(detail),
            "{body}: {problem}"
        );
        assert!(problem["requestId"].is_string());
    }
    let (status, _, problem) =
        send(json!({"message": {"role": "user", "content": "Hi"}, "agent_id": "nobody"})).await;
    assert_eq!(status, 404, "an unknown agent: {problem}");
    stack.shutdown().await;
}

#[tokio::test]
async fn the_agent_app_runs_api_creates_reads_lists_and_cancels_runs_in_its_own_shapes() {
    use switchyard_testkit::api::get;
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    project_with_agent(&stack, &tenant, &key, "apps", "summarizer").await;
    // A slow app, to see a run pending and cancel it.
    let slow = post(
        &stack,
        &format!("/manage/tenants/{tenant}/projects/apps/agents"),
        &key,
        json!({"id": "slow", "name": "Slow app", "kind": "echo", "config": {"delayMs": 3000}}),
    )
    .await;
    assert_eq!(slow.status, 201, "{}", slow.body);

    let apps = get(&stack, "/api/v1/apps", &key).await;
    assert_eq!(apps.status, 200, "{}", apps.body);
    let ids: Vec<&str> = apps.body["data"]
        .as_array()
        .expect("apps")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["summarizer", "slow"]);

    // As documented: Bearer key, {appId, inputs, chatModelId, webhookUrl} → 202 {id, status,
    // appId, appName}.
    let made = post(
        &stack,
        "/api/v1/runs",
        &key,
        json!({"appId": "summarizer", "inputs": {"topic": "tides"}, "webhookUrl": stack.receiver.url}),
    )
    .await;
    assert_eq!(made.status, 202, "{}", made.body);
    let id = made.body["id"].as_str().expect("id").to_owned();
    assert_eq!(made.body["status"], "pending");
    assert_eq!(made.body["appId"], "summarizer");
    assert_eq!(made.body["appName"], "summarizer");
    let done = switchyard_testkit::poll(Duration::from_secs(30), || async {
        let run = get(&stack, &format!("/api/v1/runs/{id}"), &key).await;
        (run.body["status"] == "completed").then_some(run.body)
    })
    .await
    .expect("the run completes");
    assert_eq!(done["result"]["output"], r#"{"topic":"tides"}"#);
    assert!(done["artifacts"].is_array());
    assert!(done["startedAt"].is_string() && done["completedAt"].is_string());
    assert!(done["errorCode"].is_null());
    let hook = stack
        .receiver
        .wait_for(Duration::from_secs(30), |r| !r.is_empty())
        .await
        .expect("the webhookUrl is called");
    assert_eq!(hook[0].body["data"]["id"], id.as_str());

    let pending = post(
        &stack,
        "/api/v1/runs",
        &key,
        json!({"appId": "slow", "inputs": {}}),
    )
    .await;
    let first = pending.body["id"].as_str().expect("id").to_owned();
    let queued = post(
        &stack,
        "/api/v1/runs",
        &key,
        json!({"appId": "slow", "inputs": {}}),
    )
    .await;
    let second = queued.body["id"].as_str().expect("id").to_owned();
    let listed = get(&stack, "/api/v1/runs?status=completed", &key).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let completed: Vec<&str> = listed.body["data"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(completed, [id.as_str()]);
    let cancelled = post(
        &stack,
        &format!("/api/v1/runs/{second}/cancel"),
        &key,
        json!({}),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body, json!({"success": true}));
    // Queued, it ends at once; running, within about a second.
    switchyard_testkit::poll(Duration::from_secs(10), || async {
        let run = get(&stack, &format!("/api/v1/runs/{second}"), &key).await;
        (run.body["status"] == "cancelled").then_some(())
    })
    .await
    .expect("the run is cancelled");
    let all = get(&stack, "/api/v1/runs", &key).await;
    let newest: Vec<&str> = all.body["data"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(
        newest,
        [second.as_str(), first.as_str(), id.as_str()],
        "newest first"
    );
    let bad = get(&stack, "/api/v1/runs?status=queued", &key).await;
    assert_eq!(bad.status, 400, "the app API's names only: {}", bad.body);

    // 30 requests a minute per key by default, admitted in one burst, then 429 with Retry-After.
    let limited = post(
        &stack,
        &format!("/manage/tenants/{tenant}/api-keys"),
        switchyard_testkit::ADMIN_TOKEN,
        json!({"name": "default-limit", "scopes": ["trigger", "runs:read"]}),
    )
    .await;
    let limited = limited.body["data"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let app_run = || {
        stack
            .http
            .post(format!("{}/api/v1/runs", stack.base_url))
            .bearer_auth(&limited)
            .json(&json!({"appId": "summarizer", "inputs": {}}))
            .send()
    };
    for n in 0..30 {
        let response = app_run().await.expect("sent");
        assert_eq!(response.status(), 202, "call {n} of the burst of 30");
        assert_eq!(response.headers()["x-ratelimit-limit"], "30");
    }
    // One call refills every 2 s: a slow machine may see one or two more admitted first.
    let mut refused = None;
    for _ in 0..3 {
        let response = app_run().await.expect("sent");
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 202);
    }
    let refused = refused.expect("a 429 right after the burst");
    assert!(refused.headers().get("retry-after").is_some());
    stack.shutdown().await;
}

#[tokio::test]
async fn chathives_example_invokes_a_trigger_by_its_case_insensitive_key() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    project_with_agent(&stack, &tenant, &key, "support", "echo").await;
    let triggers = format!("/manage/tenants/{tenant}/projects/support/agents/echo/triggers");
    for spec in [
        json!({"id": "queued", "name": "Fire and forget", "key": "order-created",
               "messageTemplate": "{{key}}"}),
        json!({"id": "answers", "name": "Waits", "key": "ask-now", "waitForResponse": true,
               "messageTemplate": "{{key}}"}),
    ] {
        let made = post(&stack, &triggers, &key, spec).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let replay = |trigger_key: &str| {
        let script = snippet(
            "chathive/curl.sh",
            &[
                ("https://api.chathive.app", stack.base_url.as_str()),
                (":projectId", "support"),
                (":key", trigger_key),
                ("YOUR_API_KEY", key.as_str()),
            ],
        );
        let out = run(&script);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("the answer is JSON ({e}): {out}"))
    };
    // Without waitForResponse: accepted (202), the run queued. The key matches in any case.
    let accepted = replay("ORDER-Created");
    assert_eq!(accepted["status"], "queued", "{accepted}");
    assert_eq!(accepted["triggerId"], "queued");
    // With it: the agent's final answer (200).
    let answered = replay("ask-now");
    assert_eq!(answered["status"], "completed", "{answered}");
    assert_eq!(answered["result"]["output"], "value");
    stack.shutdown().await;
}

/// The `data:` lines of an SSE body.
fn data_lines(body: &str) -> Vec<&str> {
    body.lines().filter(|l| l.starts_with("data:")).collect()
}

#[tokio::test]
async fn writers_blueprint_streams_its_documented_frames_and_runs_as_a_polled_job() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    project_with_agent(&stack, &tenant, &key, "shop", "orders").await;
    let walled = post(
        &stack,
        &format!("/manage/tenants/{tenant}/projects/shop/agents"),
        &key,
        json!({"id": "walled", "name": "walled", "kind": "openai",
               "config": {"baseUrl": "http://10.255.255.1/v1", "model": "m"}}),
    )
    .await;
    assert_eq!(walled.status, 201, "{}", walled.body);
    let triggers =
        |agent: &str| format!("/manage/tenants/{tenant}/projects/shop/agents/{agent}/triggers");
    // The body reaches the agent's message as `result.inputs.*`.
    let template =
        "We have placed the order {{result.inputs.action}} for {{result.inputs.user_id}}";
    for (agent, spec) in [
        (
            "orders",
            json!({"id": "place-order", "name": "Place", "messageTemplate": template}),
        ),
        (
            "orders",
            json!({"id": "summary", "name": "Summary", "messageTemplate": template,
                          "outputTransform": {"template": "Done: {{output}}"}}),
        ),
        (
            "walled",
            json!({"id": "unreachable", "name": "Unreachable"}),
        ),
    ] {
        let made = post(&stack, &triggers(agent), &key, spec).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let documented = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat/writer/response.sse"),
    )
    .expect("the documented frames");
    let documented = data_lines(&documented);
    let replay = |file: &str, agent: &str, blueprint: &str| {
        run(&snippet(
            file,
            &[
                ("https://api.writer.com", stack.base_url.as_str()),
                ("{agent_id}", agent),
                ("{blueprint_id}", blueprint),
                ("<your_api_key>", key.as_str()),
            ],
        ))
    };

    // Synchronous: Writer's frames, in its order, with the streamed text as deltas.
    let out = replay("writer/curl.sh", "orders", "place-order");
    let frames = data_lines(&out);
    assert_eq!(frames[..2], documented[..2], "{out}");
    assert_eq!(frames.last(), documented.last(), "{out}");
    let text: String = frames[2..frames.len() - 1]
        .iter()
        .map(|f| {
            let delta: serde_json::Value =
                serde_json::from_str(f.trim_start_matches("data:").trim()).expect("JSON frame");
            delta["delta"].as_str().expect("a text delta").to_owned()
        })
        .collect();
    assert_eq!(text, "We have placed the order process_order for 123");

    // With an outputTransform, the transformed result is the one delta.
    let out = replay("writer/curl.sh", "orders", "summary");
    assert_eq!(
        data_lines(&out)[2..],
        [
            r#"data: {"delta":"Done: We have placed the order process_order for 123"}"#,
            "data: [DONE]"
        ],
        "{out}"
    );

    // Asynchronous: a job id, then the job polled to its artifact (after outputTransform).
    let out = replay("writer/jobs.sh", "orders", "summary");
    let mut lines = out.lines();
    let created: serde_json::Value =
        serde_json::from_str(lines.next().expect("job")).expect("json");
    let polled: serde_json::Value =
        serde_json::from_str(lines.next().expect("poll")).expect("json");
    assert_eq!(created["status"], "in_progress", "{created}");
    assert_eq!(created["job_id"], created["id"]);
    assert_eq!(polled["job_id"], created["job_id"]);
    assert_eq!(polled["status"], "completed", "{polled}");
    assert_eq!(
        polled["artifact"],
        "Done: We have placed the order process_order for 123"
    );
    assert_eq!(polled["blueprint_id"], "summary");
    let job_id = created["job_id"].as_str().expect("job id");
    let run = switchyard_testkit::api::get(&stack, &format!("/v1/runs/{job_id}"), &key).await;
    assert_eq!(
        run.body["message"],
        "We have placed the order process_order for 123"
    );
    assert_eq!(
        run.body["inputs"],
        json!({"inputs": {"user_id": "123", "action": "process_order"}})
    );

    // A run that fails ends its stream with a failed frame, then [DONE]; its job says why.
    let out = replay("writer/curl.sh", "walled", "unreachable");
    let frames = data_lines(&out);
    assert_eq!(frames[0], documented[0], "{out}");
    assert_eq!(frames.last(), documented.last(), "{out}");
    let failed: serde_json::Value =
        serde_json::from_str(frames[frames.len() - 2].trim_start_matches("data:").trim())
            .expect("the failed frame");
    assert_eq!(failed["status"], "failed", "{out}");
    assert!(
        failed["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{out}"
    );
    let out = replay("writer/jobs.sh", "walled", "unreachable");
    let polled: serde_json::Value =
        serde_json::from_str(out.lines().nth(1).expect("poll")).expect("json");
    assert_eq!(polled["status"], "failed", "{polled}");
    assert_eq!(polled["error"]["code"], "egress_refused", "{polled}");
    assert!(polled["artifact"].is_null());

    // The stream names its job; an Idempotency-Key replay answers with the same job.
    let url = format!("{}/v1/agents/orders/blueprints/summary", stack.base_url);
    let streamed = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"inputs": {"user_id": "7", "action": "x"}}))
        .send()
        .await
        .expect("sent");
    let location = streamed.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(streamed.headers().contains_key("x-ratelimit-remaining"));
    let body = streamed.text().await.expect("the stream");
    assert_eq!(data_lines(&body).last(), Some(&"data: [DONE]"), "{body}");
    let named = switchyard_testkit::api::get(&stack, &location, &key).await;
    assert_eq!(named.body["status"], "completed", "{}", named.body);
    assert_eq!(
        named.body["artifact"],
        "Done: We have placed the order x for 7"
    );
    let once = |n: u16| {
        let (http, url, key) = (stack.http.clone(), format!("{url}/jobs"), key.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "order-7")
                .json(&json!({"inputs": {"user_id": "7"}}))
                .send()
                .await
                .expect("sent");
            assert_eq!(r.status().as_u16(), n);
            r.json::<serde_json::Value>().await.expect("a job")
        }
    };
    let first = once(202).await;
    let again = once(200).await;
    assert_eq!(first["job_id"], again["job_id"]);
    // Another tenant's key does not see the job.
    let (_, stranger) = switchyard_testkit::api::tenant(&stack).await;
    let hidden = switchyard_testkit::api::get(&stack, &location, &stranger).await;
    switchyard_testkit::api::assert_problem(&hidden, 404, "not_found");

    // What the request gets wrong, as problems.
    let blueprint = |agent: &str, id: &str| format!("/v1/agents/{agent}/blueprints/{id}");
    for (body, path, status, code) in [
        (
            json!({"user_id": "123"}),
            blueprint("orders", "place-order"),
            400,
            "bad_request",
        ),
        (
            json!({"inputs": null}),
            blueprint("orders", "place-order"),
            400,
            "bad_request",
        ),
        (
            json!({"inputs": {}}),
            blueprint("orders", "nope"),
            404,
            "not_found",
        ),
        (
            json!({"inputs": {}}),
            blueprint("walled", "place-order"),
            404,
            "not_found",
        ),
        (
            json!({"inputs": {}}),
            format!("{}/jobs", blueprint("walled", "place-order")),
            404,
            "not_found",
        ),
    ] {
        let answer = post(&stack, &path, &key, body.clone()).await;
        switchyard_testkit::api::assert_problem(&answer, status, code);
        if status == 400 {
            assert!(
                answer.body["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("`inputs`")
            );
        }
    }
    let missing = switchyard_testkit::api::get(&stack, "/v1/agents/jobs/not-a-job", &key).await;
    switchyard_testkit::api::assert_problem(&missing, 404, "not_found");
    // A key without the `trigger` scope cannot start a blueprint.
    let reader = post(
        &stack,
        &format!("/manage/tenants/{tenant}/api-keys"),
        &key,
        json!({"name": "reader", "scopes": ["runs:read"]}),
    )
    .await;
    let reader = reader.body["data"]["key"].as_str().expect("key").to_owned();
    let refused = post(
        &stack,
        &blueprint("orders", "place-order"),
        &reader,
        json!({"inputs": {}}),
    )
    .await;
    switchyard_testkit::api::assert_problem(&refused, 403, "forbidden");
    stack.shutdown().await;
}

/// Where `got` departs from the documented example `doc`: a documented member missing, or of
/// another JSON type. `null` stands for any documented value (the seed marks nothing nullable);
/// members the seed leaves untyped (`loose`, shown there as "string") may hold anything.
fn departures(doc: &serde_json::Value, got: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value;
    const LOOSE: [&str; 5] = [
        "authentication",
        "inputSchema",
        "outputTransform",
        "requestPayload",
        "transformedPayload",
    ];
    match (doc, got) {
        (_, Value::Null) => Vec::new(),
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .flat_map(|(k, v)| match have.get(k) {
                None => vec![format!("{at}/{k} is missing")],
                Some(_) if LOOSE.contains(&k.as_str()) => Vec::new(),
                Some(h) => departures(v, h, &format!("{at}/{k}")),
            })
            .collect(),
        (Value::Array(want), Value::Array(have)) => match want.first() {
            Some(_) if have.is_empty() => vec![format!("{at} is empty, where the docs show items")],
            Some(w) => have
                .iter()
                .enumerate()
                .flat_map(|(i, h)| departures(w, h, &format!("{at}/{i}")))
                .collect(),
            None => Vec::new(),
        },
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => Vec::new(),
        _ => vec![format!("{at} is {got}, where the docs show {doc}")],
    }
}

#[tokio::test]
async fn inkeeps_examples_manage_a_trigger_in_the_documented_shapes() {
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    // The examples' own project and agent ids.
    project_with_agent(&stack, &tenant, &key, "project_456", "agent_789").await;
    let documented: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat/inkeep/documented.json"),
        )
        .expect("the documented responses"),
    )
    .expect("JSON");
    let authorization =
        format!("curl -sS -w '\\n%{{http_code}}' -H 'Authorization: Bearer {key}' -X");
    // Runs an example; its status and body (JSON, or null when empty).
    let replay = |name: &str, ids: &[(&str, &str)]| {
        let mut replacements = vec![
            ("https://api.pilot.inkeep.com", stack.base_url.as_str()),
            ("curl -X", authorization.as_str()),
            ("tenant_123", tenant.as_str()),
        ];
        replacements.extend_from_slice(ids);
        let out = run(&snippet(&format!("inkeep/{name}.sh"), &replacements));
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        let status: u16 = status.parse().expect("the status");
        let body = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body}"))
        };
        (status, body)
    };
    let conforms = |name: &str, got: &serde_json::Value| {
        assert!(
            got["data"].is_object() || got["data"].is_array(),
            "{name}: {got}"
        );
        let wrong = departures(&documented["responses"][name], got, name);
        assert!(wrong.is_empty(), "{wrong:#?}\n{got:#}");
    };

    let (status, created) = replay("create", &[]);
    assert_eq!(status, 201, "{created}");
    conforms("create", &created);
    assert_eq!(created["data"]["name"], "string");
    assert_eq!(created["data"]["enabled"], true);
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    let one = [("resource_789", id.as_str())];

    let (status, listed) = replay("list", &[]);
    assert_eq!(status, 200);
    conforms("list", &listed);
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(
        listed["pagination"],
        json!({"limit": 10, "page": 1, "pages": 1, "total": 1})
    );

    // Every documented member of a trigger, as the docs show them.
    let sv = documented["responses"]["list"]["data"][0]["signatureVerification"].clone();
    let credential = post(
        &stack,
        &format!("/manage/tenants/{tenant}/credentials"),
        &key,
        json!({"id": "gh", "name": "GitHub secret", "value": "s3cret"}),
    )
    .await;
    assert_eq!(credential.status, 201, "{}", credential.body);
    let trigger =
        format!("/manage/tenants/{tenant}/projects/project_456/agents/agent_789/triggers/{id}");
    let full = switchyard_testkit::api::patch(
        &stack,
        &trigger,
        &key,
        json!({"description": "string", "messageTemplate": "string", "signatureVerification": sv,
               "signingSecretCredentialReferenceId": "gh", "inputSchema": {"type": "object"},
               "authentication": {"headers": [{"name": "x-token", "value": "string"}]},
               "outputTransform": {"pointer": "/output"}}),
    )
    .await;
    assert_eq!(full.status, 200, "{}", full.body);
    let (status, got) = replay("get", &one);
    assert_eq!(status, 200);
    conforms("get", &got);
    for member in documented["responses"]["get"]["data"]
        .as_object()
        .expect("a trigger")
        .keys()
        .filter(|k| *k != "webhookUrl")
    {
        assert!(!got["data"][member].is_null(), "{member} is set: {got:#}");
    }
    assert_eq!(got["data"]["signatureVerification"], sv);

    let (status, updated) = replay("update", &one);
    assert_eq!(status, 200, "{updated}");
    conforms("update", &updated);

    // One invocation, through the trigger route.
    let invoked = post(
        &stack,
        &format!(
            "/api/v1.0/project/project_456/trigger/{}",
            got["data"]["key"].as_str().expect("key")
        ),
        &key,
        json!({"hello": "world"}),
    )
    .await;
    assert_eq!(invoked.status, 202, "{}", invoked.body);
    let (status, invocations) = replay("invocations", &one);
    assert_eq!(status, 200);
    conforms("invocations", &invocations);
    assert_eq!(invocations["pagination"]["total"], 1);
    let invocation_id = invocations["data"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("{id}/invocations/{invocation_id}");
    let (status, invocation) = replay(
        "invocation",
        &[("resource_789/invocations/string", path.as_str())],
    );
    assert_eq!(status, 200);
    conforms("invocation", &invocation);
    assert_eq!(
        invocation["data"]["requestPayload"],
        json!({"hello": "world"})
    );

    let (status, deleted) = replay("delete", &one);
    assert_eq!((status, deleted), (204, serde_json::Value::Null));

    // The documented errors, each in the documented problem shape.
    let (status, missing) = replay("get", &one);
    let errors = &documented["errors"];
    let same_problem = |status: u16, got: &serde_json::Value, code: &str| {
        let doc = &errors[code];
        assert_eq!(
            u64::from(status),
            doc["status"].as_u64().expect("status"),
            "{got}"
        );
        let wrong = departures(doc, got, code);
        assert!(wrong.is_empty(), "{wrong:#?}\n{got:#}");
        assert_eq!(got["code"], doc["code"]);
        assert_eq!(got["title"], doc["title"]);
        assert_eq!(got["error"]["code"], doc["error"]["code"]);
        assert_eq!(got["status"], doc["status"]);
    };
    same_problem(status, &missing, "not_found");
    let triggers =
        format!("/manage/tenants/{tenant}/projects/project_456/agents/agent_789/triggers");
    let bad = post(&stack, &triggers, &key, json!({"name": 5})).await;
    same_problem(bad.status.as_u16(), &bad.body, "bad_request");
    let invalid = post(&stack, &triggers, &key, json!({"name": ""})).await;
    same_problem(
        invalid.status.as_u16(),
        &invalid.body,
        "unprocessable_entity",
    );
    let anonymous = post(&stack, &triggers, "", json!({"name": "x"})).await;
    same_problem(anonymous.status.as_u16(), &anonymous.body, "unauthorized");
    let reader = post(
        &stack,
        &format!("/manage/tenants/{tenant}/api-keys"),
        &key,
        json!({"name": "reader", "scopes": ["runs:read"]}),
    )
    .await;
    let reader = reader.body["data"]["key"].as_str().expect("key").to_owned();
    let refused = post(&stack, &triggers, &reader, json!({"name": "x"})).await;
    same_problem(refused.status.as_u16(), &refused.body, "forbidden");
    stack.shutdown().await;
}

#[test]
fn departures_name_missing_members_and_other_types() {
    let doc = json!({"data": {"id": "string", "enabled": true, "inputSchema": "string",
                     "items": [{"n": 1}]}});
    assert!(
        departures(
            &doc,
            &json!({"data": {"id": "a", "enabled": false,
        "inputSchema": {"type": "object"}, "items": [{"n": 2}], "extra": 1}}),
            "x"
        )
        .is_empty()
    );
    assert!(
        departures(
            &doc,
            &json!({"data": {"id": null, "enabled": null, "inputSchema": null, "items": null}}),
            "x"
        )
        .is_empty()
    );
    assert_eq!(
        departures(&doc["data"]["items"], &json!([]), "items"),
        ["items is empty, where the docs show items"]
    );
    assert_eq!(
        departures(
            &doc,
            &json!({"data": {"id": 1, "inputSchema": 3, "items": [{"n": "2"}]}}),
            "x"
        ),
        [
            "x/data/enabled is missing",
            "x/data/id is 1, where the docs show \"string\"",
            "x/data/items/0/n is \"2\", where the docs show 1",
        ]
    );
}
