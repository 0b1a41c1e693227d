//! Run events and how clients follow them: the SSE stream (replay, live, resume across ingress
//! replicas, keep-alives), `stream: true` on create, and waiting.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::sse::{Item, Reader, SseEvent};
use switchyard_testkit::{Stack, StackOptions, poll};

async fn start(options: StackOptions) -> Stack {
    Stack::start(options).await.expect("stack starts")
}

async fn create(stack: &Stack, base: &str, body: Value) -> String {
    let response = stack
        .http
        .post(format!("{base}/v1/runs"))
        .bearer_auth(&stack.api_key)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.expect("json");
    run["id"].as_str().expect("id").to_owned()
}

async fn open(stack: &Stack, base: &str, run_id: &str, last_event_id: Option<i64>) -> Reader {
    let mut request = stack
        .http
        .get(format!("{base}/v1/runs/{run_id}/events"))
        .bearer_auth(&stack.api_key);
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    Reader::new(response)
}

async fn finished(stack: &Stack, run_id: &str) -> Value {
    poll(Duration::from_secs(20), || async {
        let run = stack.get_run(run_id).await.ok()?;
        matches!(run["status"].as_str(), Some("completed" | "failed")).then_some(run)
    })
    .await
    .expect("the run finishes")
}

/// Checks the shape every stream has: ids are the event numbers, from `first`, with no gap; the
/// `event` field is the type; the data is the event; the last one is the final status.
fn assert_well_formed(events: &[SseEvent], run_id: &str, first: i64, last_status: &str) {
    assert!(!events.is_empty());
    for (n, event) in (first..).zip(events) {
        let data = event.json();
        assert_eq!(event.seq(), Some(n), "{events:?}");
        assert_eq!(data["seq"], n);
        assert_eq!(data["runId"], run_id);
        assert_eq!(event.event.as_deref(), data["type"].as_str());
        assert!(data["createdAt"].is_string());
    }
    let last = events.last().expect("one").json();
    assert_eq!(last["type"], "status");
    assert_eq!(last["data"]["status"], last_status);
}

fn text_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .map(SseEvent::json)
        .filter(|e| e["type"] == "delta")
        .map(|e| e["data"]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_finished_run_replays_every_event_and_resumes_after_any_of_them() {
    let stack = start(StackOptions::default()).await;
    stack.add_echo_agent("paced", 400).await.expect("agent");
    let message = "one two three four";
    let run_id = create(
        &stack,
        &stack.base_url,
        json!({"agentId": "paced", "message": message}),
    )
    .await;
    let run = finished(&stack, &run_id).await;
    assert_eq!(run["status"], "completed");

    let mut replay = open(&stack, &stack.base_url, &run_id, None).await;
    let all = replay.collect(Duration::from_secs(10)).await;
    assert!(replay.closed(), "the replay ends with the run's last event");
    assert_well_formed(&all, &run_id, 1, "completed");
    let types: Vec<Value> = all.iter().map(|e| e.json()["type"].clone()).collect();
    assert_eq!(types.first(), Some(&json!("status")));
    assert_eq!(
        all[0].json()["data"],
        json!({"status": "running", "attempt": 1})
    );
    assert_eq!(types[types.len() - 2], "completed");
    assert_eq!(
        all[all.len() - 2].json()["data"]["result"],
        json!({"output": message})
    );
    assert_eq!(text_of(&all), message);
    assert!(
        types.iter().filter(|t| *t == "delta").count() >= 2,
        "the words were streamed apart: {types:?}"
    );

    // Resuming after event 2, by header or by query, gives exactly the rest.
    let rest = open(&stack, &stack.base_url, &run_id, Some(2))
        .await
        .collect(Duration::from_secs(10))
        .await;
    assert_eq!(rest, all[2..].to_vec());
    let by_query = stack
        .http
        .get(format!(
            "{}/v1/runs/{run_id}/events?after=2",
            stack.base_url
        ))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("sent");
    let by_query = Reader::new(by_query).collect(Duration::from_secs(10)).await;
    assert_eq!(by_query, rest);
    // After the last one there is nothing left, and the stream ends at once.
    let last = all.last().and_then(SseEvent::seq).expect("seq");
    let mut after_end = open(&stack, &stack.base_url, &run_id, Some(last)).await;
    assert!(after_end.collect(Duration::from_secs(5)).await.is_empty());
    assert!(after_end.closed());
    stack.shutdown().await;
}

#[tokio::test]
async fn a_live_stream_moves_between_ingress_replicas_without_gap_or_repeat() {
    let stack = start(StackOptions::default()).await;
    let (_second, other) = stack.add_ingress().await.expect("second ingress");
    stack.add_echo_agent("paced", 3000).await.expect("agent");
    let message = "a b c d e f g h i j k l";
    // Accepted by one replica, streamed from the other.
    let run_id = create(
        &stack,
        &stack.base_url,
        json!({"agentId": "paced", "message": message}),
    )
    .await;
    let mut first = open(&stack, &other, &run_id, None).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            first
                .next_event(Duration::from_secs(10))
                .await
                .expect("a live event"),
        );
    }
    drop(first);
    let run = stack.get_run(&run_id).await.expect("run");
    assert_eq!(run["status"], "running", "the client left mid-run");

    // Reconnect to the first replica, after the last event received.
    let last = seen.last().and_then(SseEvent::seq).expect("seq");
    let mut second = open(&stack, &stack.base_url, &run_id, Some(last)).await;
    let rest = second.collect(Duration::from_secs(15)).await;
    assert!(second.closed(), "the live stream ends with the run");
    seen.extend(rest);
    assert_well_formed(&seen, &run_id, 1, "completed");
    assert_eq!(text_of(&seen), message);
    stack.shutdown().await;
}

