//! The HTTP server without OAuth2: Streamable HTTP and legacy SSE against the
//! real binary, session isolation, DNS rebinding protection, body and rate
//! limits, health, refusal of unauthenticated non-loopback serving, and a
//! graceful shutdown that lets a call in flight finish.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;

use common::fake_provider::Behavior;
use common::http::{SseClient, call, server};
use serde_json::{Value, json};
use tokio::sync::Notify;

#[tokio::test]
async fn streamable_http_runs_agents_and_kb_tools() {
    let (fx, s) = server("").await;
    fx.fake.set_default(Behavior::reply("hello over http"));
    let c = s.streamable(None).await.expect("connect");
    let tools = c.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "agent_run"));
    let (err, v) = call(
        &c,
        "agent_run",
        json!({"agent": "helper", "input": "hi", "wait_seconds": 30}),
    )
    .await;
    assert!(!err, "{v}");
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert!(v["output"].as_str().unwrap().contains("hello over http"));
    let (err, _) = call(
        &c,
        "kb_write",
        json!({"path": "context/http.md", "content": "# via http\n"}),
    )
    .await;
    assert!(!err);
    let (err, v) = call(&c, "kb_read", json!({"path": "context/http.md"})).await;
    assert!(
        !err && v["content"].as_str().unwrap().contains("via http"),
        "{v}"
    );
    // /metrics shows the requests, the task and its tokens and cost.
    let m = common::http::client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status().as_u16(), 200);
    let text = m.text().await.unwrap();
    for needle in [
        "dispatch_http_requests_total{transport=\"streamable_http\",status=\"200\"}",
        "dispatch_tasks{state=\"succeeded\"} 1",
        "dispatch_tokens_total{agent=\"helper\",model=\"openai/gpt-4o-mini\",direction=\"output\"}",
        "dispatch_cost_usd_total{agent=\"helper\",model=\"openai/gpt-4o-mini\"}",
        "dispatch_provider_requests_total{provider=\"openai\",model=\"openai/gpt-4o-mini\",outcome=\"ok\"} 1",
        "dispatch_breaker_state{provider=\"openai\"} 0",
        "dispatch_queue_depth 0",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    c.cancel().await.ok();
}

