//! The MCP server over stdio, driven by the rmcp client against the real binary:
//! handshake, tool list, agent_list, legacy names, argument errors, and the
//! stdio hygiene rules (stdout is JSON-RPC only; EOF on stdin exits 0).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn handshake_names_the_server_and_explains_the_tools() {
    let p = Project::with_shipped_agents();
    let c = connect(&p).await;
    let info = c.service.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|s| s.name.as_str()),
        Some("dispatch")
    );
    assert_eq!(
        info.server_info.as_ref().map(|s| s.version.as_str()),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let instructions = info.instructions.clone().unwrap_or_default();
    for tool in ["agent_list", "kb_read", "kb_write", "kb_list", "kb_search"] {
        assert!(
            instructions.contains(tool),
            "instructions do not mention {tool}"
        );
    }
    assert!(info.capabilities.tools.is_some());
    assert_eq!(
        info.capabilities
            .resources
            .as_ref()
            .and_then(|r| r.list_changed),
        Some(true)
    );
    c.close().await;
}

#[tokio::test]
async fn tools_have_valid_names_schemas_descriptions_and_annotations() {
    let p = Project::new();
    let c = connect(&p).await;
    let tools = c.service.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "agent_list",
            "agent_run",
            "agent_delegate",
            "task_status",
            "task_result",
            "task_list",
            "task_cancel",
            "usage_report",
            "workflow_run",
            "workflow_status",
            "kb_read",
            "kb_write",
            "kb_list",
            "kb_search"
        ]
    );
    let valid = regex::Regex::new(r"^[a-zA-Z0-9_-]{1,64}$").unwrap();
    for t in &tools {
        assert!(valid.is_match(&t.name), "bad tool name {}", t.name);
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 40),
            "{} needs a description",
            t.name
        );
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            t.name
        );
        assert!(t.output_schema.is_some(), "{} has no output schema", t.name);
        let a = t.annotations.as_ref().expect("annotations");
        assert!(
            a.read_only_hint.is_some()
                && a.destructive_hint.is_some()
                && a.idempotent_hint.is_some()
        );
        // Only the tools that call models reach outside.
        let calls_models =
            ["agent_run", "agent_delegate", "workflow_run"].contains(&t.name.as_ref());
        assert_eq!(a.open_world_hint, Some(calls_models), "{}", t.name);
    }
    let write = tools.iter().find(|t| t.name == "kb_write").unwrap();
    assert_eq!(
        write.annotations.as_ref().unwrap().read_only_hint,
        Some(false)
    );
    let read = tools.iter().find(|t| t.name == "kb_read").unwrap();
    assert_eq!(
        read.annotations.as_ref().unwrap().read_only_hint,
        Some(true)
    );
    // Required arguments are declared as such.
    assert_eq!(read.input_schema.get("required"), Some(&json!(["path"])));
    c.close().await;
}

