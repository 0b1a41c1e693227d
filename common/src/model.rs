//! Domain types shared by every binary: run statuses and the public view of a run.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a run is in its lifecycle. Transitions happen only through the `runs` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    Expired,
}

impl RunStatus {
    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Expired => "expired",
        }
    }

    /// Parses a stored status name.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "timed_out" => Self::TimedOut,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// Whether no further transition can leave this status.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The webhook event type announced when a run reaches this status.
    pub fn event_type(self) -> Option<&'static str> {
        let event = match self {
            Self::Completed => WebhookEvent::RunCompleted,
            Self::Failed => WebhookEvent::RunFailed,
            Self::Cancelled => WebhookEvent::RunCancelled,
            Self::TimedOut => WebhookEvent::RunTimedOut,
            Self::Expired => WebhookEvent::RunExpired,
            Self::Queued | Self::Running => return None,
        };
        Some(event.as_str())
    }
}

/// Every webhook event type: the one list that endpoints select from and deliveries carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    RunCompleted,
    RunFailed,
    RunCancelled,
    RunTimedOut,
    RunExpired,
    /// A trigger dropped a body (filters, or a duplicate).
    InvocationDropped,
    /// An endpoint was disabled (410, or failing too long).
    EndpointDisabled,
}

impl WebhookEvent {
    /// Every type, in the order the documentation lists them.
    pub const ALL: [Self; 7] = [
        Self::RunCompleted,
        Self::RunFailed,
        Self::RunCancelled,
        Self::RunTimedOut,
        Self::RunExpired,
        Self::InvocationDropped,
        Self::EndpointDisabled,
    ];

    /// The name on the wire (`type` of the payload, and what an endpoint's `eventTypes` lists).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunCompleted => "run.completed",
            Self::RunFailed => "run.failed",
            Self::RunCancelled => "run.cancelled",
            Self::RunTimedOut => "run.timed_out",
            Self::RunExpired => "run.expired",
            Self::InvocationDropped => "invocation.dropped",
            Self::EndpointDisabled => "endpoint.disabled",
        }
    }

    /// The type named `raw`, if there is one.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == raw)
    }
}

/// A run as the API shows it and as webhooks carry it.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: Uuid,
    pub status: RunStatus,
    pub tenant_id: String,
    pub project_id: String,
    pub agent_id: String,
    pub message: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub webhook_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempt: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    #[serde(skip)]
    #[schema(ignore)]
    pub max_attempts: i32,
    /// The trigger that started the run, if one did.
    pub trigger_id: Option<String>,
    /// Where the invocation came from (ChatHive's `environment`, default `api`).
    pub environment: Option<String>,
    /// Tokens the agent's model used, when it reports them: `{promptTokens, completionTokens,
    /// totalTokens}`.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<serde_json::Value>,
    /// Named outputs: `{name, mediaType, size, text | json | base64}`.
    #[schema(value_type = Vec<Object>)]
    pub artifacts: Vec<serde_json::Value>,
    /// The model this run asked for instead of its agent's.
    pub chat_model_id: Option<String>,
    /// 0 to 100: within its tenant's share of the workers, a queued run with a higher priority
    /// starts first.
    pub priority: i32,
    /// The run's concurrency key, when its agent names one (`concurrencyKey`): at most the
    /// agent's `maxConcurrencyPerKey` runs of one key run at once.
    pub concurrency_key: Option<String>,
    /// That cap, as the agent set it when the run was accepted.
    #[serde(skip)]
    #[schema(ignore)]
    pub key_cap: Option<i32>,
    /// The session the run belongs to (ChatHive's `sessionId`): its conversation is the
    /// tenant's, project's and session's.
    pub session_id: Option<String>,
    /// The OpenTelemetry trace (32 hex digits) that follows the run through the ingress, the
    /// worker and the notifier; `null` when tracing was off where it was accepted.
    pub trace_id: Option<String>,
    /// The accepting request's span as a W3C `traceparent`, for publishing the run again later.
    #[serde(skip)]
    #[schema(ignore)]
    pub traceparent: Option<String>,
    /// The conversation's row, once a worker first claimed the run.
    #[serde(skip)]
    #[schema(ignore)]
    pub conversation_id: Option<Uuid>,
    /// Whether the run took a slot of its agent's concurrency limit when it was claimed.
    #[serde(skip)]
    #[schema(ignore)]
    pub holds_slot: bool,
    /// Whether the run's tenant has a running quota (`maxRunning`), as the statement that
    /// returned the run read it: a run of such a tenant that leaves `running` makes room.
    #[serde(skip)]
    #[schema(ignore)]
    pub tenant_limited: bool,
    /// The number of the run's last event, as a claim read it (0 elsewhere).
    #[serde(skip)]
    #[schema(ignore)]
    pub last_seq: i64,
    /// The events the statement that returned this run appended (to publish them live).
    #[serde(skip)]
    #[schema(ignore)]
    pub events: Vec<RunEvent>,
}

