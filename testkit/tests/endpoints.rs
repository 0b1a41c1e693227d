//! Tenant webhook endpoints against the real services: filters, per-endpoint secrets and thin
//! bodies, rotation with both signatures, isolation of a slow endpoint, rate limits, and
//! auto-disable (by 410, and by failing beyond the window) with re-enable and recover.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_common::signing::{DEFAULT_TOLERANCE_SECS, Secret};
use switchyard_testkit::api::{
    assert_problem, delete, get, patch, post, project_with_agent, tenant,
};
use switchyard_testkit::receiver::{Received, Receiver};
use switchyard_testkit::{Stack, StackOptions, poll};

struct Fixture {
    stack: Stack,
    tenant: String,
    key: String,
}

impl Fixture {
    async fn with(options: StackOptions) -> Self {
        let stack = Stack::start(options).await.expect("stack starts");
        let (tenant, key) = tenant(&stack).await;
        project_with_agent(&stack, &tenant, &key, "p1", "a1").await;
        project_with_agent(&stack, &tenant, &key, "p2", "a2").await;
        Self { stack, tenant, key }
    }

    fn endpoints(&self) -> String {
        format!("/manage/tenants/{}/webhook-endpoints", self.tenant)
    }

    /// A receiver with a fresh secret, and an endpoint to it made with `spec` and that secret.
    async fn endpoint(&self, id: &str, spec: Value) -> Receiver {
        let secret = Secret::generate().to_whsec();
        let receiver = Receiver::start(&secret, Vec::new())
            .await
            .expect("receiver");
        self.endpoint_to(id, &receiver, &secret, spec).await;
        receiver
    }

    async fn endpoint_to(&self, id: &str, receiver: &Receiver, secret: &str, spec: Value) {
        let mut body = json!({"id": id, "url": receiver.url, "secret": secret});
        if let (Some(body), Some(spec)) = (body.as_object_mut(), spec.as_object()) {
            body.extend(spec.clone());
        }
        let made = post(&self.stack, &self.endpoints(), &self.key, body).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }

    async fn endpoint_state(&self, id: &str) -> Value {
        let got = get(
            &self.stack,
            &format!("{}/{id}", self.endpoints()),
            &self.key,
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.body);
        got.body["data"].clone()
    }

    /// Starts a run of `agent` and waits until it has completed.
    async fn completed_run(&self, agent: &str, message: &str) -> String {
        let made = post(
            &self.stack,
            "/v1/runs",
            &self.key,
            json!({"agentId": agent, "message": message}),
        )
        .await;
        assert_eq!(made.status, 202, "{}", made.body);
        let id = made.body["id"].as_str().expect("id").to_owned();
        poll(Duration::from_secs(30), || async {
            let run = get(&self.stack, &format!("/v1/runs/{id}"), &self.key).await;
            (run.body["status"] == "completed").then_some(())
        })
        .await
        .expect("the run completes");
        id
    }

    async fn deliveries(&self, query: &str) -> Value {
        let listed = get(
            &self.stack,
            &format!("/manage/tenants/{}/deliveries{query}", self.tenant),
            &self.key,
        )
        .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        listed.body
    }
}

/// Whether `secret` verifies what `r` received, as a receiver holding it would.
fn verifies(secret: &str, r: &Received) -> bool {
    Secret::parse(secret)
        .expect("secret")
        .verify(
            Some(&r.webhook_id),
            Some(&r.timestamp),
            Some(&r.signature),
            &r.raw_body,
            time::OffsetDateTime::now_utc().unix_timestamp(),
            DEFAULT_TOLERANCE_SECS,
        )
        .is_ok()
}

