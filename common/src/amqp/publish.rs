//! Confirmed publishes of work messages (one id each): concurrent callers share the publish
//! channel, so their confirms are pipelined rather than serialised; each message is sent in a
//! producer span whose `traceparent` it carries.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::telemetry;

use super::{Broker, IdMessage, PublishError};

impl Broker {
    /// Publishes one id to `queue` and waits for the broker's confirm. Concurrent callers share
    /// one channel, so their confirms are pipelined rather than serialised.
    pub async fn publish_id(&self, queue: &str, id: Uuid) -> Result<(), PublishError> {
        self.publish_id_in(queue, id, None).await
    }

    /// [`Broker::publish_id`] in the trace `traceparent` names (else the current span's): for a
    /// run published again, in the trace of the request that accepted it.
    pub async fn publish_id_in(
        &self,
        queue: &str,
        id: Uuid,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let span = publish_span(queue, id);
        if let Some(parent) = traceparent {
            telemetry::adopt_trace_parent(&span, Some(&telemetry::amqp_headers_of(parent)));
        }
        let headers = span.in_scope(telemetry::current_trace_headers);
        let confirm = tokio::time::timeout(self.0.publish_timeout, async {
            send_with(&live.publisher, queue, id, None, headers)
                .await?
                .await
                .map_err(PublishError::from)
        })
        .instrument(span)
        .await
        .map_err(|_| PublishError::Timeout)??;
        check(confirm)
    }

    /// [`Broker::publish_id`] with a per-message expiration: in a queue that dead-letters, the
    /// message moves on after `wait`.
    pub async fn publish_id_for(
        &self,
        queue: &str,
        id: Uuid,
        wait: Duration,
    ) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let expiration = wait.as_millis().to_string();
        let span = publish_span(queue, id);
        let headers = span.in_scope(telemetry::current_trace_headers);
        let confirm = tokio::time::timeout(self.0.publish_timeout, async {
            send_with(&live.publisher, queue, id, Some(&expiration), headers)
                .await?
                .await
                .map_err(PublishError::from)
        })
        .instrument(span)
        .await
        .map_err(|_| PublishError::Timeout)??;
        check(confirm)
    }

    /// Publishes many ids: all sent first, then all confirms awaited together. Returns how many
    /// were confirmed; the rest stay to the sweepers.
    pub async fn publish_ids(&self, queue: &str, ids: &[Uuid]) -> Result<usize, PublishError> {
        let messages: Vec<(Uuid, Option<&FieldTable>)> = ids.iter().map(|id| (*id, None)).collect();
        self.publish_ids_traced(queue, &messages).await
    }

    /// [`Broker::publish_ids`], each message in the trace its headers name (else the current
    /// span's): a message's `publish` span is a child of that trace.
    pub async fn publish_ids_traced(
        &self,
        queue: &str,
        messages: &[(Uuid, Option<&FieldTable>)],
    ) -> Result<usize, PublishError> {
        if messages.is_empty() {
            return Ok(0);
        }
        let live = self.live().ok_or(PublishError::Unavailable)?;
        tokio::time::timeout(self.0.publish_timeout, async {
            let mut pending = Vec::with_capacity(messages.len());
            for (id, parent) in messages {
                let span = publish_span(queue, *id);
                if parent.is_some() {
                    telemetry::adopt_trace_parent(&span, *parent);
                }
                let headers = span.in_scope(telemetry::current_trace_headers);
                pending.push(
                    send_with(&live.publisher, queue, *id, None, headers)
                        .instrument(span)
                        .await?,
                );
            }
            let confirmed = futures::future::join_all(pending)
                .await
                .into_iter()
                .filter(|c| matches!(c, Ok(Confirmation::Ack(None))))
                .count();
            Ok(confirmed)
        })
        .await
        .map_err(|_| PublishError::Timeout)?
    }
}

/// A producer span for one message (OpenTelemetry's messaging conventions).
fn publish_span(queue: &str, id: Uuid) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = %format!("publish {queue}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = %queue,
        messaging.message.id = %id,
    )
}

async fn send_with(
    channel: &Channel,
    queue: &str,
    id: Uuid,
    expiration_ms: Option<&str>,
    headers: FieldTable,
) -> lapin::Result<lapin::PublisherConfirm> {
    let body = serde_json::to_vec(&IdMessage { id }).unwrap_or_default();
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.to_string().into())
        .with_headers(headers);
    if let Some(ms) = expiration_ms {
        properties = properties.with_expiration(ms.into());
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await
}

fn check(confirm: Confirmation) -> Result<(), PublishError> {
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}
