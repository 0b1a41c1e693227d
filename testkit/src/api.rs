//! Calls to a test stack's HTTP API, and the assertions and fixtures the API tests share.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, Stack, unique};

/// One answer: status, body (JSON, or null) and content type.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub content_type: String,
    pub request_id: Option<String>,
}

pub async fn call(
    stack: &Stack,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = stack
        .http
        .request(method, format!("{}{path}", stack.base_url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let request_id = header("x-request-id");
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        content_type,
        request_id,
    }
}

pub async fn get(stack: &Stack, path: &str, key: &str) -> Answer {
    call(stack, Method::GET, path, key, None).await
}

pub async fn post(stack: &Stack, path: &str, key: &str, body: Value) -> Answer {
    call(stack, Method::POST, path, key, Some(body)).await
}

pub async fn patch(stack: &Stack, path: &str, key: &str, body: Value) -> Answer {
    call(stack, Method::PATCH, path, key, Some(body)).await
}

pub async fn delete(stack: &Stack, path: &str, key: &str) -> Answer {
    call(stack, Method::DELETE, path, key, None).await
}

/// Asserts an Inkeep problem+json answer with `status` and `code`.
pub fn assert_problem(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    let b = &answer.body;
    assert_eq!(b["code"], code, "{b}");
    assert_eq!(b["status"], status);
    assert_eq!(b["error"]["code"], code);
    assert!(b["title"].is_string() && b["detail"].is_string() && b["instance"].is_string());
    assert_eq!(b["error"]["message"], b["detail"]);
    let id = b["requestId"].as_str().expect("requestId");
    assert_eq!(answer.request_id.as_deref(), Some(id));
}

/// A tenant made with the admin token (its webhooks signed with the harness's secret, as the
/// stack's receiver expects), and an unrestricted key with every scope (and a rate
/// limit high enough not to get in a test's way).
pub async fn tenant(stack: &Stack) -> (String, String) {
    let id = format!("t-{}", unique());
    let made = post(
        stack,
        "/manage/tenants",
        ADMIN_TOKEN,
        json!({"id": id, "name": "Acme", "webhookSecret": crate::WEBHOOK_SECRET}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let key = post(
        stack,
        &format!("/manage/tenants/{id}/api-keys"),
        ADMIN_TOKEN,
        json!({"name": "owner", "scopes": ["trigger", "runs:read", "manage"], "rateLimitPerMinute": 100_000}),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body);
    (
        id,
        key.body["data"]["key"].as_str().expect("secret").to_owned(),
    )
}

/// A project with an echo agent in `tenant`.
pub async fn project_with_agent(
    stack: &Stack,
    tenant: &str,
    key: &str,
    project: &str,
    agent: &str,
) {
    let p = post(
        stack,
        &format!("/manage/tenants/{tenant}/projects"),
        key,
        json!({"id": project, "name": project}),
    )
    .await;
    assert_eq!(p.status, 201, "{}", p.body);
    let a = post(
        stack,
        &format!("/manage/tenants/{tenant}/projects/{project}/agents"),
        key,
        json!({"id": agent, "name": agent, "kind": "echo"}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

/// A run's whole event stream (`GET /v1/runs/{id}/events` with the stack's key), each event as
/// its JSON; for a run that has ended, so the stream ends too.
pub async fn run_events(stack: &Stack, run_id: &str) -> Vec<Value> {
    let response = stack
        .http
        .get(format!("{}/v1/runs/{run_id}/events", stack.base_url))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("request sent");
    crate::sse::Reader::new(response)
        .collect(std::time::Duration::from_secs(10))
        .await
        .iter()
        .map(crate::sse::SseEvent::json)
        .collect()
}
