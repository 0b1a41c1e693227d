//! Agent executors, chosen by the agent's `kind`: the built-in `echo`, `openai` (an
//! OpenAI-compatible chat completions endpoint, with tools) and `http` (the user's own agent).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use switchyard_common::conversations::Message;

pub mod http_agent;
pub mod openai;
pub mod outbound;

use self::outbound::{CallError, Env};
use crate::sink::Emitter;
use switchyard_common::{AgentSpec, Run};

/// The longest delay an echo agent may ask for.
const MAX_ECHO_DELAY: Duration = Duration::from_secs(600);
/// The largest artifact, encoded, and the most a run keeps.
pub const MAX_ARTIFACT_BYTES: usize = 256 * 1024;
pub const MAX_ARTIFACTS_BYTES: usize = 1024 * 1024;
pub const MAX_ARTIFACTS: usize = 32;

/// Why an execution failed: the run's `errorCode` and `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError {
    pub code: &'static str,
    pub message: String,
}

/// A failed call out (to a model, tool or agent) fails the run with its code and message.
impl From<CallError> for ExecError {
    fn from(error: CallError) -> Self {
        Self {
            code: error.code,
            message: error.message,
        }
    }
}

impl ExecError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What an execution produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub result: Value,
    /// Token usage, when the model reports it.
    pub usage: Option<Value>,
    /// Named outputs, checked by [`artifact`].
    pub artifacts: Vec<Value>,
}

/// Runs `run` on `agent`. `history` holds the earlier messages of the run's conversation (empty
/// without a session); events go to `emit`; outbound calls go through `env`.
pub async fn execute(
    agent: &AgentSpec,
    run: &Run,
    history: &[Message],
    emit: &Emitter,
    env: &Env,
) -> Result<Output, ExecError> {
    let credential = agent.credential_id.as_deref();
    match agent.kind.as_str() {
        "echo" => Ok(Output {
            result: echo(agent, run, history, emit).await,
            usage: None,
            artifacts: Vec::new(),
        }),
        "openai" => openai::execute(&agent.config, credential, run, history, emit, env).await,
        "http" => http_agent::execute(&agent.config, credential, run, history, emit, env).await,
        AgentSpec::DELETED => Err(ExecError::new(
            "agent_not_found",
            format!(
                "agent `{}` was deleted before the run started",
                run.agent_id
            ),
        )),
        other => Err(ExecError::new(
            "agent_kind_unsupported",
            format!("agents of kind `{other}` cannot run on this worker"),
        )),
    }
}

/// Checks a named output and returns it as stored: `{name, mediaType, size, text | json |
/// base64}`, one of the three. `kept` are the run's artifacts so far, for the run's caps.
pub fn artifact(raw: &Value, kept: &[Value]) -> Result<Value, ExecError> {
    let bad = |m: String| ExecError::new("artifact_invalid", m);
    let name = raw["name"]
        .as_str()
        .filter(|n| (1..=255).contains(&n.chars().count()))
        .ok_or_else(|| bad("an artifact needs a `name` of 1 to 255 characters".into()))?;
    let (field, content, size) = match (raw.get("text"), raw.get("json"), raw.get("base64")) {
        (Some(Value::String(text)), None, None) => ("text", json!(text), text.len()),
        (None, Some(value), None) => ("json", value.clone(), value.to_string().len()),
        (None, None, Some(Value::String(encoded))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| bad(format!("artifact `{name}`: `base64` is not base64")))?;
            ("base64", json!(encoded), bytes.len())
        }
        _ => {
            return Err(bad(format!(
                "artifact `{name}` needs exactly one of `text`, `json` or `base64`"
            )));
        }
    };
    let media_type = raw["mediaType"].as_str().map_or_else(
        || match field {
            "text" => "text/plain".to_owned(),
            "json" => "application/json".to_owned(),
            _ => "application/octet-stream".to_owned(),
        },
        str::to_owned,
    );
    let encoded = content.to_string().len();
    let total: usize = kept.iter().map(|a| a.to_string().len()).sum::<usize>() + encoded;
    if encoded > MAX_ARTIFACT_BYTES || total > MAX_ARTIFACTS_BYTES || kept.len() >= MAX_ARTIFACTS {
        return Err(ExecError::new(
            "artifact_too_large",
            format!(
                "artifact `{name}` is over the limits ({MAX_ARTIFACT_BYTES} bytes each, \
                 {MAX_ARTIFACTS_BYTES} and {MAX_ARTIFACTS} artifacts a run)"
            ),
        ));
    }
    let mut stored = json!({"name": name, "mediaType": media_type, "size": size});
    stored[field] = content;
    Ok(stored)
}

/// Deterministic: returns the message, or the inputs as compact JSON when there is no message,
/// streamed word by word as deltas spread over the agent's `delayMs` (default 0). A run of a
/// session also returns the conversation it was given, as `history`, so that what a session
/// sees can be checked from outside.
async fn echo(agent: &AgentSpec, run: &Run, history: &[Message], emit: &Emitter) -> Value {
    let delay = agent
        .config
        .get("delayMs")
        .and_then(Value::as_u64)
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(MAX_ECHO_DELAY);
    let output = match (&run.message, &run.inputs) {
        (Some(message), _) => message.clone(),
        (None, Some(inputs)) => inputs.to_string(),
        (None, None) => String::new(),
    };
    let words: Vec<&str> = output.split_inclusive(' ').collect();
    let pause = delay / u32::try_from(words.len().max(1)).unwrap_or(u32::MAX);
    if words.is_empty() && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    for word in words {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        emit.delta(word);
    }
    if run.session_id.is_some() {
        json!({ "output": output, "history": history })
    } else {
        json!({ "output": output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_hold_one_kind_of_content_within_the_caps() {
        let text = artifact(&json!({"name": "a.txt", "text": "hi"}), &[]).expect("valid");
        assert_eq!(
            text,
            json!({"name": "a.txt", "mediaType": "text/plain", "size": 2, "text": "hi"})
        );
        let file = artifact(
            &json!({"name": "a.bin", "mediaType": "image/png", "base64": "AAEC"}),
            &[],
        )
        .expect("valid");
        assert_eq!(file["size"], 3);
        assert!(artifact(&json!({"name": "x", "text": "a", "json": {}}), &[]).is_err());
        assert!(artifact(&json!({"name": "", "text": "a"}), &[]).is_err());
        assert!(artifact(&json!({"name": "x", "base64": "%%%"}), &[]).is_err());
        let big = "x".repeat(MAX_ARTIFACT_BYTES + 1);
        assert_eq!(
            artifact(&json!({"name": "big", "text": big}), &[]).map_err(|e| e.code),
            Err("artifact_too_large")
        );
    }
}
