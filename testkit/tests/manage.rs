//! The management API against the real services: Inkeep's shapes, validation, pagination and
//! errors; API keys (shown once, capped, revoked everywhere at once, last use); credentials sealed
//! at rest; and tenant, project and scope isolation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_common::catalog::credentials;
use switchyard_common::secrets::MasterKey;
use switchyard_testkit::api::{
    assert_problem, delete, get, patch, post, project_with_agent, tenant,
};
use switchyard_testkit::{ADMIN_TOKEN, MASTER_KEY, Stack, StackOptions, poll, unique};

async fn stack() -> Stack {
    Stack::start(StackOptions {
        workers: 1,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts")
}

#[tokio::test]
async fn admin_bootstraps_a_tenant_whose_key_then_manages_it() {
    let stack = stack().await;
    let (t, key) = tenant(&stack).await;
    assert!(key.starts_with("sy_") && key.len() >= 3 + 43, "{key}");
    let listed = get(&stack, "/manage/tenants?limit=100", ADMIN_TOKEN).await;
    assert!(
        listed.body["data"]
            .as_array()
            .expect("list")
            .iter()
            .any(|x| x["id"] == t.as_str())
    );
    let own = get(&stack, &format!("/manage/tenants/{t}"), &key).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["data"]["name"], "Acme");
    // Tenants themselves are the admin's alone.
    assert_problem(
        &post(&stack, "/manage/tenants", &key, json!({"name": "x"})).await,
        403,
        "forbidden",
    );
    assert_problem(
        &get(&stack, "/manage/tenants", &key).await,
        403,
        "forbidden",
    );
    assert_problem(
        &get(&stack, "/manage/tenants", "sy_not-a-real-key").await,
        401,
        "unauthorized",
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn triggers_have_crud_with_every_inkeep_and_chathive_field() {
    let stack = stack().await;
    let (t, key) = tenant(&stack).await;
    project_with_agent(&stack, &t, &key, "support", "helper").await;
    let cred = post(&stack, &format!("/manage/tenants/{t}/credentials"), &key,
        json!({"id": "gh-secret", "name": "GitHub secret", "type": "signing_secret", "value": "It's a Secret to Everybody"})).await;
    assert_eq!(cred.status, 201, "{}", cred.body);
    let base = format!("/manage/tenants/{t}/projects/support/agents/helper/triggers");
    let full = json!({
        "id": "gh.push",
        "name": "GitHub push",
        "description": "Runs on every push",
        "key": "GitHub_Push",
        "inputSchema": {"type": "object", "required": ["ref"], "properties": {"ref": {"type": "string"}}},
        "messageTemplate": "Summarise the push to {{ref}} by {{pusher.name}}",
        "outputTransform": {"pointer": "/summary"},
        "filters": {"all": [{"pointer": "/ref", "op": "matches", "value": "^refs/heads/"}]},
        "authentication": {"headers": [{"name": "X-Token", "value": "hunter2"}]},
        "signatureVerification": {
            "algorithm": "sha256", "encoding": "hex",
            "signature": {"source": "header", "key": "X-Hub-Signature-256", "prefix": "sha256="},
            "signedComponents": [{"source": "body", "required": true}],
            "componentJoin": {"strategy": "concatenate", "separator": ""},
            "validation": {"allowEmptyBody": false, "headerCaseSensitive": false, "normalizeUnicode": false}
        },
        "signingSecretCredentialReferenceId": "gh-secret",
        "webhookUrl": "https://hooks.example.com/done",
        "ignoreDuplicates": true,
        "waitForResponse": true,
        "waitTimeoutSeconds": 20
    });
    let created = post(&stack, &base, &key, full.clone()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let d = &created.body["data"];
    for field in [
        "id",
        "name",
        "description",
        "key",
        "inputSchema",
        "messageTemplate",
        "outputTransform",
        "filters",
        "signatureVerification",
        "signingSecretCredentialReferenceId",
        "webhookUrl",
        "ignoreDuplicates",
        "waitForResponse",
        "waitTimeoutSeconds",
    ] {
        assert_eq!(d[field], full[field], "{field}");
    }
    assert_eq!(d["enabled"], true);
    assert_eq!(
        d["authentication"],
        json!({"headers": [{"name": "x-token"}]}),
        "values are write-only"
    );
    assert!(d["createdAt"].is_string() && d["updatedAt"].is_string());
    assert_eq!(d["version"], 1);

    let fetched = get(&stack, &format!("{base}/gh.push"), &key).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body["data"]["key"], "GitHub_Push");

    let changed = patch(
        &stack,
        &format!("{base}/gh.push"),
        &key,
        json!({"enabled": false, "description": null, "waitTimeoutSeconds": 5}),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let c = &changed.body["data"];
    assert_eq!(c["enabled"], false);
    assert_eq!(c["description"], Value::Null);
    assert_eq!(c["waitTimeoutSeconds"], 5);
    assert_eq!(c["version"], 2);
    assert_eq!(
        c["messageTemplate"], full["messageTemplate"],
        "untouched members stay"
    );
    assert_eq!(
        c["authentication"],
        json!({"headers": [{"name": "x-token"}]}),
        "the digest survives a PATCH"
    );
    assert_problem(
        &patch(
            &stack,
            &format!("{base}/gh.push"),
            &key,
            json!({"agentId": "other"}),
        )
        .await,
        400,
        "bad_request",
    );

    let list = get(&stack, &base, &key).await;
    assert_eq!(
        list.body["pagination"],
        json!({"limit": 10, "page": 1, "pages": 1, "total": 1})
    );

    // The credential is in use, so it cannot go.
    assert_problem(
        &delete(
            &stack,
            &format!("/manage/tenants/{t}/credentials/gh-secret"),
            &key,
        )
        .await,
        409,
        "conflict",
    );
    assert_eq!(
        delete(&stack, &format!("{base}/gh.push"), &key)
            .await
            .status,
        204
    );
    assert_problem(
        &get(&stack, &format!("{base}/gh.push"), &key).await,
        404,
        "not_found",
    );
    assert_eq!(
        delete(
            &stack,
            &format!("/manage/tenants/{t}/credentials/gh-secret"),
            &key
        )
        .await
        .status,
        204
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn trigger_writes_are_validated() {
    let stack = stack().await;
    let (t, key) = tenant(&stack).await;
    project_with_agent(&stack, &t, &key, "p", "a").await;
    let base = format!("/manage/tenants/{t}/projects/p/agents/a/triggers");
    let first = post(
        &stack,
        &base,
        &key,
        json!({"name": "Orders", "key": "orders"}),
    )
    .await;
    assert_eq!(first.status, 201);

    let bad_schema = post(
        &stack,
        &base,
        &key,
        json!({"name": "x", "inputSchema": {"type": "strng"}}),
    )
    .await;
    assert_problem(&bad_schema, 422, "unprocessable_entity");
    assert!(
        bad_schema.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("inputSchema")
    );
    assert_problem(
        &post(&stack, &base, &key, json!({"name": "Orders"})).await,
        409,
        "conflict",
    );
    let same_key = post(
        &stack,
        &base,
        &key,
        json!({"name": "Other", "key": "ORDERS"}),
    )
    .await;
    assert_problem(&same_key, 409, "conflict");
    assert!(
        same_key.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("key")
    );
    assert_problem(
        &post(&stack, &base, &key, json!({"name": "x", "id": "no spaces"})).await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(&stack, &base, &key, json!({"name": "x", "key": "a.b"})).await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(
            &stack,
            &base,
            &key,
            json!({"name": "x", "filters": {"pointer": "/a", "op": "like"}}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(
            &stack,
            &base,
            &key,
            json!({"name": "x", "messageTemplate": "{{oops"}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(
            &stack,
            &base,
            &key,
            json!({"name": "x", "signingSecretCredentialReferenceId": "nope"}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(&stack, &base, &key, json!({"name": "x", "colour": "red"})).await,
        400,
        "bad_request",
    );
    assert_problem(
        &post(&stack, &base, &key, json!({"description": "no name"})).await,
        400,
        "bad_request",
    );
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/projects/p/agents/ghost/triggers"),
            &key,
            json!({"name": "x"}),
        )
        .await,
        404,
        "not_found",
    );
    // An agent whose config does not fit its kind.
    let agent = post(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents"),
        &key,
        json!({"name": "llm", "kind": "openai", "config": {"model": "m"}}),
    )
    .await;
    assert_problem(&agent, 422, "unprocessable_entity");
    stack.shutdown().await;
}

#[tokio::test]
async fn lists_paginate_and_refuse_out_of_range_values() {
    let stack = stack().await;
    let (t, key) = tenant(&stack).await;
    for n in 0..12 {
        let made = post(
            &stack,
            &format!("/manage/tenants/{t}/projects"),
            &key,
            json!({"id": format!("p{n:02}"), "name": format!("P {n}")}),
        )
        .await;
        assert_eq!(made.status, 201);
    }
    let page = get(
        &stack,
        &format!("/manage/tenants/{t}/projects?page=3&limit=5"),
        &key,
    )
    .await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body["pagination"],
        json!({"limit": 5, "page": 3, "pages": 3, "total": 12})
    );
    let ids: Vec<&str> = page.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["p10", "p11"]);
    let default = get(&stack, &format!("/manage/tenants/{t}/projects"), &key).await;
    assert_eq!(default.body["pagination"]["limit"], 10);
    assert_eq!(default.body["data"].as_array().map(Vec::len), Some(10));
    // A list under a parent that does not exist is a 404, not an empty page.
    assert_problem(
        &get(&stack, "/manage/tenants/ghost/projects", ADMIN_TOKEN).await,
        404,
        "not_found",
    );
    assert_problem(
        &get(
            &stack,
            &format!("/manage/tenants/{t}/projects/ghost/agents"),
            &key,
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &get(
            &stack,
            &format!("/manage/tenants/{t}/projects/p00/agents/ghost/triggers"),
            &key,
        )
        .await,
        404,
        "not_found",
    );
    for bad in ["page=0", "limit=0", "limit=101", "limit=ten", "page=-1"] {
        assert_problem(
            &get(&stack, &format!("/manage/tenants/{t}/projects?{bad}"), &key).await,
            400,
            "bad_request",
        );
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn api_keys_are_shown_once_capped_and_accepted_three_ways() {
    let stack = stack().await;
    let (t, owner) = tenant(&stack).await;
    let keys = format!("/manage/tenants/{t}/api-keys");
    let made = post(&stack, &keys, &owner, json!({"name": "CI"})).await;
    assert_eq!(made.status, 201);
    let secret = made.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_eq!(made.body["data"]["scopes"], json!(["runs:read", "trigger"]));
    let prefix = made.body["data"]["prefix"]
        .as_str()
        .expect("prefix")
        .to_owned();
    assert!(secret.starts_with(&prefix));

    let listed = get(&stack, &keys, &owner).await;
    let text = listed.body.to_string();
    assert!(!text.contains(&secret), "the list never shows a secret");
    let row = listed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|k| k["name"] == "CI")
        .expect("listed")
        .clone();
    for field in [
        "id",
        "name",
        "prefix",
        "scopes",
        "createdAt",
        "lastUsedAt",
        "projectIds",
    ] {
        assert!(row.get(field).is_some(), "{field}");
    }
    let db = stack.db.client().await.expect("db");
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM api_keys WHERE hash = sha256(convert_to($1, 'UTF8'))",
            &[&secret],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 1, "stored under its SHA-256 digest");
    let in_clear: i64 = db
        .query_one(
            "SELECT count(*) FROM api_keys k WHERE strpos(k::text, $1) > 0",
            &[&secret],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(in_clear, 0, "no column holds the secret itself");

    // The three ways the seeds send a key.
    let runs_of =
        |r: reqwest::RequestBuilder| async move { r.send().await.expect("send").status() };
    let url = format!(
        "{}/v1/runs/00000000-0000-0000-0000-000000000000",
        stack.base_url
    );
    assert_eq!(
        runs_of(stack.http.get(&url).bearer_auth(&secret)).await,
        404
    );
    assert_eq!(
        runs_of(stack.http.get(&url).header("authorization", &secret)).await,
        404
    );
    assert_eq!(
        runs_of(stack.http.get(&url).header("x-api-key", &secret)).await,
        404
    );
    assert_eq!(
        runs_of(stack.http.get(&url).header("x-api-key", "sy_forged")).await,
        401
    );

    // Last use is written in the background.
    let id = row["id"].as_str().expect("id").to_owned();
    poll(Duration::from_secs(10), || async {
        let k = get(&stack, &format!("{keys}/{id}"), &owner).await;
        k.body["data"]["lastUsedAt"].is_string().then_some(())
    })
    .await
    .expect("lastUsedAt is recorded");

    // Ten active keys at most: the owner and CI are two.
    for n in 0..8 {
        assert_eq!(
            post(&stack, &keys, &owner, json!({"name": format!("k{n}")}))
                .await
                .status,
            201
        );
    }
    let eleventh = post(&stack, &keys, &owner, json!({"name": "one too many"})).await;
    assert_problem(&eleventh, 409, "conflict");
    assert!(
        eleventh.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("10")
    );
    assert_eq!(
        delete(&stack, &format!("{keys}/{id}"), &owner).await.status,
        204
    );
    assert_eq!(
        post(&stack, &keys, &owner, json!({"name": "replacement"}))
            .await
            .status,
        201
    );
    assert_problem(
        &post(
            &stack,
            &keys,
            &owner,
            json!({"name": "x", "scopes": ["root"]}),
        )
        .await,
        400,
        "bad_request",
    );
    assert_problem(
        &post(
            &stack,
            &keys,
            &owner,
            json!({"name": "x", "projectIds": ["ghost"]}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_revoked_key_fails_on_every_replica_within_a_second() {
    let stack = stack().await;
    let (t, owner) = tenant(&stack).await;
    let (_second, second_url) = stack.add_ingress().await.expect("second ingress");
    let made = post(
        &stack,
        &format!("/manage/tenants/{t}/api-keys"),
        &owner,
        json!({"name": "doomed", "scopes": ["manage"]}),
    )
    .await;
    let secret = made.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    let id = made.body["data"]["id"].as_str().expect("id").to_owned();
    let on_second = || async {
        stack
            .http
            .get(format!("{second_url}/manage/tenants/{t}/projects"))
            .bearer_auth(&secret)
            .send()
            .await
            .expect("send")
            .status()
    };
    // The second replica caches keys only while it follows the control exchange.
    poll(Duration::from_secs(10), || async {
        let ready: Value = stack
            .http
            .get(format!("{second_url}/readyz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["keyCache"] == "live").then_some(())
    })
    .await
    .expect("the second replica's key cache goes live");
    assert_eq!(on_second().await, 200);
    // Revoked behind the ingress's back: the second replica still answers from its cache, which
    // shows that only the announcement below can make it refuse the key.
    stack
        .db
        .client()
        .await
        .expect("db")
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("revoke in the database");
    assert_eq!(on_second().await, 200, "served from the cache");

    assert_eq!(
        delete(
            &stack,
            &format!("/manage/tenants/{t}/api-keys/{id}"),
            &owner
        )
        .await
        .status,
        204
    );
    let revoked = Instant::now();
    assert_eq!(
        get(&stack, &format!("/manage/tenants/{t}/projects"), &secret)
            .await
            .status,
        401
    );
    poll(Duration::from_secs(1), || async {
        (on_second().await == 401).then_some(())
    })
    .await
    .expect("the second replica refuses the revoked key within a second");
    assert!(revoked.elapsed() < Duration::from_secs(2));
    let listed = get(
        &stack,
        &format!("/manage/tenants/{t}/api-keys/{id}"),
        &owner,
    )
    .await;
    assert!(listed.body["data"]["revokedAt"].is_string());
    stack.shutdown().await;
}

#[tokio::test]
async fn credentials_are_sealed_at_rest_and_never_shown() {
    let stack = stack().await;
    let (t, key) = tenant(&stack).await;
    let value = format!("sk-live-{}", unique());
    let base = format!("/manage/tenants/{t}/credentials");
    let made = post(
        &stack,
        &base,
        &key,
        json!({"id": "openai", "name": "OpenAI", "type": "api_key", "value": value}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert!(!made.body.to_string().contains(&value));
    assert_eq!(made.body["data"]["type"], "api_key");
    assert!(
        !get(&stack, &base, &key)
            .await
            .body
            .to_string()
            .contains(&value)
    );
    assert!(
        !get(&stack, &format!("{base}/openai"), &key)
            .await
            .body
            .to_string()
            .contains(&value)
    );

    let db = stack.db.client().await.expect("db");
    let sealed: Vec<u8> = db
        .query_one(
            "SELECT sealed FROM credentials WHERE tenant_id = $1 AND id = 'openai'",
            &[&t],
        )
        .await
        .expect("row")
        .get(0);
    assert!(
        !sealed.windows(value.len()).any(|w| w == value.as_bytes()),
        "no plaintext at rest"
    );
    let master = MasterKey::from_base64(MASTER_KEY).expect("key");
    let pool = switchyard_common::db::pool(&switchyard_common::config::DatabaseArgs {
        database_url: stack.db.url.clone(),
        db_pool_size: 2,
        db_timeout: Duration::from_secs(5),
        db_statement_timeout: Duration::from_secs(10),
    })
    .expect("pool");
    let pool_client = pool.get().await.expect("client");
    assert_eq!(
        credentials::reveal(&pool_client, &master, &t, "openai")
            .await
            .expect("opens"),
        value
    );

    // Rotation replaces the value; agents name credentials by id.
    let rotated = patch(
        &stack,
        &format!("{base}/openai"),
        &key,
        json!({"value": "sk-new"}),
    )
    .await;
    assert_eq!(rotated.status, 200);
    assert_eq!(
        credentials::reveal(&pool_client, &master, &t, "openai")
            .await
            .expect("opens"),
        "sk-new"
    );
    let p = post(
        &stack,
        &format!("/manage/tenants/{t}/projects"),
        &key,
        json!({"id": "p", "name": "p"}),
    )
    .await;
    assert_eq!(p.status, 201);
    let agent = post(
        &stack,
        &format!("/manage/tenants/{t}/projects/p/agents"),
        &key,
        json!({
        "id": "llm", "name": "LLM", "kind": "openai", "credentialReferenceId": "openai",
        "config": {"baseUrl": "https://api.openai.com/v1", "model": "gpt-4o-mini"}}),
    )
    .await;
    assert_eq!(agent.status, 201, "{}", agent.body);
    assert_problem(
        &delete(&stack, &format!("{base}/openai"), &key).await,
        409,
        "conflict",
    );
    assert_problem(
        &post(&stack, &base, &key, json!({"name": "empty", "value": ""})).await,
        422,
        "unprocessable_entity",
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn another_tenants_key_gets_404_for_every_resource() {
    let stack = stack().await;
    let (a, key_a) = tenant(&stack).await;
    let (b, key_b) = tenant(&stack).await;
    project_with_agent(&stack, &b, &key_b, "bp", "b-agent").await;
    let trig = post(
        &stack,
        &format!("/manage/tenants/{b}/projects/bp/agents/b-agent/triggers"),
        &key_b,
        json!({"id": "bt", "name": "bt"}),
    )
    .await;
    assert_eq!(trig.status, 201);
    let cred = post(
        &stack,
        &format!("/manage/tenants/{b}/credentials"),
        &key_b,
        json!({"id": "bc", "name": "bc", "value": "v"}),
    )
    .await;
    assert_eq!(cred.status, 201);
    let b_key = post(
        &stack,
        &format!("/manage/tenants/{b}/api-keys"),
        &key_b,
        json!({"name": "k"}),
    )
    .await;
    let b_key_id = b_key.body["data"]["id"].as_str().expect("id").to_owned();
    let run = post(
        &stack,
        "/v1/runs",
        &key_b,
        json!({"agentId": "b-agent", "message": "mine"}),
    )
    .await;
    assert_eq!(run.status, 202, "{}", run.body);
    let run_id = run.body["id"].as_str().expect("run id").to_owned();

    let paths = [
        format!("/manage/tenants/{b}"),
        format!("/manage/tenants/{b}/projects"),
        format!("/manage/tenants/{b}/projects/bp"),
        format!("/manage/tenants/{b}/projects/bp/agents"),
        format!("/manage/tenants/{b}/projects/bp/agents/b-agent"),
        format!("/manage/tenants/{b}/projects/bp/agents/b-agent/triggers"),
        format!("/manage/tenants/{b}/projects/bp/agents/b-agent/triggers/bt"),
        format!("/manage/tenants/{b}/credentials"),
        format!("/manage/tenants/{b}/credentials/bc"),
        format!("/manage/tenants/{b}/api-keys"),
        format!("/manage/tenants/{b}/api-keys/{b_key_id}"),
        format!("/v1/runs/{run_id}"),
    ];
    for path in &paths {
        assert_problem(&get(&stack, path, &key_a).await, 404, "not_found");
    }
    // Writes too, and A's own paths do not reach B's resources.
    assert_problem(
        &patch(&stack, &paths[2], &key_a, json!({"name": "mine now"})).await,
        404,
        "not_found",
    );
    assert_problem(&delete(&stack, &paths[6], &key_a).await, 404, "not_found");
    assert_problem(&delete(&stack, &paths[10], &key_a).await, 404, "not_found");
    assert_problem(
        &post(&stack, &paths[1], &key_a, json!({"name": "planted"})).await,
        404,
        "not_found",
    );
    assert_problem(
        &get(&stack, &format!("/manage/tenants/{a}/projects/bp"), &key_a).await,
        404,
        "not_found",
    );
    assert_problem(
        &post(
            &stack,
            "/v1/runs",
            &key_a,
            json!({"agentId": "b-agent", "message": "steal"}),
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &patch(&stack, &paths[0], &key_a, json!({"name": "mine now"})).await,
        404,
        "not_found",
    );
    assert_problem(&delete(&stack, &paths[0], &key_a).await, 404, "not_found");
    assert_problem(
        &patch(&stack, &paths[4], &key_a, json!({"name": "mine now"})).await,
        404,
        "not_found",
    );
    assert_problem(
        &patch(&stack, &paths[6], &key_a, json!({"name": "mine now"})).await,
        404,
        "not_found",
    );
    assert_problem(
        &patch(&stack, &paths[8], &key_a, json!({"value": "planted"})).await,
        404,
        "not_found",
    );
    assert_problem(&delete(&stack, &paths[8], &key_a).await, 404, "not_found");
    // B's things are all still there for B.
    for path in &paths {
        assert_eq!(get(&stack, path, &key_b).await.status, 200, "{path}");
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn project_limits_and_scopes_are_enforced() {
    let stack = stack().await;
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "p-agent").await;
    project_with_agent(&stack, &t, &owner, "q", "q-agent").await;
    let q_run = post(
        &stack,
        "/v1/runs",
        &owner,
        json!({"agentId": "q-agent", "message": "q"}),
    )
    .await;
    let q_run_id = q_run.body["id"].as_str().expect("id").to_owned();
    let limited = post(&stack, &format!("/manage/tenants/{t}/api-keys"), &owner,
        json!({"name": "p only", "scopes": ["trigger", "runs:read", "manage"], "projectIds": ["p"]})).await;
    assert_eq!(limited.status, 201, "{}", limited.body);
    let limited = limited.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();

    assert_eq!(
        get(
            &stack,
            &format!("/manage/tenants/{t}/projects/p/agents"),
            &limited
        )
        .await
        .status,
        200
    );
    let listed = get(&stack, &format!("/manage/tenants/{t}/projects"), &limited).await;
    assert_eq!(listed.body["pagination"]["total"], 1);
    assert_problem(
        &get(&stack, &format!("/manage/tenants/{t}/projects/q"), &limited).await,
        404,
        "not_found",
    );
    assert_problem(
        &get(
            &stack,
            &format!("/manage/tenants/{t}/projects/q/agents"),
            &limited,
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/projects/q/agents/q-agent/triggers"),
            &limited,
            json!({"name": "x"}),
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &post(
            &stack,
            "/v1/runs",
            &limited,
            json!({"agentId": "q-agent", "message": "x"}),
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &get(&stack, &format!("/v1/runs/{q_run_id}"), &limited).await,
        404,
        "not_found",
    );
    assert_eq!(
        post(
            &stack,
            "/v1/runs",
            &limited,
            json!({"agentId": "p-agent", "message": "x"})
        )
        .await
        .status,
        202
    );
    // Tenant-wide resources need an unrestricted key.
    assert_problem(
        &get(
            &stack,
            &format!("/manage/tenants/{t}/credentials"),
            &limited,
        )
        .await,
        403,
        "forbidden",
    );
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/api-keys"),
            &limited,
            json!({"name": "escalate"}),
        )
        .await,
        403,
        "forbidden",
    );

    // Scopes.
    let trigger_only = post(
        &stack,
        &format!("/manage/tenants/{t}/api-keys"),
        &owner,
        json!({"name": "t", "scopes": ["trigger"]}),
    )
    .await;
    let trigger_only = trigger_only.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_problem(
        &get(
            &stack,
            &format!("/manage/tenants/{t}/projects"),
            &trigger_only,
        )
        .await,
        403,
        "forbidden",
    );
    let accepted = post(
        &stack,
        "/v1/runs",
        &trigger_only,
        json!({"agentId": "p-agent", "message": "x"}),
    )
    .await;
    assert_eq!(accepted.status, 202);
    let id = accepted.body["id"].as_str().expect("id");
    assert_problem(
        &get(&stack, &format!("/v1/runs/{id}"), &trigger_only).await,
        403,
        "forbidden",
    );
    let read_only = post(
        &stack,
        &format!("/manage/tenants/{t}/api-keys"),
        &owner,
        json!({"name": "r", "scopes": ["runs:read"]}),
    )
    .await;
    let read_only = read_only.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_problem(
        &post(
            &stack,
            "/v1/runs",
            &read_only,
            json!({"agentId": "p-agent", "message": "x"}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(
        get(&stack, &format!("/v1/runs/{id}"), &read_only)
            .await
            .status,
        200
    );
    // The admin token manages, but acts for no tenant on the runs API.
    assert_problem(
        &post(
            &stack,
            "/v1/runs",
            ADMIN_TOKEN,
            json!({"agentId": "p-agent", "message": "x"}),
        )
        .await,
        403,
        "forbidden",
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_covers_the_api_and_the_docs_page_needs_no_cdn() {
    let stack = stack().await;
    let doc: Value = stack
        .http
        .get(format!("{}/openapi.json", stack.base_url))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1")
    );
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/manage/tenants",
        "/manage/tenants/{tenantId}",
        "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers",
        "/manage/tenants/{tenantId}/projects/{projectId}/agents/{agentId}/triggers/{id}",
        "/manage/tenants/{tenantId}/api-keys/{id}",
        "/manage/tenants/{tenantId}/credentials/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    let trigger = &doc["components"]["schemas"]["Trigger"]["properties"];
    for field in [
        "id",
        "name",
        "description",
        "enabled",
        "inputSchema",
        "messageTemplate",
        "outputTransform",
        "authentication",
        "signatureVerification",
        "signingSecretCredentialReferenceId",
        "webhookUrl",
        "createdAt",
        "updatedAt",
        "key",
        "filters",
        "ignoreDuplicates",
        "waitForResponse",
    ] {
        assert!(trigger.get(field).is_some(), "Trigger.{field}");
    }
    let page = stack
        .http
        .get(format!("{}/docs/", stack.base_url))
        .send()
        .await
        .expect("send");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"));
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no external assets"
    );
    let script = stack
        .http
        .get(format!("{}/docs/swagger-ui-bundle.js", stack.base_url))
        .send()
        .await
        .expect("send");
    assert_eq!(
        script.status(),
        200,
        "the UI's script is served by the ingress itself"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn concurrent_creates_cannot_pass_the_key_cap_together() {
    let stack = stack().await;
    let (t, owner) = tenant(&stack).await;
    let path = format!("/manage/tenants/{t}/api-keys");
    let attempts = (0..15).map(|n| {
        let (stack, path, owner) = (&stack, &path, &owner);
        async move {
            post(stack, path, owner, json!({"name": format!("racer {n}")}))
                .await
                .status
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let created = statuses.iter().filter(|s| s.as_u16() == 201).count();
    let refused = statuses.iter().filter(|s| s.as_u16() == 409).count();
    assert_eq!(
        (created, refused),
        (9, 6),
        "the owner's key plus nine make ten: {statuses:?}"
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn keys_cannot_escalate_or_reach_secrets_beyond_their_grant() {
    let stack = stack().await;
    let (t, owner) = tenant(&stack).await;
    project_with_agent(&stack, &t, &owner, "p", "p-agent").await;
    let cred = post(
        &stack,
        &format!("/manage/tenants/{t}/credentials"),
        &owner,
        json!({"id": "llm", "name": "LLM", "value": "sk"}),
    )
    .await;
    assert_eq!(cred.status, 201);
    let manage_only = post(
        &stack,
        &format!("/manage/tenants/{t}/api-keys"),
        &owner,
        json!({"name": "m", "scopes": ["manage"]}),
    )
    .await;
    let manage_only = manage_only.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/api-keys"),
            &manage_only,
            json!({"name": "up", "scopes": ["trigger"]}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/api-keys"),
            &manage_only,
            json!({"name": "up"}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(
        post(
            &stack,
            &format!("/manage/tenants/{t}/api-keys"),
            &manage_only,
            json!({"name": "same", "scopes": ["manage"]})
        )
        .await
        .status,
        201
    );

    // A project-limited key may not point an agent or trigger at the tenant's credentials.
    let limited = post(
        &stack,
        &format!("/manage/tenants/{t}/api-keys"),
        &owner,
        json!({"name": "p", "scopes": ["manage"], "projectIds": ["p"]}),
    )
    .await;
    let limited = limited.body["data"]["key"]
        .as_str()
        .expect("secret")
        .to_owned();
    let agents = format!("/manage/tenants/{t}/projects/p/agents");
    assert_problem(
        &post(
            &stack,
            &agents,
            &limited,
            json!({"name": "exfil", "kind": "http",
        "config": {"url": "https://attacker.example/"}, "credentialReferenceId": "llm"}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_problem(
        &patch(
            &stack,
            &format!("{agents}/p-agent"),
            &limited,
            json!({"credentialReferenceId": "llm"}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_problem(
        &post(
            &stack,
            &format!("{agents}/p-agent/triggers"),
            &limited,
            json!({"name": "t", "signingSecretCredentialReferenceId": "llm"}),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(
        post(
            &stack,
            &format!("{agents}/p-agent/triggers"),
            &limited,
            json!({"name": "plain"})
        )
        .await
        .status,
        201
    );
    // A trigger the owner gave a signing secret: the limited key may still pause it, but not
    // point it at another credential.
    let signed = post(
        &stack,
        &format!("{agents}/p-agent/triggers"),
        &owner,
        json!({"id": "signed", "name": "signed", "signingSecretCredentialReferenceId": "llm"}),
    )
    .await;
    assert_eq!(signed.status, 201, "{}", signed.body);
    let paused = patch(
        &stack,
        &format!("{agents}/p-agent/triggers/signed"),
        &limited,
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.body["data"]["enabled"], false);
    assert_eq!(
        paused.body["data"]["signingSecretCredentialReferenceId"],
        "llm"
    );
    assert_problem(
        &patch(
            &stack,
            &format!("{agents}/p-agent/triggers/signed"),
            &limited,
            json!({"signingSecretCredentialReferenceId": "other"}),
        )
        .await,
        403,
        "forbidden",
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn nul_characters_and_null_for_required_members_are_refused_cleanly() {
    let stack = stack().await;
    let (t, key) = tenant(&stack).await;
    project_with_agent(&stack, &t, &key, "p", "a").await;
    assert_problem(
        &get(&stack, "/manage/tenants/%00", ADMIN_TOKEN).await,
        404,
        "not_found",
    );
    assert_problem(
        &get(&stack, &format!("/manage/tenants/{t}/projects/a%00b"), &key).await,
        404,
        "not_found",
    );
    let triggers = format!("/manage/tenants/{t}/projects/p/agents/a/triggers");
    // In a query string too: a NUL never reaches PostgreSQL.
    let made = post(&stack, &triggers, &key, json!({"id": "q", "name": "q"})).await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_problem(
        &get(
            &stack,
            &format!("{triggers}/q/invocations?environment=a%00b&status=failed"),
            &key,
        )
        .await,
        400,
        "bad_request",
    );
    assert_problem(
        &get(
            &stack,
            &format!("/manage/tenants/{t}/deliveries?status=%00"),
            &key,
        )
        .await,
        400,
        "bad_request",
    );
    assert_problem(
        &post(
            &stack,
            &triggers,
            &key,
            json!({"name": "t", "outputTransform": {"template": "x\u{0}"}}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/api-keys"),
            &key,
            json!({"name": "k", "projectIds": ["p\u{0}"]}),
        )
        .await,
        422,
        "unprocessable_entity",
    );
    assert_problem(
        &post(
            &stack,
            &format!("/manage/tenants/{t}/projects"),
            &key,
            json!({"name": "n\u{0}"}),
        )
        .await,
        422,
        "unprocessable_entity",
    );

    let made = post(
        &stack,
        &triggers,
        &key,
        json!({"id": "t1", "name": "t1", "enabled": false}),
    )
    .await;
    assert_eq!(made.status, 201);
    for member in ["enabled", "name", "key", "waitTimeoutSeconds"] {
        let cleared = patch(
            &stack,
            &format!("{triggers}/t1"),
            &key,
            json!({member: null}),
        )
        .await;
        assert_problem(&cleared, 422, "unprocessable_entity");
    }
    let still = get(&stack, &format!("{triggers}/t1"), &key).await;
    assert_eq!(still.body["data"]["enabled"], false);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_run_whose_agent_is_deleted_before_it_starts_fails_instead_of_waiting() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let (t, key) = tenant(&stack).await;
    project_with_agent(&stack, &t, &key, "p", "short-lived").await;
    let run = post(
        &stack,
        "/v1/runs",
        &key,
        json!({"agentId": "short-lived", "message": "orphan"}),
    )
    .await;
    assert_eq!(run.status, 202);
    let id = run.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        delete(
            &stack,
            &format!("/manage/tenants/{t}/projects/p/agents/short-lived"),
            &key
        )
        .await
        .status,
        204
    );
    stack.add_worker().expect("worker starts");
    let failed = poll(Duration::from_secs(20), || async {
        let r = get(&stack, &format!("/v1/runs/{id}"), &key).await;
        (r.body["status"] == "failed").then_some(r.body)
    })
    .await
    .expect("the run fails");
    assert_eq!(failed["errorCode"], "agent_not_found");
    stack.shutdown().await;
}

#[tokio::test]
async fn a_project_patch_refuses_a_null_name_and_accepts_its_own_id() {
    let stack = stack().await;
    let (tenant, key) = tenant(&stack).await;
    let made = post(
        &stack,
        &format!("/manage/tenants/{tenant}/projects"),
        &key,
        json!({"id": "p1", "name": "First"}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let path = format!("/manage/tenants/{tenant}/projects/p1");
    assert_problem(
        &patch(&stack, &path, &key, json!({"name": null})).await,
        422,
        "unprocessable_entity",
    );
    let renamed = patch(&stack, &path, &key, json!({"id": "p1", "name": "Renamed"})).await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["data"]["name"], "Renamed");
    assert_problem(
        &patch(&stack, &path, &key, json!({"id": "p2"})).await,
        400,
        "bad_request",
    );
    stack.shutdown().await;
}
