//! The mirror auditor loop, against the real binary and the fake provider:
//! verdicts, revision rounds, repair of unparseable verdicts, escalation,
//! selective auditing, cancellation and crash recovery in the middle of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::*;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};
use tokio::sync::Notify;

const JUDGE: &str = "---\ndescription: judges\nmodel: openai/judge\ntemperature: 0\n---\nYou audit answers. Reply with a JSON verdict: pass, needs-revision or fail, with feedback.\n";

fn writer(extra: &str) -> String {
    format!(
        "---\ndescription: writes\nmodel: openai/writer\nmirror: judge\n{extra}---\nYou write careful answers.\n"
    )
}

fn verdict(v: &str, feedback: &str) -> Behavior {
    Behavior::reply(&json!({"verdict": v, "feedback": feedback, "issues": [{"severity": "major", "note": feedback}], "confidence": 0.8}).to_string())
}

fn kinds(s: &Value) -> Vec<String> {
    s["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap().to_string())
        .collect()
}

fn verdicts(v: &Value) -> Vec<String> {
    v["audit"]["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap().to_string())
        .collect()
}

async fn fx(writer_extra: &str, toml: &str) -> Fx {
    Fx::new(&[("writer", &writer(writer_extra)), ("judge", JUDGE)], toml).await
}

#[tokio::test]
async fn a_pass_at_once_is_accepted_and_costed() {
    let fx = fx(
        "",
        "[prices.\"openai/writer\"]\ninput = 1.0\noutput = 2.0\n[prices.\"openai/judge\"]\ninput = 3.0\noutput = 4.0\n",
    )
    .await;
    fx.fake.push_all([
        Behavior::reply_with_usage("The draft.", 1000, 100, None),
        Behavior::Reply {
            text:
                json!({"verdict": "pass", "feedback": "correct and complete", "confidence": 0.95})
                    .to_string(),
            input_tokens: 2000,
            output_tokens: 50,
            cost: None,
            delay: std::time::Duration::ZERO,
            chunk_count: 1,
        },
    ]);
    let c = fx.connect().await;
    let v = run(&c, "writer", json!("write it")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "The draft.");
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["audit"]["decision"]["audited"], true);
    assert_eq!(verdicts(&v), ["pass"]);
    assert_eq!(v["audit"]["final_verdict"], "pass");
    // The auditor got one structured message: agent, input, answer, attempt, earlier feedback.
    let audit_req = fx.fake.last_request().unwrap();
    assert_eq!(audit_req.model, "judge");
    let msg = audit_req.body["messages"][1]["content"].as_str().unwrap();
    for part in [
        "`writer`",
        "answer 1 of at most 3",
        "## Original input\n\nwrite it",
        "## Answer under review\n\nThe draft.",
        "## Earlier feedback",
        "\"verdict\"",
    ] {
        assert!(msg.contains(part), "{part} missing from:\n{msg}");
    }
    let s = status(&c, &id(&v)).await;
    assert_eq!(kinds(&s), ["primary", "audit"]);
    assert_eq!(s["calls"][1]["verdict"]["verdict"], "pass");
    assert_eq!(s["calls"][1]["agent"], "judge");
    // The audit's cost shows in the report, per agent.
    let r = c.ok("usage_report", json!({"since": "1h"})).await;
    let w = &r["agents"][0];
    assert_eq!(w["agent"], "writer");
    assert!(w["audit_cost_usd"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(w["audit_share"].as_f64().unwrap() > 0.0 && w["audit_share"].as_f64().unwrap() < 1.0);
    c.close().await;
}

#[tokio::test]
async fn needs_revision_sends_the_feedback_back_to_the_primary() {
    let fx = fx("max_retries: 2\n", "").await;
    fx.fake.push_all([
        Behavior::reply("First draft."),
        verdict("needs-revision", "Mention the null check in parse()."),
        Behavior::reply("Second draft, with the null check."),
        verdict("pass", "good now"),
    ]);
    let mut c = fx.connect().await;
    let mut params = CallToolRequestParams::new("agent_run");
    params.arguments = json!({"agent": "writer", "input": "explain parse()"})
        .as_object()
        .cloned();
    let handle = c
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let resp = handle.await_response().await.unwrap();
    let v = match resp {
        rmcp::model::ServerResult::CallToolResult(r) => r.structured_content.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["output"], "Second draft, with the null check.");
    assert_eq!(verdicts(&v), ["needs-revision", "pass"]);

    // The second primary request carries the previous answer and the feedback.
    let second = fx
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.model == "writer")
        .nth(1)
        .unwrap();
    let msgs = second.body["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["content"], "explain parse()");
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(msgs[2]["content"], "First draft.");
    let revision = msgs[3]["content"].as_str().unwrap();
    assert!(
        revision.contains("Mention the null check in parse().")
            && revision.contains("revision 1 of 2"),
        "{revision}"
    );
    // The exact revision message is stored with the attempt.
    let s = status(&c, &id(&v)).await;
    assert_eq!(kinds(&s), ["primary", "audit", "primary", "audit"]);
    assert_eq!(s["calls"][2]["revision_message"], revision);
    // The second audit saw the earlier feedback.
    let second_audit = fx
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.model == "judge")
        .nth(1)
        .unwrap();
    let m = second_audit.body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("answer 1 (needs-revision): Mention the null check"),
        "{m}"
    );
    // Progress said what happened.
    let mut notes = Vec::new();
    while let Ok(n) = c.notes.try_recv() {
        if let Note::Progress(m) = n {
            notes.push(m);
        }
    }
    let all = notes.join("\n");
    assert!(
        all.contains("auditing") && all.contains("revising 1/2"),
        "{all}"
    );
    // The outbox has the trail.
    let doc = std::fs::read_to_string(fx.p.kb().join(v["kb_path"].as_str().unwrap())).unwrap();
    assert!(
        doc.contains("## Audit trail")
            && doc.contains("| needs-revision |")
            && doc.contains("| pass |"),
        "{doc}"
    );
    assert!(doc.contains("### Revision request"), "{doc}");
    c.close().await;
}

#[tokio::test]
async fn a_fail_verdict_stops_at_once() {
    let fx = fx("max_retries: 2\n", "").await;
    fx.fake.push_all([
        Behavior::reply("Use rm -rf /."),
        verdict("fail", "dangerous advice"),
    ]);
    let c = fx.connect().await;
    let r = c
        .call(
            "agent_run",
            json!({"agent": "writer", "input": "clean up disk"}),
        )
        .await;
    let v = r.structured_content.clone().unwrap();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "audit_failed");
    assert!(v["error"].as_str().unwrap().contains("dangerous advice"));
    assert_eq!(v["attempts"], 2, "no revision after a fail");
    // The answer is kept, clearly marked as not accepted.
    assert_eq!(v["output"], "Use rm -rf /.");
    assert!(text_of(&r).contains("NOT accepted"), "{}", text_of(&r));
    let doc = std::fs::read_to_string(fx.p.kb().join(v["kb_path"].as_str().unwrap())).unwrap();
    assert!(
        doc.contains("not accepted") && doc.contains("status: failed"),
        "{doc}"
    );
    c.close().await;
}

