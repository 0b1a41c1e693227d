//! Domain types shared by every binary: run statuses and the public view of a run.

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a run is in its lifecycle. Transitions happen only through [`crate::runs`].
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
        match self {
            Self::Completed => Some("run.completed"),
            Self::Failed => Some("run.failed"),
            Self::Cancelled => Some("run.cancelled"),
            Self::TimedOut => Some("run.timed_out"),
            Self::Expired => Some("run.expired"),
            Self::Queued | Self::Running => None,
        }
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
    /// The number of the run's last event, as a claim read it (0 elsewhere).
    #[serde(skip)]
    #[schema(ignore)]
    pub last_seq: i64,
    /// The events the statement that returned this run appended (to publish them live).
    #[serde(skip)]
    #[schema(ignore)]
    pub events: Vec<crate::events::RunEvent>,
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
