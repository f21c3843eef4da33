//! The task engine through MCP, against the real binary and a fake provider
//! on 127.0.0.1 that speaks the OpenAI and Anthropic wire formats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::*;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};
use tokio::sync::Notify;

#[tokio::test]
async fn agent_run_returns_the_output_with_its_accounting() {
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], "").await;
    fx.fake.push(Behavior::reply_with_usage(
        "Hello from the model",
        1000,
        500,
        None,
    ));
    let c = fx.connect().await;
    let r = c
        .call(
            "agent_run",
            json!({"agent": "writer", "input": {"topic": "tests", "notes": [1, 2]}}),
        )
        .await;
    let v = r.structured_content.clone().unwrap();
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "Hello from the model");
    assert_eq!(v["model"], "openai/gpt-4o-mini");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["input_tokens"], 1000);
    assert_eq!(v["output_tokens"], 500);
    // gpt-4o-mini: $0.15 in / $0.60 out per million tokens.
    assert!(
        (v["cost_usd"].as_f64().unwrap() - 0.00045).abs() < 1e-9,
        "{v:#}"
    );
    // The text block leads with the output, for clients that read only text.
    assert!(text_of(&r).starts_with("Hello from the model"));

    let req = fx.fake.last_request().unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(&*format!("Bearer {OPENAI_KEY}"))
    );
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["messages"][0]["role"], "system");
    assert!(
        req.body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("careful test agent")
    );
    let user = req.body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("## topic\n\ntests"), "{user}");

    // The outbox file has a YAML header with the same accounting.
    let kb_path = v["kb_path"].as_str().unwrap();
    assert_eq!(kb_path, format!("outbox/writer-{}.md", id(&v)));
    let doc = std::fs::read_to_string(fx.p.kb().join(kb_path)).unwrap();
    assert!(doc.starts_with("---\n"), "{doc}");
    let header: serde_yaml::Value =
        serde_yaml::from_str(doc.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(header["status"].as_str(), Some("succeeded"));
    assert_eq!(header["model"].as_str(), Some("openai/gpt-4o-mini"));
    assert_eq!(header["input_tokens"].as_u64(), Some(1000));
    assert_eq!(header["calls"][0]["kind"].as_str(), Some("primary"));
    assert!(doc.contains("## Output\n\nHello from the model"));

    // The same through task_status and the KB tools.
    let s = status(&c, &id(&v)).await;
    assert_eq!(s["calls"].as_array().unwrap().len(), 1);
    assert_eq!(s["calls"][0]["cost_source"], "price_table");
    let read = c.ok("kb_read", json!({"path": kb_path})).await;
    assert!(
        read["content"]
            .as_str()
            .unwrap()
            .contains("Hello from the model")
    );
    c.close().await;
}

#[tokio::test]
async fn reported_cost_wins_and_unknown_prices_are_marked() {
    let fx = Fx::new(
        &[
            ("routed", &agent("openrouter/some-lab/new-model")),
            ("mystery", &agent("openai/brand-new-model")),
            ("priced", &agent("openai/house-model")),
        ],
        "[prices.\"openai/house-model\"]\ninput = 2.0\noutput = 4.0\n",
    )
    .await;
    let c = fx.connect().await;
    fx.fake
        .push(Behavior::reply_with_usage("a", 100, 100, Some(0.0123)));
    let v = run(&c, "routed", json!("x")).await;
    assert_eq!(v["cost_usd"], 0.0123);
    let s = status(&c, &id(&v)).await;
    assert_eq!(s["calls"][0]["cost_source"], "reported");
    assert_eq!(
        fx.fake.last_request().unwrap().body["usage"]["include"],
        true
    );

    fx.fake
        .push(Behavior::reply_with_usage("b", 100, 100, None));
    let v = run(&c, "mystery", json!("x")).await;
    assert_eq!(v["cost_usd"], 0.0);
    assert_eq!(
        status(&c, &id(&v)).await["calls"][0]["cost_source"],
        "unknown"
    );

    fx.fake
        .push(Behavior::reply_with_usage("c", 1_000_000, 500_000, None));
    let v = run(&c, "priced", json!("x")).await;
    assert_eq!(v["cost_usd"], 4.0);
    c.close().await;
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    fx.fake.push(Behavior::rate_limited("1"));
    fx.fake.push(Behavior::reply("after the wait"));
    let c = fx.connect().await;
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["attempts"], 2);
    let calls = status(&c, &id(&v)).await["calls"].clone();
    assert_eq!(calls[0]["http_status"], 429);
    assert_eq!(calls[0]["ok"], false);
    assert_eq!(calls[1]["ok"], true);
    // The retry waited at least the second the provider asked for.
    let (store_first, store_second) = attempt_times(&fx, &id(&v));
    assert!(
        store_second - store_first >= 1000,
        "retried after {} ms",
        store_second - store_first
    );
    c.close().await;
}

