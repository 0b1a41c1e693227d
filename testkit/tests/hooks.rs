//! Inbound webhooks, signed exactly as GitHub, Stripe, Slack and Standard Webhooks senders sign
//! them, against triggers configured for each: good signatures run the agent; tampered bodies,
//! wrong secrets and stale timestamps get 401 and are recorded as rejected invocations.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_common::catalog::triggers::HmacAlgorithm;
use switchyard_common::inbound::{hex, sign};
use switchyard_common::signing::Secret;
use switchyard_testkit::api::{get, post, project_with_agent, tenant};
use switchyard_testkit::{Stack, StackOptions, poll};

struct Hooks {
    stack: Stack,
    tenant: String,
    key: String,
}

impl Hooks {
    async fn new() -> Self {
        let stack = Stack::start(StackOptions {
            workers: 1,
            ..StackOptions::default()
        })
        .await
        .expect("stack starts");
        let (tenant, key) = tenant(&stack).await;
        project_with_agent(&stack, &tenant, &key, "p", "echo").await;
        Self { stack, tenant, key }
    }

    /// A trigger `id` verified by `signature`, with `secret` as its credential.
    async fn trigger(&self, id: &str, secret: &str, signature: Value) {
        let cred = post(&self.stack, &format!("/manage/tenants/{}/credentials", self.tenant), &self.key,
            json!({"id": format!("{id}-secret"), "name": format!("{id} secret"), "type": "signing_secret", "value": secret})).await;
        assert_eq!(cred.status, 201, "{}", cred.body);
        let made = post(&self.stack, &format!("/manage/tenants/{}/projects/p/agents/echo/triggers", self.tenant), &self.key,
            json!({"id": id, "name": id, "messageTemplate": "event {{action}}",
                   "signatureVerification": signature, "signingSecretCredentialReferenceId": format!("{id}-secret")})).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }

