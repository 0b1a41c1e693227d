//! Agents that really run, against a scripted OpenAI-compatible server and a user's HTTP agent
//! on loopback: streaming, the conversation, usage, the model override, tools, retries with
//! `Retry-After`, final errors, artifacts, and cancel aborting the provider request.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_common::signing::{DEFAULT_TOLERANCE_SECS, Secret};
use switchyard_testkit::api::{post, run_events};
use switchyard_testkit::fake_llm::{FakeLlm, Step};
use switchyard_testkit::{Stack, StackOptions, poll};

const TOOL_SECRET: &str = "whsec_dG9vbC1zZWNyZXQtZm9yLXRlc3RzLW9ubHk=";

async fn stack() -> Stack {
    Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts")
}

async fn credential(stack: &Stack, id: &str, value: &str) {
    let made = post(
        stack,
        "/manage/tenants/default/credentials",
        &stack.api_key,
        json!({"id": id, "name": id, "type": "api_key", "value": value}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
}

async fn agent(stack: &Stack, body: Value) {
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
    let made = post(stack, "/v1/runs", &stack.api_key, body).await;
    assert_eq!(made.status, 202, "{}", made.body);
    made.body["id"].as_str().expect("id").to_owned()
}

async fn ended(stack: &Stack, run_id: &str) -> Value {
    poll(Duration::from_secs(30), || async {
        let run = stack.get_run(run_id).await.ok()?;
        let status = run["status"].as_str()?;
        matches!(status, "completed" | "failed" | "cancelled" | "timed_out").then_some(run)
    })
    .await
    .expect("the run ends")
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn verified(request: &switchyard_testkit::fake_llm::Request, secret: &str) -> bool {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Secret::parse(secret).expect("secret").verify(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &request.raw,
        now,
        DEFAULT_TOLERANCE_SECS,
    ) == Ok(())
}

#[tokio::test]
async fn an_openai_agent_streams_its_answer_with_the_conversation_usage_and_model_override() {
    let stack = stack().await;
    let llm = FakeLlm::start(vec![
        Step::Text(vec!["Hello".into(), " there".into()]),
        Step::Text(vec!["Again".into()]),
    ])
    .await
    .expect("fake model");
    credential(&stack, "llm-key", "sk-test-123").await;
    agent(
        &stack,
        json!({"id": "gpt", "name": "GPT", "kind": "openai", "credentialReferenceId": "llm-key",
               "config": {"baseUrl": llm.base_url, "model": "m1", "systemPrompt": "Be brief",
                          "temperature": 0.2, "maxTokens": 50}}),
    )
    .await;

    let first = create(
        &stack,
        json!({"agentId": "gpt", "message": "hi", "sessionId": "s"}),
    )
    .await;
    let run = ended(&stack, &first).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["result"], json!({"output": "Hello there"}));
    assert_eq!(
        run["usage"],
        json!({"promptTokens": 10, "completionTokens": 2, "totalTokens": 12})
    );
    let streamed = run_events(&stack, &first).await;
    let text: String = of_type(&streamed, "delta")
        .iter()
        .map(|e| e["data"]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(text, "Hello there");

    let second = create(
        &stack,
        json!({"agentId": "gpt", "message": "and now?", "sessionId": "s", "chatModelId": "m2"}),
    )
    .await;
    assert_eq!(ended(&stack, &second).await["result"]["output"], "Again");

    let requests = llm.requests_to("/v1/chat/completions");
    assert_eq!(requests.len(), 2);
    let auth = requests[0]
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    assert_eq!(auth, Some("Bearer sk-test-123"));
    let body = &requests[0].body;
    assert_eq!(body["model"], "m1");
    assert_eq!(body["stream"], true);
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}])
    );
    // The second run asked for another model, and the session's earlier turn was sent along.
    assert_eq!(requests[1].body["model"], "m2");
    assert_eq!(
        requests[1].body["messages"],
        json!([
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "and now?"},
        ])
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn tools_are_called_signed_and_their_answers_fed_back_to_the_model() {
    let stack = stack().await;
    let llm = FakeLlm::start(vec![
        Step::Tools(vec![(
            "call_1".into(),
            "lookup".into(),
            r#"{"city":"Oslo"}"#.into(),
        )]),
        Step::Text(vec!["It is sunny".into()]),
    ])
    .await
    .expect("fake model");
    credential(&stack, "tool-secret", TOOL_SECRET).await;
    agent(
        &stack,
        json!({"id": "tooled", "name": "Tooled", "kind": "openai",
               "config": {"baseUrl": llm.base_url, "model": "m", "tools": [{
                   "name": "lookup", "description": "Weather by city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                   "url": format!("{}/tools/lookup", llm.origin), "timeoutMs": 5000,
                   "credentialReferenceId": "tool-secret"}]}}),
    )
    .await;
    let run_id = create(
        &stack,
        json!({"agentId": "tooled", "message": "Weather in Oslo?"}),
    )
    .await;
    let run = ended(&stack, &run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["result"]["output"], "It is sunny");

    let calls = llm.requests_to("/tools/lookup");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body, json!({"city": "Oslo"}));
    assert!(verified(&calls[0], TOOL_SECRET), "the tool call is signed");

    let asked = llm.requests_to("/v1/chat/completions");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].body["tools"][0]["function"]["name"], "lookup");
    let fed = &asked[1].body["messages"];
    let n = fed.as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        fed[n - 2]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Oslo"}"#
    );
    assert_eq!(fed[n - 1]["role"], "tool");
    assert_eq!(fed[n - 1]["tool_call_id"], "call_1");
    let answer: Value =
        serde_json::from_str(fed[n - 1]["content"].as_str().expect("text")).expect("json");
    assert_eq!(
        answer,
        json!({"tool": "lookup", "arguments": {"city": "Oslo"}})
    );

    let streamed = run_events(&stack, &run_id).await;
    let call = of_type(&streamed, "tool_call");
    assert_eq!(call.len(), 1);
    assert_eq!(
        call[0]["data"],
        json!({"id": "call_1", "name": "lookup", "arguments": {"city": "Oslo"}})
    );
    let result = of_type(&streamed, "tool_result");
    assert_eq!(result[0]["data"]["result"], answer);
    assert!(call[0]["seq"].as_i64() < result[0]["seq"].as_i64());
    stack.shutdown().await;
}

