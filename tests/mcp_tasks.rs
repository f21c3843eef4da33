//! MCP tasks (protocol 2025-11-25) driven by an independent client: the
//! official Python SDK (`mcp` 1.x, its experimental tasks API) over stdio and
//! Streamable HTTP, through tests/fixtures/tasks_client.py. Task-augmented
//! `tools/call`, `tasks/get`, `tasks/result` (the plain call's result),
//! `tasks/list` paging and subject isolation, `tasks/cancel`, ttl, status
//! notifications, and a task polled across a restart of the server.
//!
//! The SDK comes from PyPI, which tests do not reach: `.ci/run` installs it
//! in `target/py-mcp` (or point `DISPATCH_TEST_PYTHON` at a Python that has
//! it). Without it these tests say loudly that they skipped, unless
//! `DISPATCH_REQUIRE_PYTHON_SDK=1` (set by `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;

use common::auth_server::{ALL_SCOPES, AUDIENCE, AuthServer};
use common::fake_provider::Behavior;
use common::fixture::*;
use common::http::HttpServer;
use common::python::*;
use common::*;
use serde_json::{Value, json};
use tokio::sync::Notify;

fn stdio_target(fx: &Fx) -> String {
    let argv = json!([bin(), "serve", "--root", fx.p.root().display().to_string()]);
    format!("stdio:{argv}")
}

fn helper_fx_toml() -> &'static str {
    ""
}