/// (end of attempt 1, start of attempt 2) in ms, read from `dispatch task --json`.
fn attempt_times(fx: &Fx, task: &str) -> (i64, i64) {
    let out = std::process::Command::new(bin())
        .args(["task", task, "--json", "--root"])
        .arg(fx.p.root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let calls = &v["calls"];
    let end_first =
        calls[0]["started_at"].as_i64().unwrap() + calls[0]["latency_ms"].as_i64().unwrap();
    (end_first, calls[1]["started_at"].as_i64().unwrap())
}

#[tokio::test]
async fn server_errors_and_malformed_answers_are_retried() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let c = fx.connect().await;
    fx.fake.push_all([
        Behavior::status(500),
        Behavior::status(502),
        Behavior::reply("third time"),
    ]);
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_u64()),
        (Some("succeeded"), Some(3))
    );
    assert_eq!(v["output"], "third time");

    fx.fake
        .push_all([Behavior::Malformed, Behavior::reply("well formed")]);
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_u64()),
        (Some("succeeded"), Some(2))
    );

    // Retries are bounded: three 503s fail the task, with each failure recorded.
    fx.fake.push_all([
        Behavior::status(503),
        Behavior::status(503),
        Behavior::status(503),
    ]);
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "provider_error");
    assert_eq!(v["attempts"], 3);
    assert!(v["error"].as_str().unwrap().contains("503"), "{v:#}");
    c.close().await;
}

#[tokio::test]
async fn client_errors_fail_at_once_with_an_actionable_message() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let c = fx.connect().await;
    for (code, needle) in [
        (400, "400"),
        (401, "OPENAI_API_KEY"),
        (403, "403"),
        (404, "model"),
        (422, "422"),
    ] {
        let before = fx.fake.request_count();
        fx.fake.push(Behavior::status(code));
        let v = run(&c, "a", json!("x")).await;
        assert_eq!(v["state"], "failed", "{code}");
        assert_eq!(v["reason"], "rejected", "{code}");
        assert_eq!(v["attempts"], 1, "{code} must not be retried");
        assert_eq!(fx.fake.request_count(), before + 1);
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(needle), "{code}: {err}");
        assert!(v.get("output").is_none());
    }
    c.close().await;
}

#[tokio::test]
async fn a_missing_key_names_the_variable() {
    let fx = Fx::new(&[("a", &agent("anthropic/claude-haiku-4-5"))], "").await;
    let mut spawn = fx.spawn();
    spawn.env.retain(|(k, _)| k != "ANTHROPIC_API_KEY");
    let c = connect_with(&fx.p, spawn).await;
    // Refused at once, before a task is queued or a provider called.
    let e = c
        .err("agent_run", json!({"agent": "a", "input": "x"}))
        .await;
    assert!(
        e.starts_with("missing_key: no model of `a` has a key: set ANTHROPIC_API_KEY (for anthropic/claude-haiku-4-5)"),
        "{e}"
    );
    let listed = c.ok("task_list", json!({})).await;
    assert_eq!(listed["tasks"], json!([]));
    let a = c.ok("agent_list", json!({})).await;
    assert_eq!(a["agents"][0]["missing_keys"], json!(["ANTHROPIC_API_KEY"]));
    eventually("the start-up warning about the key", DEADLINE, || async {
        c.stderr()
            .contains("no key for anthropic: set ANTHROPIC_API_KEY (used by a)")
            .then_some(())
    })
    .await;
    assert_eq!(fx.fake.request_count(), 0);
    c.close().await;
}

#[tokio::test]
async fn timeouts_and_stalls() {
    let fx = Fx::new(
        &[
            ("slow", "---\nmodel: openai/hangs\ntimeout: 1s\n---\nx\n"),
            ("staller", &agent("openai/stalls")),
        ],
        "",
    )
    .await;
    fx.fake.on_model("hangs", Behavior::Hang);
    let c = fx.connect().await;
    let v = run(&c, "slow", json!("x")).await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "timeout");
    assert_eq!(v["attempts"], 3);

    // A stream that stops mid-way is cut after the idle timeout and retried.
    fx.fake.push_all([
        Behavior::StallAfter { chunks: 2 },
        Behavior::reply("recovered"),
    ]);
    let v = run(&c, "staller", json!("x")).await;
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["output"], "recovered");
    let calls = status(&c, &id(&v)).await["calls"].clone();
    assert!(
        calls[0]["error"].as_str().unwrap().contains("stall"),
        "{calls:#}"
    );
    c.close().await;
}

