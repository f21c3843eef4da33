//! Workflows through MCP against the real binary and the fake provider:
//! templates, parallel fan-out, early start, failure handling, validation,
//! cancellation, crash and resume, and the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::*;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Agents `a`..`f` on models `m-a`..`m-f`, plus the spec's three agents.
async fn fx(toml: &str) -> Fx {
    let mut agents: Vec<(String, String)> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|n| (n.to_string(), agent(&format!("openai/m-{n}"))))
        .collect();
    agents.push(("code-review".into(), agent("openai/rev")));
    agents.push(("docs-sync".into(), agent("openai/docs")));
    agents.push(("meeting-prep".into(), agent("openai/notify")));
    agents.push((
        "review-and-document".into(),
        "---\ndescription: review, document, notify\ndag:\n  steps:\n    - {id: review, agent: code-review, input: {diff: '{{input}}'}}\n    - {id: docs, agent: docs-sync, input: '{{review.output}}', depends_on: [review]}\n    - {id: notify, agent: meeting-prep, input: '{{docs.output}}', depends_on: [docs]}\n---\nReview, then document, then notify.\n".into(),
    ));
    let refs: Vec<(&str, &str)> = agents
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Fx::new(&refs, toml).await
}

fn spec_example() -> Value {
    json!({"name": "review-and-document", "steps": [
        {"id": "review", "agent": "code-review", "input": {"diff": "--- a/x.rs\n+++ b/x.rs\n+fn x() {}"}},
        {"id": "docs",   "agent": "docs-sync",   "input": "{{review.output}}", "depends_on": ["review"]},
        {"id": "notify", "agent": "meeting-prep","input": "{{docs.output}}",  "depends_on": ["docs"]}]})
}

