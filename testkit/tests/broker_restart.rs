//! A real RabbitMQ restart. This stops the shared broker, so `scripts/test.sh` runs this binary on
//! its own, before the rest of the suite; the broker is started again even if the test fails.

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
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
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
        (body["status"] == "degraded").then_some(())
    })
    .await;
    assert!(
        degraded.is_ok(),
        "readiness reports the broker outage as degraded"
    );
    for n in 0..5 {
        ids.push(create(&stack, &format!("during {n}")).await);
    }
    assert!(rabbitmqctl("start_app"), "rabbitmqctl start_app");
    drop(guard);

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