#[tokio::test]
async fn an_unparseable_verdict_is_repaired_once() {
    let fx = fx("", "").await;
    fx.fake.push_all([
        Behavior::reply("The draft."),
        Behavior::reply("Looks good to me!"),
        verdict("pass", "fine"),
    ]);
    let c = fx.connect().await;
    let v = run(&c, "writer", json!("x")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let s = status(&c, &id(&v)).await;
    assert_eq!(kinds(&s), ["primary", "audit", "audit_repair"]);
    assert!(
        s["calls"][1]["verdict"]["unparseable"]
            .as_str()
            .unwrap()
            .contains("not a JSON object")
    );
    let repair = fx.fake.last_request().unwrap();
    let msgs = repair.body["messages"].as_array().unwrap();
    assert_eq!(msgs[2]["content"], "Looks good to me!");
    let ask = msgs[3]["content"].as_str().unwrap();
    assert!(
        ask.contains("could not be used") && ask.contains("not a JSON object"),
        "{ask}"
    );
    c.close().await;
}

#[tokio::test]
async fn an_unparseable_verdict_twice_fails_the_task() {
    let fx = fx("", "").await;
    fx.fake.push_all([
        Behavior::reply("The draft."),
        Behavior::reply("PASS"),
        Behavior::reply("{\"verdict\": \"approved\", \"feedback\": \"ok\"}"),
    ]);
    let c = fx.connect().await;
    let v = run(&c, "writer", json!("x")).await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "audit_error");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("could not be parsed twice") && err.contains("approved"),
        "{err}"
    );
    assert_eq!(v["output"], "The draft.");
    assert_eq!(verdicts(&v), ["error"]);
    c.close().await;
}