    async fn send(&self, id: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
        let mut request = self
            .stack
            .http
            .post(format!(
                "{}/hooks/{}/{id}",
                self.stack.base_url, self.tenant
            ))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn completed(&self, run: &Value) -> Value {
        let id = run["id"].as_str().expect("run id").to_owned();
        poll(Duration::from_secs(20), || async {
            let r = get(&self.stack, &format!("/v1/runs/{id}"), &self.key).await;
            (r.body["status"] == "completed").then_some(r.body)
        })
        .await
        .expect("the run completes")
    }

    async fn rejected(&self, id: &str) -> Vec<String> {
        let listed = get(&self.stack, &format!(
            "/manage/tenants/{}/projects/p/agents/echo/triggers/{id}/invocations?status=failed&limit=100", self.tenant), &self.key).await;
        listed.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter(|i| i["outcome"] == "rejected")
            .filter_map(|i| i["errorMessage"].as_str().map(str::to_owned))
            .collect()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

const BODY: &str = r#"{"action":"opened","number":7}"#;

#[tokio::test]
async fn github_and_stripe_signatures_verify_and_forgeries_get_401() {
    let h = Hooks::new().await;
    let gh_secret = "It's a Secret to Everybody";
    h.trigger("github", gh_secret, json!({"algorithm": "sha256", "encoding": "hex",
        "signature": {"source": "header", "key": "X-Hub-Signature-256", "prefix": "sha256="},
        "signedComponents": [{"source": "body", "required": true}],
        "componentJoin": {"strategy": "concatenate", "separator": ""},
        "validation": {"allowEmptyBody": false, "headerCaseSensitive": false, "normalizeUnicode": false}})).await;
    let gh = |body: &str, secret: &str| {
        format!(
            "sha256={}",
            hex(&sign(HmacAlgorithm::Sha256, secret, body.as_bytes()))
        )
    };
    let (status, run) = h
        .send(
            "github",
            &[
                ("X-Hub-Signature-256", gh(BODY, gh_secret)),
                ("X-GitHub-Event", "pull_request".into()),
            ],
            BODY,
        )
        .await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["environment"], "webhook");
    assert_eq!(h.completed(&run).await["result"]["output"], "event opened");
    let tampered = BODY.replace("opened", "closed");
    assert_eq!(
        h.send(
            "github",
            &[("X-Hub-Signature-256", gh(BODY, gh_secret))],
            &tampered
        )
        .await
        .0,
        401
    );
    assert_eq!(
        h.send(
            "github",
            &[("X-Hub-Signature-256", gh(BODY, "wrong secret"))],
            BODY
        )
        .await
        .0,
        401
    );
    assert_eq!(h.send("github", &[], BODY).await.0, 401);

    let stripe_secret = "whsec_test_5Tq2LkT1rW3dYtQ8pB9n";
    h.trigger(
        "stripe",
        stripe_secret,
        json!({"algorithm": "sha256", "encoding": "hex",
        "signature": {"source": "header", "key": "Stripe-Signature", "regex": "v1=([0-9a-f]+)"},
        "signedComponents": [
            {"source": "header", "key": "Stripe-Signature", "regex": "t=(\\d+)", "timestamp": true},
            {"source": "body"}],
        "componentJoin": {"strategy": "concatenate", "separator": "."},
        "validation": {"toleranceSeconds": 300}}),
    )
    .await;
    let stripe = |t: i64, body: &str, secret: &str| {
        let sig = hex(&sign(
            HmacAlgorithm::Sha256,
            secret,
            format!("{t}.{body}").as_bytes(),
        ));
        format!(
            "t={t},v1={sig},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
        )
    };
    let (status, run) = h
        .send(
            "stripe",
            &[("Stripe-Signature", stripe(now(), BODY, stripe_secret))],
            BODY,
        )
        .await;
    assert_eq!(status, 202, "{run}");
    h.completed(&run).await;
    let (status, stale) = h
        .send(
            "stripe",
            &[(
                "Stripe-Signature",
                stripe(now() - 3600, BODY, stripe_secret),
            )],
            BODY,
        )
        .await;
    assert_eq!(status, 401, "{stale}");
    assert_eq!(stale["code"], "unauthorized");
    assert_eq!(
        h.send(
            "stripe",
            &[("Stripe-Signature", stripe(now(), BODY, "whsec_other"))],
            BODY
        )
        .await
        .0,
        401
    );

    let gh_rejected = h.rejected("github").await;
    assert_eq!(gh_rejected.len(), 3, "{gh_rejected:?}");
    assert!(gh_rejected.iter().any(|r| r.contains("does not match")));
    assert!(gh_rejected.iter().any(|r| r.contains("missing")));
    assert!(
        h.rejected("stripe")
            .await
            .iter()
            .any(|r| r.contains("timestamp"))
    );
    h.stack.shutdown().await;
}

#[tokio::test]
async fn slack_and_standard_webhooks_signatures_verify() {
    let h = Hooks::new().await;
    let slack_secret = "8f742231b10e8888abcd99yyyzzz85a5";
    h.trigger(
        "slack",
        slack_secret,
        json!({"algorithm": "sha256", "encoding": "hex",
        "signature": {"source": "header", "key": "X-Slack-Signature", "prefix": "v0="},
        "signedComponents": [
            {"source": "literal", "value": "v0"},
            {"source": "header", "key": "X-Slack-Request-Timestamp", "timestamp": true},
            {"source": "body"}],
        "componentJoin": {"strategy": "concatenate", "separator": ":"}}),
    )
    .await;
    let ts = now();
    let sig = format!(
        "v0={}",
        hex(&sign(
            HmacAlgorithm::Sha256,
            slack_secret,
            format!("v0:{ts}:{BODY}").as_bytes()
        ))
    );
    let (status, run) = h
        .send(
            "slack",
            &[
                ("X-Slack-Signature", sig.clone()),
                ("X-Slack-Request-Timestamp", ts.to_string()),
            ],
            BODY,
        )
        .await;
    assert_eq!(status, 202, "{run}");
    h.completed(&run).await;
    let (status, _) = h
        .send(
            "slack",
            &[
                ("X-Slack-Signature", sig),
                ("X-Slack-Request-Timestamp", (ts + 1).to_string()),
            ],
            BODY,
        )
        .await;
    assert_eq!(status, 401, "a timestamp that was not signed");

    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    h.trigger("standard", whsec, json!({"algorithm": "sha256", "encoding": "base64",
        "signature": {"source": "header", "key": "webhook-signature", "regex": "v1,([A-Za-z0-9+/=]+)"},
        "signedComponents": [
            {"source": "header", "key": "webhook-id"},
            {"source": "header", "key": "webhook-timestamp", "timestamp": true},
            {"source": "body"}],
        "componentJoin": {"strategy": "concatenate", "separator": "."},
        "secretEncoding": "base64"})).await;
    let secret = Secret::parse(whsec).expect("whsec");
    let ts = now();
    let signature = secret.sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, BODY.as_bytes());
    let headers = [
        ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", signature.clone()),
    ];
    let (status, run) = h.send("standard", &headers, BODY).await;
    assert_eq!(status, 202, "{run}");
    h.completed(&run).await;
    let forged = [
        ("webhook-id", "msg_other".to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", signature),
    ];
    assert_eq!(h.send("standard", &forged, BODY).await.0, 401);
    h.stack.shutdown().await;
}

#[tokio::test]
async fn header_authentication_works_and_unauthenticated_triggers_refuse_webhooks() {
    let h = Hooks::new().await;
    let base = format!(
        "/manage/tenants/{}/projects/p/agents/echo/triggers",
        h.tenant
    );
    let made = post(
        &h.stack,
        &base,
        &h.key,
        json!({"id": "token", "name": "Token",
        "authentication": {"headers": [{"name": "X-Hook-Token", "value": "s3cr3t-token"}]}}),
    )
    .await;
    assert_eq!(made.status, 201);
    let made = post(
        &h.stack,
        &base,
        &h.key,
        json!({"id": "open", "name": "Open"}),
    )
    .await;
    assert_eq!(made.status, 201);
    let (status, run) = h
        .send("token", &[("X-Hook-Token", "s3cr3t-token".into())], BODY)
        .await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(
        h.send("token", &[("X-Hook-Token", "guess".into())], BODY)
            .await
            .0,
        401
    );
    assert_eq!(h.send("token", &[], BODY).await.0, 401);
    let (status, body) = h.send("open", &[], BODY).await;
    assert_eq!(
        status, 401,
        "a trigger with no authentication takes no webhooks"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("signatureVerification")
    );
    assert_eq!(h.send("missing", &[], BODY).await.0, 404);
    h.stack.shutdown().await;
}
