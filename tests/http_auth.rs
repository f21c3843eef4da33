//! The HTTP server as an OAuth2 resource server, against a test authorization
//! server on 127.0.0.1: RFC 9728 metadata, 401 challenges, every kind of bad
//! token on both transports, 403 `insufficient_scope` per tool, subjects that
//! cannot see each other's tasks or sessions, and introspection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::auth_server::{ALL_SCOPES, AUDIENCE, AuthServer, CLIENT_ID, CLIENT_SECRET};
use common::fake_provider::Behavior;
use common::fixture::{Fx, agent};
use common::http::{HttpServer, SseClient, call, client};
use serde_json::{Value, json};

const METADATA_URL: &str = "https://dispatch.test/.well-known/oauth-protected-resource/mcp";

fn jwt_toml(auth: &AuthServer) -> String {
    format!(
        "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    )
}

async fn setup(extra: &str) -> (AuthServer, Fx, HttpServer) {
    let auth = AuthServer::start().await;
    let fx = Fx::new(
        &[("helper", &agent("openai/gpt-4o-mini"))],
        &format!("{}{extra}", jwt_toml(&auth)),
    )
    .await;
    fx.fake.set_default(Behavior::reply("authorized answer"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    (auth, fx, s)
}

fn init_body() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}})
}

async fn post_mcp(
    s: &HttpServer,
    token: Option<&str>,
    session: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut rb = client()
        .post(s.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(id) = session {
        rb = rb
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-06-18");
    }
    rb.send().await.unwrap()
}

fn www(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A raw Streamable HTTP session: initialize + initialized; returns its id.
async fn raw_session(s: &HttpServer, token: &str) -> String {
    let r = post_mcp(s, Some(token), None, &init_body()).await;
    assert_eq!(r.status().as_u16(), 200);
    let id = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let _ = r.text().await;
    let r = post_mcp(
        s,
        Some(token),
        Some(&id),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert!(r.status().is_success());
    id
}

#[tokio::test]
async fn metadata_and_challenges_tell_clients_where_to_authenticate() {
    let (auth, _fx, s) = setup("").await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["resource"], AUDIENCE, "{v}");
        assert_eq!(v["authorization_servers"], json!([auth.issuer()]), "{v}");
        let scopes = v["scopes_supported"].as_array().unwrap();
        assert_eq!(scopes.len(), 3, "{v}");
    }
    let r = post_mcp(&s, None, None, &init_body()).await;
    assert_eq!(r.status().as_u16(), 401);
    let w = www(&r);
    assert!(w.starts_with("Bearer "), "{w}");
    assert!(
        w.contains(&format!("resource_metadata=\"{METADATA_URL}\"")),
        "{w}"
    );
    assert!(
        w.contains("scope=\"dispatch:read dispatch:run dispatch:write\""),
        "{w}"
    );
    let e = SseClient::connect(&s.url(""), None)
        .await
        .err()
        .expect("401");
    assert_eq!(e.status, 401);
    assert!(e.www_authenticate.unwrap().contains("resource_metadata="));
    // /metrics is protected too.
    let r = client().get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn every_bad_token_is_refused_on_both_transports() {
    let (auth, _fx, s) = setup("").await;
    let bad = [
        ("expired", auth.expired()),
        ("not yet valid", auth.not_yet_valid()),
        ("wrong audience", auth.wrong_audience()),
        ("wrong issuer", auth.wrong_issuer()),
        ("badly signed", auth.badly_signed()),
        ("alg none", auth.alg_none()),
        ("HS256 with the public key", auth.hs256_with_public_key()),
        ("garbage", "not-a-jwt".to_string()),
    ];
    for (what, token) in &bad {
        let r = post_mcp(&s, Some(token), None, &init_body()).await;
        assert_eq!(r.status().as_u16(), 401, "{what} on /mcp");
        let w = www(&r);
        assert!(w.contains("error=\"invalid_token\""), "{what}: {w}");
        assert!(!w.contains(token.as_str()), "the token is never echoed");
        let body = r.text().await.unwrap();
        assert!(!body.contains(token.as_str()), "{what}: {body}");
        let e = SseClient::connect(&s.url(""), Some(token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} accepted on /sse"));
        assert_eq!(e.status, 401, "{what} on /sse");
    }
    // A token in the query string is not a token.
    let valid = auth.valid("alice", &ALL_SCOPES);
    let r = client()
        .post(s.url(&format!("/mcp?access_token={valid}")))
        .header("accept", "application/json, text/event-stream")
        .json(&init_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The valid one works on both.
    let c = s
        .streamable(Some(&valid))
        .await
        .expect("streamable with a valid token");
    let (err, v) = call(&c, "agent_list", json!({})).await;
    assert!(!err, "{v}");
    let mut sse = SseClient::connect(&s.url(""), Some(&valid))
        .await
        .expect("sse");
    sse.handshake().await;
    let r = sse.call("agent_list", json!({})).await;
    assert!(r["structuredContent"]["agents"].is_array(), "{r}");
    assert!(
        !s.stderr().contains(valid.as_str()),
        "tokens never reach the logs"
    );
}

#[tokio::test]
async fn a_call_that_needs_more_scope_gets_403_naming_it() {
    let (auth, _fx, s) = setup("").await;
    let reader = auth.under_scoped("reader", &["dispatch:read"]);
    let session = raw_session(&s, &reader).await;
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"agent_list","arguments":{}}});
    let r = post_mcp(&s, Some(&reader), Some(&session), &list).await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "read-only tools need dispatch:read"
    );
    let _ = r.text().await;
    for (tool, scope) in [
        ("agent_run", "dispatch:run"),
        ("agent/run", "dispatch:run"),
        ("task_cancel", "dispatch:run"),
        ("kb_write", "dispatch:write"),
    ] {
        let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":tool,"arguments":{}}});
        let r = post_mcp(&s, Some(&reader), Some(&session), &body).await;
        assert_eq!(r.status().as_u16(), 403, "{tool}");
        let w = www(&r);
        assert!(w.contains("error=\"insufficient_scope\""), "{w}");
        assert!(w.contains(&format!("scope=\"{scope}\"")), "{tool}: {w}");
        assert!(r.text().await.unwrap().contains(scope));
    }
    // The same on the legacy transport.
    let mut sse = SseClient::connect(&s.url(""), Some(&reader))
        .await
        .expect("sse");
    sse.handshake().await;
    let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"agent_run","arguments":{}}});
    let r = sse.post_raw(body.to_string().into_bytes(), None).await;
    assert_eq!(r.status().as_u16(), 403);
    assert!(www(&r).contains("scope=\"dispatch:run\""));
}

