//! A small reader of `text/event-stream` responses, for tests: events with their `id` and
//! `event` fields, and comments (keep-alives).

use std::time::Duration;

use serde_json::Value;

/// One thing read from a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(SseEvent),
    /// A comment line (`: …`), as servers send to keep a connection alive.
    Comment(String),
}

/// One event: its fields as sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    /// The id as a number.
    pub fn seq(&self) -> Option<i64> {
        self.id.as_deref().and_then(|id| id.parse().ok())
    }
}

/// Reads items off a streaming response as they arrive.
pub struct Reader {
    response: reqwest::Response,
    buffer: String,
    current: SseEvent,
    has_fields: bool,
    closed: bool,
}

impl Reader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: String::new(),
            current: SseEvent::default(),
            has_fields: false,
            closed: false,
        }
    }

    /// The next item, or `None` when the stream ended (or `timeout` passed with nothing new).
    pub async fn next(&mut self, timeout: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(item) = self.line(line) {
                    return Some(item);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()?;
            let Some(chunk) = chunk else {
                self.closed = true;
                return None;
            };
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Whether the server ended the stream (as opposed to a read timing out).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The next event, skipping comments.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Item::Event(event) => return Some(event),
                Item::Comment(_) => {}
            }
        }
    }

    /// Every event until the stream ends (or `timeout` passes).
    pub async fn collect(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(event) => events.push(event),
                None => return events,
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<Item> {
        if line.is_empty() {
            if !self.has_fields {
                return None;
            }
            self.has_fields = false;
            return Some(Item::Event(std::mem::take(&mut self.current)));
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(Item::Comment(comment.trim().to_owned()));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        self.has_fields = true;
        match field {
            "id" => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = Some(value.to_owned()),
            "data" => {
                if !self.current.data.is_empty() {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}