#[tokio::test]
async fn creating_with_stream_follows_the_run_from_its_first_event() {
    let stack = start(StackOptions::default()).await;
    for (body, accept) in [
        (
            json!({"agentId": "echo", "message": "streamed by flag", "stream": true}),
            None,
        ),
        (
            json!({"agentId": "echo", "message": "streamed by header"}),
            Some("text/event-stream"),
        ),
    ] {
        let mut request = stack
            .http
            .post(format!("{}/v1/runs", stack.base_url))
            .bearer_auth(&stack.api_key)
            .json(&body);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), 200);
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location")
            .to_owned();
        let run_id = location.trim_start_matches("/v1/runs/").to_owned();
        let events = Reader::new(response).collect(Duration::from_secs(15)).await;
        assert_well_formed(&events, &run_id, 1, "completed");
        assert_eq!(
            text_of(&events),
            body["message"].as_str().unwrap_or_default()
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let stack = start(StackOptions {
        ingress_env: vec![("SWITCHYARD_SSE_KEEPALIVE", "200ms".into())],
        ..StackOptions::default()
    })
    .await;
    stack.add_echo_agent("quiet", 2500).await.expect("agent");
    let run_id = create(
        &stack,
        &stack.base_url,
        json!({"agentId": "quiet", "message": "eventually"}),
    )
    .await;
    let mut reader = open(&stack, &stack.base_url, &run_id, None).await;
    // The one word comes after 2.5 s; until then only comments arrive.
    let mut comments = 0;
    let mut events = Vec::new();
    while let Some(item) = reader.next(Duration::from_secs(10)).await {
        match item {
            Item::Comment(_) if events.len() <= 1 => comments += 1,
            Item::Comment(_) => {}
            Item::Event(event) => events.push(event),
        }
    }
    assert!(comments >= 3, "{comments} keep-alive comments");
    assert_well_formed(&events, &run_id, 1, "completed");
    stack.shutdown().await;
}

#[tokio::test]
async fn waiting_answers_the_finished_run_or_202_with_the_run_still_going() {
    let stack = start(StackOptions::default()).await;
    stack.add_echo_agent("slow", 2000).await.expect("agent");
    let run_id = create(
        &stack,
        &stack.base_url,
        json!({"agentId": "slow", "message": "patience"}),
    )
    .await;
    let wait = |timeout: &'static str| {
        let url = format!("{}/v1/runs/{run_id}/wait?timeout={timeout}", stack.base_url);
        let request = stack.http.get(url).bearer_auth(&stack.api_key);
        async move { request.send().await.expect("sent") }
    };
    let early = wait("0.3").await;
    assert_eq!(early.status(), 202);
    assert_eq!(
        early
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some(format!("/v1/runs/{run_id}").as_str())
    );
    let early: Value = early.json().await.expect("json");
    assert!(
        matches!(early["status"].as_str(), Some("queued" | "running")),
        "{early}"
    );
    let done = wait("15").await;
    assert_eq!(done.status(), 200);
    let done: Value = done.json().await.expect("json");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"]["output"], "patience");
    // A finished run answers at once; a bad timeout is a 400.
    assert_eq!(wait("0").await.status(), 200);
    assert_eq!(wait("-1").await.status(), 400);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_failed_run_streams_its_error_and_final_status() {
    let mut stack = start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    stack.add_echo_agent("doomed", 0).await.expect("agent");
    let run_id = create(
        &stack,
        &stack.base_url,
        json!({"agentId": "doomed", "message": "never"}),
    )
    .await;
    // Deleted before any worker starts it: the run fails with `agent_not_found`.
    stack
        .db
        .client()
        .await
        .expect("db")
        .execute("DELETE FROM agents WHERE id = 'doomed'", &[])
        .await
        .expect("delete");
    let mut reader = open(&stack, &stack.base_url, &run_id, None).await;
    stack.add_worker().expect("worker");
    let events = reader.collect(Duration::from_secs(15)).await;
    assert_well_formed(&events, &run_id, 1, "failed");
    let error = events[events.len() - 2].json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["data"]["errorCode"], "agent_not_found");
    // A malformed id gets 404; a bad Last-Event-ID is a 400.
    let other = stack
        .http
        .get(format!("{}/v1/runs/not-a-uuid/events", stack.base_url))
        .bearer_auth(&stack.api_key)
        .send()
        .await
        .expect("sent");
    assert_eq!(other.status(), 404);
    let bad = stack
        .http
        .get(format!("{}/v1/runs/{run_id}/events", stack.base_url))
        .bearer_auth(&stack.api_key)
        .header("Last-Event-ID", "minus one")
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    stack.shutdown().await;
}