#[tokio::test]
async fn subjects_see_only_their_own_tasks_and_sessions() {
    let (auth, _fx, s) = setup("").await;
    let alice = auth.valid("alice", &ALL_SCOPES);
    let bob = auth.valid("bob", &ALL_SCOPES);
    let a = s.streamable(Some(&alice)).await.expect("alice");
    let (err, v) = call(
        &a,
        "agent_run",
        json!({"agent": "helper", "input": "alice's secret work", "wait_seconds": 30}),
    )
    .await;
    assert!(!err, "{v}");
    let task = v["task_id"].as_str().unwrap().to_string();

    let b = s.streamable(Some(&bob)).await.expect("bob");
    let (err, msg) = call(&b, "task_status", json!({"task_id": task})).await;
    assert!(err, "bob must not see alice's task: {msg}");
    let (err, msg) = call(&b, "task_result", json!({"task_id": task})).await;
    assert!(err, "{msg}");
    let (err, msg) = call(&b, "task_cancel", json!({"task_id": task})).await;
    assert!(err, "{msg}");
    let (_, list) = call(&b, "task_list", json!({})).await;
    assert!(!list.to_string().contains(&task), "{list}");
    let (_, report) = call(&b, "usage_report", json!({})).await;
    assert!(!report.to_string().contains("helper"), "{report}");
    let (err, mine) = call(&a, "task_status", json!({"task_id": task})).await;
    assert!(!err, "{mine}");

    // Bob over legacy SSE: the same wall.
    let mut sse = SseClient::connect(&s.url(""), Some(&bob))
        .await
        .expect("sse");
    sse.handshake().await;
    let r = sse.call("task_status", json!({"task_id": task})).await;
    assert_eq!(r["isError"], true, "{r}");
    // Bob cannot post into alice's legacy session, nor use her Streamable one.
    let mut alice_sse = SseClient::connect(&s.url(""), Some(&alice))
        .await
        .expect("sse");
    alice_sse.handshake().await;
    let ping = json!({"jsonrpc":"2.0","id":5,"method":"ping"});
    let r = alice_sse
        .post_raw(ping.to_string().into_bytes(), Some(&bob))
        .await;
    assert_eq!(r.status().as_u16(), 404);
    let session = raw_session(&s, &alice).await;
    let steal = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"task_status","arguments":{"task_id": task}}});
    let r = post_mcp(&s, Some(&bob), Some(&session), &steal).await;
    let text = r.text().await.unwrap();
    assert!(!text.contains("alice's secret work"), "{text}");
    assert!(text.contains("belongs to another user"), "{text}");
}

#[tokio::test]
async fn introspection_checks_opaque_tokens() {
    let auth = AuthServer::start().await;
    let toml = format!(
        "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n[auth.introspection]\nurl = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"TEST_INTROSPECTION_SECRET\"\n",
        auth.issuer(),
        auth.introspection_url()
    );
    let fx = Fx::new(&[("helper", &agent("openai/gpt-4o-mini"))], &toml).await;
    let mut spawn = fx.spawn();
    spawn
        .env
        .push(("TEST_INTROSPECTION_SECRET".into(), CLIENT_SECRET.into()));
    let s = HttpServer::start(&fx.p, spawn, 0).await;
    let opaque = auth.opaque("carol", &ALL_SCOPES);
    let c = s
        .streamable(Some(&opaque))
        .await
        .expect("opaque token accepted");
    let (err, v) = call(&c, "agent_list", json!({})).await;
    assert!(!err, "{v}");
    let other = auth.opaque("dave", &ALL_SCOPES);
    auth.revoke(&other);
    let r = post_mcp(&s, Some(&other), None, &init_body()).await;
    assert_eq!(r.status().as_u16(), 401);
    assert!(www(&r).contains("invalid_token"));
    assert!(
        !s.stderr().contains(CLIENT_SECRET),
        "secrets never reach logs"
    );
}