#[tokio::test]
async fn failover_moves_along_the_model_chain() {
    let fx = Fx::new(
        &[(
            "a",
            "---\nmodel: [openai/primary, anthropic/claude-haiku-4-5]\n---\nx\n",
        )],
        "",
    )
    .await;
    fx.fake.on_model("primary", Behavior::status(503));
    fx.fake.push(Behavior::reply("from anthropic"));
    let c = fx.connect().await;
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["model"], "anthropic/claude-haiku-4-5");
    assert_eq!(v["attempts"], 4);
    let last = fx.fake.last_request().unwrap();
    assert_eq!(last.path, "/v1/messages");
    assert_eq!(last.header("x-api-key"), Some(ANTHROPIC_KEY));
    c.close().await;
}

#[tokio::test]
async fn an_open_breaker_is_skipped() {
    let fx = Fx::new(
        &[(
            "a",
            "---\nmodel: [openai/flaky, anthropic/steady]\n---\nx\n",
        )],
        "",
    )
    .await;
    // Replaces BASE_TOML: one attempt per model, a breaker that opens after two failures.
    fx.p.write(
        "dispatch.toml",
        "[resilience]\nbase_delay_ms = 1\nmax_attempts = 1\nbreaker_threshold = 2\nbreaker_cooldown_secs = 600\nidle_timeout_secs = 1\n",
    );
    fx.fake.on_model("flaky", Behavior::status(503));
    let c = fx.connect().await;
    for _ in 0..3 {
        let v = run(&c, "a", json!("x")).await;
        assert_eq!(v["state"], "succeeded");
        assert_eq!(v["model"], "anthropic/steady");
    }
    let flaky = fx
        .fake
        .requests()
        .iter()
        .filter(|r| r.model == "flaky")
        .count();
    assert_eq!(flaky, 2, "the third task must skip the open provider");
    let page = c.ok("task_list", json!({"limit": 1})).await;
    let last = status(&c, page["tasks"][0]["task_id"].as_str().unwrap()).await;
    let skipped = &last["calls"][0];
    assert_eq!(skipped["model"], "openai/flaky");
    assert!(
        skipped["error"].as_str().unwrap().contains("circuit"),
        "{skipped:#}"
    );
    c.close().await;
}

#[tokio::test]
async fn cancelling_a_running_task_aborts_its_request() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "too late"));
    let c = fx.connect().await;
    let d = c
        .ok("agent_delegate", json!({"agent": "a", "input": "work"}))
        .await;
    fx.fake.wait_in_flight(1).await;
    let out = c.ok("task_cancel", json!({"task_id": id(&d)})).await;
    assert_eq!(out["cancelled"], true);
    assert_eq!(out["state"], "cancelled");
    fx.fake.wait_disconnects(1).await;
    let v = c.ok("task_result", json!({"task_id": id(&d)})).await;
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["reason"], "cancelled");
    // Cancelling again changes nothing and says so.
    let again = c.ok("task_cancel", json!({"task_id": id(&d)})).await;
    assert_eq!(again["cancelled"], false);
    c.close().await;
}

#[tokio::test]
async fn a_client_cancel_notification_cancels_the_task() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "too late"));
    let mut c = fx.connect().await;
    let mut params = CallToolRequestParams::new("agent_run");
    params.arguments = json!({"agent": "a", "input": "work"}).as_object().cloned();
    let handle = c
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    fx.fake.wait_in_flight(1).await;
    // Progress notifications arrived while it ran.
    let note = c.next_note(DEADLINE).await;
    assert!(
        matches!(note, Some(Note::Progress(ref m)) if m.starts_with("a: ")),
        "{note:?}"
    );
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    fx.fake.wait_disconnects(1).await;
    let page = eventually("the task is cancelled", DEADLINE, || async {
        let page = c.ok("task_list", json!({"state": ["cancelled"]})).await;
        (page["tasks"].as_array().unwrap().len() == 1).then_some(page)
    })
    .await;
    assert_eq!(page["tasks"][0]["agent"], "a");
    c.close().await;
}

#[tokio::test]
async fn progress_notifications_follow_the_task() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let long: String = "word ".repeat(200);
    fx.fake.push(Behavior::Reply {
        text: long.clone(),
        input_tokens: 1,
        output_tokens: 1,
        cost: None,
        delay: Duration::ZERO,
        chunk_count: 10,
    });
    let mut c = fx.connect().await;
    let mut params = CallToolRequestParams::new("agent_run");
    params.arguments = json!({"agent": "a", "input": "work"}).as_object().cloned();
    let handle = c
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    handle.await_response().await.unwrap();
    let mut messages = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), c.notes.recv()).await {
        if let Note::Progress(m) = n {
            messages.push(m);
        }
    }
    let all = messages.join("\n");
    assert!(all.contains("a: running"), "{all}");
    assert!(all.contains("streaming"), "{all}");
    c.close().await;
}

