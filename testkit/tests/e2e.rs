//! End to end with the real binaries as processes, on the real PostgreSQL and RabbitMQ.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::{Stack, StackOptions, poll};

#[tokio::test]
async fn two_hundred_invocations_complete_with_one_verified_webhook_each() {
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
    let hook = stack.receiver.url.clone();

    let mut tasks = Vec::new();
    for n in 0..200 {
        let http = stack.http.clone();
        let url = format!("{}/v1/runs", stack.base_url);
        let hook = hook.clone();
        let key = stack.api_key.clone();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(&key)
                .json(&json!({"agentId": "echo", "message": format!("hello #{n}"), "webhookUrl": hook}))
                .send()
                .await
                .expect("request sent");
            assert_eq!(response.status(), 202);
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .expect("Location header");
            let run: Value = response.json().await.expect("json body");
            assert_eq!(run["status"], "queued");
            assert_eq!(location, format!("/v1/runs/{}", run["id"].as_str().expect("id")));
            (run["id"].as_str().expect("id").to_owned(), format!("hello #{n}"))
        }));
    }
    let mut expected: HashMap<String, String> = HashMap::new();
    for task in tasks {
        let (id, message) = task.await.expect("join");
        expected.insert(id, message);
    }
    assert_eq!(expected.len(), 200, "200 distinct runs accepted");

    let _received = stack
        .receiver
        .wait_for(Duration::from_secs(60), |r| r.len() >= 200)
        .await
        .expect("200 webhooks arrive");
    // Let any duplicate show itself: the sweepers and retries run every second or so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = stack.receiver.received();
    assert_eq!(received.len(), 200, "exactly one webhook per run");
    let mut seen_runs = HashSet::new();
    for hook in &received {
        assert!(
            hook.verified,
            "signature of {} must verify",
            hook.webhook_id
        );
        assert_eq!(hook.body["type"], "run.completed");
        let run_id = hook.body["data"]["id"].as_str().expect("run id").to_owned();
        let message = expected.get(&run_id).expect("webhook for a run we created");
        assert_eq!(hook.body["data"]["status"], "completed");
        assert_eq!(&hook.body["data"]["result"]["output"], message);
        assert!(seen_runs.insert(run_id), "one webhook per run");
    }
    assert_eq!(seen_runs.len(), 200);

    // Every run reads back as completed through the API.
    for id in expected.keys().take(20) {
        let run = stack.get_run(id).await.expect("get run");
        assert_eq!(run["status"], "completed");
        assert_eq!(run["attempt"], 1);
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_narrowed_by_every_filter() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    stack.add_echo_agent("other", 0).await.expect("agent");
    let mut ids = Vec::new();
    for agent in ["echo", "other", "echo"] {
        let run: Value = stack
            .create_run(&json!({"agentId": agent, "message": agent}))
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        ids.push(run["id"].as_str().expect("id").to_owned());
    }
    let list = |query: &str| {
        let url = format!("{}/v1/runs?{query}", stack.base_url);
        let request = stack.http.get(url).bearer_auth(&stack.api_key);
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let ids_of = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (status, all) = list("").await;
    assert_eq!(status, 200);
    assert_eq!(
        ids_of(&all)[..3],
        [ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    let (_, echo) = list("agentId=echo").await;
    assert_eq!(ids_of(&echo), [ids[2].clone(), ids[0].clone()]);
    let (_, queued) = list("status=queued,running&limit=1").await;
    assert_eq!(ids_of(&queued), [ids[2].clone()]);
    let (_, none) = list("status=completed").await;
    assert!(ids_of(&none).is_empty());
    let (_, future) = list("since=2999-01-01T00:00:00Z").await;
    assert!(ids_of(&future).is_empty());
    let (_, triggered) = list("triggerId=nope").await;
    assert!(ids_of(&triggered).is_empty());
    for bad in ["status=done", "since=yesterday", "limit=0", "limit=201"] {
        let (status, body) = list(bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn waiting_for_a_run_answers_200_with_its_result() {
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
    let started = Instant::now();
    let response = stack
        .create_run(&json!({"agentId": "echo", "inputs": {"city": "Oslo"}, "wait": 10}))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let run: Value = response.json().await.expect("json");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["result"]["output"], r#"{"city":"Oslo"}"#);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A slow run that outlasts the wait is answered 202 and keeps going.
    stack.add_echo_agent("slow", 1500).await.expect("agent");
    let response = stack
        .create_run(&json!({"agentId": "slow", "message": "later", "wait": 0.2}))
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.expect("json");
    let id = run["id"].as_str().expect("id").to_owned();
    let done = poll(Duration::from_secs(20), || async {
        let run = stack.get_run(&id).await.ok()?;
        (run["status"] == "completed").then_some(run)
    })
    .await
    .expect("the run completes after the wait ended");
    assert_eq!(done["result"]["output"], "later");
    stack.shutdown().await;
}

async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("x-request-id header");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["code"], code);
    assert_eq!(body["status"], status);
    assert_eq!(body["error"]["code"], code);
    assert_eq!(body["requestId"], request_id.as_str());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    body
}

#[tokio::test]
async fn bad_requests_get_problem_json_with_a_request_id() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let runs = format!("{}/v1/runs", stack.base_url);

    let no_token = stack
        .http
        .post(&runs)
        .json(&json!({"agentId": "echo", "message": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        no_token
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    problem(no_token, 401, "unauthorized").await;

    let wrong_token = stack
        .http
        .post(&runs)
        .bearer_auth("nope")
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    problem(wrong_token, 401, "unauthorized").await;

    let missing_agent = stack
        .create_run(&json!({"message": "x"}))
        .await
        .expect("send");
    let body = problem(missing_agent, 400, "bad_request").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("agentId")
    );
    assert_eq!(body["instance"], "/v1/runs");

    let not_json = stack
        .http
        .post(&runs)
        .bearer_auth(&stack.api_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    problem(not_json, 400, "bad_request").await;

    let wrong_type = stack
        .http
        .post(&runs)
        .bearer_auth(&stack.api_key)
        .body("agentId=echo")
        .send()
        .await
        .expect("send");
    problem(wrong_type, 415, "unsupported_media_type").await;

    let huge = "x".repeat(300 * 1024);
    let too_large = stack
        .create_run(&json!({"agentId": "echo", "message": huge}))
        .await
        .expect("send");
    problem(too_large, 413, "payload_too_large").await;

    let unknown_agent = stack
        .create_run(&json!({"agentId": "ghost", "message": "x"}))
        .await
        .expect("send");
    problem(unknown_agent, 404, "not_found").await;

    let bad_wait = stack
        .create_run(&json!({"agentId": "echo", "message": "x", "wait": 600}))
        .await
        .expect("send");
    problem(bad_wait, 400, "bad_request").await;

    let missing_run = stack
        .http
        .get(format!(
            "{}/v1/runs/01890a5d-ac96-774b-bcce-b302099a8057",
            stack.base_url
        ))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("send");
    problem(missing_run, 404, "not_found").await;

    let garbage_id = stack
        .http
        .get(format!("{}/v1/runs/abc", stack.base_url))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("send");
    problem(garbage_id, 404, "not_found").await;

    // A caller's request id is echoed back.
    let echoed = stack
        .http
        .get(format!("{}/v1/runs/abc", stack.base_url))
        .bearer_auth(&stack.api_key)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("send");
    let body = problem(echoed, 404, "not_found").await;
    assert_eq!(body["requestId"], "trace-me-42");

    let no_route = stack
        .http
        .get(format!("{}/nope", stack.base_url))
        .send()
        .await
        .expect("send");
    problem(no_route, 404, "not_found").await;

    // A route called with a method it does not take.
    let wrong_method = stack
        .http
        .put(format!("{}/v1/runs", stack.base_url))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("send");
    let allow = wrong_method
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = problem(wrong_method, 405, "method_not_allowed").await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("PUT")),
        "{body}"
    );
    let mut allowed: Vec<&str> = allow
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "HEAD", "POST"]);
    stack.shutdown().await;
}

#[tokio::test]
async fn readiness_reports_both_dependencies() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let ready = poll(Duration::from_secs(10), || async {
        let r = stack
            .http
            .get(format!("{}/readyz", stack.base_url))
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        (body["status"] == "ready").then_some(body)
    })
    .await
    .expect("becomes ready");
    assert_eq!(ready["postgres"], "up");
    assert_eq!(ready["rabbitmq"], "up");
    stack.shutdown().await;
}

#[tokio::test]
async fn logs_are_json_lines_when_stdout_is_not_a_terminal() {
    let db = switchyard_testkit::TestDb::create().await.expect("test db");
    let output = std::process::Command::new(switchyard_testkit::bin_path("switchyard-worker"))
        .arg("migrate")
        .env("SWITCHYARD_DATABASE_URL", &db.url)
        .env("SWITCHYARD_LOG", "info")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .output()
        .expect("migrate runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "migrate logs something");
    for line in lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
    }
}

/// Checks each delivery with the official Python library (`standardwebhooks`, from PyPI), as a
/// receiver written in another language would. `scripts/test.sh` installs it
/// (`scripts/py-tools.sh`); the venv is `SWITCHYARD_PY_VENV`, or the default one.
#[tokio::test]
async fn webhooks_verify_with_the_official_standardwebhooks_library() {
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
    let mut runs = Vec::new();
    for n in 0..3 {
        let response = stack
            .create_run(&json!({"agentId": "echo", "message": format!("verify me {n}"), "webhookUrl": stack.receiver.url}))
            .await
            .expect("request");
        let run: Value = response.json().await.expect("json");
        runs.push(run["id"].as_str().expect("id").to_owned());
    }
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 3)
        .await
        .expect("three webhooks");
    assert_eq!(
        switchyard_testkit::py::verify(switchyard_testkit::WEBHOOK_SECRET, &received, true),
        "3 verified, 1 rejected"
    );
    let mut named: Vec<String> = received
        .iter()
        .map(|r| r.body["data"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    named.sort();
    runs.sort();
    assert_eq!(named, runs);
    stack.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_cap_are_sent_thin_and_still_verify() {
    let stack = Stack::start(StackOptions {
        notifier_env: vec![("SWITCHYARD_WEBHOOK_MAX_BODY_BYTES", "2048".into())],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let big = "word ".repeat(1000);
    for message in ["small", big.as_str()] {
        stack
            .create_run(
                &json!({"agentId": "echo", "message": message, "webhookUrl": stack.receiver.url}),
            )
            .await
            .expect("request");
    }
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 2)
        .await
        .expect("two webhooks");
    let small = received
        .iter()
        .find(|r| r.body["data"]["message"] == "small")
        .expect("the small one is sent whole");
    assert_eq!(small.body["data"]["result"]["output"], "small");
    let slim = received
        .iter()
        .find(|r| r.body["data"]["thin"] == true)
        .expect("the big one is sent thin");
    assert!(slim.verified);
    assert!(slim.raw_body.len() <= 2048);
    let id = slim.body["data"]["id"].as_str().expect("id");
    assert_eq!(slim.body["data"]["url"], format!("/v1/runs/{id}"));
    assert_eq!(slim.body["data"]["status"], "completed");
    assert!(slim.body["data"].get("result").is_none());
    // The run itself keeps everything.
    let run = stack.get_run(id).await.expect("run");
    assert_eq!(run["result"]["output"], big.as_str());
    stack.shutdown().await;
}
