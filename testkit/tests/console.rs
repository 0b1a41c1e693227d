//! The operator console: its session (cookie, CSRF, expiry by sign-out and by revoking the key)
//! over HTTP, and the whole flow in a real browser (headless Debian Chromium driven by
//! playwright-core; `scripts/browser-tools.sh` installs both).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use switchyard_common::signing::Secret;
use switchyard_testkit::api::{delete, post, tenant};
use switchyard_testkit::{Receiver, Stack, StackOptions};

/// Signs in with `key`; the answer's status, its `Set-Cookie`, and its body.
async fn sign_in(stack: &Stack, key: &str) -> (u16, Option<String>, Value) {
    let response = stack
        .http
        .post(format!("{}/console/session", stack.base_url))
        .json(&json!({"key": key}))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, cookie, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_console_session_acts_as_its_key_with_csrf_and_ends_on_sign_out_or_revocation() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (tenant, owner) = tenant(&stack).await;
    let keys = format!("/manage/tenants/{tenant}/api-keys");
    let runner = post(
        &stack,
        &keys,
        &owner,
        json!({"name": "runner", "scopes": ["trigger"]}),
    )
    .await;
    let runner = runner.body["data"]["key"].as_str().expect("key").to_owned();
    let (status, _, body) = sign_in(&stack, &runner).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _, _) = sign_in(&stack, "sy_not-a-real-key-at-all-000000000000000000").await;
    assert_eq!(status, 401);

    let admin = post(
        &stack,
        &keys,
        &owner,
        json!({"name": "console", "scopes": ["manage", "runs:read"]}),
    )
    .await;
    let admin_id = admin.body["data"]["id"].as_str().expect("id").to_owned();
    let admin = admin.body["data"]["key"].as_str().expect("key").to_owned();
    let (status, set_cookie, session) = sign_in(&stack, &admin).await;
    assert_eq!(status, 201, "{session}");
    let set_cookie = set_cookie.expect("a session cookie");
    // No CORS: another origin can neither sign in through a page of its own nor read a session.
    let preflight = stack
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/console/session", stack.base_url),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("sent");
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(set_cookie.starts_with("sy_console="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP here");
    assert_eq!(session["tenantId"], tenant.as_str());
    let csrf = session["csrfToken"].as_str().expect("csrf").to_owned();
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();

    // The cookie reads like the key; a write needs the CSRF token as well.
    let with_cookie = |method: reqwest::Method, path: &str| {
        stack
            .http
            .request(method, format!("{}{path}", stack.base_url))
            .header(COOKIE, &cookie)
    };
    let me = with_cookie(reqwest::Method::GET, "/console/session")
        .send()
        .await
        .expect("sent");
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<Value>().await.expect("json")["csrfToken"],
        csrf.as_str()
    );
    let listed = with_cookie(
        reqwest::Method::GET,
        &format!("/manage/tenants/{tenant}/projects"),
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(listed.status(), 200);
    let projects = format!("/manage/tenants/{tenant}/projects");
    let forged = with_cookie(reqwest::Method::POST, &projects)
        .json(&json!({"id": "p1", "name": "P1"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        forged.status(),
        403,
        "a write without the CSRF token is refused"
    );
    let wrong = with_cookie(reqwest::Method::POST, &projects)
        .header("x-csrf-token", "not-the-token")
        .json(&json!({"id": "p1", "name": "P1"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(wrong.status(), 403);
    let made = with_cookie(reqwest::Method::POST, &projects)
        .header("x-csrf-token", &csrf)
        .json(&json!({"id": "p1", "name": "P1"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(made.status(), 201);

    // Signing out ends the session; the cookie is cleared.
    let out = with_cookie(reqwest::Method::DELETE, "/console/session")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("sent");
    assert_eq!(out.status(), 204);
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .expect("text")
            .contains("Max-Age=0")
    );
    let after = with_cookie(reqwest::Method::GET, &projects)
        .send()
        .await
        .expect("sent");
    assert_eq!(after.status(), 401);

    // Revoking the key ends a session opened with it.
    let (_, set_cookie, _) = sign_in(&stack, &admin).await;
    let cookie = set_cookie
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let read = |cookie: String| {
        let request = stack
            .http
            .get(format!("{}{projects}", stack.base_url))
            .header(COOKIE, cookie);
        async move { request.send().await.expect("sent").status().as_u16() }
    };
    assert_eq!(read(cookie.clone()).await, 200);
    let revoked = delete(&stack, &format!("{keys}/{admin_id}"), &owner).await;
    assert_eq!(revoked.status, 204);
    assert_eq!(read(cookie).await, 401);

    // The page itself: no CDN, a strict content security policy.
    let page = stack
        .http
        .get(format!("{}/console", stack.base_url))
        .send()
        .await
        .expect("sent");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "only its own assets"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn in_a_browser_an_operator_creates_a_trigger_and_a_key_watches_a_run_and_redelivers() {
    let node_dir = std::env::var("SWITCHYARD_NODE_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/switchyard/node",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let stack = Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (tenant, key) = tenant(&stack).await;
    let made = post(
        &stack,
        &format!("/manage/tenants/{tenant}/projects"),
        &key,
        json!({"id": "shop", "name": "Shop"}),
    )
    .await;
    assert_eq!(made.status, 201);
    // Slow enough to be seen running.
    let made = post(
        &stack,
        &format!("/manage/tenants/{tenant}/projects/shop/agents"),
        &key,
        json!({"id": "orders", "name": "Orders", "kind": "echo", "config": {"delayMs": 6000}}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = Secret::generate().to_whsec();
    let receiver = Receiver::start(&secret, Vec::new())
        .await
        .expect("receiver");
    let made = post(
        &stack,
        &format!("/manage/tenants/{tenant}/webhook-endpoints"),
        &key,
        json!({"id": "ops", "url": receiver.url, "secret": secret, "eventTypes": ["run.completed"]}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    let output = tokio::process::Command::new("node")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console/e2e.mjs"))
        .env("BASE_URL", &stack.base_url)
        .env("MANAGE_KEY", &key)
        .env("PROJECT", "shop")
        .env("NODE_DIR", &node_dir)
        .env("SHOTS", &shots)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the browser test failed (screenshots in {}):\n{stdout}\n{}",
        shots.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let outcome: Value = serde_json::from_str(stdout.trim()).expect("the outcome");
    let run_id = outcome["runId"].as_str().expect("run id");
    // The webhook arrived, and again after the redelivery: the same message, signed both times.
    let hooks = receiver
        .wait_for(Duration::from_secs(20), |r| r.len() >= 2)
        .await
        .expect("the delivery and its redelivery");
    assert!(
        hooks
            .iter()
            .all(|h| h.verified && h.body["data"]["id"] == run_id)
    );
    assert_eq!(hooks[0].webhook_id, hooks[1].webhook_id);
    for page in [
        "sign-in",
        "triggers",
        "keys",
        "runs",
        "run",
        "endpoints",
        "invocations",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "{page}.png saved"
        );
    }
    stack.shutdown().await;
}