fn types_and_ids(received: &[Received]) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            (
                r.body["type"].as_str().unwrap_or_default().to_owned(),
                r.body["data"]["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

#[tokio::test]
async fn endpoints_are_managed_with_their_secrets_shown_on_request() {
    let f = Fixture::with(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let made = post(
        &f.stack,
        &f.endpoints(),
        &f.key,
        json!({"url": "https://hooks.example.com/in", "description": "orders",
               "eventTypes": ["run.completed", "invocation.dropped"], "projectId": "p1",
               "rateLimit": 5, "maxConcurrency": 3}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let endpoint = &made.body["data"];
    let id = endpoint["id"].as_str().expect("a generated id").to_owned();
    assert_eq!(endpoint["enabled"], true);
    assert_eq!(endpoint["thin"], false);
    assert_eq!(endpoint["rateLimit"], 5);
    assert_eq!(endpoint["maxConcurrency"], 3);
    assert_eq!(endpoint["projectId"], "p1");
    assert!(endpoint.get("secret").is_none(), "never in the endpoint");

    let shown = get(&f.stack, &format!("{}/{id}/secret", f.endpoints()), &f.key).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let key = shown.body["data"]["key"].as_str().expect("key");
    let parsed = Secret::parse(key).expect("a whsec_ secret");
    assert!(key.starts_with("whsec_") && parsed.len() == 32, "{key}");
    assert!(shown.body["data"]["previousKeyExpiresAt"].is_null());

    // Defaults: every event type, unlimited rate, ten at once.
    let supplied = Secret::generate().to_whsec();
    let second = post(
        &f.stack,
        &f.endpoints(),
        &f.key,
        json!({"id": "all", "url": "http://hooks.example.com/all", "secret": supplied}),
    )
    .await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["data"]["eventTypes"], json!(["*"]));
    assert_eq!(second.body["data"]["rateLimit"], Value::Null);
    assert_eq!(second.body["data"]["maxConcurrency"], 10);
    let shown = get(&f.stack, &format!("{}/all/secret", f.endpoints()), &f.key).await;
    assert_eq!(shown.body["data"]["key"], supplied.as_str());

    for (body, detail) in [
        (
            json!({"url": "ftp://x.example.com"}),
            "`url` must be an absolute http or https URL",
        ),
        (
            json!({"url": "https://x.example.com", "eventTypes": ["run.started"]}),
            "`eventTypes`: `run.started` is not an event type",
        ),
        (
            json!({"url": "https://x.example.com", "eventTypes": []}),
            "`eventTypes` must name 1 or more event types",
        ),
        (
            json!({"url": "https://x.example.com", "projectId": "nope"}),
            "`projectId`: project `nope` was not found",
        ),
        (
            json!({"url": "https://x.example.com", "secret": "whsec_c2hvcnQ="}),
            "a secret must be `whsec_`",
        ),
        (
            json!({"url": "https://x.example.com", "maxConcurrency": 0}),
            "`maxConcurrency` must be 1 to 1000",
        ),
    ] {
        let refused = post(&f.stack, &f.endpoints(), &f.key, body.clone()).await;
        assert_problem(&refused, 422, "unprocessable_entity");
        assert!(
            refused.body["detail"]
                .as_str()
                .unwrap_or_default()
                .starts_with(detail),
            "{body}: {}",
            refused.body
        );
    }
    let unknown_field = post(
        &f.stack,
        &f.endpoints(),
        &f.key,
        json!({"url": "https://x.example.com", "filterTypes": ["*"]}),
    )
    .await;
    assert_problem(&unknown_field, 400, "bad_request");
    let taken = post(
        &f.stack,
        &f.endpoints(),
        &f.key,
        json!({"id": "all", "url": "https://x.example.com"}),
    )
    .await;
    assert_problem(&taken, 409, "conflict");

    let patched = patch(
        &f.stack,
        &format!("{}/{id}", f.endpoints()),
        &f.key,
        json!({"thin": true, "projectId": null, "rateLimit": null, "enabled": false}),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let p = &patched.body["data"];
    assert_eq!(p["thin"], true);
    assert_eq!(p["projectId"], Value::Null);
    assert_eq!(p["rateLimit"], Value::Null);
    assert_eq!(p["enabled"], false);
    assert_eq!(p["disabledReason"], "disabled through the API");
    assert_eq!(p["description"], "orders", "untouched");

    let listed = get(&f.stack, &f.endpoints(), &f.key).await;
    assert_eq!(listed.body["pagination"]["total"], 2);

    // Another tenant sees none of it.
    let (other, other_key) = tenant(&f.stack).await;
    let foreign = get(
        &f.stack,
        &format!("/manage/tenants/{}/webhook-endpoints/{id}", f.tenant),
        &other_key,
    )
    .await;
    assert_problem(&foreign, 404, "not_found");
    let own = get(
        &f.stack,
        &format!("/manage/tenants/{other}/webhook-endpoints/{id}"),
        &other_key,
    )
    .await;
    assert_problem(&own, 404, "not_found");

    let gone = delete(&f.stack, &format!("{}/{id}", f.endpoints()), &f.key).await;
    assert_eq!(gone.status, 204);
    let again = get(&f.stack, &format!("{}/{id}/secret", f.endpoints()), &f.key).await;
    assert_problem(&again, 404, "not_found");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn each_endpoint_receives_what_its_filters_select_signed_with_its_own_secret() {
    let f = Fixture::with(StackOptions::default()).await;
    let completed_p1 = f
        .endpoint(
            "completed-p1",
            json!({"eventTypes": ["run.completed"], "projectId": "p1"}),
        )
        .await;
    let everything = f.endpoint("everything", json!({"eventTypes": ["*"]})).await;
    let drops = f
        .endpoint("drops", json!({"eventTypes": ["invocation.dropped"]}))
        .await;
    let thin_p2 = f
        .endpoint("thin-p2", json!({"projectId": "p2", "thin": true}))
        .await;
    let trigger = post(
        &f.stack,
        &format!(
            "/manage/tenants/{}/projects/p1/agents/a1/triggers",
            f.tenant
        ),
        &f.key,
        json!({"id": "orders", "name": "Orders", "messageTemplate": "order {{order.id}}",
               "filters": {"all": [{"pointer": "/order/total", "op": "gte", "value": 100}]}}),
    )
    .await;
    assert_eq!(trigger.status, 201, "{}", trigger.body);

    let run_p1 = f.completed_run("a1", "one").await;
    let run_p2 = f.completed_run("a2", "two").await;
    let invoke = |body: Value| {
        let f = &f;
        async move {
            f.stack
                .http
                .post(format!(
                    "{}/api/v1.0/project/p1/trigger/orders",
                    f.stack.base_url
                ))
                .header("x-api-key", &f.key)
                .json(&body)
                .send()
                .await
                .expect("sent")
        }
    };
    let dropped = invoke(json!({"order": {"id": 7, "total": 5}})).await;
    assert_eq!(dropped.status(), 400);
    let accepted = invoke(json!({"order": {"id": 8, "total": 500}})).await;
    assert_eq!(accepted.status(), 202);
    let triggered: Value = accepted.json().await.expect("run");
    let triggered_id = triggered["id"].as_str().expect("id").to_owned();
    poll(Duration::from_secs(30), || async {
        let run = get(&f.stack, &format!("/v1/runs/{triggered_id}"), &f.key).await;
        (run.body["status"] == "completed").then_some(())
    })
    .await
    .expect("the triggered run completes");

    // Every delivery is created by the time its event is recorded: the counts are final now.
    let count = |endpoint: &str| {
        let f = &f;
        let endpoint = endpoint.to_owned();
        async move {
            f.deliveries(&format!("?endpointId={endpoint}")).await["pagination"]["total"]
                .as_i64()
                .unwrap_or(-1)
        }
    };
    assert_eq!(count("completed-p1").await, 2, "p1's two completed runs");
    assert_eq!(count("everything").await, 4, "three runs and the drop");
    assert_eq!(count("drops").await, 1);
    assert_eq!(count("thin-p2").await, 1);

    let wait = Duration::from_secs(30);
    let got = completed_p1
        .wait_for(wait, |r| r.len() >= 2)
        .await
        .expect("2");
    assert_eq!(types_and_ids(&got), {
        let mut v = vec![
            ("run.completed".to_owned(), run_p1.clone()),
            ("run.completed".to_owned(), triggered_id.clone()),
        ];
        v.sort();
        v
    });
    let all = everything
        .wait_for(wait, |r| r.len() >= 4)
        .await
        .expect("4");
    let got_drops = drops.wait_for(wait, |r| !r.is_empty()).await.expect("1");
    let thin = thin_p2.wait_for(wait, |r| !r.is_empty()).await.expect("1");
    for r in got.iter().chain(&all).chain(&got_drops).chain(&thin) {
        assert!(r.verified, "signed with the endpoint's secret: {}", r.body);
    }
    // A receiver holding another endpoint's secret, or the default one, cannot verify it.
    assert!(!verifies(switchyard_testkit::WEBHOOK_SECRET, &got[0]));

    // The trigger's run carries its trigger and invocation ids.
    let from_trigger = all
        .iter()
        .find(|r| r.body["data"]["id"] == triggered_id.as_str())
        .expect("the triggered run's webhook");
    assert_eq!(from_trigger.body["data"]["triggerId"], "orders");
    assert_eq!(
        from_trigger.body["data"]["invocationId"],
        triggered_id.as_str()
    );
    assert_eq!(from_trigger.body["data"]["result"]["output"], "order 8");
    // The drop: its reason, trigger and body.
    let drop = &got_drops[0].body;
    assert_eq!(drop["type"], "invocation.dropped");
    assert_eq!(drop["data"]["triggerId"], "orders");
    assert_eq!(drop["data"]["outcome"], "dropped");
    assert_eq!(drop["data"]["requestPayload"]["order"]["id"], 7);
    assert!(drop["timestamp"].is_string());
    // Thin: ids, status and the run's URL, no result.
    let slim = &thin[0].body["data"];
    assert_eq!(slim["id"], run_p2.as_str());
    assert_eq!(slim["thin"], true);
    assert_eq!(slim["status"], "completed");
    assert_eq!(slim["url"], format!("/v1/runs/{run_p2}"));
    assert!(slim.get("result").is_none(), "{slim}");

    // Each delivery records its endpoint.
    let listed = f.deliveries("?endpointId=drops").await;
    assert_eq!(listed["data"][0]["endpointId"], "drops");
    assert_eq!(listed["data"][0]["eventType"], "invocation.dropped");
    assert!(listed["data"][0]["runId"].is_null());
    f.stack.shutdown().await;
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_until_the_overlap_ends() {
    let f = Fixture::with(StackOptions {
        ingress_env: vec![("SWITCHYARD_SECRET_ROTATION_OVERLAP", "10s".into())],
        ..StackOptions::default()
    })
    .await;
    let old = Secret::generate().to_whsec();
    let receiver = Receiver::start(&old, Vec::new()).await.expect("receiver");
    f.endpoint_to("rotating", &receiver, &old, json!({})).await;
    let rotated = post(
        &f.stack,
        &format!("{}/rotating/secret/rotate", f.endpoints()),
        &f.key,
        json!({}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new = rotated.body["data"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    assert_ne!(new, old);
    assert!(rotated.body["data"]["previousKeyExpiresAt"].is_string());
    let shown = get(
        &f.stack,
        &format!("{}/rotating/secret", f.endpoints()),
        &f.key,
    )
    .await;
    assert_eq!(shown.body["data"]["key"], new.as_str());

    f.completed_run("a1", "during the overlap").await;
    let during = receiver
        .wait_for(Duration::from_secs(30), |r| !r.is_empty())
        .await
        .expect("delivered");
    assert_eq!(during[0].signature.split(' ').count(), 2, "two signatures");
    assert!(verifies(&old, &during[0]), "the old secret still verifies");
    assert!(verifies(&new, &during[0]), "the new secret verifies");
    // So does the official library, with either secret, and it refuses a tampered copy.
    for secret in [&old, &new] {
        assert_eq!(
            switchyard_testkit::py::verify(secret, &during[..1], true),
            "1 verified, 1 rejected"
        );
    }

    poll(Duration::from_secs(20), || async {
        f.endpoint_state("rotating").await["previousSecretExpiresAt"]
            .is_null()
            .then_some(())
    })
    .await
    .expect("the overlap ends");
    f.completed_run("a1", "after the overlap").await;
    let after = receiver
        .wait_for(Duration::from_secs(30), |r| r.len() >= 2)
        .await
        .expect("delivered");
    assert_eq!(after[1].signature.split(' ').count(), 1, "one signature");
    assert!(verifies(&new, &after[1]));
    assert!(
        !verifies(&old, &after[1]),
        "the old secret no longer verifies"
    );

    // A supplied key is taken as is.
    let mine = Secret::generate().to_whsec();
    let supplied = post(
        &f.stack,
        &format!("{}/rotating/secret/rotate", f.endpoints()),
        &f.key,
        json!({"key": mine}),
    )
    .await;
    assert_eq!(supplied.body["data"]["key"], mine.as_str());
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_slow_endpoint_cannot_delay_deliveries_to_a_healthy_one() {
    let f = Fixture::with(StackOptions {
        webhook_timeout: "15s",
        // Few slots, so that a slow endpoint without a cap would hold them all.
        notifier_env: vec![("SWITCHYARD_NOTIFIER_CONCURRENCY", "6".into())],
        ..StackOptions::default()
    })
    .await;
    let slow = f.endpoint("slow", json!({"maxConcurrency": 2})).await;
    slow.hang_all(Duration::from_secs(10));
    let healthy = f.endpoint("healthy", json!({})).await;

    let started = Instant::now();
    let mut runs = Vec::new();
    for n in 0..12 {
        let made = post(
            &f.stack,
            "/v1/runs",
            &f.key,
            json!({"agentId": if n % 2 == 0 { "a1" } else { "a2" }, "message": format!("m{n}")}),
        )
        .await;
        assert_eq!(made.status, 202, "{}", made.body);
        runs.push(made.body["id"].as_str().expect("id").to_owned());
    }
    // The slow endpoint's first attempts take 10 s; every healthy delivery arrives well before.
    let arrived = healthy
        .wait_for(Duration::from_secs(9), |r| r.len() >= 12)
        .await
        .expect("the healthy endpoint gets all twelve while the slow one is still answering");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "before the slow endpoint answered once"
    );
    let mut ids: Vec<&str> = arrived
        .iter()
        .filter_map(|r| r.body["data"]["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = runs.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(
        slow.max_in_flight() <= 2,
        "the slow endpoint had {} attempts at once, over its cap of 2",
        slow.max_in_flight()
    );
    assert!(
        !slow.received().is_empty(),
        "the slow one is being served too"
    );
    // Deliveries held back are not attempts: none of the slow endpoint's has failed.
    let failed = f.deliveries("?endpointId=slow&status=failed").await;
    assert_eq!(failed["pagination"]["total"], 0);
    // Once it answers promptly, each attempt that ends wakes the next parked delivery: all
    // twelve arrive, each once, still two at a time at most.
    slow.hang_all(Duration::ZERO);
    let all = slow
        .wait_for(Duration::from_secs(40), |r| r.len() >= 12)
        .await
        .expect("the slow endpoint gets all twelve");
    let mut slow_ids: Vec<&str> = all
        .iter()
        .filter_map(|r| r.body["data"]["id"].as_str())
        .collect();
    slow_ids.sort_unstable();
    assert_eq!(slow_ids, expected);
    assert!(slow.max_in_flight() <= 2);
    f.stack.shutdown().await;
}

#[tokio::test]
async fn an_endpoints_rate_limit_spaces_its_deliveries() {
    let f = Fixture::with(StackOptions::default()).await;
    let limited = f.endpoint("limited", json!({"rateLimit": 2})).await;
    for n in 0..8 {
        let made = post(
            &f.stack,
            "/v1/runs",
            &f.key,
            json!({"agentId": "a1", "message": format!("m{n}")}),
        )
        .await;
        assert_eq!(made.status, 202, "{}", made.body);
    }
    let got = limited
        .wait_for(Duration::from_secs(30), |r| r.len() >= 8)
        .await
        .expect("all eight arrive");
    let first = got.iter().map(|r| r.at).min().expect("first");
    let last = got.iter().map(|r| r.at).max().expect("last");
    // Two a second after a burst of two: the eighth cannot come before 3 s after the first.
    assert!(
        last.duration_since(first) >= Duration::from_millis(2900),
        "8 deliveries at 2/s took only {:?}",
        last.duration_since(first)
    );
    // And in no stretch of t seconds more than 2 + 2t (with 100 ms of slack for the clocks).
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort();
    for i in 0..at.len() {
        for j in i + 1..at.len() {
            let t = at[j].duration_since(at[i]).as_secs_f64() + 0.1;
            let n = (j - i + 1) as f64;
            assert!(n <= 2.0 + 2.0 * t, "{n} deliveries within {t:.2} s");
        }
    }
    assert!(got.iter().all(|r| r.verified));
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_which_can_be_re_enabled_and_recovered() {
    let f = Fixture::with(StackOptions::default()).await;
    let secret = Secret::generate().to_whsec();
    let gone = Receiver::start(&secret, vec![410]).await.expect("receiver");
    f.endpoint_to(
        "gone",
        &gone,
        &secret,
        json!({"eventTypes": ["run.completed"]}),
    )
    .await;
    let watcher = f
        .endpoint("watcher", json!({"eventTypes": ["endpoint.disabled"]}))
        .await;
    // Failing is not enough: within the (default, 5 day) window an exhausted delivery leaves its
    // endpoint enabled.
    let failing_secret = Secret::generate().to_whsec();
    let failing = Receiver::start(&failing_secret, vec![500; 100])
        .await
        .expect("receiver");
    f.endpoint_to(
        "failing",
        &failing,
        &failing_secret,
        json!({"eventTypes": ["run.completed"]}),
    )
    .await;

    let first = f.completed_run("a1", "first").await;
    let disabled = poll(Duration::from_secs(30), || async {
        let e = f.endpoint_state("gone").await;
        (e["enabled"] == false).then_some(e)
    })
    .await
    .expect("the endpoint is disabled");
    assert_eq!(disabled["disabledReason"], "the endpoint answered 410 Gone");
    assert!(disabled["disabledAt"].is_string());
    let events = get(&f.stack, &format!("{}/gone/events", f.endpoints()), &f.key).await;
    assert_eq!(events.body["data"][0]["type"], "endpoint.disabled");
    assert_eq!(
        events.body["data"][0]["reason"],
        "the endpoint answered 410 Gone"
    );
    let told = watcher
        .wait_for(Duration::from_secs(30), |r| !r.is_empty())
        .await
        .expect("the watcher hears of it");
    assert_eq!(told[0].body["type"], "endpoint.disabled");
    assert_eq!(told[0].body["data"]["endpointId"], "gone");
    assert!(told[0].verified);

    // Disabled: a new run makes no delivery to it, and it cannot be recovered yet.
    let refused = post(
        &f.stack,
        &format!("{}/gone/recover", f.endpoints()),
        &f.key,
        json!({"since": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_problem(&refused, 409, "conflict");
    f.completed_run("a1", "second").await;
    let listed = f.deliveries("?endpointId=gone").await;
    assert_eq!(listed["pagination"]["total"], 1, "{listed}");
    assert_eq!(listed["data"][0]["status"], "failed");
    assert_eq!(listed["data"][0]["runId"], first.as_str());

    let enabled = patch(
        &f.stack,
        &format!("{}/gone", f.endpoints()),
        &f.key,
        json!({"enabled": true}),
    )
    .await;
    assert_eq!(enabled.status, 200, "{}", enabled.body);
    assert_eq!(enabled.body["data"]["enabled"], true);
    assert!(enabled.body["data"]["disabledReason"].is_null());
    let recovered = post(
        &f.stack,
        &format!("{}/gone/recover", f.endpoints()),
        &f.key,
        json!({"since": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(recovered.status, 202, "{}", recovered.body);
    assert_eq!(recovered.body["data"]["recovered"], 1);
    let again = gone
        .wait_for(Duration::from_secs(30), |r| r.len() >= 2)
        .await
        .expect("the recovered delivery arrives");
    assert_eq!(again[1].body["data"]["id"], first.as_str());
    assert_eq!(again[1].webhook_id, again[0].webhook_id, "the same message");
    poll(Duration::from_secs(10), || async {
        let d = f.deliveries("?endpointId=gone").await;
        (d["data"][0]["status"] == "delivered").then_some(())
    })
    .await
    .expect("delivered after the recovery");

    // The always-failing endpoint ran out of retries on the first run, and is still enabled.
    poll(Duration::from_secs(30), || async {
        let d = f
            .deliveries(&format!("?endpointId=failing&runId={first}"))
            .await;
        (d["data"][0]["status"] == "failed").then_some(())
    })
    .await
    .expect("the failing endpoint's first delivery is exhausted");
    assert!(failing.received().len() >= 4, "every attempt was made");
    let state = f.endpoint_state("failing").await;
    assert_eq!(state["enabled"], true, "{state}");
    assert!(state["failingSince"].is_string(), "{state}");
    f.stack.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_failing_beyond_the_window_is_disabled_when_a_delivery_runs_out() {
    let f = Fixture::with(StackOptions {
        retry_schedule: "1s,1s",
        notifier_env: vec![("SWITCHYARD_ENDPOINT_DISABLE_AFTER", "1s".into())],
        ..StackOptions::default()
    })
    .await;
    let failing_secret = Secret::generate().to_whsec();
    let failing = Receiver::start(&failing_secret, vec![500, 500, 500])
        .await
        .expect("receiver");
    f.endpoint_to("failing", &failing, &failing_secret, json!({}))
        .await;
    // Fails, then recovers on the retry: the window starts over, and it stays enabled.
    let flaky_secret = Secret::generate().to_whsec();
    let flaky = Receiver::start(&flaky_secret, vec![500, 200])
        .await
        .expect("receiver");
    f.endpoint_to("flaky", &flaky, &flaky_secret, json!({}))
        .await;

    f.completed_run("a1", "doomed").await;
    let disabled = poll(Duration::from_secs(30), || async {
        let e = f.endpoint_state("failing").await;
        (e["enabled"] == false).then_some(e)
    })
    .await
    .expect("the failing endpoint is disabled");
    assert!(
        disabled["disabledReason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("every attempt failed for longer than 1s"),
        "{disabled}"
    );
    assert_eq!(failing.received().len(), 3, "every attempt was made first");
    let flaky_state = poll(Duration::from_secs(10), || async {
        let e = f.endpoint_state("flaky").await;
        (flaky.received().len() >= 2 && e["failingSince"].is_null()).then_some(e)
    })
    .await
    .expect("the flaky endpoint's window ends with its success");
    assert_eq!(flaky_state["enabled"], true);
    let events = get(
        &f.stack,
        &format!("{}/failing/events", f.endpoints()),
        &f.key,
    )
    .await;
    assert_eq!(events.body["pagination"]["total"], 1);
    f.stack.shutdown().await;
}

#[tokio::test]
async fn a_tenants_own_webhook_urls_are_signed_with_its_default_secret() {
    use switchyard_testkit::ADMIN_TOKEN;
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let tenant = format!("t-{}", switchyard_testkit::unique());
    let made = post(
        &stack,
        "/manage/tenants",
        ADMIN_TOKEN,
        json!({"id": tenant, "name": "Own secret"}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let key = post(
        &stack,
        &format!("/manage/tenants/{tenant}/api-keys"),
        ADMIN_TOKEN,
        json!({"name": "k", "scopes": ["trigger", "runs:read", "manage"]}),
    )
    .await;
    let key = key.body["data"]["key"].as_str().expect("key").to_owned();
    project_with_agent(&stack, &tenant, &key, "p", "a").await;
    let shown = get(
        &stack,
        &format!("/manage/tenants/{tenant}/webhook-secret"),
        &key,
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let own = shown.body["data"]["key"].as_str().expect("key").to_owned();
    assert_ne!(
        own,
        switchyard_testkit::WEBHOOK_SECRET,
        "generated, not shared"
    );

    let receiver = Receiver::start(&own, Vec::new()).await.expect("receiver");
    let run = |message: &str| {
        let (stack, key, url) = (&stack, key.clone(), receiver.url.clone());
        let message = message.to_owned();
        async move {
            let made = post(
                stack,
                "/v1/runs",
                &key,
                json!({"agentId": "a", "message": message, "webhookUrl": url}),
            )
            .await;
            assert_eq!(made.status, 202, "{}", made.body);
        }
    };
    run("one").await;
    let got = receiver
        .wait_for(Duration::from_secs(30), |r| !r.is_empty())
        .await
        .expect("delivered");
    assert!(got[0].verified, "signed with the tenant's own secret");
    assert_eq!(got[0].signature.split(' ').count(), 1);

    let rotated = post(
        &stack,
        &format!("/manage/tenants/{tenant}/webhook-secret/rotate"),
        &key,
        json!({}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new = rotated.body["data"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    run("two").await;
    let got = receiver
        .wait_for(Duration::from_secs(30), |r| r.len() >= 2)
        .await
        .expect("delivered");
    assert!(
        got[1].verified,
        "the old secret still verifies during the overlap"
    );
    assert!(verifies(&new, &got[1]), "and so does the new one");

    // The seeded tenant, made before tenants had secrets, signs with the deployment's; its first
    // rotation overlaps with it.
    let seeded = get(
        &stack,
        "/manage/tenants/default/webhook-secret",
        ADMIN_TOKEN,
    )
    .await;
    assert_problem(&seeded, 409, "conflict");
    let first = post(
        &stack,
        "/manage/tenants/default/webhook-secret/rotate",
        ADMIN_TOKEN,
        json!({}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body["data"]["previousKeyExpiresAt"].is_string());
    let own_now = first.body["data"]["key"].as_str().expect("key").to_owned();
    let made = stack
        .create_run(&json!({"agentId": "echo", "message": "x", "webhookUrl": stack.receiver.url}))
        .await
        .expect("request");
    assert_eq!(made.status(), 202);
    let got = stack
        .receiver
        .wait_for(Duration::from_secs(30), |r| !r.is_empty())
        .await
        .expect("delivered");
    assert!(got[0].verified, "the deployment's secret still verifies");
    assert_eq!(got[0].signature.split(' ').count(), 2);
    assert!(verifies(&own_now, &got[0]), "and so does its own");
    stack.shutdown().await;
}

#[tokio::test]
async fn racing_claimers_never_pass_an_endpoints_concurrency_cap_and_an_ending_attempt_wakes_one() {
    use switchyard_common::config::DatabaseArgs;
    use switchyard_common::deliveries::{self, Attempt, Claim, Next};
    let db = switchyard_testkit::TestDb::create().await.expect("test db");
    let pool = switchyard_common::db::pool(&DatabaseArgs {
        database_url: db.url.clone(),
        db_pool_size: 16,
        db_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(10),
    })
    .expect("pool");
    let mut client = pool.get().await.expect("connection");
    client
        .batch_execute(
            "INSERT INTO webhook_endpoints (tenant_id, id, url, event_types, max_concurrency, secret) \
             VALUES ('default', 'capped', 'https://hooks.example.com/in', '{*}', 3, '\\x00')",
        )
        .await
        .expect("endpoint");
    let mut ids = Vec::new();
    for n in 0..40 {
        let id = uuid::Uuid::now_v7();
        client
            .execute(
                "INSERT INTO deliveries (id, tenant_id, endpoint_id, subject, event_type, url, \
                                         message_id, payload, status) \
                 VALUES ($1, 'default', 'capped', $2, 'run.completed', 'https://hooks.example.com/in', \
                         $3, '{}', 'pending')",
                &[&id, &format!("s{n}"), &format!("msg_{n}")],
            )
            .await
            .expect("delivery");
        ids.push(id);
    }
    // Eight notifiers claim all forty at once.
    let mut claimers = Vec::new();
    for _ in 0..8 {
        let (pool, ids) = (pool.clone(), ids.clone());
        claimers.push(tokio::spawn(async move {
            let mut client = pool.get().await.expect("connection");
            deliveries::claim_many(&mut client, &ids, Duration::from_secs(30))
                .await
                .expect("claim")
        }));
    }
    let mut sent = Vec::new();
    let mut parked = 0;
    for claimer in claimers {
        for claim in claimer.await.expect("join") {
            match claim {
                Claim::Send(out) => sent.push(out),
                Claim::Parked(_) => parked += 1,
                Claim::Defer(..) => {}
            }
        }
    }
    assert_eq!(sent.len(), 3, "exactly the cap is in flight");
    assert_eq!(parked, 37, "the rest are parked, once each");
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'pending' AND attempts = 0",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(pending, 37, "parking is not an attempt");

    // One finishes: it wakes exactly one parked delivery, which may start.
    let ok = Attempt {
        response_status: Some(204),
        response_body: None,
        error: None,
        latency: Duration::from_millis(1),
    };
    assert!(
        deliveries::finish(&mut client, &sent[0], &ok, Next::Delivered)
            .await
            .expect("finish")
    );
    let next = poll(Duration::from_secs(10), || {
        let (pool, ids) = (pool.clone(), ids.clone());
        async move {
            let mut client = pool.get().await.ok()?;
            let claims = deliveries::claim_many(&mut client, &ids, Duration::from_secs(30))
                .await
                .ok()?;
            let sends = claims
                .iter()
                .filter(|c| matches!(c, Claim::Send(_)))
                .count();
            (sends > 0).then_some(sends)
        }
    })
    .await
    .expect("a slot frees up");
    assert_eq!(next, 1);
    let still_parked: i64 = client
        .query_one(
            "SELECT count(*) FROM deliveries WHERE parked_at IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(still_parked, 36);
}