async fn wf(c: &Client, workflow: Value, input: Value) -> Value {
    c.ok(
        "workflow_run",
        json!({"workflow": workflow, "input": input, "wait_seconds": 60}),
    )
    .await
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

fn user_msg(r: &common::fake_provider::RecordedRequest) -> String {
    r.body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_three_step_example_with_templates() {
    let fx = fx("").await;
    fx.fake
        .on_model("rev", Behavior::reply("REVIEW: no bugs found"));
    fx.fake.on_model("docs", Behavior::Echo);
    fx.fake.on_model("notify", Behavior::Echo);
    let c = fx.connect().await;
    let run = wf(&c, spec_example(), json!("")).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    for id in ["review", "docs", "notify"] {
        assert_eq!(step(&run, id)["state"], "succeeded");
        assert!(step(&run, id)["task_id"].is_string());
    }
    let reqs = fx.fake.requests();
    let review = reqs.iter().find(|r| r.model == "rev").unwrap();
    assert!(
        user_msg(review).contains("## diff\n\n--- a/x.rs"),
        "{}",
        user_msg(review)
    );
    let docs = reqs.iter().find(|r| r.model == "docs").unwrap();
    assert_eq!(user_msg(docs), "REVIEW: no bugs found");
    let notify = reqs.iter().find(|r| r.model == "notify").unwrap();
    assert_eq!(user_msg(notify), "REVIEW: no bugs found");
    assert_eq!(run["output"], "REVIEW: no bugs found");

    // The session folder: run.json, a file per step, a README with a Mermaid graph.
    let dir =
        fx.p.kb()
            .join("sessions")
            .join(run["run_id"].as_str().unwrap());
    let runjson: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(runjson["run"]["state"], "succeeded");
    for id in ["review", "docs", "notify"] {
        assert!(dir.join(format!("{id}.md")).is_file(), "{id}.md missing");
        assert_eq!(
            step(&run, id)["output_path"],
            format!("sessions/{}/{id}.md", run["run_id"].as_str().unwrap())
        );
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains("```mermaid")
            && readme.contains("classDef")
            && readme.contains("succeeded"),
        "{readme}"
    );
    assert!(readme.contains("- cost: $"), "{readme}");
    c.close().await;
}

#[tokio::test]
async fn a_diamond_fans_out_in_parallel_and_joins() {
    let fx = fx("").await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("m-a", Behavior::reply("{\"n\": 1}"));
    fx.fake.on_model("m-b", Behavior::gate(&gate, "B"));
    fx.fake.on_model("m-c", Behavior::gate(&gate, "C"));
    fx.fake.on_model("m-d", Behavior::Echo);
    let c = fx.connect().await;
    let def = json!({"steps": [
        {"id": "a", "agent": "a", "input": "start"},
        {"id": "b", "agent": "b", "input": "b got {{a.output.n}}", "depends_on": ["a"]},
        {"id": "c", "agent": "c", "input": "c got {{a.output}}", "depends_on": ["a"]},
        {"id": "d", "agent": "d", "input": "{{b.output}}+{{c.output}}", "depends_on": ["b", "c"]}]});
    let started = c
        .ok(
            "workflow_run",
            json!({"workflow": def, "input": "x", "wait_seconds": 0}),
        )
        .await;
    assert_eq!(started["done"], false);
    // b and c are in flight at the provider at the same time.
    fx.fake
        .wait_for("b and c in flight together", |f| f.in_flight() == 2)
        .await;
    let inflight: Vec<String> = fx.fake.requests().iter().map(|r| r.model.clone()).collect();
    assert!(inflight.contains(&"m-b".to_string()) && inflight.contains(&"m-c".to_string()));
    assert!(
        !inflight.contains(&"m-d".to_string()),
        "d must wait for both"
    );
    gate.notify_waiters();
    let run = c
        .ok(
            "task_result",
            json!({"task_id": started["run_id"], "wait_seconds": 60}),
        )
        .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert!(fx.fake.peak_in_flight() >= 2);
    let reqs = fx.fake.requests();
    assert_eq!(
        user_msg(reqs.iter().find(|r| r.model == "m-b").unwrap()),
        "b got 1"
    );
    assert_eq!(
        user_msg(reqs.iter().find(|r| r.model == "m-c").unwrap()),
        "c got {\"n\": 1}"
    );
    assert_eq!(
        user_msg(reqs.iter().find(|r| r.model == "m-d").unwrap()),
        "B+C"
    );
    c.close().await;
}

#[tokio::test]
async fn a_step_starts_when_its_own_dependencies_finish() {
    let fx = fx("").await;
    let slow = Arc::new(Notify::new());
    fx.fake.on_model("m-a", Behavior::reply("fast"));
    fx.fake.on_model("m-b", Behavior::reply("fast child"));
    fx.fake.on_model("m-c", Behavior::gate(&slow, "slow"));
    fx.fake.on_model("m-d", Behavior::reply("joined"));
    let c = fx.connect().await;
    // a -> b runs while c (a slow sibling with no dependencies) is still running.
    let def = json!({"steps": [
        {"id": "a", "agent": "a"},
        {"id": "b", "agent": "b", "depends_on": ["a"]},
        {"id": "c", "agent": "c"},
        {"id": "d", "agent": "d", "depends_on": ["b", "c"]}]});
    let started = c
        .ok(
            "workflow_run",
            json!({"workflow": def, "input": "go", "wait_seconds": 0}),
        )
        .await;
    fx.fake
        .wait_for("b answered while c is in flight", |f| {
            f.requests().iter().any(|r| r.model == "m-b") && f.in_flight() == 1
        })
        .await;
    let status = c
        .ok("workflow_status", json!({"run_id": started["run_id"]}))
        .await;
    let b = step(&status, "b")["state"].clone();
    assert!(b == "running" || b == "succeeded", "{status:#}");
    assert_eq!(step(&status, "c")["state"], "running");
    assert_eq!(step(&status, "d")["state"], "pending");
    slow.notify_waiters();
    let run = c
        .ok(
            "task_result",
            json!({"task_id": started["run_id"], "wait_seconds": 60}),
        )
        .await;
    assert_eq!(run["state"], "succeeded");
    c.close().await;
}

#[tokio::test]
async fn failures_skip_descendants_unless_continue_on_error() {
    let fx = fx("").await;
    fx.fake.on_model("m-a", Behavior::status(400));
    fx.fake.on_model("m-c", Behavior::Echo);
    let c = fx.connect().await;
    let def = json!({"steps": [
        {"id": "a", "agent": "a"},
        {"id": "b", "agent": "b", "depends_on": ["a"]},
        {"id": "c", "agent": "c", "depends_on": ["b"]},
        {"id": "e", "agent": "e"}]});
    let run = wf(&c, def, json!("x")).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(step(&run, "a")["state"], "failed");
    assert_eq!(step(&run, "b")["state"], "skipped");
    assert_eq!(step(&run, "c")["state"], "skipped");
    assert!(
        step(&run, "b")["error"]
            .as_str()
            .unwrap()
            .contains("`a` failed")
    );
    assert_eq!(
        step(&run, "e")["state"],
        "succeeded",
        "independent steps still run"
    );
    assert!(run["error"].as_str().unwrap().contains("a:"));

    let def = json!({"steps": [
        {"id": "a", "agent": "a", "continue_on_error": true},
        {"id": "c", "agent": "c", "input": "after a: [{{a.output}}]", "depends_on": ["a"]}]});
    let run = wf(&c, def, json!("x")).await;
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(step(&run, "c")["state"], "succeeded");
    let c_req = fx
        .fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.model == "m-c")
        .unwrap();
    assert_eq!(user_msg(&c_req), "after a: []");

    // A failure nothing depends on is still a failure: a lone step, the
    // last step of a chain, a fan-out leaf. Only tolerated ones are partial.
    for def in [
        json!({"steps": [{"id": "a", "agent": "a"}]}),
        json!({"steps": [
            {"id": "e", "agent": "e"},
            {"id": "a", "agent": "a", "depends_on": ["e"]}]}),
        json!({"steps": [
            {"id": "e", "agent": "e"},
            {"id": "c", "agent": "c", "depends_on": ["e"]},
            {"id": "a", "agent": "a", "depends_on": ["e"]}]}),
    ] {
        let run = wf(&c, def.clone(), json!("x")).await;
        assert_eq!(run["state"], "failed", "{def}: {run:#}");
        assert!(run["error"].as_str().unwrap().contains("a:"), "{run:#}");
    }

    // A step's own retry runs its task again.
    fx.fake.clear_model("m-a");
    fx.fake
        .push_all([Behavior::status(400), Behavior::reply("second try")]);
    let run = wf(
        &c,
        json!({"steps": [{"id": "a", "agent": "a", "retry": 1}]}),
        json!("x"),
    )
    .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "a")["tries"], 2);
    c.close().await;
}

