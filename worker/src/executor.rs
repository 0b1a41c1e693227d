//! Agent executors, chosen by the agent's `kind`. For now only the built-in `echo`.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_common::conversations::Message;

use crate::sink::Emitter;
use switchyard_common::{AgentSpec, Run};

/// The longest delay an echo agent may ask for.
const MAX_ECHO_DELAY: Duration = Duration::from_secs(600);

/// Why an execution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError {
    pub code: &'static str,
    pub message: String,
}

/// Runs `run` on `agent` and returns its result. `history` holds the earlier messages of the
/// run's conversation (empty without a session).
pub async fn execute(
    agent: &AgentSpec,
    run: &Run,
    history: &[Message],
    emit: &Emitter,
) -> Result<Value, ExecError> {
    match agent.kind.as_str() {
        "echo" => Ok(echo(agent, run, history, emit).await),
        AgentSpec::DELETED => Err(ExecError {
            code: "agent_not_found",
            message: format!(
                "agent `{}` was deleted before the run started",
                run.agent_id
            ),
        }),
        other => Err(ExecError {
            code: "agent_kind_unsupported",
            message: format!("agents of kind `{other}` cannot run on this worker yet"),
        }),
    }
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