#[tokio::test]
async fn not_finished_in_time_returns_the_task_id() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "eventually"));
    let c = fx.connect().await;
    let r = c
        .call(
            "agent_run",
            json!({"agent": "a", "input": "x", "wait_seconds": 0.2}),
        )
        .await;
    let v = r.structured_content.clone().unwrap();
    assert_ne!(r.is_error, Some(true));
    assert_eq!(v["done"], false);
    assert!(["queued", "running"].contains(&v["state"].as_str().unwrap()));
    assert!(v["hint"].as_str().unwrap().contains("task_result"));
    assert!(text_of(&r).contains(&id(&v)));
    fx.fake.wait_in_flight(1).await;
    gate.notify_waiters();
    let done = wait_done(&c, &id(&v)).await;
    assert_eq!(done["output"], "eventually");
    c.close().await;
}

#[tokio::test]
async fn concurrency_limits_hold() {
    let fx = Fx::new(
        &[
            ("a", &agent("openai/gpt-4o-mini")),
            ("b", &agent("anthropic/claude-haiku-4-5")),
        ],
        "[limits]\nglobal = 3\n[limits.agents]\na = 2\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "done"));
    let c = fx.connect().await;
    let mut ids = Vec::new();
    for agent in ["a", "a", "a", "a", "b", "b", "b"] {
        let d = c
            .ok("agent_delegate", json!({"agent": agent, "input": "x"}))
            .await;
        ids.push(id(&d));
    }
    // Two `a` (its own limit) and one `b` (the global limit of 3) run; the rest wait.
    fx.fake.wait_in_flight(3).await;
    let queued = c.ok("task_list", json!({"state": ["queued"]})).await;
    assert_eq!(queued["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(fx.fake.request_count(), 3);
    // Release everything; new requests answer at once.
    fx.fake.set_default(Behavior::reply("done"));
    gate.notify_waiters();
    for i in &ids {
        assert_eq!(wait_done(&c, i).await["state"], "succeeded");
    }
    assert_eq!(fx.fake.peak_in_flight(), 3);
    c.close().await;
}

#[tokio::test]
async fn per_provider_limit_holds() {
    let fx = Fx::new(
        &[("a", &agent("openai/gpt-4o-mini"))],
        "[limits]\nper_provider = 1\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "done"));
    let c = fx.connect().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(id(&c
            .ok("agent_delegate", json!({"agent": "a", "input": "x"}))
            .await));
    }
    fx.fake.wait_in_flight(1).await;
    // Four tasks run, but only one request at a time reaches the provider.
    let running = eventually("all tasks running", DEADLINE, || async {
        let r = c.ok("task_list", json!({"state": ["running"]})).await;
        (r["tasks"].as_array().unwrap().len() == 4).then_some(())
    });
    running.await;
    assert_eq!(fx.fake.request_count(), 1);
    fx.fake.set_default(Behavior::reply("done"));
    gate.notify_waiters();
    for i in &ids {
        assert_eq!(wait_done(&c, i).await["state"], "succeeded");
    }
    assert_eq!(fx.fake.peak_in_flight(), 1);
    c.close().await;
}

#[tokio::test]
async fn a_full_queue_says_so() {
    let fx = Fx::new(
        &[("a", &agent("openai/gpt-4o-mini"))],
        "[limits]\nglobal = 1\nqueue = 1\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "done"));
    let c = fx.connect().await;
    let first = c
        .ok("agent_delegate", json!({"agent": "a", "input": "x"}))
        .await;
    fx.fake.wait_in_flight(1).await;
    let second = c
        .ok("agent_delegate", json!({"agent": "a", "input": "x"}))
        .await;
    let msg = c
        .err("agent_delegate", json!({"agent": "a", "input": "x"}))
        .await;
    assert!(
        msg.contains("queue full") && msg.contains("dispatch.toml"),
        "{msg}"
    );
    fx.fake.set_default(Behavior::reply("done"));
    gate.notify_waiters();
    wait_done(&c, &id(&first)).await;
    wait_done(&c, &id(&second)).await;
    c.close().await;
}

#[tokio::test]
async fn a_crash_is_recovered_on_restart() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "never seen"));
    let c = fx.connect().await;
    let d = c
        .ok("agent_delegate", json!({"agent": "a", "input": "long job"}))
        .await;
    let queued_behind = c.ok("task_status", json!({"task_id": id(&d)})).await;
    assert!(["queued", "running"].contains(&queued_behind["state"].as_str().unwrap()));
    fx.fake.wait_in_flight(1).await;
    c.kill().await; // kill -9 while the provider call is in flight

    fx.fake
        .set_default(Behavior::reply("finished after restart"));
    let c = fx.connect().await;
    let v = wait_done(&c, &id(&d)).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "finished after restart");
    assert!(fx.p.kb().join(v["kb_path"].as_str().unwrap()).is_file());
    let none_running = c
        .ok("task_list", json!({"state": ["running", "queued"]}))
        .await;
    assert_eq!(none_running["tasks"], json!([]));
    c.close().await;
}

