//! The hosted products' own examples, replayed against Switchyard: each vendor's curl, JavaScript
//! `fetch` and Python `requests` snippets (kept verbatim under `testkit/compat/`) run as real
//! programs, pointed at a test stack, and the documented outcome is checked.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use switchyard_common::signing::Secret;
use switchyard_testkit::api::{post, project_with_agent, tenant};
use switchyard_testkit::{Receiver, Stack, StackOptions};

/// A vendor snippet from `testkit/compat/`, with its host, key and ids replaced.
fn snippet(path: &str, replacements: &[(&str, &str)]) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("compat")
        .join(path);
    let mut text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "{path} names {from}");
        text = text.replace(from, to);
    }
    let file_name = source
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snippet");
    let out = std::env::temp_dir().join(format!("sy-{}-{file_name}", switchyard_testkit::unique()));
    std::fs::write(&out, text).expect("write the snippet");
    out
}

/// Runs a snippet with the interpreter its extension names; panics unless it exits 0.
fn run(script: &PathBuf) -> String {
    let venv = std::env::var("SWITCHYARD_PY_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/switchyard/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let program = match script.extension().and_then(|e| e.to_str()) {
        Some("py") => format!("{venv}/bin/python"),
        Some("js") => "node".to_owned(),
        _ => "bash".to_owned(),
    };
    let output = std::process::Command::new(&program)
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let _ = std::fs::remove_file(script);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {}: {stdout}{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn relevance_ais_examples_trigger_the_agent_and_its_result_reaches_the_destination() {
    let stack = Stack::start(StackOptions::default())
        .await
        .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    project_with_agent(&stack, &tenant, &key, "support", "triage").await;
    // The agent's destination: a webhook endpoint of the tenant.
    let secret = Secret::generate().to_whsec();
    let destination = Receiver::start(&secret, Vec::new())
        .await
        .expect("receiver");
    let made = post(
        &stack,
        &format!("/manage/tenants/{tenant}/webhook-endpoints"),
        &key,
        json!({"url": destination.url, "secret": secret, "eventTypes": ["run.completed"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);

    let replacements = [
        (
            "https://api-f1db6c.stack.tryrelevance.com",
            stack.base_url.as_str(),
        ),
        ("[YOUR_API_KEY]", key.as_str()),
        ("[YOUR_AGENT_ID_GOES_HERE]", "triage"),
    ];
    for file in [
        "relevance/curl.sh",
        "relevance/fetch.js",
        "relevance/requests.py",
    ] {
        run(&snippet(file, &replacements));
    }
    let got = destination
        .wait_for(Duration::from_secs(30), |r| r.len() >= 3)
        .await
        .expect("one result per example reaches the destination");
    for hook in &got {
        assert!(hook.verified);
        assert_eq!(hook.body["type"], "run.completed");
        assert_eq!(hook.body["data"]["agentId"], "triage");
        assert_eq!(hook.body["data"]["message"], "Hello");
        assert_eq!(hook.body["data"]["result"]["output"], "Hello");
    }

    // The documented body, answered as accepted; what it gets wrong, as a problem.
    let url = format!("{}/latest/agents/trigger", stack.base_url);
    let send = |body: serde_json::Value| {
        let (http, url, key) = (stack.http.clone(), url.clone(), key.clone());
        async move {
            let response = http
                .post(url)
                .header("Authorization", key)
                .json(&body)
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, location, body)
        }
    };
    let (status, location, run) =
        send(json!({"message": {"role": "user", "content": "Hello"}, "agent_id": "triage"})).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(
        location,
        Some(format!("/v1/runs/{}", run["id"].as_str().expect("id")))
    );
    for (body, detail) in [
        (
            json!({"message": {"role": "user", "content": "Hi"}}),
            "missing field `agent_id`",
        ),
        (
            json!({"message": {"role": "assistant", "content": "Hi"}, "agent_id": "triage"}),
            "`message.role` must be `user`",
        ),
        (
            json!({"message": {"role": "user", "content": " "}, "agent_id": "triage"}),
            "`message.content` may not be empty",
        ),
        (
            json!({"message": {"role": "user", "content": "Hi"}, "agent_id": "no such/agent"}),
            "`agent_id` must be",
        ),
    ] {
        let (status, _, problem) = send(body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(detail),
            "{body}: {problem}"
        );
        assert!(problem["requestId"].is_string());
    }
    let (status, _, problem) =
        send(json!({"message": {"role": "user", "content": "Hi"}, "agent_id": "nobody"})).await;
    assert_eq!(status, 404, "an unknown agent: {problem}");
    stack.shutdown().await;
}
