//! The `openai` executor: an OpenAI-compatible `POST {baseUrl}/chat/completions` with
//! `stream: true` (OpenAI, vLLM, Ollama, the llama.cpp server), and the tool-calling loop.
//!
//! The request carries the agent's system prompt, the session's earlier messages, and the run's
//! message (or its inputs as JSON). Text arrives as deltas. When the model asks for tools, each
//! is called over HTTP (guarded, signed when the tool names a credential), the answers are fed
//! back, and the model is asked again, for at most `maxSteps` rounds.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_common::Run;
use switchyard_common::catalog::agents::{OpenaiConfig as Config, ToolConfig as Tool};
use switchyard_common::conversations::Message;
use switchyard_common::events::EventKind;

use super::outbound::{CallError, Env, Failure, classify, read_sse, text_within, transport};
use super::{ExecError, Output};
use crate::sink::Emitter;

/// How long a streaming answer may be silent before the try counts as dropped.
const IDLE: Duration = Duration::from_secs(60);
/// The largest answer a tool may give.
const MAX_TOOL_ANSWER_BYTES: usize = 1024 * 1024;
/// The most tool calls one answer may ask for.
const MAX_CALLS: usize = 64;
/// The most text one answer may hold.
const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes of tool-call names and arguments one answer may hold.
const MAX_CALL_BYTES: usize = 1024 * 1024;
/// The longest tool name a model may ask for (a declared tool's name is at most 64 bytes).
const MAX_TOOL_NAME_BYTES: usize = 64;
/// The most bytes of tool answers one step may feed back to the model.
const MAX_STEP_TOOL_BYTES: usize = 4 * 1024 * 1024;

/// The error of a run whose model or tools sent more than a cap allows.
fn too_large(message: String) -> CallError {
    CallError::new("output_too_large", message)
}

/// One tool call the model asked for.
#[derive(Debug, Default, Clone)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// One answer of the model.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    calls: Vec<Call>,
    usage: Option<Value>,
}

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
    let api_key = match credential {
        Some(id) => Some(env.credentials.get(id).cloned().ok_or_else(|| {
            ExecError::new(
                "credential_unavailable",
                format!("credential `{id}` could not be read"),
            )
        })?),
        None => None,
    };
    let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
    let model = run
        .chat_model_id
        .clone()
        .unwrap_or_else(|| config.model.clone());
    let mut messages = Vec::new();
    if let Some(prompt) = &config.system_prompt {
        messages.push(json!({"role": "system", "content": prompt}));
    }
    for said in history {
        messages.push(json!({"role": said.role, "content": said.content}));
    }
    let user = match (&run.message, &run.inputs) {
        (Some(message), _) => message.clone(),
        (None, Some(inputs)) => inputs.to_string(),
        (None, None) => String::new(),
    };
    messages.push(json!({"role": "user", "content": user}));
    let declared: &[Tool] = config.tools.as_deref().unwrap_or_default();
    let tools: Vec<Value> = declared
        .iter()
        .map(|t| {
            json!({"type": "function", "function": {
                "name": t.name,
                "description": t.description.clone().unwrap_or_default(),
                "parameters": t.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }})
        })
        .collect();
    let mut usage = Usage::default();
    for _ in 0..config.max_steps.unwrap_or(8).max(1) {
        let mut body = json!({
            "model": model, "messages": messages, "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = config.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if !tools.is_empty() {
            body["tools"] = json!(tools);
        }
        let answer = env
            .retrying(emit, "the model", || {
                ask(env, &url, api_key.as_deref(), &body, emit)
            })
            .await?;
        usage.add(answer.usage.as_ref());
        if answer.calls.is_empty() {
            return Ok(Output {
                result: json!({ "output": answer.text }),
                usage: usage.into_value(),
                artifacts: Vec::new(),
            });
        }
        messages.push(json!({
            "role": "assistant",
            "content": if answer.text.is_empty() { Value::Null } else { json!(answer.text) },
            "tool_calls": answer.calls.iter().map(|c| json!({
                "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments},
            })).collect::<Vec<_>>(),
        }));
        let mut step_bytes = 0usize;
        for call in &answer.calls {
            let arguments: Value =
                serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!(call.arguments));
            emit.emit(
                EventKind::ToolCall,
                json!({"id": call.id, "name": call.name, "arguments": arguments}),
            );
            let result = call_tool(declared, call, &arguments, emit, env).await?;
            step_bytes += switchyard_common::template::json_len_within(&result, usize::MAX)
                .unwrap_or(usize::MAX);
            if step_bytes > MAX_STEP_TOOL_BYTES {
                return Err(too_large(format!(
                    "the tools of one step answered more than {MAX_STEP_TOOL_BYTES} bytes"
                ))
                .into());
            }
            emit.emit(
                EventKind::ToolResult,
                json!({"id": call.id, "name": call.name, "result": result}),
            );
            messages.push(json!({
                "role": "tool", "tool_call_id": call.id,
                "content": match &result { Value::String(s) => s.clone(), other => other.to_string() },
            }));
        }
    }
    Err(ExecError::new(
        "tool_error",
        "the model was still calling tools after `maxSteps` rounds",
    ))
}

