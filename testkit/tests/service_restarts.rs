//! Real restarts of the shared RabbitMQ and PostgreSQL. They disturb every test running at the
//! time, so `scripts/test.sh` runs this binary on its own, before the rest of the suite, and its
//! tests one at a time (the `service-restarts` test group). Each service is started again even if
//! a test fails.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::{Stack, StackOptions, poll};

fn rabbitmqctl(action: &str) -> bool {
    Command::new("rabbitmqctl")
        .args(["-q", action])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the broker app again when dropped, so a failing test never leaves it down.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

async fn create(stack: &Stack, message: &str) -> String {
    let response = stack
        .create_run(
            &json!({"agentId": "echo", "message": message, "webhookUrl": stack.receiver.url}),
        )
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.expect("json");
    run["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn every_run_completes_and_every_webhook_arrives_across_a_broker_restart() {
    let ops_port = switchyard_testkit::free_port().expect("port");
    let stack = Stack::start(StackOptions {
        notifier_env: vec![("SWITCHYARD_OPS_LISTEN", format!("127.0.0.1:{ops_port}"))],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let notifier_ready = format!("http://127.0.0.1:{ops_port}/readyz");
    // The notifier's readiness, as (HTTP status, body).
    let readiness = || async {
        let response = stack.http.get(&notifier_ready).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<Value>().await.ok()?))
    };
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(create(&stack, &format!("before {n}")).await);
    }
    stack
        .receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 5)
        .await
        .expect("webhooks before the restart");

    let guard = RestartGuard;
    assert!(rabbitmqctl("stop_app"), "rabbitmqctl stop_app");
    let degraded = poll(Duration::from_secs(10), || async {
        let body: Value = stack
            .http
            .get(format!("{}/readyz", stack.base_url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["status"] == "degraded").then_some(body)
    })
    .await
    .expect("readiness reports the broker outage as degraded");
    assert!(
        degraded["detail"]
            .as_str()
            .is_some_and(|d| d.contains("RabbitMQ")),
        "{degraded}"
    );
    // A notifier cannot work without the broker: it says it is not ready, and why.
    let (status, body) = poll(Duration::from_secs(10), || async {
        readiness().await.filter(|(status, _)| *status == 503)
    })
    .await
    .expect("the notifier is not ready while the broker is down");
    assert_eq!(status, 503);
    assert_eq!(body["rabbitmq"], "down", "{body}");
    assert_eq!(body["postgres"], "up");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("RabbitMQ"))
    );
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.base_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_broker_connected{") && l.ends_with(" 0")),
        "{metrics}"
    );
    for n in 0..5 {
        ids.push(create(&stack, &format!("during {n}")).await);
    }
    assert!(rabbitmqctl("start_app"), "rabbitmqctl start_app");
    drop(guard);
    poll(Duration::from_secs(30), || async {
        readiness().await.filter(|(status, _)| *status == 200)
    })
    .await
    .expect("the notifier is ready again once the broker is back");

    for n in 0..5 {
        ids.push(create(&stack, &format!("after {n}")).await);
    }
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(60), |r| r.len() >= 15)
        .await
        .expect("every webhook arrives after the restart");
    let runs: HashSet<&str> = received
        .iter()
        .filter_map(|r| r.body["data"]["id"].as_str())
        .collect();
    for id in &ids {
        assert!(runs.contains(id.as_str()), "run {id} was delivered");
        let run = stack.get_run(id).await.expect("get");
        assert_eq!(run["status"], "completed");
    }
    assert!(received.iter().all(|r| r.verified));
    stack.shutdown().await;
}

fn pg_cluster(action: &str) -> bool {
    let version = std::fs::read_dir("/etc/postgresql").ok().and_then(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max()
    });
    let Some(version) = version else { return false };
    let mut args = vec![
        "--skip-systemctl-redirect",
        version.as_str(),
        "main",
        action,
    ];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    Command::new("pg_ctlcluster")
        .args(&args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts PostgreSQL again when dropped, so a failing test never leaves it down.
struct PostgresGuard;

impl Drop for PostgresGuard {
    fn drop(&mut self) {
        pg_cluster("start");
    }
}

#[tokio::test]
async fn a_postgres_outage_answers_503_and_loses_no_run() {
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
    stack
        .add_echo_agent("three-seconds", 3000)
        .await
        .expect("agent");
    // One run in the middle of executing when the database goes away, and some finished ones.
    let slow = stack
        .create_run(&json!({"agentId": "three-seconds", "message": "outlive", "webhookUrl": stack.receiver.url}))
        .await
        .expect("request");
    assert_eq!(slow.status(), 202);
    let slow: Value = slow.json().await.expect("json");
    let mut ids = vec![slow["id"].as_str().expect("id").to_owned()];
    for n in 0..5 {
        ids.push(create(&stack, &format!("before {n}")).await);
    }
    poll(Duration::from_secs(15), || async {
        let run = stack.get_run(&ids[0]).await.ok()?;
        (run["status"] == "running").then_some(())
    })
    .await
    .expect("the slow run starts");

    let guard = PostgresGuard;
    assert!(pg_cluster("stop"), "pg_ctlcluster stop");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = stack
            .create_run(&json!({"agentId": "echo", "message": "refused"}))
            .await
            .expect("request");
        assert_eq!(response.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert!(response.headers().get("retry-after").is_some());
    }
    assert!(pg_cluster("start"), "pg_ctlcluster start");
    drop(guard);

    // Accepted again as soon as the database is back.
    let back = poll(Duration::from_secs(30), || async {
        let response = stack
            .create_run(
                &json!({"agentId": "echo", "message": "after", "webhookUrl": stack.receiver.url}),
            )
            .await
            .ok()?;
        if response.status() != 202 {
            return None;
        }
        let run: Value = response.json().await.ok()?;
        run["id"].as_str().map(str::to_owned)
    })
    .await
    .expect("runs are accepted once PostgreSQL is back");
    ids.push(back);

    for id in &ids {
        let done = poll(Duration::from_secs(60), || async {
            let run = stack.get_run(id).await.ok()?;
            (run["status"] == "completed").then_some(run)
        })
        .await
        .unwrap_or_else(|_| panic!("run {id} completes after the outage"));
        assert_eq!(done["status"], "completed");
    }
    let received = stack
        .receiver
        .wait_for(Duration::from_secs(60), |r| {
            let runs: HashSet<&str> = r
                .iter()
                .filter_map(|h| h.body["data"]["id"].as_str())
                .collect();
            ids.iter().all(|id| runs.contains(id.as_str()))
        })
        .await
        .expect("every accepted run's webhook arrives");
    assert!(received.iter().all(|r| r.verified));
    stack.shutdown().await;
}
