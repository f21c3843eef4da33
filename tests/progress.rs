//! Progress notifications while a client waits: the task's events, and a
//! heartbeat through a long silence (one slow provider call), for
//! `agent_run` and for `task_result` with `wait_seconds`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::*;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request, ServerResult};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};
use tokio::sync::Notify;

async fn call_with_progress(
    c: &Client,
    name: &str,
    args: Value,
) -> rmcp::service::RequestHandle<rmcp::RoleClient> {
    let mut params = CallToolRequestParams::new(name.to_string());
    params.arguments = args.as_object().cloned();
    c.service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap()
}

/// Notes until one contains `what` (all of them, in order).
async fn notes_until(c: &mut Client, what: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match c.next_note(DEADLINE).await {
            Some(Note::Progress(m)) => {
                let done = m.contains(what);
                seen.push(m);
                if done {
                    return seen;
                }
            }
            Some(_) => {}
            None => panic!("no progress note with `{what}`; saw {seen:#?}"),
        }
    }
}

fn structured(r: ServerResult) -> Value {
    match r {
        ServerResult::CallToolResult(r) => r.structured_content.unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_long_provider_call_gets_a_heartbeat_in_agent_run() {
    let fx = Fx::new(
        &[("slow", &agent("openai/slow"))],
        "[progress]\nheartbeat_secs = 1\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("slow", Behavior::gate(&gate, "finally"));
    let mut c = fx.connect().await;
    let handle = call_with_progress(
        &c,
        "agent_run",
        json!({"agent": "slow", "input": "x", "wait_seconds": 60}),
    )
    .await;
    fx.fake.wait_in_flight(1).await;
    let seen = notes_until(&mut c, "still running").await;
    assert!(
        seen.last().unwrap().contains("slow: still running, "),
        "{seen:#?}"
    );
    gate.notify_waiters();
    let v = structured(handle.await_response().await.unwrap());
    assert_eq!(v["output"], "finally", "{v:#}");
}

#[tokio::test]
async fn task_result_waiting_hears_the_task_and_its_heartbeat() {
    let fx = Fx::new(
        &[("slow", &agent("openai/slow"))],
        "[progress]\nheartbeat_secs = 1\n",
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake
        .on_model("slow", Behavior::gate(&gate, "late answer"));
    let mut c = fx.connect().await;
    let d = c
        .ok("agent_delegate", json!({"agent": "slow", "input": "x"}))
        .await;
    fx.fake.wait_in_flight(1).await;
    let handle = call_with_progress(
        &c,
        "task_result",
        json!({"task_id": id(&d), "wait_seconds": 60}),
    )
    .await;
    let seen = notes_until(&mut c, "still running").await;
    assert!(seen[0].starts_with("slow: running"), "{seen:#?}");
    gate.notify_waiters();
    let seen = notes_until(&mut c, "answered").await;
    assert!(seen.iter().any(|m| m.contains("answered")), "{seen:#?}");
    let v = structured(handle.await_response().await.unwrap());
    assert_eq!(v["output"], "late answer", "{v:#}");
}
