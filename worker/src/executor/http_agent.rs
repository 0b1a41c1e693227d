//! The `http` executor: POSTs the invocation to the user's own agent, signed like a webhook
//! (Standard Webhooks, with the agent's credential as the secret), and takes either a JSON answer
//! (the result) or a server-sent event stream: `{"delta": "…"}` pieces of text,
//! `{"artifact": {…}}` named outputs, and `{"result": …}` at the end.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_common::Run;
use switchyard_common::catalog::agents::HttpConfig as Config;
use switchyard_common::conversations::Message;
use switchyard_common::events::EventKind;

use super::outbound::{CallError, Env, Failure, classify, read_sse, text_within, transport};
use super::{ExecError, Output, artifact};

/// The largest JSON answer an agent may give, and the most text it may stream.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
use crate::sink::Emitter;

pub async fn execute(
    config: &Value,
    credential: Option<&str>,
    run: &Run,
    history: &[Message],
    emit: &Emitter,
    env: &Env,
) -> Result<Output, ExecError> {
    let config: Config = serde_json::from_value(config.clone())
        .map_err(|e| ExecError::new("agent_misconfigured", format!("`config`: {e}")))?;
    let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(300_000));
    let body = json!({
        "runId": run.id, "agentId": run.agent_id, "projectId": run.project_id,
        "message": run.message, "inputs": run.inputs, "metadata": run.metadata,
        "sessionId": run.session_id, "history": history, "attempt": run.attempt,
    });
    Ok(env
        .retrying(emit, "the agent", || {
            call(env, &config.url, credential, &body, timeout, emit)
        })
        .await?)
}

async fn call(
    env: &Env,
    url: &str,
    credential: Option<&str>,
    body: &Value,
    timeout: Duration,
    emit: &Emitter,
) -> Result<Output, Failure> {
    let request = env
        .post(url, body, credential, timeout)
        .map_err(Failure::Final)?
        .header("accept", "application/json, text/event-stream");
    let mut response = request
        .send()
        .await
        .map_err(|e| transport(&e, "the agent", "agent_unreachable"))?;
    if !response.status().is_success() {
        return Err(classify(
            &response,
            "the agent",
            "agent_error",
            "agent_rate_limited",
            "agent_error",
        ));
    }
    let streamed = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        let text = text_within(&mut response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| transport(&e, "the agent", "agent_unreachable"))?
            .ok_or_else(|| {
                Failure::Final(CallError::new(
                    "output_too_large",
                    format!("the agent's answer is over {MAX_ANSWER_BYTES} bytes"),
                ))
            })?;
        let result = serde_json::from_str(&text).map_err(|_| {
            Failure::Final(CallError::new(
                "agent_error",
                "the agent's answer is not JSON",
            ))
        })?;
        return Ok(Output {
            result,
            usage: None,
            artifacts: Vec::new(),
        });
    }
    let mut text = String::new();
    let mut result = None;
    let mut artifacts = Vec::new();
    let mut refused = None;
    let closed = read_sse(&mut response, timeout, |data| {
        let Ok(item) = serde_json::from_str::<Value>(data) else {
            refused = Some(ExecError::new(
                "agent_error",
                "the agent streamed a line that is not JSON",
            ));
            return false;
        };
        if let Some(delta) = item["delta"].as_str() {
            if text.len() + delta.len() > MAX_ANSWER_BYTES {
                refused = Some(ExecError::new(
                    "output_too_large",
                    format!("the agent streamed more than {MAX_ANSWER_BYTES} bytes of text"),
                ));
                return false;
            }
            text.push_str(delta);
            emit.delta(delta);
            if emit.spent() {
                return false;
            }
        }
        if let Some(raw) = item.get("artifact") {
            match artifact(raw, &artifacts) {
                Ok(stored) => {
                    emit.emit(EventKind::Artifact, stored.clone());
                    artifacts.push(stored);
                }
                Err(error) => {
                    refused = Some(error);
                    return false;
                }
            }
        }
        if let Some(value) = item.get("result") {
            result = Some(value.clone());
        }
        true
    })
    .await
    .map_err(|e| transport(&e, "the agent", "agent_unreachable"))?;
    if let Some(error) = refused {
        return Err(Failure::Final(CallError::new(error.code, error.message)));
    }
    if !closed && result.is_none() {
        return Err(Failure::Transient {
            error: CallError::new(
                "agent_unreachable",
                "the agent's stream ended before its result",
            ),
            retry_after: None,
        });
    }
    Ok(Output {
        result: result.unwrap_or_else(|| json!({ "output": text })),
        usage: None,
        artifacts,
    })
}