fn id_of(result: &Value) -> String {
    result["structuredContent"]["task_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Everything one client sees of one task, checked for both transports.
fn check_roundtrip(out: &Value) {
    let tasks = &out["capabilities"]["tasks"];
    assert_eq!(tasks["requests"]["tools"]["call"], json!({}), "{out:#}");
    assert!(
        tasks["list"].is_object() && tasks["cancel"].is_object(),
        "{out:#}"
    );
    assert_eq!(out["execution"]["agent_run"], "optional");
    assert_eq!(out["execution"]["agent_delegate"], "optional");
    assert_eq!(out["execution"]["workflow_run"], "optional");
    assert_eq!(out["execution"]["kb_read"], "forbidden");
    assert_eq!(out["execution"]["task_status"], "forbidden");

    let created = &out["created"]["task"];
    let id = created["taskId"].as_str().unwrap();
    assert_eq!(created["ttl"], 600000);
    assert_eq!(created["pollInterval"], 1000);
    let last = out["polled"].as_array().unwrap().last().unwrap();
    assert_eq!(last["status"], "completed", "{out:#}");
    assert_eq!(last["taskId"], id);

    // The task's result is the plain call's, but for the task's own id and times.
    let (result, plain) = (&out["result"], &out["plain"]);
    // The text is the answer and a footer naming the task.
    let text = |v: &Value| v["content"][0]["text"].as_str().unwrap().to_string();
    assert!(
        text(result).starts_with("the answer\n\n---\ntask "),
        "{out:#}"
    );
    let plain_id = plain["structuredContent"]["task_id"].as_str().unwrap();
    assert_eq!(text(result), text(plain).replace(plain_id, &id_of(result)));
    let strip = |v: &Value| {
        let mut v = v["structuredContent"].clone();
        for k in [
            "task_id",
            "root_task_id",
            "created_at",
            "finished_at",
            "latency_ms",
            "kb_path",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(strip(result), strip(plain));
    assert_eq!(result["structuredContent"]["task_id"], id);
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
        id
    );
    assert_eq!(out["get"]["status"], "completed");
    assert_eq!(out["get"]["statusMessage"], "completed");
    let listed: Vec<&str> = out["list"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&id), "{out:#}");

    assert_eq!(out["cancel_finished"]["code"], -32602);
    assert!(
        out["cancel_finished"]["message"]
            .as_str()
            .unwrap()
            .contains("already completed"),
        "{out:#}"
    );
    assert_eq!(out["forbidden"]["code"], -32601);
    assert!(
        out["forbidden"]["message"]
            .as_str()
            .unwrap()
            .contains("kb_list")
    );
    assert_eq!(out["unknown"]["code"], -32602);
    assert!(
        out["expired"]["message"]
            .as_str()
            .unwrap()
            .contains("ttl has passed"),
        "{out:#}"
    );
    // The session heard the task change, up to its end.
    let notes = out["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["taskId"] == id && n["status"] == "completed"),
        "{out:#}"
    );
}

#[tokio::test]
async fn a_task_over_stdio_runs_polls_and_returns_the_plain_calls_result() {
    let Some(python) = python("tasks over stdio") else {
        return;
    };
    let fx = Fx::new(
        &[("helper", &agent("openai/gpt-4o-mini"))],
        helper_fx_toml(),
    )
    .await;
    fx.fake.set_default(Behavior::reply("the answer"));
    let args = json!({"agent": "helper", "input": "question"}).to_string();
    let out = py(
        &python,
        &fx.spawn().env,
        "roundtrip",
        &stdio_target(&fx),
        &args,
    )
    .await;
    check_roundtrip(&out);
}

#[tokio::test]
async fn a_task_over_streamable_http_runs_polls_and_returns_the_plain_calls_result() {
    let Some(python) = python("tasks over HTTP") else {
        return;
    };
    let fx = Fx::new(
        &[("helper", &agent("openai/gpt-4o-mini"))],
        helper_fx_toml(),
    )
    .await;
    fx.fake.set_default(Behavior::reply("the answer"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let args = json!({"agent": "helper", "input": "question"}).to_string();
    let out = py(&python, &[], "roundtrip", &s.url("/mcp"), &args).await;
    check_roundtrip(&out);
}

#[tokio::test]
async fn a_working_task_says_what_it_does_and_is_cancelled() {
    let Some(python) = python("task cancel") else {
        return;
    };
    let fx = Fx::new(&[("slow", &agent("openai/slow"))], "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("slow", Behavior::gate(&gate, "late"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let url = s.url("/mcp");
    let spec = json!({"tool": "agent_run", "arguments": {"agent": "slow", "input": "x"}});
    let created = py(&python, &[], "start", &url, &spec.to_string()).await;
    let id = created["task"]["taskId"].as_str().unwrap().to_string();
    assert_eq!(created["task"]["status"], "working");
    fx.fake.wait_in_flight(1).await;
    let got = py(&python, &[], "get", &url, &id).await;
    assert_eq!(got["status"], "working");
    assert_eq!(got["statusMessage"], "calling openai/slow", "{got:#}");
    let cancelled = py(&python, &[], "cancel", &url, &id).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    let result = py(&python, &[], "result", &url, &id).await;
    assert_eq!(
        result["structuredContent"]["state"], "cancelled",
        "{result:#}"
    );
    let again = py(&python, &[], "cancel", &url, &id).await;
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already cancelled"),
        "{again:#}"
    );
    gate.notify_waiters();
}

#[tokio::test]
async fn tasks_list_pages_through_every_task_of_its_caller() {
    let Some(python) = python("tasks/list paging") else {
        return;
    };
    let fx = Fx::new(&[("helper", &agent("openai/gpt-4o-mini"))], "").await;
    let target = stdio_target(&fx);
    let env = fx.spawn().env;
    let made = py(
        &python,
        &env,
        "many",
        &target,
        &json!({"n": 57, "agent": "helper"}).to_string(),
    )
    .await;
    let listed = py(&python, &env, "list", &target, "").await;
    assert_eq!(listed["pages"], 2, "{listed:#}");
    let mut made: Vec<String> = serde_json::from_value(made["ids"].clone()).unwrap();
    let mut seen: Vec<String> = serde_json::from_value(listed["ids"].clone()).unwrap();
    assert_eq!(seen.len(), 57);
    made.sort();
    seen.sort();
    assert_eq!(seen, made);
}

#[tokio::test]
async fn a_task_is_its_subjects_alone_in_every_session() {
    let Some(python) = python("tasks subject isolation") else {
        return;
    };
    let auth = AuthServer::start().await;
    let toml = format!(
        "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let fx = Fx::new(&[("helper", &agent("openai/gpt-4o-mini"))], &toml).await;
    fx.fake.set_default(Behavior::reply("alice's answer"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let url = s.url("/mcp");
    let alice = vec![(
        "DISPATCH_TEST_TOKEN".to_string(),
        auth.valid("alice", &ALL_SCOPES),
    )];
    let bob = vec![(
        "DISPATCH_TEST_TOKEN".to_string(),
        auth.valid("bob", &ALL_SCOPES),
    )];
    let spec = json!({"tool": "agent_delegate", "arguments": {"agent": "helper", "input": "x"}});
    let created = py(&python, &alice, "start", &url, &spec.to_string()).await;
    let id = created["task"]["taskId"].as_str().unwrap().to_string();
    // Alice, in another session, sees it and gets its result.
    let result = py(&python, &alice, "result", &url, &id).await;
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("alice's answer"),
        "{result:#}"
    );
    let listed = py(&python, &alice, "list", &url, "").await;
    assert_eq!(listed["ids"], json!([id]));
    // Bob does not.
    let got = py(&python, &bob, "get", &url, &id).await;
    assert_eq!(got["error"]["code"], -32602, "{got:#}");
    let cancel = py(&python, &bob, "cancel", &url, &id).await;
    assert_eq!(cancel["error"]["code"], -32602, "{cancel:#}");
    let listed = py(&python, &bob, "list", &url, "").await;
    assert_eq!(listed["ids"], json!([]));
}

#[tokio::test]
async fn a_task_started_before_a_restart_is_polled_and_answered_after_it() {
    let Some(python) = python("tasks across a restart") else {
        return;
    };
    let fx = Fx::new(&[("slow", &agent("openai/slow"))], "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("slow", Behavior::gate(&gate, "before"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let port = s.addr.port();
    let spec = json!({"tool": "workflow_run", "arguments": {"workflow": {"name": "w", "steps": [
        {"id": "one", "agent": "slow", "input": "{{input}}"}]}, "input": "go"}});
    let created = py(&python, &[], "start", &s.url("/mcp"), &spec.to_string()).await;
    let id = created["task"]["taskId"].as_str().unwrap().to_string();
    assert!(id.starts_with("run-"), "{created:#}");
    fx.fake.wait_in_flight(1).await;
    let got = py(&python, &[], "get", &s.url("/mcp"), &id).await;
    assert_eq!(got["status"], "working");
    assert_eq!(
        got["statusMessage"], "running one; waiting on 1 steps",
        "{got:#}"
    );
    // The server stops with the step in flight; the next one resumes the run.
    fx.fake
        .on_model("slow", Behavior::reply("after the restart"));
    assert!(s.terminate().await.success());
    let s = HttpServer::start(&fx.p, fx.spawn(), port).await;
    let result = py(&python, &[], "result", &s.url("/mcp"), &id).await;
    let run = &result["structuredContent"];
    assert_eq!(run["run_id"], id, "{result:#}");
    assert_eq!(run["state"], "succeeded", "{result:#}");
    assert_eq!(run["output"], "after the restart", "{result:#}");
    let got = py(&python, &[], "get", &s.url("/mcp"), &id).await;
    assert_eq!(got["status"], "completed", "{got:#}");
    gate.notify_waiters();
}

// ---------------------------------------------------------------------------
// 2026-07-28: stateless requests, the Tasks extension (SEP-2663)

/// A server whose `agent_run` becomes a task when its answer takes longer
/// than no time at all, behind OAuth2 (two users).
async fn modern_setup() -> (AuthServer, Fx, HttpServer, Arc<Notify>) {
    let auth = AuthServer::start().await;
    let toml = format!(
        "[tasks]\nanswer_within_ms = 0\n[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let fx = Fx::new(
        &[
            ("slow", &agent("openai/slow")),
            ("quick", &agent("openai/gpt-4o-mini")),
        ],
        &toml,
    )
    .await;
    let gate = Arc::new(Notify::new());
    fx.fake
        .on_model("slow", Behavior::gate(&gate, "worth the wait"));
    fx.fake.set_default(Behavior::reply("the answer"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    (auth, fx, s, gate)
}

fn token(auth: &AuthServer, who: &str) -> Vec<(String, String)> {
    vec![(
        "DISPATCH_TEST_TOKEN".to_string(),
        auth.valid(who, &ALL_SCOPES),
    )]
}

#[tokio::test]
async fn a_stateless_client_gets_a_task_for_long_work_and_its_result_from_tasks_get() {
    let Some(python) = python_2026("2026-07-28 tasks") else {
        return;
    };
    let (auth, fx, s, gate) = modern_setup().await;
    let url = s.url("/mcp");
    let alice = token(&auth, "alice");
    let spec =
        json!({"tool": "agent_run", "arguments": {"agent": "slow", "input": "x"}}).to_string();
    // The SDK's call_tool finishes the task through the extension's claim.
    let (out, ()) = tokio::join!(py26(&python, &alice, "call", &url, &spec), async {
        fx.fake.wait_in_flight(1).await;
        gate.notify_waiters();
    });
    assert_eq!(out["protocol"], "2026-07-28", "{out:#}");
    let handle = &out["handles"][0];
    let id = handle["taskId"].as_str().unwrap().to_string();
    // A handle, whatever the work did meanwhile (the gate opens as soon as
    // the provider has the request, which may be before the handle is sent).
    assert_eq!(handle["resultType"], "task", "{out:#}");
    assert!(
        matches!(handle["status"].as_str(), Some("working" | "completed")),
        "{out:#}"
    );
    assert_eq!(handle["pollIntervalMs"], 1000);
    sep_2663_wire_fields(handle);
    let polls = out["polls"][0].as_array().unwrap();
    let last = polls.last().unwrap();
    assert_eq!(last["status"], "completed", "{out:#}");
    assert_eq!(last["resultType"], "complete");
    // The task id is at the root: the v1 related-task key is not repeated.
    assert!(
        last["result"]["_meta"]
            .get("io.modelcontextprotocol/related-task")
            .is_none(),
        "{last:#}"
    );
    assert!(last.get("requestState").is_none(), "{last:#}");
    assert_eq!(last["result"]["structuredContent"]["task_id"], id);
    let text = out["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("worth the wait"), "{out:#}");
    assert_eq!(
        out["result"]["structuredContent"]["output"],
        "worth the wait"
    );
}

#[tokio::test]
async fn a_stateless_task_is_cancelled_refuses_updates_and_is_its_subjects_alone() {
    let Some(python) = python_2026("2026-07-28 task cancel") else {
        return;
    };
    let (auth, fx, s, gate) = modern_setup().await;
    let url = s.url("/mcp");
    let (alice, bob) = (token(&auth, "alice"), token(&auth, "bob"));
    let spec = json!({"tool": "workflow_run", "arguments": {"workflow": {"name": "w", "steps": [
        {"id": "one", "agent": "slow", "input": "{{input}}"}]}, "input": "go"}});
    let handle = py26(&python, &alice, "start", &url, &spec.to_string()).await;
    assert_eq!(handle["resultType"], "task", "{handle:#}");
    let id = handle["taskId"].as_str().unwrap().to_string();
    assert!(id.starts_with("run-"));
    assert_eq!(handle["status"], "working");
    fx.fake.wait_in_flight(1).await;
    let got = py26(&python, &alice, "get", &url, &id).await;
    assert_eq!(got["status"], "working", "{got:#}");
    assert_eq!(got["statusMessage"], "running one; waiting on 1 steps");
    // Bob, with a valid token of his own, finds no such task.
    for scenario in ["get", "cancel", "update"] {
        let refused = py26(&python, &bob, scenario, &url, &id).await;
        assert_eq!(refused["error"]["code"], -32602, "{scenario}: {refused:#}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no task"),
            "{refused:#}"
        );
    }
    let update = py26(&python, &alice, "update", &url, &id).await;
    assert!(
        update["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not waiting for input"),
        "{update:#}"
    );
    let ack = py26(&python, &alice, "cancel", &url, &id).await;
    // An empty acknowledgement (SEP-2322's discriminator), no task fields.
    assert_eq!(ack, json!({"resultType": "complete"}), "{ack:#}");
    let got = py26(&python, &alice, "get", &url, &id).await;
    assert_eq!(got["status"], "cancelled", "{got:#}");
    assert!(got.get("requestState").is_none(), "{got:#}");
    // Cancelling an ended task acknowledges the same way (idempotent).
    let again = py26(&python, &alice, "cancel", &url, &id).await;
    assert_eq!(again, json!({"resultType": "complete"}), "{again:#}");
    // The 2025-11-25 client of the same user sees the same task.
    if let Some(old) = crate::python("2025-11-25 view of a 2026 task") {
        let seen = py(&old, &alice, "get", &url, &id).await;
        assert_eq!(seen["status"], "cancelled", "{seen:#}");
    }
    gate.notify_waiters();
}

#[tokio::test]
async fn a_stateless_call_that_ends_in_time_is_answered_without_a_task() {
    let Some(python) = python_2026("2026-07-28 quick answer") else {
        return;
    };
    // Far more time than the fake needs to answer.
    let fx = Fx::new(
        &[("quick", &agent("openai/gpt-4o-mini"))],
        "[tasks]\nanswer_within_ms = 60000\n",
    )
    .await;
    fx.fake.set_default(Behavior::reply("at once"));
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let spec = json!({"tool": "agent_run", "arguments": {"agent": "quick", "input": "x"}});
    let out = py26(&python, &[], "call", &s.url("/mcp"), &spec.to_string()).await;
    assert_eq!(out["protocol"], "2026-07-28", "{out:#}");
    assert_eq!(out["handles"], json!([]), "{out:#}");
    assert_eq!(out["result"]["structuredContent"]["output"], "at once");
    assert_eq!(out["result"]["structuredContent"]["state"], "succeeded");
}

#[tokio::test]
async fn the_methods_sep_2663_removed_are_unknown_to_a_2026_client() {
    let Some(python) = python_2026("2026-07-28 removed methods") else {
        return;
    };
    let fx = Fx::new(&[("quick", &agent("openai/gpt-4o-mini"))], "").await;
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let out = py26(&python, &[], "removed", &s.url("/mcp"), "01nosuchtask").await;
    for m in ["list", "result"] {
        assert_eq!(out[m]["code"], -32601, "{m}: {out:#}");
        assert!(
            out[m]["message"].as_str().unwrap().contains("tasks/get"),
            "{out:#}"
        );
    }
    // What it answers, it declares: prompts (none) included.
    let caps = &out["capabilities"];
    assert!(caps["prompts"].is_object(), "{out:#}");
    assert!(
        caps["extensions"]["io.modelcontextprotocol/tasks"].is_object(),
        "{out:#}"
    );
}

#[tokio::test]
async fn the_typescript_sdk_gets_a_task_polls_cancels_and_is_refused_an_update() {
    let Some(node) = typescript("2026-07-28 tasks from the TypeScript SDK") else {
        return;
    };
    let (auth, fx, s, gate) = modern_setup().await;
    let url = s.url("/mcp");
    let alice = token(&auth, "alice");
    let spec =
        json!({"tool": "agent_run", "arguments": {"agent": "slow", "input": "x"}}).to_string();
    let (out, ()) = tokio::join!(ts(&node, &alice, "call", &url, &spec), async {
        fx.fake.wait_in_flight(1).await;
        gate.notify_waiters();
    });
    assert_eq!(out["protocol"], "2026-07-28", "{out:#}");
    let handle = &out["handle"];
    assert_eq!(handle["resultType"], "task", "{out:#}");
    let id = handle["taskId"].as_str().unwrap().to_string();
    let last = out["polls"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "completed", "{out:#}");
    assert_eq!(last["result"]["structuredContent"]["task_id"], id);
    assert_eq!(
        out["result"]["structuredContent"]["output"],
        "worth the wait"
    );
    // A second task, held at the provider: cancelled, then no update.
    let started = ts(&node, &alice, "start", &url, &spec).await;
    let id = started["taskId"].as_str().unwrap().to_string();
    assert_eq!(started["status"], "working", "{started:#}");
    let update = ts(&node, &alice, "update", &url, &id).await;
    assert_eq!(update["error"]["code"], -32602, "{update:#}");
    let bob = token(&auth, "bob");
    let theirs = ts(&node, &bob, "get", &url, &id).await;
    assert_eq!(theirs["error"]["code"], -32602, "{theirs:#}");
    let cancelled = ts(&node, &alice, "cancel", &url, &id).await;
    assert_eq!(cancelled["get"]["status"], "cancelled", "{cancelled:#}");
    gate.notify_waiters();
}

/// What SEP-2663 asks of a `CreateTaskResult`: flat (no `task` wrapper),
/// ISO-8601 times, `ttlMs` (null or a positive integer) and integer
/// `pollIntervalMs` in place of v1's `ttl` and `pollInterval`, and none of
/// `result`, `error`, `inputRequests` or `requestState`.
fn sep_2663_wire_fields(handle: &Value) {
    for gone in [
        "task",
        "ttl",
        "pollInterval",
        "result",
        "error",
        "inputRequests",
        "requestState",
    ] {
        assert!(handle.get(gone).is_none(), "{gone} in {handle:#}");
    }
    for time in ["createdAt", "lastUpdatedAt"] {
        let t = handle[time]
            .as_str()
            .unwrap_or_else(|| panic!("{time}: {handle:#}"));
        assert!(
            humantime::parse_rfc3339_weak(t).is_ok(),
            "{time} {t} is not ISO-8601"
        );
    }
    let ttl = handle
        .get("ttlMs")
        .unwrap_or_else(|| panic!("no ttlMs: {handle:#}"));
    assert!(
        ttl.is_null() || ttl.as_u64().is_some_and(|t| t > 0),
        "{handle:#}"
    );
    assert!(
        handle["pollIntervalMs"].as_u64().is_some_and(|p| p > 0),
        "{handle:#}"
    );
}
