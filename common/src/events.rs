//! Run events: every step of a run, numbered per run. They are persisted in `run_events` (the
//! record a stream replays and resumes from) and published on the `events` topic exchange under
//! `run.<id>` (how live listeners on any ingress replica hear them).
//!
//! The worker holding a run's lease appends its events in order; the transitions out of
//! `running` (and out of `queued`) append their own closing events in the same statement as the
//! status change (`runs`), so a run that has ended always ends its stream with a `status` event
//! naming the final status.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

pub use crate::model::{EventKind, NewEvent, RunEvent};

/// The columns [`from_row`] reads.
pub(crate) const COLUMNS: &str = "run_id, seq, kind, data, created_at";

pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<RunEvent, tokio_postgres::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(RunEvent {
        run_id: row.try_get("run_id")?,
        seq: row.try_get("seq")?,
        // The writers use the names above only.
        kind: EventKind::parse(&kind).unwrap_or(EventKind::Status),
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Appends `events` to `run_id` as seq `first`, `first + 1`, …, in one statement, only while
/// `owner` holds the run's lease (a run taken from a stalled worker gets none of its late events).
/// Returns what was written; empty when the lease is gone.
pub async fn append(
    client: &impl GenericClient,
    run_id: Uuid,
    owner: &str,
    first: i64,
    events: &[NewEvent],
) -> Result<Vec<RunEvent>, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = (0..events.len())
        .map(|n| first + i64::try_from(n).unwrap_or(i64::MAX))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    let sql = format!(
        "INSERT INTO run_events (run_id, seq, kind, data) \
         SELECT $1, e.seq, e.kind, e.data FROM unnest($2::bigint[], $3::text[], $4::jsonb[]) AS e(seq, kind, data) \
         WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND status = 'running' AND lease_owner = $5) \
         RETURNING {COLUMNS}"
    );
    let rows = client
        .query(
            &client.prepare_cached(&sql).await?,
            &[&run_id, &seqs, &kinds, &data, &owner],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Most bytes of event data one [`after`] page holds (past one event: a page always has at
/// least one event when there is one to read).
pub const PAGE_BYTES: i64 = 1024 * 1024;

/// One page of a run's stored events.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<RunEvent>,
    /// The page stopped at its count or byte limit: read again after its last event.
    pub more: bool,
}

/// The events of `run_id` after `after`, oldest first: at most `limit` of them, and no more
/// than [`PAGE_BYTES`] of data past the first. The caller has checked that the run is the
/// tenant's.
pub async fn after(
    client: &impl GenericClient,
    run_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Page, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS}, size FROM ( \
             SELECT {COLUMNS}, octet_length(data::text) AS size, \
                    sum(octet_length(data::text)) OVER (ORDER BY seq) AS running \
             FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) e \
         WHERE e.running - e.size < $4 ORDER BY seq"
    );
    let rows = client
        .query(
            &client.prepare_cached(&sql).await?,
            &[&run_id, &after, &limit, &PAGE_BYTES],
        )
        .await?;
    let mut bytes: i64 = 0;
    let events = rows
        .iter()
        .map(|row| {
            bytes += row.try_get::<_, i32>("size").map(i64::from).unwrap_or(0);
            from_row(row)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let more = i64::try_from(events.len()).unwrap_or(i64::MAX) >= limit || bytes >= PAGE_BYTES;
    Ok(Page { events, more })
}

/// The last event number of each of `runs` that has events.
pub async fn last_seqs(
    client: &impl GenericClient,
    runs: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            &client
                .prepare_cached(
                    "SELECT run_id, max(seq) FROM run_events WHERE run_id = ANY($1) GROUP BY run_id",
                )
                .await?,
            &[&runs],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Reads the events a transition appended from the `events` column of its statement (a JSON
/// array built by the `runs` transitions).
pub(crate) fn from_json(value: Option<Value>) -> Vec<RunEvent> {
    value
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunStatus;
    use serde_json::json;
    use time::OffsetDateTime;

    #[test]
    fn only_terminal_status_events_end_a_stream() {
        let event = |kind, data| RunEvent {
            run_id: Uuid::nil(),
            seq: 1,
            kind,
            data,
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            event(EventKind::Status, json!({"status": "completed"})).final_status(),
            Some(RunStatus::Completed)
        );
        assert_eq!(
            event(EventKind::Status, json!({"status": "running"})).final_status(),
            None
        );
        assert_eq!(
            event(EventKind::Completed, json!({"status": "completed"})).final_status(),
            None
        );
        for kind in [
            "status",
            "delta",
            "tool_call",
            "tool_result",
            "artifact",
            "error",
            "completed",
        ] {
            assert_eq!(EventKind::parse(kind).map(EventKind::as_str), Some(kind));
        }
    }

    #[test]
    fn events_travel_as_json_with_a_type() {
        let e = RunEvent {
            run_id: Uuid::nil(),
            seq: 7,
            kind: EventKind::ToolCall,
            data: json!({"name": "lookup"}),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let text = serde_json::to_value(&e).expect("serialises");
        assert_eq!(text["type"], "tool_call");
        assert_eq!(text["seq"], 7);
        let back: RunEvent = serde_json::from_value(text).expect("parses");
        assert_eq!(back, e);
    }
}