#[tokio::test]
async fn exhausted_revisions_without_escalation_reject_the_task() {
    let fx = fx("max_retries: 1\n", "").await;
    fx.fake.push_all([
        Behavior::reply("Draft one."),
        verdict("needs-revision", "too vague"),
        Behavior::reply("Draft two."),
        verdict("needs-revision", "still vague"),
    ]);
    let c = fx.connect().await;
    let v = run(&c, "writer", json!("x")).await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["reason"], "audit_rejected");
    assert!(v["error"].as_str().unwrap().contains("still vague"));
    assert_eq!(v["output"], "Draft two.");
    assert_eq!(verdicts(&v), ["needs-revision", "needs-revision"]);
    assert!(fx.p.kb().join(v["kb_path"].as_str().unwrap()).is_file());
    c.close().await;
}

#[tokio::test]
async fn escalation_gets_one_last_audited_attempt() {
    let fx = fx("max_retries: 1\nescalate: anthropic/big-model\n", "").await;
    fx.fake.push_all([
        Behavior::reply("Draft one."),
        verdict("needs-revision", "wrong algorithm"),
        Behavior::reply("Draft two."),
        verdict("needs-revision", "still the wrong algorithm"),
        Behavior::reply("The right algorithm."),
        verdict("pass", "correct"),
    ]);
    let c = fx.connect().await;
    let v = run(&c, "writer", json!("x")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["model"], "anthropic/big-model");
    assert_eq!(v["output"], "The right algorithm.");
    let s = status(&c, &id(&v)).await;
    assert_eq!(
        kinds(&s),
        [
            "primary",
            "audit",
            "primary",
            "audit",
            "escalation",
            "audit"
        ]
    );
    let esc = fx
        .fake
        .requests()
        .into_iter()
        .find(|r| r.model == "big-model")
        .unwrap();
    assert_eq!(esc.path, "/v1/messages");
    let last_user = esc.body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last_user.contains("still the wrong algorithm") && last_user.contains("stronger model"),
        "{last_user}"
    );
    let rounds = v["audit"]["rounds"].as_array().unwrap();
    assert_eq!(rounds[2]["escalation"], true);

    // And an escalation that is rejected too ends the task, rejected.
    fx.fake.push_all([
        Behavior::reply("A."),
        verdict("needs-revision", "no"),
        Behavior::reply("B."),
        verdict("needs-revision", "no"),
        Behavior::reply("C."),
        verdict("needs-revision", "no"),
    ]);
    let v = run(&c, "writer", json!("x")).await;
    assert_eq!(v["reason"], "audit_rejected");
    assert_eq!(v["output"], "C.");
    c.close().await;
}

/// Decisions of `n` sequential tasks: (audited, rate).
async fn decisions(fx: &Fx, c: &Client, n: usize) -> Vec<(bool, f64)> {
    let _ = fx;
    let mut out = Vec::new();
    for i in 0..n {
        let v = run(c, "writer", json!(format!("task {i}"))).await;
        assert_eq!(v["state"], "succeeded");
        let d = &v["audit"]["decision"];
        let audited = d["audited"].as_bool().unwrap();
        let rate = d["rate"].as_f64().unwrap();
        if let Some(draw) = d["draw"].as_f64() {
            assert_eq!(audited, draw < rate, "{d}");
        }
        assert!(!d["reason"].as_str().unwrap().is_empty());
        out.push((audited, rate));
    }
    out
}

