//! Per-request context: the request id (taken from `x-request-id` or made up), the path, a span
//! that every log line of the request carries, and the id echoed back on the response (with
//! `Cache-Control: no-store` unless the handler chose otherwise).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
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

/// Middleware: assigns the request id, scopes the context, traces the request as an HTTP server
/// span (OpenTelemetry's HTTP conventions), counts and times it, and logs the outcome.
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
    // Methods outside HTTP's own are one label, so that a client cannot mint series.
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "_OTHER",
    };
    // The route template, not the path: ids would make every series and span name unique.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %ctx.path,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
    );
    // A caller that traces sends `traceparent`: the request continues its trace.
    switchyard_common::telemetry::adopt_http_parent(&span, request.headers());
    let started = Instant::now();
    let mut response = CONTEXT
        .scope(ctx, next.run(request))
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.record("http.response.status_code", status);
    let labels = [("method", method.to_owned()), ("route", route)];
    metrics::histogram!(switchyard_common::metrics::HTTP_DURATION, &labels)
        .record(elapsed.as_secs_f64());
    let [method, route] = labels;
    metrics::counter!(switchyard_common::metrics::HTTP_REQUESTS,
        "method" => method.1, "route" => route.1, "status" => status.to_string())
    .increment(1);
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::debug!(status, latency_ms, "request served");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    // API answers carry secrets (a new key, a webhook secret), runs' results and tenants' data:
    // no cache on the way may keep them. Only what says otherwise (the console's assets) may be.
    // Event streams (axum says `no-cache`) carry results and tool output: `no-store` too.
    let streamed = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if streamed
        || !response
            .headers()
            .contains_key(axum::http::header::CACHE_CONTROL)
    {
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
    response
}