/// A run as a list shows it: what it is and where it stands, without its content (message,
/// inputs, result, artifacts), so a page of runs stays small whatever the runs hold. The whole
/// run is `GET /v1/runs/{id}`.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: Uuid,
    pub status: RunStatus,
    pub tenant_id: String,
    pub project_id: String,
    pub agent_id: String,
    /// The first [`RunSummary::PREVIEW_CHARS`] characters of the message, if it has one.
    pub message_preview: Option<String>,
    pub error_code: Option<String>,
    pub attempt: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    pub trigger_id: Option<String>,
    pub environment: Option<String>,
    pub session_id: Option<String>,
    pub chat_model_id: Option<String>,
    pub trace_id: Option<String>,
}

impl RunSummary {
    /// How much of the message a summary shows.
    pub const PREVIEW_CHARS: i32 = 200;
}

/// The agent a claimed run executes.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub kind: String,
    pub config: serde_json::Value,
    /// How long one execution may take (`timeoutSeconds`).
    pub timeout: std::time::Duration,
    /// The credential the executor uses (`credentialReferenceId`).
    pub credential_id: Option<String>,
    /// Whether the agent has a concurrency limit (the run holds one of its slots).
    pub limited: bool,
}

impl AgentSpec {
    /// The kind of a run's agent that no longer exists.
    pub const DELETED: &'static str = "deleted";
}

// Run events: the domain types; `events` stores and reads them.

/// What an event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The run's status changed: `{status, attempt}`.
    Status,
    /// Text the agent produced: `{text}`. Consecutive deltas are coalesced.
    Delta,
    /// The agent called a tool: `{id, name, arguments}`.
    ToolCall,
    /// What the tool answered: `{id, name, result}` or `{id, name, error}`.
    ToolResult,
    /// A named output: `{name, mediaType, text | json | base64, size}`.
    Artifact,
    /// The run failed or timed out: `{errorCode, message}`.
    Error,
    /// The run completed: `{result}`.
    Completed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Delta => "delta",
            Self::ToolCall => "tool_call",
            Self::ToolResult => "tool_result",
            Self::Artifact => "artifact",
            Self::Error => "error",
            Self::Completed => "completed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "status" => Self::Status,
            "delta" => Self::Delta,
            "tool_call" => Self::ToolCall,
            "tool_result" => Self::ToolResult,
            "artifact" => Self::Artifact,
            "error" => Self::Error,
            "completed" => Self::Completed,
            _ => return None,
        })
    }
}

/// One event of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    pub run_id: Uuid,
    /// 1, 2, 3, … per run, with no gaps: the SSE `id`, and what `Last-Event-ID` resumes after.
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[schema(value_type = Object)]
    pub data: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl RunEvent {
    /// The status a `status` event reports as final, if it does: the stream ends after it.
    pub fn final_status(&self) -> Option<RunStatus> {
        if self.kind != EventKind::Status {
            return None;
        }
        self.data
            .get("status")
            .and_then(Value::as_str)
            .and_then(RunStatus::parse)
            .filter(|s| s.is_terminal())
    }
}

/// An event the lease holder is about to append (its number is given when it is written).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::TimedOut,
            RunStatus::Expired,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.is_terminal(), s.event_type().is_some());
        }
        assert_eq!(RunStatus::parse("pending"), None);
    }
}
