//! A scripted OpenAI-compatible server for tests (`POST /v1/chat/completions`), on a loopback
//! port. Each request takes the next step of its script: stream text, call tools, answer 429
//! with `Retry-After` or 500, answer slowly, or drop the connection mid-stream. Every request is
//! recorded (body and headers) so tests can check what the worker sent. With the script spent,
//! it echoes the last user message.
//!
//! The same server plays a tool endpoint (`POST /tools/{name}`, answering `{"tool": name,
//! "arguments": …}`, or 500 for `/tools/broken`) and a user's HTTP agent (`POST /agent/json`,
//! `POST /agent/sse`, and a hostile one that floods its answer: `POST /agent/flood`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Stream `text` in the given pieces, then usage, then `[DONE]`.
    Text(Vec<String>),
    /// Ask for tool calls: (id, name, arguments as JSON text), streamed in pieces.
    Tools(Vec<(String, String, String)>),
    /// Answer this status with an error body (and `Retry-After` seconds, if given).
    Status(u16, Option<u64>),
    /// Wait, then stream the text.
    Slow(Duration, Vec<String>),
    /// Stream the first piece, then drop the connection.
    Drop(String),
}

/// A request the server got.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: std::time::Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    requests: Vec<Request>,
    /// Slow answers whose client went away before they were sent.
    abandoned: usize,
}

/// Counts a slow answer as abandoned if it is dropped before it is sent.
struct Abandon {
    inner: Arc<Mutex<Inner>>,
    sent: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.sent
            && let Ok(mut inner) = self.inner.lock()
        {
            inner.abandoned += 1;
        }
    }
}

/// The running server; stops when dropped.
pub struct FakeLlm {
    /// `http://127.0.0.1:<port>/v1`: an agent's `baseUrl`.
    pub base_url: String,
    /// `http://127.0.0.1:<port>`.
    pub origin: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start(script: Vec<Step>) -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/tools/{name}", post(tool))
            .route("/agent/{mode}", post(agent))
            .route("/redirected", axum::routing::any(redirected))
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url: format!("{origin}/v1"),
            origin,
            inner,
            task,
        })
    }

    /// Appends steps to the script.
    pub fn script(&self, steps: Vec<Step>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.script.extend(steps);
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner
            .lock()
            .map(|i| i.requests.clone())
            .unwrap_or_default()
    }

    /// How many slow answers were abandoned by their client (the request was aborted).
    pub fn abandoned(&self) -> usize {
        self.inner.lock().map(|i| i.abandoned).unwrap_or_default()
    }

    /// The requests to one path.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(inner: &Mutex<Inner>, path: String, headers: HeaderMap, raw: Bytes) {
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if let Ok(mut inner) = inner.lock() {
        inner.requests.push(Request {
            at: std::time::Instant::now(),
            path,
            headers,
            body,
            raw,
        });
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let body = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {body}\n\n")
}

fn usage(prompt: u64, completion: u64) -> String {
    let body = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    });
    format!("data: {body}\n\n")
}

fn text_stream(pieces: &[String]) -> Vec<String> {
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for piece in pieces {
        frames.push(chunk(json!({ "content": piece }), None));
    }
    frames.push(chunk(json!({}), Some("stop")));
    frames.push(usage(10, pieces.len() as u64));
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

fn sse(frames: Vec<String>, then_drop: bool) -> Response {
    let stream = futures::stream::iter(
        frames
            .into_iter()
            .map(|f| Ok::<_, std::io::Error>(Bytes::from(f)))
            .chain(then_drop.then(|| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "dropped",
                ))
            })),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn completions(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    record(&inner, "/v1/chat/completions".into(), headers, raw.clone());
    let next = inner.lock().ok().and_then(|mut i| i.script.pop_front());
    let step = next.unwrap_or_else(|| {
        // Unscripted: echo the last user message.
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        Step::Text(vec![last])
    });
    match step {
        Step::Text(pieces) => sse(text_stream(&pieces), false),
        Step::Slow(delay, pieces) => {
            let mut guard = Abandon {
                inner: Arc::clone(&inner),
                sent: false,
            };
            tokio::time::sleep(delay).await;
            guard.sent = true;
            sse(text_stream(&pieces), false)
        }
        Step::Drop(first) => sse(
            vec![
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({ "content": first }), None),
            ],
            true,
        ),
        Step::Tools(calls) => {
            let mut frames = vec![chunk(json!({"role": "assistant", "content": null}), None)];
            for (index, (id, name, arguments)) in calls.iter().enumerate() {
                frames.push(chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                // Arguments arrive in two pieces, as real providers split them.
                let (a, b) = arguments.split_at(arguments.len() / 2);
                for piece in [a, b] {
                    frames.push(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                        None,
                    ));
                }
            }
            frames.push(chunk(json!({}), Some("tool_calls")));
            frames.push(usage(20, 5));
            frames.push("data: [DONE]\n\n".to_owned());
            sse(frames, false)
        }
        Step::Status(status, retry_after) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                Json(json!({"error": {"message": format!("scripted {status}"), "type": "fake"}})),
            )
                .into_response();
            if let Some(seconds) = retry_after
                && let Ok(value) = seconds.to_string().parse()
            {
                response.headers_mut().insert("retry-after", value);
            }
            if (300..400).contains(&status) {
                response.headers_mut().insert(
                    "location",
                    axum::http::HeaderValue::from_static("/redirected"),
                );
            }
            response
        }
    }
}

/// Where a scripted redirect points: any request here was a followed redirect.
async fn redirected(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    record(&inner, "/redirected".into(), headers, raw);
    Json(json!({"choices": []})).into_response()
}

async fn tool(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    record(&inner, format!("/tools/{name}"), headers, raw.clone());
    if name == "broken" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "tool down").into_response();
    }
    let arguments: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Json(json!({"tool": name, "arguments": arguments})).into_response()
}

/// A user's agent: `json` answers the result at once; `sse` streams deltas, an artifact, then
/// the result.
async fn agent(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    record(&inner, format!("/agent/{mode}"), headers, raw.clone());
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    match mode.as_str() {
        "json" => Json(json!({"answer": message.to_uppercase()})).into_response(),
        "sse" => {
            let mut frames: Vec<String> = message
                .split_inclusive(' ')
                .map(|w| format!("data: {}\n\n", json!({ "delta": w })))
                .collect();
            frames.push(format!(
                "data: {}\n\n",
                json!({"artifact": {"name": "notes.txt", "mediaType": "text/plain", "text": "some notes"}})
            ));
            frames.push(format!(
                "data: {}\n\n",
                json!({"result": {"answer": message.len()}})
            ));
            frames.push("data: [DONE]\n\n".to_owned());
            sse(frames, false)
        }
        // A hostile agent: 64 KiB deltas, 64 MiB of them, as fast as they are read.
        "flood" => {
            let piece = format!("data: {}\n\n", json!({ "delta": "x".repeat(64 * 1024) }));
            let stream = futures::stream::iter(
                std::iter::repeat_n(piece, 1024).map(|f| Ok::<_, std::io::Error>(Bytes::from(f))),
            );
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
        _ => (StatusCode::BAD_REQUEST, "no such mode").into_response(),
    }
}