#[tokio::test]
async fn a_crash_past_the_requeue_limit_fails_as_interrupted() {
    let fx = Fx::new(
        &[("a", &agent("openai/gpt-4o-mini"))],
        "[recovery]\nmax_requeues = 0\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake.set_default(Behavior::gate(&gate, "never seen"));
    let c = fx.connect().await;
    let d = c
        .ok("agent_delegate", json!({"agent": "a", "input": "long job"}))
        .await;
    fx.fake.wait_in_flight(1).await;
    c.kill().await;
    let c = fx.connect().await;
    let v = c.ok("task_result", json!({"task_id": id(&d)})).await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "interrupted");
    assert!(v["error"].as_str().unwrap().contains("stopped"), "{v:#}");
    c.close().await;
}

#[tokio::test]
async fn the_api_key_never_leaks() {
    let fx = Fx::new(
        &[
            ("a", &agent("openai/gpt-4o-mini")),
            ("b", &agent("openai/echoes")),
        ],
        "",
    )
    .await;
    // A provider that echoes the credential back in its error body.
    fx.fake.on_model(
        "echoes",
        Behavior::Status {
            code: 401,
            retry_after: None,
            body: "{\"error\": {\"message\": \"Incorrect API key provided: $AUTH\"}}".into(),
        },
    );
    let c = fx.connect().await;
    let mut seen = String::new();
    let ok = c
        .call("agent_run", json!({"agent": "a", "input": "x"}))
        .await;
    seen.push_str(&format!("{ok:?}"));
    let bad = c
        .call("agent_run", json!({"agent": "b", "input": "x"}))
        .await;
    seen.push_str(&format!("{bad:?}"));
    let bad_v = bad.structured_content.clone().unwrap();
    assert_eq!(bad_v["state"], "failed");
    assert!(bad_v["error"].as_str().unwrap().contains("OPENAI_API_KEY"));
    for tool in ["agent_list", "task_list", "usage_report"] {
        seen.push_str(&format!("{:?}", c.call(tool, json!({})).await));
    }
    seen.push_str(&format!(
        "{:?}",
        c.call("task_status", json!({"task_id": id(&bad_v)})).await
    ));
    // The fake did receive the key, so the check below can fail.
    assert!(fx.fake.requests().iter().any(|r| {
        r.header("authorization")
            .is_some_and(|h| h.contains(OPENAI_KEY))
    }));
    let stderr = c.stderr();
    c.close().await;
    for key in [OPENAI_KEY, ANTHROPIC_KEY, OPENROUTER_KEY, "SECRET"] {
        assert!(!seen.contains(key), "a tool result contains {key}");
        assert!(!stderr.contains(key), "the log contains {key}");
    }
    for entry in walk(&fx.p.root().join("_kb")) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        assert!(
            !text.contains("SECRET"),
            "{} contains the key",
            entry.display()
        );
    }
    let db = std::fs::read(fx.p.root().join(".dispatch/dispatch.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains("SECRET"),
        "the database contains the key"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn delegate_without_an_agent_routes_and_says_why() {
    let fx = Fx::new(
        &[
            ("orchestrator", "---\nmodel: openai/classifier\n---\nYou route requests.\n"),
            ("code-review", "---\nmodel: openai/gpt-4o\ndescription: reviews code\nrouting: {keywords: [review, diff]}\n---\nReview.\n"),
            ("docs-sync", "---\nmodel: openai/gpt-4o-mini\ndescription: writes docs\nrouting: {keywords: [changelog]}\n---\nDocs.\n"),
        ],
        "",
    )
    .await;
    let c = fx.connect().await;
    // Keywords decide without calling a model.
    let d = c
        .ok(
            "agent_delegate",
            json!({"input": "please review this diff"}),
        )
        .await;
    assert_eq!(d["agent"], "code-review");
    assert_eq!(d["routing"]["method"], "keywords");
    assert!(d["routing"]["reason"].as_str().unwrap().contains("review"));
    assert_eq!(wait_done(&c, &id(&d)).await["state"], "succeeded");

    // No keyword: the classifier's model decides.
    fx.fake.on_model(
        "classifier",
        Behavior::reply("{\"agent\": \"docs-sync\", \"confidence\": 0.92, \"reason\": \"asks for documentation\"}"),
    );
    let d = c
        .ok(
            "agent_delegate",
            json!({"input": "explain the new API to users"}),
        )
        .await;
    assert_eq!(d["agent"], "docs-sync");
    assert_eq!(d["routing"]["method"], "classifier");
    assert_eq!(d["routing"]["confidence"], 0.92);
    let s = status(&c, &id(&d)).await;
    assert_eq!(s["calls"][0]["kind"], "routing");
    assert_eq!(s["calls"][0]["agent"], "orchestrator");
    let classifier_req = fx
        .fake
        .requests()
        .into_iter()
        .find(|r| r.model == "classifier")
        .unwrap();
    let prompt = classifier_req.body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        prompt.contains("- docs-sync: writes docs") && prompt.contains("explain the new API"),
        "{prompt}"
    );

    // Unsure: a clear error that lists the candidates.
    fx.fake.on_model(
        "classifier",
        Behavior::reply("{\"agent\": \"docs-sync\", \"confidence\": 0.3, \"reason\": \"maybe\"}"),
    );
    let msg = c.err("agent_delegate", json!({"input": "hmm"})).await;
    assert!(
        msg.contains("0.30") && msg.contains("code-review") && msg.contains("docs-sync"),
        "{msg}"
    );
    assert!(msg.contains("Pass `agent`"), "{msg}");
    c.close().await;
}

#[tokio::test]
async fn a_configured_default_agent_catches_the_rest() {
    let fx = Fx::new(
        &[("helper", &agent("openai/gpt-4o-mini"))],
        "[router]\ndefault_agent = \"helper\"\n",
    )
    .await;
    let c = fx.connect().await;
    let d = c.ok("agent_delegate", json!({"input": "anything"})).await;
    assert_eq!(d["agent"], "helper");
    assert_eq!(d["routing"]["method"], "default");
    c.close().await;
}

#[tokio::test]
async fn delegation_depth_is_limited() {
    let fx = Fx::new(
        &[("a", &agent("openai/gpt-4o-mini"))],
        "[limits]\nmax_depth = 1\n",
    )
    .await;
    let c = fx.connect().await;
    let root = c
        .ok("agent_delegate", json!({"agent": "a", "input": "x"}))
        .await;
    let child = c
        .ok(
            "agent_delegate",
            json!({"agent": "a", "input": "x", "parent_task_id": id(&root)}),
        )
        .await;
    let msg = c
        .err(
            "agent_delegate",
            json!({"agent": "a", "input": "x", "parent_task_id": id(&child)}),
        )
        .await;
    assert!(msg.contains("too deep"), "{msg}");
    let msg = c
        .err(
            "agent_delegate",
            json!({"agent": "a", "input": "x", "parent_task_id": "nope"}),
        )
        .await;
    assert!(msg.contains("no task `nope`"), "{msg}");
    let children = c
        .ok("task_list", json!({"parent_task_id": id(&root)}))
        .await;
    assert_eq!(children["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(children["tasks"][0]["parent_task_id"], id(&root));
    c.close().await;
}

#[tokio::test]
async fn task_list_filters_and_pages() {
    let fx = Fx::new(
        &[
            ("a", &agent("openai/gpt-4o-mini")),
            ("b", &agent("openai/gpt-4o-mini")),
        ],
        "",
    )
    .await;
    let c = fx.connect().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = run(
            &c,
            if i % 2 == 0 { "a" } else { "b" },
            json!(format!("job {i}")),
        )
        .await;
        ids.push(id(&v));
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"limit": 2});
        if let Some(cur) = &cursor {
            args["cursor"] = json!(cur);
        }
        let page = c.ok("task_list", args).await;
        let tasks = page["tasks"].as_array().unwrap();
        assert!(tasks.len() <= 2);
        seen.extend(
            tasks
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_string()),
        );
        assert!(
            tasks.iter().all(|t| t.get("output").is_none()),
            "lists carry no outputs"
        );
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let only_b = c.ok("task_list", json!({"agent": "b"})).await;
    assert_eq!(only_b["tasks"].as_array().unwrap().len(), 2);
    let none = c.ok("task_list", json!({"state": ["failed"]})).await;
    assert_eq!(none["tasks"], json!([]));
    let recent = c.ok("task_list", json!({"since": "1h"})).await;
    assert_eq!(recent["tasks"].as_array().unwrap().len(), 5);
    let msg = c.err("task_list", json!({"cursor": "garbage"})).await;
    assert!(msg.contains("cursor"), "{msg}");
    let msg = c.err("task_list", json!({"since": "yesterday-ish"})).await;
    assert!(msg.contains("7d"), "{msg}");
    c.close().await;
}