#[tokio::test]
async fn every_validation_error_is_reported_before_anything_runs() {
    let fx = fx("").await;
    let c = fx.connect().await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"steps": [{"id": "x", "agent": "nobody"}]}),
            vec!["`x`", "unknown agent `nobody`"],
        ),
        (
            json!({"steps": [{"id": "x", "agent": "a", "depends_on": ["ghost"]}]}),
            vec!["`x`", "ghost"],
        ),
        (
            json!({"steps": [{"id": "x", "agent": "a"}, {"id": "x", "agent": "b"}]}),
            vec!["duplicate", "`x`"],
        ),
        (json!({"steps": [{"id": "", "agent": "a"}]}), vec!["empty"]),
        (
            json!({"steps": [{"id": "x", "agent": "a", "depends_on": ["x"]}]}),
            vec!["`x`", "itself"],
        ),
        (
            json!({"steps": [
                {"id": "p", "agent": "a", "depends_on": ["r"]},
                {"id": "q", "agent": "a", "depends_on": ["p"]},
                {"id": "r", "agent": "a", "depends_on": ["q"]}]}),
            vec!["cycle", "->"],
        ),
        (
            json!({"steps": [{"id": "x", "agent": "a"}, {"id": "y", "agent": "b", "input": "{{x.output}}"}]}),
            vec!["`y`", "x", "depends_on"],
        ),
        (
            json!({"steps": [{"id": "y", "agent": "b", "input": "{{revew.output}}"}]}),
            vec!["`y`", "revew"],
        ),
    ];
    for (def, needles) in cases {
        let msg = c
            .err("workflow_run", json!({"workflow": def, "input": "x"}))
            .await;
        for n in needles {
            assert!(msg.contains(n), "`{n}` missing from: {msg}");
        }
        assert!(msg.contains("nothing was run"), "{msg}");
    }
    // All problems at once.
    let msg = c
        .err(
            "workflow_run",
            json!({"workflow": {"steps": [{"id": "x", "agent": "nobody"}, {"id": "y", "agent": "a", "depends_on": ["ghost"]}]}}),
        )
        .await;
    assert!(msg.contains("nobody") && msg.contains("ghost"), "{msg}");
    // More than 10,000 steps.
    let steps: Vec<Value> = (0..10_001)
        .map(|i| json!({"id": format!("s{i}"), "agent": "a"}))
        .collect();
    let msg = c
        .err("workflow_run", json!({"workflow": {"steps": steps}}))
        .await;
    assert!(msg.contains("10001") && msg.contains("10000"), "{msg}");
    assert_eq!(fx.fake.request_count(), 0);
    assert_eq!(c.ok("task_list", json!({})).await["tasks"], json!([]));
    c.close().await;
}

#[tokio::test]
async fn cancelling_a_run_cancels_its_steps() {
    let fx = fx("").await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("m-a", Behavior::gate(&gate, "never"));
    let c = fx.connect().await;
    let def = json!({"steps": [{"id": "a", "agent": "a"}, {"id": "b", "agent": "b", "depends_on": ["a"]}]});
    let started = c
        .ok(
            "workflow_run",
            json!({"workflow": def, "input": "x", "wait_seconds": 0}),
        )
        .await;
    fx.fake.wait_in_flight(1).await;
    let out = c
        .ok("task_cancel", json!({"task_id": started["run_id"]}))
        .await;
    assert_eq!(out["cancelled"], true);
    fx.fake.wait_disconnects(1).await;
    let run = c
        .ok("workflow_status", json!({"run_id": started["run_id"]}))
        .await;
    assert_eq!(run["state"], "cancelled");
    assert_eq!(step(&run, "a")["state"], "cancelled");
    assert_eq!(step(&run, "b")["state"], "skipped");
    c.close().await;
}