#[tokio::test]
async fn agent_list_shows_the_shipped_team() {
    let p = Project::with_shipped_agents();
    let c = connect(&p).await;
    let out = c.ok("agent_list", json!({})).await;
    let agents = out["agents"].as_array().unwrap();
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for expected in [
        "code-review",
        "code-review-auditor",
        "docs-sync",
        "incident-response",
        "meeting-prep",
        "onboarding",
        "orchestrator",
        "review-and-document",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let review = agents.iter().find(|a| a["name"] == "code-review").unwrap();
    assert_eq!(review["mirror"], "code-review-auditor");
    assert!(
        review["models"].as_array().unwrap().len() >= 2,
        "code-review has a failover chain"
    );
    assert!(review.get("prompt").is_none(), "prompts only on request");
    let workflow = agents
        .iter()
        .find(|a| a["name"] == "review-and-document")
        .unwrap();
    assert_eq!(workflow["workflow"], true);
    assert_eq!(out["load_errors"], json!([]));

    let with_prompts = c.ok("agent_list", json!({"include_prompts": true})).await;
    let prompt = with_prompts["agents"][0]["prompt"].as_str().unwrap();
    assert!(prompt.len() > 100);
    c.close().await;
}

#[tokio::test]
async fn prototype_slash_names_are_accepted() {
    let p = Project::with_shipped_agents();
    let c = connect(&p).await;
    let a = c.ok("agent/list", json!({})).await;
    let b = c.ok("agent_list", json!({})).await;
    assert_eq!(a, b);
    c.ok(
        "kb/write",
        json!({"path": "context/x.md", "content": "# X"}),
    )
    .await;
    let r = c.ok("kb/read", json!({"path": "context/x.md"})).await;
    assert_eq!(r["content"], "# X");
    c.ok("kb/list", json!({})).await;
    c.ok("kb/search", json!({"query": "X"})).await;
    c.close().await;
}

#[tokio::test]
async fn bad_arguments_say_what_to_fix() {
    let p = Project::new();
    let c = connect(&p).await;
    let msg = c.err("kb_read", json!({})).await;
    assert!(msg.contains("missing field `path`"), "{msg}");
    let msg = c.err("kb_read", json!({"pth": "x"})).await;
    assert!(
        msg.contains("unknown field `pth`") && msg.contains("`path`"),
        "{msg}"
    );
    let msg = c.err("kb_read", json!({"path": 42})).await;
    assert!(msg.contains("invalid type"), "{msg}");
    let msg = c
        .err(
            "kb_write",
            json!({"path": "a.md", "content": "x", "mode": "replace"}),
        )
        .await;
    assert!(
        msg.contains("overwrite") && msg.contains("create_new"),
        "{msg}"
    );
    let msg = c.err("no_such_tool", json!({})).await;
    assert!(
        msg.contains("unknown tool") && msg.contains("tools/list"),
        "{msg}"
    );
    // The server is still fine afterwards.
    c.ok("agent_list", json!({})).await;
    c.close().await;
}

/// Raw stdio: every stdout line is one JSON-RPC 2.0 message, even with debug
/// logging on and a file watcher firing, and EOF on stdin exits with 0.
#[test]
fn stdout_carries_only_json_rpc_and_eof_exits_cleanly() {
    let p = Project::with_shipped_agents();
    let mut child = Command::new(bin())
        .args(["serve", "--root"])
        .arg(p.root())
        .env("DISPATCH_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // Drain stderr concurrently: trace logging fills a pipe buffer quickly.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut s);
        s
    });
    let requests = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "kb_write", "arguments": {"path": "inbox/raw.md", "content": "# Raw\n"}}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "kb_read", "arguments": {"path": "../../etc/passwd"}}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "resources/list"}),
        json!({"jsonrpc": "2.0", "id": 6, "method": "ping"}),
    ];
    for r in &requests {
        writeln!(stdin, "{r}").unwrap();
    }
    stdin.flush().unwrap();
    // Read until every request has its answer, then close stdin.
    let mut answered = std::collections::BTreeSet::new();
    let mut lines = stdout.lines();
    let mut seen = Vec::new();
    while answered.len() < 6 {
        let line = lines.next().expect("stdout closed early").unwrap();
        let msg: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(msg["jsonrpc"], "2.0", "{line}");
        if let Some(id) = msg.get("id").and_then(Value::as_i64) {
            assert!(
                msg.get("result").is_some() || msg.get("error").is_some(),
                "{line}"
            );
            answered.insert(id);
        } else {
            assert!(
                msg.get("method").is_some(),
                "neither response nor notification: {line}"
            );
        }
        seen.push(msg);
    }
    let traversal = seen.iter().find(|m| m["id"] == 4).unwrap();
    assert_eq!(traversal["result"]["isError"], true);
    drop(stdin);
    // Whatever is left (e.g. a list_changed notification) must be JSON-RPC too.
    for line in lines {
        let line = line.unwrap();
        let msg: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(msg["jsonrpc"], "2.0");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let stderr = stderr_reader.join().unwrap();
    assert!(
        stderr.contains("ready on stdio"),
        "logs go to stderr: {stderr}"
    );
}

#[test]
fn eof_before_initialize_exits_cleanly() {
    let p = Project::new();
    let out = Command::new(bin())
        .args(["serve", "--root"])
        .arg(p.root())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// Errors repeat what the client sent only in part: a 10 MB id does not come
/// back as a 10 MB error.
#[tokio::test]
async fn errors_clip_what_they_echo() {
    let p = Project::new();
    let c = connect(&p).await;
    let huge = "x".repeat(10 * 1024 * 1024);
    for (tool, args) in [
        ("task_status", json!({"task_id": huge})),
        ("agent_run", json!({"agent": huge, "input": "x"})),
        ("workflow_status", json!({"run_id": format!("run-{huge}")})),
        ("kb_read", json!({"path": huge})),
    ] {
        let msg = c.err(tool, args).await;
        assert!(msg.len() < 20_000, "{tool}: {} bytes", msg.len());
    }
    c.close().await;
}
