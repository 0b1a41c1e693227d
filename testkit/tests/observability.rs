//! Traces, metrics and health: one invocation is one trace across the three binaries (checked by
//! a fake OTLP collector), and every binary serves Prometheus metrics that count what happened.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::otlp::{Collector, Span};
use switchyard_testkit::{Stack, StackOptions, free_port, poll};

/// Tracing on in every process, exporting often to `collector`.
fn traced(collector: &Collector) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} span: {spans:#?}");
    found[0]
}

#[tokio::test]
async fn one_invocation_is_one_trace_from_the_ingress_through_the_worker_to_the_notifier() {
    let collector = Collector::start().await.expect("collector");
    let env = traced(&collector);
    let stack = Stack::start(StackOptions {
        workers: 1,
        ingress_env: env.clone(),
        worker_env: env.clone(),
        notifier_env: env,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    // The caller traces too: its traceparent is the root of the run's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let accepted: Value = stack
        .http
        .post(format!("{}/v1/runs", stack.base_url))
        .bearer_auth(&stack.api_key)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"agentId": "echo", "message": "trace me", "webhookUrl": stack.receiver.url}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("the run");
    let run_id = accepted["id"].as_str().expect("id").to_owned();
    assert_eq!(accepted["traceId"], caller_trace, "{accepted}");
    stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| !r.is_empty())
        .await
        .expect("the webhook arrives");
    assert_eq!(
        stack.get_run(&run_id).await.expect("run")["traceId"],
        caller_trace
    );

    // Every span of the chain, down to the webhook's POST, reaches the collector. Each process
    // exports on its own, and a parent closes (and is exported) after its children.
    let runs_queue = format!("{}runs", stack.prefix);
    let deliveries_queue = format!("{}deliveries", stack.prefix);
    let expected = [
        ("switchyard-ingress", "POST /v1/runs".to_owned()),
        ("switchyard-ingress", format!("publish {runs_queue}")),
        ("switchyard-worker", format!("process {runs_queue}")),
        ("switchyard-worker", "claim".to_owned()),
        ("switchyard-worker", "execute echo".to_owned()),
        ("switchyard-worker", format!("publish {deliveries_queue}")),
        ("switchyard-notifier", format!("process {deliveries_queue}")),
        ("switchyard-notifier", "POST".to_owned()),
    ];
    let spans = poll(Duration::from_secs(20), || async {
        let spans: Vec<Span> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == caller_trace)
            .collect();
        expected
            .iter()
            .all(|(service, name)| {
                spans
                    .iter()
                    .any(|s| s.service == *service && s.name == *name)
            })
            .then_some(spans)
    })
    .await
    .unwrap_or_else(|_| panic!("every span arrives: {:#?}", collector.spans()));
    let server = one(&spans, "ingress server", |s| {
        s.service == "switchyard-ingress" && s.kind == "SPAN_KIND_SERVER"
    });
    assert_eq!(server.name, "POST /v1/runs");
    assert_eq!(server.parent_span_id, caller_span);
    assert_eq!(server.attribute("http.request.method"), Some("POST"));
    assert_eq!(server.attribute("http.route"), Some("/v1/runs"));
    assert_eq!(server.attribute("http.response.status_code"), Some("202"));
    let publish = one(&spans, "run publish", |s| {
        s.kind == "SPAN_KIND_PRODUCER" && s.name == format!("publish {runs_queue}")
    });
    assert_eq!(publish.service, "switchyard-ingress");
    assert_eq!(publish.parent_span_id, server.span_id);
    assert_eq!(publish.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some(runs_queue.as_str())
    );
    let consume = one(&spans, "run process", |s| {
        s.kind == "SPAN_KIND_CONSUMER" && s.name == format!("process {runs_queue}")
    });
    assert_eq!(consume.service, "switchyard-worker");
    assert_eq!(consume.parent_span_id, publish.span_id);
    let claim = one(&spans, "claim", |s| s.name == "claim");
    assert_eq!(claim.parent_span_id, consume.span_id);
    let execute = one(&spans, "execute", |s| s.name == "execute echo");
    assert_eq!(execute.parent_span_id, consume.span_id);
    assert_eq!(execute.attribute("run_id"), Some(run_id.as_str()));
    let handoff = one(&spans, "delivery publish", |s| {
        s.kind == "SPAN_KIND_PRODUCER" && s.name == format!("publish {deliveries_queue}")
    });
    assert_eq!(handoff.service, "switchyard-worker");
    assert_eq!(handoff.parent_span_id, execute.span_id);
    let deliver = one(&spans, "delivery process", |s| {
        s.kind == "SPAN_KIND_CONSUMER" && s.name == format!("process {deliveries_queue}")
    });
    assert_eq!(deliver.service, "switchyard-notifier");
    assert_eq!(deliver.parent_span_id, handoff.span_id);
    let post = one(&spans, "webhook POST", |s| {
        s.service == "switchyard-notifier" && s.kind == "SPAN_KIND_CLIENT"
    });
    assert_eq!(post.name, "POST");
    assert_eq!(post.parent_span_id, deliver.span_id);
    assert_eq!(post.attribute("http.response.status_code"), Some("200"));
    assert_eq!(post.attribute("server.address"), Some("127.0.0.1"));
    // The receiver got the same trace in the webhook's own traceparent.
    let hooks = stack.receiver.received();
    let traceparent = hooks[0]
        .traceparent
        .clone()
        .expect("the webhook carries traceparent");
    assert_eq!(
        traceparent,
        format!("00-{caller_trace}-{}-01", post.span_id)
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_run_published_when_its_session_frees_stays_in_its_own_trace() {
    let collector = Collector::start().await.expect("collector");
    let env = traced(&collector);
    let stack = Stack::start(StackOptions {
        workers: 1,
        ingress_env: env.clone(),
        worker_env: env.clone(),
        notifier_env: env,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    stack.add_echo_agent("slow", 400).await.expect("agent");
    // Two runs of one session, each from a caller with its own trace: the second waits for the
    // first, and the first's worker publishes it when it ends.
    let mut ids = Vec::new();
    for (n, trace) in [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    ]
    .into_iter()
    .enumerate()
    {
        let run: Value = stack
            .http
            .post(format!("{}/v1/runs", stack.base_url))
            .bearer_auth(&stack.api_key)
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b{n}-01"))
            .json(
                &json!({"agentId": "slow", "message": format!("turn {n}"), "sessionId": "chat-1"}),
            )
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("the run");
        assert_eq!(run["traceId"], trace);
        ids.push((run["id"].as_str().expect("id").to_owned(), trace));
    }
    let (second, second_trace) = &ids[1];
    let executed = poll(Duration::from_secs(20), || async {
        let spans = collector.spans();
        spans
            .iter()
            .find(|s| s.name == "execute echo" && s.attribute("run_id") == Some(second.as_str()))
            .cloned()
    })
    .await
    .expect("the second run's execute span arrives");
    assert_eq!(
        executed.trace_id, *second_trace,
        "the second run is executed in its own trace, not in the first run's"
    );
    stack.shutdown().await;
}

/// The value of the series `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.expect("scraped");
    assert_eq!(response.status(), 200, "{url}");
    let kind = response.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.expect("the exposition")
}

#[tokio::test]
async fn every_binary_serves_metrics_that_count_what_happened_and_says_it_is_ready() {
    let (worker_port, notifier_port) = (free_port().expect("port"), free_port().expect("port"));
    let stack = Stack::start(StackOptions {
        workers: 1,
        worker_env: vec![("SWITCHYARD_OPS_LISTEN", format!("127.0.0.1:{worker_port}"))],
        notifier_env: vec![(
            "SWITCHYARD_OPS_LISTEN",
            format!("127.0.0.1:{notifier_port}"),
        )],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    for n in 0..3 {
        let accepted = stack
            .create_run(
                &json!({"agentId": "echo", "message": format!("count me {n}"),
                                "webhookUrl": stack.receiver.url}),
            )
            .await
            .expect("sent");
        assert_eq!(accepted.status(), 202);
    }
    let refused = stack
        .create_run(&json!({"agentId": "echo"}))
        .await
        .expect("sent");
    assert_eq!(refused.status(), 400);
    stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 3)
        .await
        .expect("three webhooks");
    let worker = format!("http://127.0.0.1:{worker_port}");
    let notifier = format!("http://127.0.0.1:{notifier_port}");

    let ingress = scrape(&stack.http, &format!("{}/metrics", stack.base_url)).await;
    let service = ("service", "switchyard-ingress");
    assert_eq!(
        sample(
            &ingress,
            "switchyard_http_requests_total",
            &[
                service,
                ("method", "POST"),
                ("route", "/v1/runs"),
                ("status", "202")
            ]
        ),
        Some(3.0),
        "{ingress}"
    );
    assert_eq!(
        sample(
            &ingress,
            "switchyard_http_requests_total",
            &[("route", "/v1/runs"), ("status", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &ingress,
            "switchyard_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/runs")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &ingress,
            "switchyard_invocations_total",
            &[("outcome", "accepted")]
        ),
        Some(3.0)
    );

    // The worker and the notifier count their part; the samplers run every few seconds.
    let counted = poll(Duration::from_secs(15), || async {
        let worker = scrape(&stack.http, &format!("{worker}/metrics")).await;
        let notifier = scrape(&stack.http, &format!("{notifier}/metrics")).await;
        let ready = sample(&worker, "switchyard_runs", &[("status", "queued")]).is_some()
            && sample(
                &notifier,
                "switchyard_deliveries_oldest_pending_seconds",
                &[],
            )
            .is_some()
            && sample(
                &notifier,
                "switchyard_deliveries_finished_total",
                &[("status", "delivered")],
            ) == Some(3.0);
        ready.then_some((worker, notifier))
    })
    .await;
    let (worker_text, notifier_text) = counted.expect("the worker and the notifier count");
    let w = ("service", "switchyard-worker");
    assert_eq!(
        sample(
            &worker_text,
            "switchyard_runs_finished_total",
            &[w, ("status", "completed")]
        ),
        Some(3.0),
        "{worker_text}"
    );
    assert_eq!(
        sample(&worker_text, "switchyard_run_queue_lag_seconds_count", &[w]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &worker_text,
            "switchyard_run_execution_seconds_count",
            &[("tenant", "default"), ("agent", "echo")]
        ),
        Some(3.0)
    );
    let n = ("service", "switchyard-notifier");
    assert_eq!(
        sample(
            &notifier_text,
            "switchyard_delivery_attempts_total",
            &[n, ("outcome", "success")]
        ),
        Some(3.0),
        "{notifier_text}"
    );
    assert_eq!(
        sample(
            &notifier_text,
            "switchyard_delivery_attempt_duration_seconds_count",
            &[n]
        ),
        Some(3.0)
    );
    // Every binary reports its pool and its broker connection.
    for (text, service) in [
        (&ingress, "switchyard-ingress"),
        (&worker_text, "switchyard-worker"),
        (&notifier_text, "switchyard-notifier"),
    ] {
        let s = ("service", service);
        assert_eq!(
            sample(text, "switchyard_broker_connected", &[s]),
            Some(1.0),
            "{service}"
        );
        assert!(
            sample(text, "switchyard_db_pool_max_connections", &[s]).is_some_and(|m| m >= 1.0),
            "{service}"
        );
        assert!(
            sample(
                text,
                "switchyard_db_pool_connections",
                &[s, ("state", "idle")]
            )
            .is_some()
        );
    }

    // Health: alive, and ready with both dependencies up.
    for base in [&worker, &notifier] {
        let alive: Value = stack
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .json()
            .await
            .expect("json");
        assert_eq!(alive["status"], "ok");
        let ready = stack
            .http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);
        let ready: Value = ready.json().await.expect("json");
        assert_eq!(
            ready,
            json!({"status": "ready", "postgres": "up", "rabbitmq": "up"})
        );
    }
    stack.shutdown().await;
}