#[tokio::test]
async fn usage_report_sums_cost_and_the_saving() {
    let fx = Fx::new(
        &[
            ("cheap", &agent("openai/gpt-4o-mini")),
            ("premium", &agent("openai/gpt-4o")),
        ],
        "[report]\nbaseline = \"openai/gpt-4o\"\n",
    )
    .await;
    let c = fx.connect().await;
    for _ in 0..3 {
        fx.fake
            .push(Behavior::reply_with_usage("x", 1_000_000, 0, None));
        run(&c, "cheap", json!("x")).await;
    }
    fx.fake
        .push(Behavior::reply_with_usage("x", 1_000_000, 0, None));
    run(&c, "premium", json!("x")).await;
    let r = c.ok("usage_report", json!({"since": "1h"})).await;
    assert_eq!(r["total_calls"], 4);
    assert_eq!(r["total_input_tokens"], 4_000_000);
    // 3 × $0.15 + 1 × $2.50 = $2.95; all on gpt-4o: 4 × $2.50 = $10.
    assert!(
        (r["total_cost_usd"].as_f64().unwrap() - 2.95).abs() < 1e-6,
        "{r:#}"
    );
    assert_eq!(r["baseline"]["model"], "openai/gpt-4o");
    assert!((r["baseline"]["cost_usd"].as_f64().unwrap() - 10.0).abs() < 1e-6);
    assert!((r["baseline"]["saving_usd"].as_f64().unwrap() - 7.05).abs() < 1e-6);
    assert_eq!(r["baseline"]["saving_percent"], 70.5);
    let agents: Vec<&str> = r["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["cheap", "premium"]);
    // Another baseline on request; a window that excludes everything.
    let r = c
        .ok(
            "usage_report",
            json!({"since": "1h", "baseline": "openai/gpt-4o-mini"}),
        )
        .await;
    assert!(r["baseline"]["saving_usd"].as_f64().unwrap() < 0.0);
    let future = c
        .ok("usage_report", json!({"since": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(future["total_calls"], 0);
    c.close().await;
}

#[tokio::test]
async fn bad_requests_say_what_to_fix() {
    let fx = Fx::new(
        &[
            ("a", &agent("openai/gpt-4o-mini")),
            ("nomodel", "---\ndescription: none\n---\nbody\n"),
        ],
        "",
    )
    .await;
    let c = fx.connect().await;
    let msg = c
        .err("agent_run", json!({"agent": "nope", "input": "x"}))
        .await;
    assert!(
        msg.contains("unknown agent `nope`") && msg.contains("a, nomodel"),
        "{msg}"
    );
    let msg = c.err("agent_run", json!({"agent": "a", "input": 42})).await;
    assert!(msg.contains("string or an object"), "{msg}");
    let msg = c.err("agent_run", json!({"agent": "a", "input": ""})).await;
    assert!(msg.contains("empty"), "{msg}");
    let msg = c
        .err(
            "agent_run",
            json!({"agent": "a", "input": "x", "wait_seconds": -1}),
        )
        .await;
    assert!(msg.contains("wait_seconds"), "{msg}");
    let msg = c.err("task_status", json!({"task_id": "01nope"})).await;
    assert!(msg.contains("no task"), "{msg}");
    let v = run(&c, "nomodel", json!("x")).await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "invalid");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("model: provider/model-id"),
        "{v:#}"
    );
    c.close().await;
}

#[tokio::test]
async fn anthropic_streams_and_reports_usage() {
    let fx = Fx::new(&[("claude", &agent("anthropic/claude-sonnet-4"))], "").await;
    fx.fake
        .push(Behavior::reply_with_usage("Bonjour", 2000, 1000, None));
    let c = fx.connect().await;
    let v = run(&c, "claude", json!("say hello")).await;
    assert_eq!(v["output"], "Bonjour");
    assert_eq!(v["input_tokens"], 2000);
    // claude-sonnet-4: $3 in / $15 out per million.
    assert!(
        (v["cost_usd"].as_f64().unwrap() - 0.021).abs() < 1e-9,
        "{v:#}"
    );
    let req = fx.fake.last_request().unwrap();
    assert_eq!(req.path, "/v1/messages");
    assert!(
        req.body["system"]
            .as_str()
            .unwrap()
            .contains("careful test agent")
    );
    assert_eq!(req.body["stream"], true);
    c.close().await;
}

/// A 9 MiB answer: the tool result and the task carry the first
/// `max_answer_bytes` with a note, and the outbox file has all of it.
#[tokio::test]
async fn a_huge_answer_is_cut_in_results_and_whole_in_the_outbox() {
    let fx = Fx::new(
        &[("big", &agent("openai/gpt-4o-mini"))],
        "[limits]\nmax_answer_bytes = 100000\n",
    )
    .await;
    let answer: String = "ü".repeat(9 * 1024 * 1024 / 2);
    fx.fake.set_default(Behavior::reply(&answer));
    let c = fx.connect().await;
    let v = run(&c, "big", json!("x")).await;
    assert_eq!(v["state"], "succeeded", "{}", v["error"]);
    let out = v["output"].as_str().unwrap();
    let kb_path = v["kb_path"].as_str().unwrap();
    assert!(out.len() < 101_000, "{}", out.len());
    assert!(out.starts_with("üüü"));
    assert!(
        out.contains(&format!(
            "the answer is {} bytes; this is its first 100000",
            answer.len()
        )) && out.contains(kb_path),
        "{}",
        &out[out.len() - 400..]
    );
    let file = std::fs::read_to_string(fx.p.kb().join(kb_path)).unwrap();
    assert!(
        file.contains(&answer),
        "the outbox file has the whole answer"
    );
    let r = c.ok("task_result", json!({"task_id": v["task_id"]})).await;
    assert_eq!(r["output"], v["output"]);
    c.close().await;
}

/// A provider asking for a long wait gets the capped one, and the log says
/// which wait was taken.
#[tokio::test]
async fn the_log_names_the_wait_actually_taken() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    fx.fake.push(Behavior::rate_limited("100"));
    let c = fx.connect().await;
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    eventually("the retry is logged", DEADLINE, || async {
        let log = c.stderr();
        // The provider's own words sit between the two halves.
        log.lines()
            .any(|l| {
                l.contains("(it asked to retry after 1m40s)")
                    && l.ends_with("attempt=1")
                    && l.contains("; retrying in 3s ")
            })
            .then_some(())
    })
    .await;
    c.close().await;
}

/// An interrupted task's totals count the calls stored before the crash.
#[tokio::test]
async fn an_interrupted_task_counts_its_stored_calls() {
    let fx = Fx::new(
        &[("a", &agent("openai/gpt-4o-mini"))],
        "[recovery]\nmax_requeues = 0\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake.push(Behavior::status(500));
    fx.fake.set_default(Behavior::gate(&gate, "never seen"));
    let c = fx.connect().await;
    let d = c
        .ok("agent_delegate", json!({"agent": "a", "input": "long job"}))
        .await;
    fx.fake.wait_in_flight(1).await;
    eventually("the failed call is stored", DEADLINE, || async {
        let s = status(&c, &id(&d)).await;
        (s["calls"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    c.kill().await;
    let c = fx.connect().await;
    let v = status(&c, &id(&d)).await;
    assert_eq!(v["reason"], "interrupted", "{v:#}");
    assert_eq!(v["calls"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["attempts"], 1, "{v:#}");
    c.close().await;
}

/// Debug logs say what happened, not what was said: no model answer and no
/// task input appears in them.
#[tokio::test]
async fn debug_logs_carry_no_answers_or_inputs() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    fx.fake.set_default(Behavior::reply("ANSWER-TEXT-4f1e"));
    let c = fx.connect().await; // DISPATCH_LOG=debug (see Spawn::apply)
    let v = run(&c, "a", json!("INPUT-TEXT-9a2b")).await;
    assert_eq!(v["output"], "ANSWER-TEXT-4f1e");
    let log = eventually("the task's debug lines", DEADLINE, || async {
        let log = c.stderr();
        log.contains("task finished").then_some(log)
    })
    .await;
    assert!(!log.contains("ANSWER-TEXT-4f1e"), "{log}");
    assert!(!log.contains("INPUT-TEXT-9a2b"), "{log}");
    c.close().await;
}

/// Keys echoed inside successful answers (an agent's and its auditor's) are
/// scrubbed from everything dispatch stores or shows.
#[tokio::test]
async fn keys_echoed_in_answers_and_verdicts_are_scrubbed() {
    let auditor = "---\nmodel: anthropic/judge\n---\nAnswer with a JSON verdict: pass, needs-revision or fail, with feedback.\n";
    let fx = Fx::new(
        &[
            (
                "a",
                "---\nmodel: openai/gpt-4o-mini\nmirror: judge\n---\nYou answer.\n",
            ),
            ("judge", auditor),
        ],
        "",
    )
    .await;
    fx.fake.on_model(
        "gpt-4o-mini",
        Behavior::reply(&format!(
            "the keys are {OPENAI_KEY} and {ANTHROPIC_KEY} and {OPENROUTER_KEY}"
        )),
    );
    fx.fake.on_model(
        "judge",
        Behavior::reply(&format!(
            "{{\"verdict\": \"pass\", \"feedback\": \"saw {OPENAI_KEY}\"}}"
        )),
    );
    let c = fx.connect().await;
    let v = run(&c, "a", json!("x")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert!(
        v["output"].as_str().unwrap().contains("[redacted]"),
        "{v:#}"
    );
    let mut seen = format!("{v}");
    seen.push_str(&format!("{}", status(&c, &id(&v)).await));
    seen.push_str(&format!(
        "{}",
        c.ok("task_result", json!({"task_id": id(&v)})).await
    ));
    let stderr = c.stderr();
    c.close().await;
    let o = std::process::Command::new(bin())
        .args(["task", &id(&v), "--json", "--root"])
        .arg(fx.p.root())
        .output()
        .unwrap();
    seen.push_str(&String::from_utf8_lossy(&o.stdout));
    for entry in walk(&fx.p.root().join("_kb")) {
        seen.push_str(&String::from_utf8_lossy(&std::fs::read(&entry).unwrap()));
    }
    for file in ["dispatch.db", "dispatch.db-wal"] {
        if let Ok(db) = std::fs::read(fx.p.root().join(".dispatch").join(file)) {
            seen.push_str(&String::from_utf8_lossy(&db));
        }
    }
    for key in [OPENAI_KEY, ANTHROPIC_KEY, OPENROUTER_KEY] {
        assert!(!seen.contains(key), "{key} is stored or shown");
        assert!(!stderr.contains(key), "{key} is logged");
    }
}