#[tokio::test]
async fn legacy_sse_serves_tools_and_two_clients_stay_apart() {
    let (fx, s) = server("").await;
    fx.fake.set_default(Behavior::reply("legacy answer"));
    let base = s.url("");
    let mut a = SseClient::connect(&base, None).await.expect("sse a");
    let mut b = SseClient::connect(&base, None).await.expect("sse b");
    assert_ne!(a.endpoint, b.endpoint, "each stream is its own session");
    let init = a.handshake().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "dispatch", "{init}");
    b.handshake().await;

    // Interleaved calls: each answer arrives on its own client's stream.
    let la = a.request("tools/list", json!({})).await;
    let rb = b
        .call(
            "agent_run",
            json!({"agent": "helper", "input": "x", "wait_seconds": 30}),
        )
        .await;
    let ra = a.call("agent_list", json!({})).await;
    assert!(
        la["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "kb_search")
    );
    assert_eq!(rb["structuredContent"]["state"], "succeeded", "{rb:#}");
    assert!(
        ra["structuredContent"]["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "helper"),
        "{ra:#}"
    );
    // A post to a session that does not exist is refused.
    let r = common::http::client()
        .post(s.url("/messages?sessionId=0000"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Malformed JSON-RPC says so.
    let r = a.post_raw(b"{not json".to_vec(), None).await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("JSON-RPC"));
}

#[tokio::test]
async fn bad_host_or_origin_is_403_on_every_transport() {
    let (_fx, s) = server("").await;
    let http = common::http::client();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    for (path, post) in [
        ("/mcp", true),
        ("/sse", false),
        ("/messages?sessionId=x", true),
    ] {
        let build = |h: (&str, &str)| {
            let rb = if post {
                http.post(s.url(path)).json(&init)
            } else {
                http.get(s.url(path))
            };
            rb.header("accept", "application/json, text/event-stream")
                .header(h.0, h.1)
        };
        let r = build(("host", "evil.example:80")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "Host on {path}");
        assert!(r.text().await.unwrap().contains("allowed_hosts"));
        let r = build(("origin", "https://evil.example"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "Origin on {path}");
    }
    // A loopback origin (a local dev page) is fine.
    let r = http
        .post(s.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("origin", "http://localhost:5173")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let (_fx, s) = server("[http]\nmax_body_bytes = 2048\n").await;
    let big = json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad": "x".repeat(4096)}});
    let http = common::http::client();
    let r = http
        .post(s.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert!(r.text().await.unwrap().contains("max_body_bytes"));
    let sse = SseClient::connect(&s.url(""), None).await.expect("sse");
    let r = sse.post_raw(big.to_string().into_bytes(), None).await;
    assert_eq!(r.status().as_u16(), 413);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let (_fx, s) = server("[http]\nrate_limit_per_minute = 1\nrate_limit_burst = 3\n").await;
    let http = common::http::client();
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = http
            .post(s.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&ping)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..3].iter().all(|&c| c != 429), "{statuses:?}");
    assert_eq!(&statuses[3..], &[429, 429], "{statuses:?}");
    let secs = retry_after.expect("Retry-After in seconds");
    assert!((1..=60).contains(&secs), "{secs}");
}

#[tokio::test]
async fn health_answers_for_any_host() {
    let (_fx, s) = server("").await;
    let r = common::http::client()
        .get(s.url("/healthz"))
        .header("host", "10.1.2.3:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["agents"], 1);
    assert_eq!(v["store"]["backend"], "sqlite", "{v:#}");
    assert_eq!(v["store"]["ok"], true, "{v:#}");
    // Without [auth] there is no protected-resource metadata to advertise.
    let r = common::http::client()
        .get(s.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn non_loopback_without_auth_is_refused() {
    let p = common::Project::new();
    let out = tokio::process::Command::new(common::bin())
        .args(["serve", "--http", "0.0.0.0:0", "--root"])
        .arg(p.root())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication"), "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    assert!(err.contains("[auth]"), "{err}");
}

#[tokio::test]
async fn sigterm_lets_the_call_in_flight_finish() {
    let (fx, s) = server("[http]\nshutdown_grace_secs = 30\n").await;
    let release = Arc::new(Notify::new());
    fx.fake
        .set_default(Behavior::gate(&release, "finished during shutdown"));
    let c = s.streamable(None).await.expect("connect");
    let running = tokio::spawn(async move {
        let r = call(
            &c,
            "agent_run",
            json!({"agent": "helper", "input": "slow", "wait_seconds": 60}),
        )
        .await;
        (c, r)
    });
    common::eventually("the provider request", common::DEADLINE, || {
        let n = fx.fake.in_flight();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let stderr = s.stderr.clone();
    let term = tokio::spawn(s.terminate());
    common::eventually("shutdown to start", common::DEADLINE, || {
        let seen = stderr.lock().unwrap().contains("waiting for tool calls");
        async move { seen.then_some(()) }
    })
    .await;
    release.notify_waiters();
    let Ok(joined) = tokio::time::timeout(common::DEADLINE, running).await else {
        panic!(
            "the call in flight did not finish: {}",
            stderr.lock().unwrap()
        );
    };
    let (_c, (err, v)) = joined.unwrap();
    assert!(!err, "{v}");
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert!(
        v["output"]
            .as_str()
            .unwrap()
            .contains("finished during shutdown")
    );
    let status = term.await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// `DELETE /mcp` ends a live session (then 404, as for a POST to it) and
/// answers 404 for an id that names no session.
#[tokio::test]
async fn deleting_a_session_that_is_not_there_is_404() {
    let (_fx, s) = server("").await;
    let http = common::http::client();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let r = http
        .post(s.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let id = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let _ = r.text().await;
    let delete = |id: String| {
        http.delete(s.url("/mcp"))
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    assert!(delete(id.clone()).await.unwrap().status().is_success());
    assert_eq!(delete(id).await.unwrap().status().as_u16(), 404);
    let r = delete("no-such-session".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("no such MCP session"));
}

/// A remote client is not shown where the project lives on the server.
#[tokio::test]
async fn agent_list_over_http_shows_no_server_paths() {
    let (fx, s) = server("").await;
    let c = s.streamable(None).await.expect("connect");
    let (err, v) = call(&c, "agent_list", json!({})).await;
    assert!(!err, "{v}");
    assert_eq!(v["agents"][0]["file"], "agents/helper.agent.md", "{v:#}");
    assert!(v["project"].get("root").is_none(), "{v:#}");
    let root = fx.p.root().display().to_string();
    assert!(!v.to_string().contains(&root), "{v:#}");
}

/// An idle connection and one that sends its headers too slowly are both
/// closed, and a server at its connection cap still answers once they are.
#[tokio::test]
async fn idle_and_slow_header_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_fx, s) = server("[http]\nheader_read_timeout_secs = 1\nmax_connections = 8\n").await;
    let addr = s.url("").trim_start_matches("http://").to_string();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    for (what, sock) in [("idle", &mut idle), ("slow", &mut slow)] {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(common::DEADLINE, sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection stays open"))
            .unwrap_or(0);
        // Closed, possibly after a 408 for the half-sent request.
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{what}: {text}");
    }
    // Fill the cap with idle sockets: /healthz is answered once they close.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let r = tokio::time::timeout(
        common::DEADLINE,
        common::http::client().get(s.url("/healthz")).send(),
    )
    .await
    .expect("/healthz answers")
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(held);
}
