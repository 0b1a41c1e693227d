//! Conversations: what a session has said so far. The rows are written by the run state machine
//! (`runs::complete_many` appends a completed run's turn, and the claim takes the conversation);
//! this module reads them back for the executor.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

/// Most messages of a conversation handed to a run: the latest ones.
pub const HISTORY_LIMIT: i64 = 200;
/// Most bytes of messages handed to a run (past the newest message, which always goes): a
/// session's history cannot make a worker hold more than this for one run.
pub const HISTORY_BYTES: i64 = 2 * 1024 * 1024;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `user` (what a run was given) or `assistant` (what it answered).
    pub role: String,
    pub content: String,
}

/// The conversation's latest messages, oldest first: at most [`HISTORY_LIMIT`] of them and
/// [`HISTORY_BYTES`] of text. Scoped by tenant.
pub async fn history(
    client: &impl GenericClient,
    tenant_id: &str,
    conversation_id: Uuid,
) -> Result<Vec<Message>, tokio_postgres::Error> {
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "SELECT role, content FROM ( \
                         SELECT seq, role, content, octet_length(content) AS size, \
                                sum(octet_length(content)) OVER (ORDER BY seq DESC) AS running \
                         FROM messages \
                         WHERE tenant_id = $1 AND conversation_id = $2 \
                         ORDER BY seq DESC LIMIT $3) latest \
                     WHERE running - size < $4 \
                     ORDER BY seq",
                )
                .await?,
            &[&tenant_id, &conversation_id, &HISTORY_LIMIT, &HISTORY_BYTES],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Message {
                role: row.try_get(0)?,
                content: row.try_get(1)?,
            })
        })
        .collect()
}
