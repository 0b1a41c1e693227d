//! Per-request context: the request id (taken from `x-request-id` or made up), the path, a span
//! that every log line of the request carries, and the id echoed back on the response.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;
use uuid::Uuid;

/// The header that carries the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// What error bodies need to know about the request being served.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub path: String,
}

impl RequestContext {
    /// The context of the request this task serves (empty outside a request).
    pub fn current() -> Self {
        CONTEXT.try_with(Clone::clone).unwrap_or_default()
    }
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: assigns the request id, scopes the context, logs the outcome.
pub async fn context(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| acceptable(id))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    let ctx = RequestContext {
        request_id: request_id.clone(),
        path: request.uri().path().to_owned(),
    };
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %ctx.path,
        request_id = %request_id,
        otel.kind = "server",
    );
    let started = Instant::now();
    let mut response = CONTEXT
        .scope(ctx, next.run(request))
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::debug!(status, latency_ms, "request served");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