#[tokio::test]
async fn transient_provider_errors_are_retried_honouring_retry_after() {
    let stack = stack().await;
    let llm = FakeLlm::start(vec![
        Step::Status(429, Some(1)),
        Step::Drop("half an ans".into()),
        Step::Status(503, None),
        Step::Text(vec!["finally".into()]),
    ])
    .await
    .expect("fake model");
    agent(
        &stack,
        json!({"id": "flaky", "name": "Flaky", "kind": "openai", "maxAttempts": 4,
               "config": {"baseUrl": llm.base_url, "model": "m"}}),
    )
    .await;
    let run_id = create(&stack, json!({"agentId": "flaky", "message": "try"})).await;
    let run = ended(&stack, &run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["result"]["output"], "finally");
    let requests = llm.requests_to("/v1/chat/completions");
    assert_eq!(requests.len(), 4);
    assert!(
        requests[1].at.duration_since(requests[0].at) >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    let retries: Vec<Value> = run_events(&stack, &run_id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "status" && e["data"]["retrying"].is_object())
        .map(|e| e["data"]["retrying"].clone())
        .collect();
    assert_eq!(retries.len(), 3);
    assert_eq!(retries[0]["errorCode"], "provider_rate_limited");
    assert_eq!(retries[0]["afterMs"], 1000);
    assert_eq!(retries[1]["errorCode"], "provider_error");
    stack.shutdown().await;
}

#[tokio::test]
async fn final_provider_errors_and_spent_attempts_fail_the_run_with_their_code() {
    let stack = stack().await;
    let llm = FakeLlm::start(vec![
        Step::Status(400, None),
        Step::Status(429, Some(0)),
        Step::Status(429, Some(0)),
        Step::Status(307, None),
    ])
    .await
    .expect("fake model");
    agent(
        &stack,
        json!({"id": "strict", "name": "Strict", "kind": "openai", "maxAttempts": 2,
               "config": {"baseUrl": llm.base_url, "model": "m"}}),
    )
    .await;
    // A 400 is final at once.
    let bad = create(&stack, json!({"agentId": "strict", "message": "a"})).await;
    let run = ended(&stack, &bad).await;
    assert_eq!(
        (run["status"].as_str(), run["errorCode"].as_str()),
        (Some("failed"), Some("provider_bad_request"))
    );
    assert_eq!(llm.requests_to("/v1/chat/completions").len(), 1);
    // Two 429s spend both attempts.
    let limited = create(&stack, json!({"agentId": "strict", "message": "b"})).await;
    let run = ended(&stack, &limited).await;
    assert_eq!(run["errorCode"], "provider_rate_limited");
    assert_eq!(llm.requests_to("/v1/chat/completions").len(), 3);
    // A redirect is not followed: it is a final error, and nothing else is asked.
    let redirected = create(&stack, json!({"agentId": "strict", "message": "c"})).await;
    let run = ended(&stack, &redirected).await;
    assert_eq!(run["errorCode"], "provider_bad_request");
    assert_eq!(llm.requests().len(), 4);
    assert!(
        llm.requests_to("/redirected").is_empty(),
        "the redirect was not followed"
    );
    let streamed = run_events(&stack, &redirected).await;
    assert_eq!(
        of_type(&streamed, "error")[0]["data"]["errorCode"],
        "provider_bad_request"
    );
    // A private address outside the allow-list is refused before any request.
    agent(
        &stack,
        json!({"id": "walled", "name": "Walled", "kind": "openai",
               "config": {"baseUrl": "http://10.255.255.1/v1", "model": "m"}}),
    )
    .await;
    let walled = create(&stack, json!({"agentId": "walled", "message": "d"})).await;
    assert_eq!(ended(&stack, &walled).await["errorCode"], "egress_refused");
    stack.shutdown().await;
}

#[tokio::test]
async fn an_http_agent_gets_the_signed_invocation_and_answers_json_or_a_stream() {
    let stack = stack().await;
    let agent_server = FakeLlm::start(Vec::new()).await.expect("agent server");
    credential(&stack, "agent-secret", TOOL_SECRET).await;
    for (id, mode) in [("plain", "json"), ("streamer", "sse")] {
        agent(
            &stack,
            json!({"id": id, "name": id, "kind": "http", "credentialReferenceId": "agent-secret",
                   "config": {"url": format!("{}/agent/{mode}", agent_server.origin), "timeoutMs": 5000}}),
        )
        .await;
    }
    let plain = create(
        &stack,
        json!({"agentId": "plain", "message": "hello", "metadata": {"k": "v"}}),
    )
    .await;
    let run = ended(&stack, &plain).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["result"], json!({"answer": "HELLO"}));
    let got = agent_server.requests_to("/agent/json");
    assert!(verified(&got[0], TOOL_SECRET));
    assert_eq!(got[0].body["runId"], plain.as_str());
    assert_eq!(got[0].body["message"], "hello");
    assert_eq!(got[0].body["metadata"], json!({"k": "v"}));

    let streamed = create(
        &stack,
        json!({"agentId": "streamer", "message": "hello world"}),
    )
    .await;
    let run = ended(&stack, &streamed).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["result"], json!({"answer": 11}));
    let artifact =
        json!({"name": "notes.txt", "mediaType": "text/plain", "size": 10, "text": "some notes"});
    assert_eq!(run["artifacts"], json!([artifact]));
    let all = run_events(&stack, &streamed).await;
    let text: String = of_type(&all, "delta")
        .iter()
        .map(|e| e["data"]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(text, "hello world");
    assert_eq!(of_type(&all, "artifact")[0]["data"], artifact);
    stack.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_run_aborts_its_request_to_the_model() {
    let stack = stack().await;
    let llm = FakeLlm::start(vec![Step::Slow(
        Duration::from_secs(60),
        vec!["late".into()],
    )])
    .await
    .expect("fake model");
    agent(
        &stack,
        json!({"id": "ponder", "name": "Ponder", "kind": "openai",
               "config": {"baseUrl": llm.base_url, "model": "m"}}),
    )
    .await;
    let run_id = create(&stack, json!({"agentId": "ponder", "message": "think"})).await;
    poll(Duration::from_secs(15), || async {
        (!llm.requests_to("/v1/chat/completions").is_empty()).then_some(())
    })
    .await
    .expect("the model was asked");
    let cancelled = post(
        &stack,
        &format!("/v1/runs/{run_id}/cancel"),
        &stack.api_key,
        json!({}),
    )
    .await;
    assert_eq!(cancelled.body, json!({"success": true}));
    assert_eq!(ended(&stack, &run_id).await["status"], "cancelled");
    poll(Duration::from_secs(10), || async {
        (llm.abandoned() == 1).then_some(())
    })
    .await
    .expect("the request to the model was aborted");
    stack.shutdown().await;
}