#[tokio::test]
async fn a_crashed_run_resumes_without_rerunning_finished_steps() {
    let fx = fx("").await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("m-a", Behavior::reply("A done"));
    fx.fake.on_model("m-b", Behavior::gate(&gate, "never"));
    let c = fx.connect().await;
    let def = json!({"steps": [
        {"id": "a", "agent": "a"},
        {"id": "b", "agent": "b", "input": "{{a.output}}", "depends_on": ["a"]},
        {"id": "c", "agent": "c", "input": "{{b.output}}", "depends_on": ["b"]}]});
    let started = c
        .ok(
            "workflow_run",
            json!({"workflow": def, "input": "x", "wait_seconds": 0}),
        )
        .await;
    fx.fake
        .wait_for("b in flight", |f| {
            f.in_flight() == 1 && f.requests().iter().any(|r| r.model == "m-b")
        })
        .await;
    c.kill().await;

    fx.fake.on_model("m-b", Behavior::reply("B done"));
    fx.fake.on_model("m-c", Behavior::Echo);
    let c = fx.connect().await;
    let run = c
        .ok(
            "task_result",
            json!({"task_id": started["run_id"], "wait_seconds": 60}),
        )
        .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["output"], "B done");
    let a_calls = fx
        .fake
        .requests()
        .iter()
        .filter(|r| r.model == "m-a")
        .count();
    assert_eq!(
        a_calls, 1,
        "a finished before the crash and is not run again"
    );
    let b_calls: Vec<_> = fx
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.model == "m-b")
        .collect();
    assert_eq!(b_calls.len(), 2, "b was interrupted and runs again");
    assert_eq!(user_msg(&b_calls[1]), "A done");
    c.close().await;
}

#[tokio::test]
async fn workflow_agents_and_inline_dags_run_through_agent_run() {
    let fx = fx("").await;
    fx.fake.on_model("rev", Behavior::reply("reviewed"));
    fx.fake.on_model("docs", Behavior::reply("documented"));
    fx.fake.on_model("notify", Behavior::reply("notified"));
    let c = fx.connect().await;
    let v = run(&c, "review-and-document", json!("+ fn main() {}")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "notified");
    assert!(v["task_id"].as_str().unwrap().starts_with("run-"));
    assert_eq!(v["workflow"]["steps"].as_array().unwrap().len(), 3);
    let review = fx
        .fake
        .requests()
        .into_iter()
        .find(|r| r.model == "rev")
        .unwrap();
    assert_eq!(user_msg(&review), "## diff\n\n+ fn main() {}");
    // The run id works with the task tools too.
    let s = c.ok("task_status", json!({"task_id": v["task_id"]})).await;
    assert_eq!(s["state"], "succeeded");

    // The prototype's form: an inline dag in agent_run.
    let v = c
        .ok(
            "agent_run",
            json!({"agent": "quick", "input": "hi", "dag": {"steps": [{"id": "only", "agent": "docs-sync"}]}}),
        )
        .await;
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["output"], "documented");
    c.close().await;
}

#[tokio::test]
async fn the_cli_runs_and_shows_workflows() {
    let fx = fx("").await;
    fx.fake.on_model("m-a", Behavior::reply("alpha"));
    fx.fake.on_model("m-b", Behavior::Echo);
    let file = fx.p.root().join("flow.yaml");
    std::fs::write(
        &file,
        "name: tiny\nsteps:\n  - {id: first, agent: a}\n  - {id: second, agent: b, input: 'got {{first.output}}', depends_on: [first]}\n",
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(["workflow", "run"])
        .arg(&file)
        .arg("go")
        .arg("--root")
        .arg(fx.p.root());
    for (k, v) in fx.spawn().env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tiny · succeeded") && stdout.ends_with("got alpha\n"),
        "{stdout}"
    );
    let run_id = stdout.split_whitespace().nth(1).unwrap().to_string();

    let show = |flag: &'static str| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["workflow", "show", &run_id])
            .arg("--root")
            .arg(fx.p.root());
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        cmd
    };
    let text = String::from_utf8_lossy(&show("").output().await.unwrap().stdout).to_string();
    assert!(
        text.contains("first") && text.contains("second") && text.contains("succeeded"),
        "{text}"
    );
    let mermaid =
        String::from_utf8_lossy(&show("--mermaid").output().await.unwrap().stdout).to_string();
    assert!(
        mermaid.starts_with("graph") && mermaid.contains("-->"),
        "{mermaid}"
    );
    let dot = String::from_utf8_lossy(&show("--dot").output().await.unwrap().stdout).to_string();
    assert!(dot.contains("digraph") && dot.contains("->"), "{dot}");
}