#[tokio::test]
async fn adaptive_auditing_over_a_fixed_seed() {
    let setup = || async {
        let fx = fx(
            "audit: {rate: 1.0, min_rate: 0.2, adaptive: true}\n",
            "[audit]\nseed = 42\n",
        )
        .await;
        fx.fake.on_model("writer", Behavior::reply("answer"));
        fx.fake.on_model("judge", verdict("pass", "fine"));
        fx
    };
    let fx = setup().await;
    let c = fx.connect().await;
    let first = decisions(&fx, &c, 14).await;
    // Every audit passes: the rate falls from 1.0 towards the floor and never rises.
    assert_eq!(first[0], (true, 1.0));
    assert!((first[1].1 - 0.8).abs() < 1e-9, "{first:?}");
    assert!(
        first.windows(2).all(|w| w[1].1 <= w[0].1 + 1e-12),
        "{first:?}"
    );
    assert!(first.iter().all(|d| d.1 >= 0.2 - 1e-12));
    assert!(
        first.iter().any(|d| !d.0),
        "some answers skip the audit: {first:?}"
    );
    // A rejection sends the rate back to 1.0.
    fx.fake
        .on_model("judge", verdict("needs-revision", "fix it"));
    let mut rejected = None;
    for i in 0..40 {
        let v = run(&c, "writer", json!(format!("again {i}"))).await;
        if v["audit"]["decision"]["audited"] == true {
            rejected = Some(v);
            break;
        }
    }
    let rejected = rejected.expect("an audited task");
    assert_eq!(rejected["reason"], "audit_rejected", "{rejected:#}");
    fx.fake.on_model("judge", verdict("pass", "fine"));
    let after = decisions(&fx, &c, 1).await;
    assert_eq!(after[0], (true, 1.0));
    c.close().await;

    // The same seed gives the same decisions in a fresh server.
    let fx2 = setup().await;
    let c2 = fx2.connect().await;
    let second = decisions(&fx2, &c2, 14).await;
    assert_eq!(first, second);
    c2.close().await;
}

#[tokio::test]
async fn cancelling_during_the_audit() {
    let fx = fx("", "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.on_model("judge", Behavior::gate(&gate, "{}"));
    fx.fake.on_model("writer", Behavior::reply("the draft"));
    let c = fx.connect().await;
    let d = c
        .ok("agent_delegate", json!({"agent": "writer", "input": "x"}))
        .await;
    fx.fake
        .wait_for("the judge's request", |f| {
            f.in_flight() == 1 && f.last_request().is_some_and(|r| r.model == "judge")
        })
        .await;
    let out = c.ok("task_cancel", json!({"task_id": id(&d)})).await;
    assert_eq!(out["state"], "cancelled");
    fx.fake.wait_disconnects(1).await;
    let s = status(&c, &id(&d)).await;
    assert_eq!(s["state"], "cancelled");
    assert_eq!(
        kinds(&s),
        ["primary"],
        "the answer was recorded, the cut audit was not"
    );
    c.close().await;
}

#[tokio::test]
async fn a_crash_during_a_revision_round_resumes_without_losing_attempts() {
    let fx = fx("max_retries: 2\n", "").await;
    let gate = Arc::new(Notify::new());
    fx.fake.push_all([
        Behavior::reply("First draft."),
        verdict("needs-revision", "add an example"),
        Behavior::gate(&gate, "never delivered"),
    ]);
    let c = fx.connect().await;
    let d = c
        .ok(
            "agent_delegate",
            json!({"agent": "writer", "input": "explain"}),
        )
        .await;
    fx.fake
        .wait_for("the revision request", |f| {
            f.request_count() == 3 && f.in_flight() == 1
        })
        .await;
    c.kill().await;

    fx.fake.push_all([
        Behavior::reply("Second draft, with an example."),
        verdict("pass", "good"),
    ]);
    let c = fx.connect().await;
    let v = wait_done(&c, &id(&d)).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "Second draft, with an example.");
    // The first answer and its verdict, recorded before the crash, are still
    // there, and the first answer was not written again.
    let s = status(&c, &id(&d)).await;
    assert_eq!(kinds(&s), ["primary", "audit", "primary", "audit"]);
    assert_eq!(s["calls"][0]["ok"], true);
    assert_eq!(s["calls"][1]["verdict"]["verdict"], "needs-revision");
    assert!(
        s["calls"][2]["revision_message"]
            .as_str()
            .unwrap()
            .contains("add an example")
    );
    assert_eq!(
        fx.fake
            .requests()
            .iter()
            .filter(|r| r.model == "writer")
            .count(),
        3
    );
    assert_eq!(verdicts(&v), ["needs-revision", "pass"]);
    c.close().await;
}