/// One try of one model call: streams the answer's text to `emit` as it comes.
async fn ask(
    env: &Env,
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    emit: &Emitter,
) -> Result<Answer, Failure> {
    let mut request = env
        .post(url, body, None, Duration::from_secs(3600))
        .map_err(Failure::Final)?;
    request = request.header("accept", "text/event-stream");
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| transport(&e, "the model", "provider_error"))?;
    if !response.status().is_success() {
        return Err(classify(
            &response,
            "the model",
            "provider_error",
            "provider_rate_limited",
            "provider_bad_request",
        ));
    }
    let mut answer = Answer::default();
    let mut call_bytes = 0usize;
    let mut finished = false;
    let mut malformed = None;
    let mut oversized = None;
    let closed = read_sse(&mut response, IDLE, |data| {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            malformed = Some(data.chars().take(200).collect::<String>());
            return false;
        };
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            answer.usage = Some(u.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return true;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            if answer.text.len() + text.len() > MAX_TEXT_BYTES {
                oversized = Some(format!("the model's answer is over {MAX_TEXT_BYTES} bytes"));
                return false;
            }
            if emit.spent() {
                return false;
            }
            answer.text.push_str(text);
            emit.delta(text);
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for piece in calls {
                let index = piece["index"]
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .unwrap_or(0);
                if index >= MAX_CALLS {
                    oversized = Some(format!(
                        "the model asked for more than {MAX_CALLS} tool calls"
                    ));
                    return false;
                }
                if answer.calls.len() <= index {
                    answer.calls.resize(index + 1, Call::default());
                }
                let call = &mut answer.calls[index];
                let id = piece["id"].as_str().unwrap_or_default();
                let name = piece["function"]["name"].as_str().unwrap_or_default();
                let args = piece["function"]["arguments"].as_str().unwrap_or_default();
                call_bytes += id.len() + name.len() + args.len();
                if call_bytes > MAX_CALL_BYTES {
                    oversized = Some(format!(
                        "the model's tool calls are over {MAX_CALL_BYTES} bytes"
                    ));
                    return false;
                }
                if call.name.len() + name.len() > MAX_TOOL_NAME_BYTES {
                    oversized = Some(format!(
                        "the model asked for a tool whose name is over {MAX_TOOL_NAME_BYTES} bytes"
                    ));
                    return false;
                }
                if !id.is_empty() {
                    call.id = id.to_owned();
                }
                call.name.push_str(name);
                call.arguments.push_str(args);
            }
        }
        if choice["finish_reason"].is_string() {
            finished = true;
        }
        true
    })
    .await
    .map_err(|e| transport(&e, "the model", "provider_error"))?;
    if let Some(message) = oversized {
        return Err(Failure::Final(too_large(message)));
    }
    if let Some(data) = malformed {
        return Err(Failure::Final(CallError::new(
            "provider_error",
            format!("the model sent a chunk that is not JSON: {data}"),
        )));
    }
    if !closed && !finished {
        return Err(Failure::Transient {
            error: CallError::new(
                "provider_error",
                "the model's stream ended before its answer did",
            ),
            retry_after: None,
        });
    }
    Ok(answer)
}

/// Calls the tool the model asked for. A 4xx answer goes back to the model as an error (its
/// arguments may be wrong); a tool that cannot be reached, after retries, fails the run.
async fn call_tool(
    tools: &[Tool],
    call: &Call,
    arguments: &Value,
    emit: &Emitter,
    env: &Env,
) -> Result<Value, ExecError> {
    let Some(tool) = tools.iter().find(|t| t.name == call.name) else {
        return Err(ExecError::new(
            "tool_error",
            format!(
                "the model asked for a tool the agent does not have: `{}`",
                call.name
            ),
        ));
    };
    let timeout = Duration::from_millis(tool.timeout_ms.unwrap_or(30_000));
    let what = format!("tool `{}`", tool.name);
    let answer = env
        .retrying(emit, &what, || async {
            let request = env
                .post(
                    &tool.url,
                    arguments,
                    tool.credential_reference_id.as_deref(),
                    timeout,
                )
                .map_err(|e| Failure::Final(CallError::new("tool_error", e.message)))?;
            let mut response = request
                .send()
                .await
                .map_err(|e| transport(&e, &what, "tool_error"))?;
            let status = response.status();
            if status.is_success() {
                let text = text_within(&mut response, MAX_TOOL_ANSWER_BYTES)
                    .await
                    .map_err(|e| transport(&e, &what, "tool_error"))?
                    .ok_or_else(|| {
                        Failure::Final(CallError::new(
                            "tool_error",
                            format!("{what} answered more than {MAX_TOOL_ANSWER_BYTES} bytes"),
                        ))
                    })?;
                return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
            }
            match classify(&response, &what, "tool_error", "tool_error", "tool_error") {
                Failure::Final(_) => Ok(json!({"error": format!("{what} answered {status}")})),
                transient => Err(transient),
            }
        })
        .await;
    Ok(answer?)
}

/// Token counts added up over every model call of a run.
#[derive(Default)]
struct Usage {
    prompt: u64,
    completion: u64,
    seen: bool,
}

impl Usage {
    fn add(&mut self, usage: Option<&Value>) {
        if let Some(u) = usage {
            self.seen = true;
            self.prompt += u["prompt_tokens"].as_u64().unwrap_or(0);
            self.completion += u["completion_tokens"].as_u64().unwrap_or(0);
        }
    }

    fn into_value(self) -> Option<Value> {
        self.seen.then(|| {
            json!({
                "promptTokens": self.prompt,
                "completionTokens": self.completion,
                "totalTokens": self.prompt + self.completion,
            })
        })
    }
}
