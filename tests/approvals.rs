//! Approvals of tools an agent file marks `ask`, answered by a human through
//! the client: elicitation (the Python SDK 1.x, protocol 2025-11-25, over
//! stdio and Streamable HTTP, plain calls and tasks), the `input_required`
//! result and `tasks/update` of 2026-07-28 (the Python SDK 2.x), a client
//! without elicitation, and `dispatch run`'s flags. The question, the answer
//! and who answered are stored with the tool call.
//!
//! The SDKs come from PyPI: see tests/common/python.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::auth_server::{ALL_SCOPES, AUDIENCE, AuthServer};
use common::fake_provider::Behavior;
use common::fixture::*;
use common::http::HttpServer;
use common::python::*;
use common::*;
use serde_json::{Value, json};

/// An approval that never came would outlast the Python client's own limit
/// (120 s) and fail the test, instead of being refused quietly.
const TOML: &str = "[limits]\napproval_timeout_secs = 900\n[tasks]\npoll_interval_ms = 20\n";

/// `scribe` may read the KB freely and write it only with a human's approval.
fn scribe() -> String {
    "---\ndescription: writes notes\nmodel: openai/scribe\ntools: [kb_read]\npermissions:\n  kb_write: ask\n---\nYou write notes.\n".to_string()
}

/// The model asks to write a note, then answers.
fn script(fx: &Fx) {
    fx.fake.queue_model(
        "scribe",
        [
            Behavior::call(
                "kb_write",
                json!({"path": "notes/approved.md", "content": "written with approval"}),
            ),
            Behavior::reply("done"),
        ],
    );
}

/// What the model was told about its (last) kb_write call.
fn tool_result_seen(fx: &Fx) -> String {
    let reqs: Vec<_> = fx
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.model == "scribe")
        .collect();
    assert!(
        reqs.len() >= 2,
        "a call, then an answer after the tool result"
    );
    reqs[reqs.len() - 1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .and_then(|m| m["content"].as_str())
        .unwrap()
        .to_string()
}

/// One scenario of tests/fixtures/approvals_client.py.
async fn pya(
    python: &str,
    env: &[(String, String)],
    scenario: &str,
    target: &str,
    arg: &str,
) -> Value {
    run_script(python, "approvals_client.py", env, scenario, target, arg).await
}

fn stdio_target(fx: &Fx) -> String {
    let argv = json!([bin(), "serve", "--root", fx.p.root().display().to_string()]);
    format!("stdio:{argv}")
}

fn run_args() -> String {
    json!({"agent": "scribe", "input": "note this", "wait_seconds": 100}).to_string()
}

fn with_answer(answer: &str) -> String {
    json!({"answer": answer, "arguments": serde_json::from_str::<Value>(&run_args()).unwrap()})
        .to_string()
}

/// The stored turns of `task_id`, read by a fresh stdio server.
async fn turns(fx: &Fx, task_id: &str) -> Vec<Value> {
    let c = fx.connect().await;
    let s = status(&c, task_id).await;
    s["turns"].as_array().unwrap().clone()
}

/// The `asked` turn and the approval stored with the call's result.
fn approval_of(turns: &[Value]) -> (Value, Value) {
    let asked = turns
        .iter()
        .find(|t| t["kind"] == "asked")
        .unwrap_or_else(|| panic!("no asked turn: {turns:#?}"))
        .clone();
    let result = turns
        .iter()
        .find(|t| t["kind"] == "tool_result")
        .unwrap_or_else(|| panic!("no tool result: {turns:#?}"));
    (asked, result["approval"].clone())
}

fn note(fx: &Fx) -> Option<String> {
    std::fs::read_to_string(fx.p.kb().join("notes/approved.md")).ok()
}

