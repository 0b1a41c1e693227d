//! Conversations: what a session has said so far. The rows are written by the run state machine
//! (`runs::complete_many` appends a completed run's turn, and the claim takes the conversation);
//! this module reads them back for the executor.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

/// Most messages of a conversation handed to a run: the latest ones.
pub const HISTORY_LIMIT: i64 = 200;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `user` (what a run was given) or `assistant` (what it answered).
    pub role: String,
    pub content: String,
}

/// The conversation's latest [`HISTORY_LIMIT`] messages, oldest first. Scoped by tenant.
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
                         SELECT seq, role, content FROM messages \
                         WHERE tenant_id = $1 AND conversation_id = $2 \
                         ORDER BY seq DESC LIMIT $3) latest \
                     ORDER BY seq",
                )
                .await?,
            &[&tenant_id, &conversation_id, &HISTORY_LIMIT],
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
