//! A webhook receiver for tests, the quickstart and the bench. It verifies each request with the
//! Standard Webhooks algorithm, records it, and answers with the next status of its script (then
//! 200 for good). A 3xx answer carries `Location: /redirected`, where any request is counted as a
//! followed redirect; a 429 carries `Retry-After: 10`; the first request can be made to hang.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use switchyard_common::signing::{DEFAULT_TOLERANCE_SECS, Secret};
use tokio::sync::Notify;

/// A callback run for each request received.
pub type OnReceive = Arc<dyn Fn(&Received) + Send + Sync>;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: serde_json::Value,
    /// The body as sent, byte for byte (what a signature covers).
    pub raw_body: Vec<u8>,
    /// Whether the signature verified.
    pub verified: bool,
    /// The status the receiver answered.
    pub answered: u16,
    pub at: Instant,
    /// The W3C `traceparent` header, if the sender traced the request.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    script: std::collections::VecDeque<u16>,
    /// How long the next request waits before it is answered.
    hang_next: Option<std::time::Duration>,
    /// How long every request waits before it is answered.
    hang_all: Option<std::time::Duration>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
    /// Requests that arrived at the redirect target.
    followed_redirects: usize,
}

#[derive(Clone)]
struct Shared {
    secret: Secret,
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    on_receive: Option<OnReceive>,
}

/// A running receiver on a loopback port; stops when dropped.
pub struct Receiver {
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start(secret: &str, script: Vec<u16>) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0", secret, script, None).await
    }

    /// Starts on `addr`, calling `on_receive` for each request.
    pub async fn start_on(
        addr: &str,
        secret: &str,
        script: Vec<u16>,
        on_receive: Option<OnReceive>,
    ) -> anyhow::Result<Self> {
        let shared = Shared {
            secret: Secret::parse(secret).map_err(|e| anyhow::anyhow!("{e}"))?,
            inner: Arc::new(Mutex::new(Inner {
                script: script.into(),
                ..Inner::default()
            })),
            notify: Arc::new(Notify::new()),
            on_receive,
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .route("/redirected", axum::routing::any(redirected))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Makes the next request wait `delay` before it is answered (to provoke a timeout).
    pub fn hang_next(&self, delay: std::time::Duration) {
        if let Ok(mut inner) = self.shared.inner.lock() {
            inner.hang_next = Some(delay);
        }
    }

    /// Makes every request wait `delay` before it is answered (a slow endpoint).
    pub fn hang_all(&self, delay: std::time::Duration) {
        if let Ok(mut inner) = self.shared.inner.lock() {
            inner.hang_all = Some(delay);
        }
    }

    /// The most requests this receiver was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared
            .inner
            .lock()
            .map(|i| i.max_in_flight)
            .unwrap_or_default()
    }

    /// How many requests followed a redirect this receiver answered.
    pub fn followed_redirects(&self) -> usize {
        self.shared
            .inner
            .lock()
            .map(|i| i.followed_redirects)
            .unwrap_or_default()
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .inner
            .lock()
            .map(|i| i.received.clone())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for what was received, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            let now = self.received();
            if pred(&now) {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let now = self.received();
                if pred(&now) {
                    return Ok(now);
                }
                anyhow::bail!(
                    "receiver: condition not met within {timeout:?} ({} received)",
                    now.len()
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One request being answered; counted out when dropped.
struct Answering(Arc<Mutex<Inner>>);

impl Drop for Answering {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.0.lock() {
            inner.in_flight -= 1;
        }
    }
}

async fn redirected(State(shared): State<Shared>) -> StatusCode {
    if let Ok(mut inner) = shared.inner.lock() {
        inner.followed_redirects += 1;
    }
    StatusCode::OK
}

async fn receive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let id = header(&headers, "webhook-id");
    let ts = header(&headers, "webhook-timestamp");
    let sig = header(&headers, "webhook-signature");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let verified = shared
        .secret
        .verify(
            id.as_deref(),
            ts.as_deref(),
            sig.as_deref(),
            &body,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
        .is_ok();
    let (record, hang) = {
        let Ok(mut inner) = shared.inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let hang = inner.hang_next.take().or(inner.hang_all);
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        let answered = inner.script.pop_front().unwrap_or(200);
        let record = Received {
            traceparent: header(&headers, "traceparent"),
            webhook_id: id.unwrap_or_default(),
            timestamp: ts.unwrap_or_default(),
            signature: sig.unwrap_or_default(),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            raw_body: body.to_vec(),
            verified,
            answered,
            at: Instant::now(),
        };
        inner.received.push(record.clone());
        (record, hang)
    };
    if let Some(callback) = &shared.on_receive {
        callback(&record);
    }
    shared.notify.notify_waiters();
    // Counted out when the answer is sent, or when the client gives up and drops the request.
    let _answering = Answering(shared.inner.clone());
    if let Some(delay) = hang {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(record.answered).unwrap_or(StatusCode::OK);
    if status.is_redirection() {
        return (status, [(axum::http::header::LOCATION, "/redirected")]).into_response();
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return (status, [(axum::http::header::RETRY_AFTER, "10")]).into_response();
    }
    status.into_response()
}