#[tokio::test]
async fn an_accepted_elicitation_runs_the_call_and_is_recorded_with_it() {
    let Some(python) = python("approvals by elicitation over stdio") else {
        return;
    };
    let fx = Fx::new(&[("scribe", &scribe())], TOML).await;
    script(&fx);
    let out = pya(
        &python,
        &fx.spawn().env,
        "run",
        &stdio_target(&fx),
        &with_answer("accept"),
    )
    .await;
    let result = &out["result"]["structuredContent"];
    assert_eq!(result["state"], "succeeded", "{out:#}");
    let asked = out["asked"].as_array().unwrap();
    assert_eq!(asked.len(), 1, "{out:#}");
    let message = asked[0]["message"].as_str().unwrap();
    assert!(
        message.contains("scribe") && message.contains("kb_write"),
        "{message}"
    );
    assert!(message.contains("notes/approved.md"), "{message}");
    assert_eq!(
        asked[0]["schema"]["properties"]["approve"]["type"], "boolean",
        "{out:#}"
    );
    assert_eq!(note(&fx).as_deref(), Some("written with approval"));
    assert!(!tool_result_seen(&fx).contains("was not run"));
    // The model was told which tool asks, and only that one.
    let first = &fx.fake.requests()[0].body;
    let describe = |name: &str| {
        first["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["function"]["name"] == name)
            .map(|t| t["function"]["description"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not offered: {first:#}"))
    };
    assert!(describe("kb_write").contains("needs a human's approval"));
    assert!(!describe("kb_read").contains("approval"));

    let turns = turns(&fx, result["task_id"].as_str().unwrap()).await;
    let (asked_turn, approval) = approval_of(&turns);
    assert_eq!(asked_turn["tool"], "kb_write");
    assert_eq!(approval["decision"], "accepted", "{turns:#?}");
    assert_eq!(approval["via"], "elicitation");
    assert_eq!(approval["by"], "the client's user");
    assert_eq!(approval["question"].as_str().unwrap(), message);
}

#[tokio::test]
async fn a_declined_refused_or_dismissed_question_is_a_refusal_the_model_reads() {
    let Some(python) = python("approvals declined over stdio") else {
        return;
    };
    for (answer, decision, why) in [
        ("decline", "declined", "the human declined it"),
        ("refuse", "declined", "the human declined it"),
        ("cancel", "cancelled", "dismissed the question"),
    ] {
        let fx = Fx::new(&[("scribe", &scribe())], TOML).await;
        script(&fx);
        let out = pya(
            &python,
            &fx.spawn().env,
            "run",
            &stdio_target(&fx),
            &with_answer(answer),
        )
        .await;
        let result = &out["result"]["structuredContent"];
        assert_eq!(result["state"], "succeeded", "{answer}: {out:#}");
        assert_eq!(out["asked"].as_array().unwrap().len(), 1);
        assert_eq!(note(&fx), None, "{answer}: nothing is written");
        let seen = tool_result_seen(&fx);
        assert!(
            seen.contains("kb_write was not run") && seen.contains(why),
            "{answer}: {seen}"
        );
        let turns = turns(&fx, result["task_id"].as_str().unwrap()).await;
        let (_, approval) = approval_of(&turns);
        assert_eq!(approval["decision"], decision, "{answer}: {turns:#?}");
    }
}

#[tokio::test]
async fn a_client_without_elicitation_gets_a_refusal_at_once_not_a_hang() {
    let Some(python) = python("approvals without elicitation") else {
        return;
    };
    let fx = Fx::new(&[("scribe", &scribe())], TOML).await;
    script(&fx);
    let out = pya(
        &python,
        &fx.spawn().env,
        "run",
        &stdio_target(&fx),
        &with_answer("none"),
    )
    .await;
    let result = &out["result"]["structuredContent"];
    assert_eq!(result["state"], "succeeded", "{out:#}");
    assert!(out["asked"].as_array().unwrap().is_empty());
    let seen = tool_result_seen(&fx);
    assert!(
        seen.contains("did not declare the elicitation capability"),
        "{seen}"
    );
    assert_eq!(note(&fx), None);
    let turns = turns(&fx, result["task_id"].as_str().unwrap()).await;
    let (_, approval) = approval_of(&turns);
    assert_eq!(approval["decision"], "unanswered", "{turns:#?}");
}

#[tokio::test]
async fn over_streamable_http_the_subject_answers_and_a_task_shows_input_required() {
    let Some(python) = python("approvals over HTTP") else {
        return;
    };
    let auth = AuthServer::start().await;
    let toml = format!(
        "{TOML}[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let fx = Fx::new(&[("scribe", &scribe())], &toml).await;
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let alice = vec![(
        "DISPATCH_TEST_TOKEN".to_string(),
        auth.valid("alice", &ALL_SCOPES),
    )];
    // A plain call.
    script(&fx);
    let out = pya(
        &python,
        &alice,
        "run",
        &s.url("/mcp"),
        &with_answer("accept"),
    )
    .await;
    let result = &out["result"]["structuredContent"];
    assert_eq!(result["state"], "succeeded", "{out:#}");
    assert!(!tool_result_seen(&fx).contains("was not run"));
    // A task-augmented call: its status says it waits for the human.
    script(&fx);
    let out = pya(
        &python,
        &alice,
        "task",
        &s.url("/mcp"),
        &with_answer("accept"),
    )
    .await;
    assert_eq!(out["asked"].as_array().unwrap().len(), 1, "{out:#}");
    // The question says which task it belongs to.
    assert_eq!(
        out["asked"][0]["meta"]["io.modelcontextprotocol/related-task"]["taskId"], out["task_id"],
        "{out:#}"
    );
    assert_eq!(
        out["result"]["structuredContent"]["state"], "succeeded",
        "{out:#}"
    );
    let statuses: Vec<&str> = out["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"completed"), "{out:#}");
    assert!(!tool_result_seen(&fx).contains("was not run"));
    let task_id = out["task_id"].as_str().unwrap();
    let (_, approval) = approval_of(&turns(&fx, task_id).await);
    assert_eq!(approval["decision"], "accepted");
    assert_eq!(approval["by"], "alice");
}

async fn modern() -> (AuthServer, Fx, HttpServer, Vec<(String, String)>) {
    modern_scripted(script).await
}

async fn modern_scripted(script: fn(&Fx)) -> (AuthServer, Fx, HttpServer, Vec<(String, String)>) {
    let auth = AuthServer::start().await;
    let toml = format!(
        "{TOML}answer_within_ms = 0\n[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let fx = Fx::new(&[("scribe", &scribe())], &toml).await;
    script(&fx);
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let alice = vec![(
        "DISPATCH_TEST_TOKEN".to_string(),
        auth.valid("alice", &ALL_SCOPES),
    )];
    (auth, fx, s, alice)
}

#[tokio::test]
async fn a_stateless_agent_run_answers_input_required_and_the_retry_goes_on() {
    let Some(python) = python_2026("approvals by input_required") else {
        return;
    };
    let (_auth, fx, s, alice) = modern().await;
    let spec = json!({"tool": "agent_run", "arguments": serde_json::from_str::<Value>(&run_args()).unwrap()});
    let out = py26(&python, &alice, "mrtr", &s.url("/mcp"), &spec.to_string()).await;
    assert_eq!(out["asked"].as_array().unwrap().len(), 1, "{out:#}");
    let result = &out["result"]["structuredContent"];
    assert_eq!(result["state"], "succeeded", "{out:#}");
    // The retry answered the question of the work already running: one task,
    // the model called twice in all.
    assert!(!tool_result_seen(&fx).contains("was not run"));
    let (_, approval) = approval_of(&turns(&fx, result["task_id"].as_str().unwrap()).await);
    assert_eq!(approval["decision"], "accepted");
    assert_eq!(approval["via"], "input_required");
    assert_eq!(approval["by"], "alice");
}

#[tokio::test]
async fn a_stateless_task_waits_in_input_required_until_tasks_update_answers() {
    let Some(python) = python_2026("approvals by tasks/update") else {
        return;
    };
    let (_auth, fx, s, alice) = modern().await;
    let spec = json!({"tool": "agent_run", "arguments": serde_json::from_str::<Value>(&run_args()).unwrap()});
    let out = py26(
        &python,
        &alice,
        "approve",
        &s.url("/mcp"),
        &spec.to_string(),
    )
    .await;
    let seen = out["seen"].as_array().unwrap();
    let waiting = seen
        .iter()
        .find(|t| t["status"] == "input_required")
        .unwrap_or_else(|| panic!("never input_required: {out:#}"));
    let requests = waiting["inputRequests"].as_object().unwrap();
    assert_eq!(requests.len(), 1, "{out:#}");
    let (_, req) = requests.iter().next().unwrap();
    assert_eq!(req["method"], "elicitation/create", "{out:#}");
    assert!(
        req["params"]["message"]
            .as_str()
            .unwrap()
            .contains("kb_write"),
        "{out:#}"
    );
    assert!(
        waiting["statusMessage"]
            .as_str()
            .unwrap()
            .contains("tasks/update")
    );
    // The answer is taken: an empty result (no error).
    assert!(out["updates"][0]["code"].is_null(), "{out:#}");
    assert!(out["updates"][0].is_object(), "{out:#}");
    // The same answer again finds no question.
    assert_eq!(out["updates"][1]["code"], -32602, "{out:#}");
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "completed", "{out:#}");
    assert_eq!(last["result"]["structuredContent"]["state"], "succeeded");
    assert!(!tool_result_seen(&fx).contains("was not run"));
    let task_id = out["task_id"].as_str().unwrap();
    let (_, approval) = approval_of(&turns(&fx, task_id).await);
    assert_eq!(approval["via"], "tasks/update");
    assert_eq!(approval["by"], "alice");
}

/// `dispatch run scribe` with `flags`; what the model was told.
async fn cli_run(flags: &[&str]) -> (Fx, String) {
    let fx = Fx::new(&[("scribe", &scribe())], TOML).await;
    script(&fx);
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(["run", "scribe", "note this", "--root"])
        .arg(fx.p.root())
        .args(flags)
        .stdin(std::process::Stdio::null());
    for (k, v) in &fx.spawn().env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = tool_result_seen(&fx);
    (fx, seen)
}

#[tokio::test]
async fn dispatch_run_answers_from_its_flags_and_without_a_terminal_refuses() {
    let (fx, seen) = cli_run(&["--approve", "kb_write"]).await;
    assert!(!seen.contains("was not run"), "{seen}");
    assert_eq!(note(&fx).as_deref(), Some("written with approval"));

    let (fx, seen) = cli_run(&["--approve", "kb_read"]).await;
    assert!(
        seen.contains("declined (not approved by --approve (which approves only kb_read))"),
        "{seen}"
    );
    assert_eq!(note(&fx), None);

    let (fx, seen) = cli_run(&["--deny-all"]).await;
    assert!(
        seen.contains("declined (--deny-all refuses every call)"),
        "{seen}"
    );
    assert_eq!(note(&fx), None);

    let (fx, seen) = cli_run(&[]).await;
    assert!(seen.contains("no terminal to ask on"), "{seen}");
    assert_eq!(note(&fx), None);
}

#[tokio::test]
async fn a_workflow_step_asks_the_client_that_started_the_run() {
    let Some(python) = python("approvals in a workflow") else {
        return;
    };
    let flow = "---\ndescription: one step that writes\ndag:\n  steps:\n    - {id: write, agent: scribe, input: '{{input}}'}\n---\nWrite.\n";
    let fx = Fx::new(&[("scribe", &scribe()), ("flow", flow)], TOML).await;
    script(&fx);
    let arg = json!({"answer": "accept", "arguments": {"agent": "flow", "input": "note this", "wait_seconds": 100}});
    let out = pya(
        &python,
        &fx.spawn().env,
        "run",
        &stdio_target(&fx),
        &arg.to_string(),
    )
    .await;
    assert_eq!(out["asked"].as_array().unwrap().len(), 1, "{out:#}");
    assert!(
        out["asked"][0]["message"]
            .as_str()
            .unwrap()
            .contains("kb_write")
    );
    assert_eq!(note(&fx).as_deref(), Some("written with approval"));
    assert!(!tool_result_seen(&fx).contains("was not run"));
}

/// `dispatch run scribe` on a pseudo-terminal whose user types `answer`.
async fn tty_run(answer: &str, toml: &str) -> (Fx, Value) {
    let fx = Fx::new(&[("scribe", &scribe())], toml).await;
    script(&fx);
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(repo_root().join("tests/fixtures/tty_answer.py"))
        .arg(answer)
        .arg(bin())
        .args(["run", "scribe", "note this", "--root"])
        .arg(fx.p.root());
    for (k, v) in &fx.spawn().env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .expect("python3 (tests/mcp_servers.rs needs it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (fx, v)
}

#[tokio::test]
async fn dispatch_run_on_a_terminal_asks_its_user() {
    let (fx, out) = tty_run("y", TOML).await;
    assert_eq!(out["status"], 0, "{out:#}");
    let prompt = out["prompt"]
        .as_str()
        .unwrap_or_else(|| panic!("no prompt: {out:#}"));
    assert!(
        prompt.contains("kb_write") && prompt.contains("Allow this call?"),
        "{prompt}"
    );
    assert_eq!(note(&fx).as_deref(), Some("written with approval"));

    let (fx, out) = tty_run("n", TOML).await;
    assert_eq!(out["status"], 0, "{out:#}");
    assert!(out["prompt"].is_string(), "{out:#}");
    assert!(tool_result_seen(&fx).contains("the human declined it"));
    assert_eq!(note(&fx), None);
}

/// A question nobody answers on the terminal times out, and the command
/// still exits: the abandoned read of the terminal does not hold it.
#[tokio::test]
async fn an_unanswered_terminal_question_times_out_and_the_command_exits() {
    let (fx, out) = tty_run("-", "[limits]\napproval_timeout_secs = 1\n").await;
    assert_eq!(out["status"], 0, "{out:#}");
    assert!(out["prompt"].is_string(), "{out:#}");
    assert!(
        tool_result_seen(&fx).contains("no answer within 1s"),
        "{}",
        tool_result_seen(&fx)
    );
    assert_eq!(note(&fx), None);
}

/// `dispatch workflow run` answers from the same flags as `dispatch run`.
#[tokio::test]
async fn dispatch_workflow_run_answers_from_its_flags() {
    let flow = "---\ndescription: one step that writes\ndag:\n  steps:\n    - {id: write, agent: scribe, input: '{{input}}'}\n---\nWrite.\n";
    for (flags, approved) in [
        (&["--approve", "kb_write"][..], true),
        (&["--deny-all"][..], false),
    ] {
        let fx = Fx::new(&[("scribe", &scribe()), ("flow", flow)], TOML).await;
        script(&fx);
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["workflow", "run", "flow", "note this", "--root"])
            .arg(fx.p.root())
            .args(flags)
            .stdin(std::process::Stdio::null());
        for (k, v) in &fx.spawn().env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = tool_result_seen(&fx);
        if approved {
            assert_eq!(
                note(&fx).as_deref(),
                Some("written with approval"),
                "{seen}"
            );
        } else {
            assert!(seen.contains("--deny-all refuses every call"), "{seen}");
            assert_eq!(note(&fx), None);
        }
    }
}

/// A 2026-07-28 client with the Tasks extension calls agent_delegate: no
/// task of the client's carries the question, so it is refused at once (not
/// left to wait out approval_timeout_secs, 900 s here).
#[tokio::test]
async fn a_delegated_question_from_a_stateless_client_is_refused_at_once() {
    let Some(python) = python_2026("approvals with nowhere to go") else {
        return;
    };
    let (_auth, fx, s, alice) = modern().await;
    let spec = json!({"tool": "agent_delegate", "tasks_ext": true,
        "arguments": {"agent": "scribe", "input": "note this"}});
    let out = py26(
        &python,
        &alice,
        "then_result",
        &s.url("/mcp"),
        &spec.to_string(),
    )
    .await;
    assert_eq!(
        out["result"]["structuredContent"]["state"], "succeeded",
        "{out:#}"
    );
    assert_eq!(out["asked"], json!([]), "{out:#}");
    let seen = tool_result_seen(&fx);
    assert!(seen.contains("outside agent_run or an MCP task"), "{seen}");
    assert!(seen.contains("was not run"), "{seen}");
}

/// The model asks for kb_write only after a while.
fn script_late(fx: &Fx) {
    fx.fake.queue_model(
        "scribe",
        [
            Behavior::Delay {
                by: std::time::Duration::from_millis(300),
                then: Box::new(Behavior::call(
                    "kb_write",
                    json!({"path": "notes/approved.md", "content": "written with approval"}),
                )),
            },
            Behavior::reply("done"),
        ],
    );
}

/// A plain 2026-07-28 agent_run whose wait ended (wait_seconds 0) before
/// its task asked: the client has its answer and will not retry, so the
/// question is refused at once.
#[tokio::test]
async fn a_question_after_a_stateless_agent_run_has_answered_is_refused_at_once() {
    let Some(python) = python_2026("approvals after the wait") else {
        return;
    };
    let (_auth, fx, s, alice) = modern_scripted(script_late).await;
    let spec = json!({"tool": "agent_run",
        "arguments": {"agent": "scribe", "input": "note this", "wait_seconds": 0}});
    let out = py26(
        &python,
        &alice,
        "then_result",
        &s.url("/mcp"),
        &spec.to_string(),
    )
    .await;
    assert_ne!(
        out["first"]["structuredContent"]["state"], "succeeded",
        "{out:#}"
    );
    assert_eq!(
        out["result"]["structuredContent"]["state"], "succeeded",
        "{out:#}"
    );
    assert_eq!(out["asked"], json!([]), "{out:#}");
    let seen = tool_result_seen(&fx);
    assert!(seen.contains("has answered (its wait ended)"), "{seen}");
    assert!(seen.contains("was not run"), "{seen}");
}

/// The retry of an input_required agent_run carries the right answer and
/// one for a question that no longer waits: the right one is taken, the
/// other ignored, and the call goes on to its result.
#[tokio::test]
async fn a_retry_with_a_stale_answer_still_delivers_the_right_one() {
    let Some(python) = python_2026("approvals with a stale key") else {
        return;
    };
    let (_auth, fx, s, alice) = modern().await;
    let spec = json!({"tool": "agent_run", "arguments": serde_json::from_str::<Value>(&run_args()).unwrap()});
    let out = py26(
        &python,
        &alice,
        "mrtr_stale",
        &s.url("/mcp"),
        &spec.to_string(),
    )
    .await;
    let rounds = out["rounds"].as_array().unwrap();
    assert_eq!(rounds[0]["resultType"], "input_required", "{out:#}");
    let last = rounds.last().unwrap();
    assert_eq!(last["structuredContent"]["state"], "succeeded", "{out:#}");
    let seen = tool_result_seen(&fx);
    assert!(seen.contains("\"bytes_written\":21"), "{seen}");
    let (_, approval) =
        approval_of(&turns(&fx, last["structuredContent"]["task_id"].as_str().unwrap()).await);
    assert_eq!(approval["decision"], "accepted");
}

/// A task waiting for a human gives its concurrency slot up: with one slot
/// in all, another agent's run goes to its end meanwhile.
#[tokio::test]
async fn a_task_waiting_for_a_human_leaves_its_slot_to_others() {
    let Some(python) = python_2026("approvals and slots") else {
        return;
    };
    let auth = AuthServer::start().await;
    let toml = format!(
        "[limits]\napproval_timeout_secs = 900\nglobal = 1\n[tasks]\npoll_interval_ms = 20\nanswer_within_ms = 0\n[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let plain = "---\ndescription: answers\nmodel: openai/plain\n---\nAnswer.\n";
    let fx = Fx::new(&[("scribe", &scribe()), ("plain", plain)], &toml).await;
    script(&fx);
    fx.fake
        .queue_model("plain", [Behavior::reply("plain answer")]);
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    let alice = vec![(
        "DISPATCH_TEST_TOKEN".to_string(),
        auth.valid("alice", &ALL_SCOPES),
    )];
    let spec = json!({"tool": "agent_run",
        "arguments": serde_json::from_str::<Value>(&run_args()).unwrap(),
        "other": {"agent": "plain", "input": "hi", "wait_seconds": 30}});
    let out = py26(&python, &alice, "hold", &s.url("/mcp"), &spec.to_string()).await;
    assert_eq!(
        out["other"]["structuredContent"]["state"], "succeeded",
        "{out:#}"
    );
    let last = out["polls"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "completed", "{out:#}");
    let seen = tool_result_seen(&fx);
    assert!(seen.contains("\"bytes_written\":21"), "{seen}");
}
