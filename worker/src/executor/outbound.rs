//! What the executors share when they call out: the guarded client and its retries, signing like
//! webhooks, and reading a server-sent event stream.
//!
//! Every outbound request goes through the egress guard (no private addresses unless allowed,
//! no redirects). A transient failure (429, 5xx, a timeout, a dropped connection) is retried
//! with exponential backoff and jitter, honouring `Retry-After`, up to the agent's attempts.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng as _;
use serde_json::{Value, json};
use switchyard_common::egress::{self, Guard};
use switchyard_common::events::EventKind;
use switchyard_common::signing::Secret;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::sink::Emitter;

/// The longest wait between two tries, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The first backoff; it doubles with each try.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// What executors may use to reach the outside.
pub struct Env {
    pub http: reqwest::Client,
    pub guard: Guard,
    /// Secrets by credential id: those the agent names, revealed for this run.
    pub credentials: HashMap<String, String>,
    /// Tries per call, the first included (the agent's `maxAttempts`).
    pub attempts: u32,
}

/// Why a call out failed: the run's `errorCode` and message, should it end the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub code: &'static str,
    pub message: String,
}

impl CallError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Why one try failed.
#[derive(Debug)]
pub enum Failure {
    /// Worth another try (after `retry_after` if the server said so).
    Transient {
        error: CallError,
        retry_after: Option<Duration>,
    },
    /// Final at once.
    Final(CallError),
}

impl Env {
    /// Runs `attempt` until it succeeds, fails for good, or the tries are spent; between tries
    /// it tells the run's stream that it is retrying, and waits.
    pub async fn retrying<T, F, Fut>(
        &self,
        emit: &Emitter,
        what: &str,
        mut attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut tries = 1;
        loop {
            // One HTTP client span per try (OpenTelemetry's conventions); `post` names the server
            // and sends this span's `traceparent`.
            let span = tracing::info_span!(
                "call",
                otel.name = "POST",
                otel.kind = "client",
                http.request.method = "POST",
                server.address = tracing::field::Empty,
                error.type = tracing::field::Empty,
                switchyard.call = what,
            );
            let outcome = attempt().instrument(span.clone()).await;
            if let Err(Failure::Final(error) | Failure::Transient { error, .. }) = &outcome {
                span.record("error.type", error.code);
            }
            match outcome {
                Ok(value) => return Ok(value),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Transient { error, retry_after }) => {
                    if tries >= self.attempts.max(1) {
                        return Err(error);
                    }
                    let wait = retry_after
                        .unwrap_or_else(|| backoff(tries))
                        .min(MAX_BACKOFF);
                    tracing::info!(what, tries, ?wait, error = %error.message, "transient failure; retrying");
                    emit.emit(
                        EventKind::Status,
                        json!({"status": "running", "retrying": {
                            "what": what, "errorCode": error.code, "message": error.message,
                            "try": tries + 1, "afterMs": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        }}),
                    );
                    tokio::time::sleep(wait).await;
                    tries += 1;
                }
            }
        }
    }

    /// A POST of `body` to a user-supplied `url`, signed like a webhook with `credential` if one
    /// is named. Refused (final) when the guard refuses the address.
    pub fn post(
        &self,
        url: &str,
        body: &Value,
        credential: Option<&str>,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, CallError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| CallError::new("invalid_url", "the configured URL is not valid"))?;
        egress::check_url(&self.guard, &parsed)
            .map_err(|r| CallError::new("egress_refused", r.to_string()))?;
        if let Some(host) = parsed.host_str() {
            tracing::Span::current().record("server.address", host);
        }
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut request = self
            .http
            .post(parsed)
            .timeout(timeout)
            .header("content-type", "application/json");
        if let Some(id) = credential {
            let raw = self.credentials.get(id).ok_or_else(|| {
                CallError::new(
                    "credential_unavailable",
                    format!("credential `{id}` could not be read"),
                )
            })?;
            let secret = Secret::parse(raw).map_err(|_| {
                CallError::new(
                    "credential_invalid",
                    format!("credential `{id}` is not a signing secret (whsec_… or base64)"),
                )
            })?;
            let message_id = format!("msg_{}", Uuid::now_v7().simple());
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
            request = request
                .header(
                    "webhook-signature",
                    secret.sign(&message_id, timestamp, &bytes),
                )
                .header("webhook-id", message_id)
                .header("webhook-timestamp", timestamp.to_string());
        }
        for (name, value) in switchyard_common::telemetry::current_trace_http_headers() {
            request = request.header(name, value);
        }
        Ok(request.body(bytes))
    }
}

/// Exponential backoff with jitter: about 0.5 s, 1 s, 2 s, … each between half and all of it.
fn backoff(tries: u32) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1 << tries.saturating_sub(1).min(16));
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Sorts an HTTP answer that is not a success: 429 and 5xx are transient (with `Retry-After`),
/// other statuses final with `final_code`.
pub fn classify(
    response: &reqwest::Response,
    what: &str,
    transient_code: &'static str,
    rate_code: &'static str,
    final_code: &'static str,
) -> Failure {
    let status = response.status();
    let retry_after = egress::retry_after(response);
    let message = format!("{what} answered {status}");
    if status.as_u16() == 429 {
        Failure::Transient {
            error: CallError::new(rate_code, message),
            retry_after,
        }
    } else if status.is_server_error() || status.as_u16() == 408 {
        Failure::Transient {
            error: CallError::new(transient_code, message),
            retry_after,
        }
    } else {
        Failure::Final(CallError::new(final_code, message))
    }
}

/// A transport failure (connection, timeout, a stream cut short): transient.
pub fn transport(error: &reqwest::Error, what: &str, code: &'static str) -> Failure {
    let message = if error.is_timeout() {
        format!("{what} timed out")
    } else {
        format!("{what} could not be reached: {}", egress::describe(error))
    };
    Failure::Transient {
        error: CallError::new(code, message),
        retry_after: None,
    }
}

/// Reads the `data:` lines of a server-sent event stream, handing each to `on_data` until the
/// stream ends, `[DONE]` comes, or `on_data` returns `false`. `idle` bounds the wait for each
/// piece. `true` when the stream was closed properly (`[DONE]`, or `on_data` stopped it);
/// `false` when it ended early or went idle.
pub async fn read_sse(
    response: &mut reqwest::Response,
    idle: Duration,
    mut on_data: impl FnMut(&str) -> bool,
) -> Result<bool, reqwest::Error> {
    // Bytes, not text: a character may be split between two chunks.
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let Ok(chunk) = tokio::time::timeout(idle, response.chunk()).await else {
            return Ok(false);
        };
        let Some(chunk) = chunk? else {
            return Ok(false);
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(data) = line.strip_prefix("data:") {
                let data = data.trim_start();
                if data == "[DONE]" || !on_data(data) {
                    return Ok(true);
                }
            }
        }
        // A line that never ends is not an event stream.
        if buffer.len() > MAX_LINE_BYTES {
            return Ok(false);
        }
    }
}

/// The longest line an event stream may send.
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// The body of a response as text, refused past `limit` bytes.
pub async fn text_within(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<String>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter() {
        for tries in 1..6 {
            let full = FIRST_BACKOFF * (1 << (tries - 1));
            let wait = backoff(tries);
            assert!(wait >= full / 2 && wait <= full, "{tries}: {wait:?}");
        }
    }
}
