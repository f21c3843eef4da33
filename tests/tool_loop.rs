//! Agents that act, against the real binary and the fake provider: tool
//! calls on both wire formats (streamed), the built-in tools, bad calls the
//! model sees as errors, `max_turns`, child tasks on the other wire format,
//! the limits of a delegation tree, and a crash between a tool result and
//! the next turn.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::fake_provider::Behavior;
use common::fixture::*;
use serde_json::{Value, json};

fn actor(model: &str, tools: &str, extra: &str) -> String {
    format!(
        "---\ndescription: acts\nmodel: {model}\ntools: [{tools}]\n{extra}---\nYou use tools.\n"
    )
}

/// The messages of the `n`th request (0-based) to `model`.
fn messages(fx: &Fx, model: &str, n: usize) -> Vec<Value> {
    let reqs: Vec<_> = fx
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.model == model)
        .collect();
    reqs[n].body["messages"].as_array().unwrap().clone()
}

/// The tool results the model was sent (OpenAI `tool` messages).
fn tool_contents(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

fn turn_kinds(s: &Value) -> Vec<String> {
    s["turns"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["kind"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn openai_calls_run_in_one_turn_and_the_loop_answers() {
    let fx = Fx::new(
        &[("scribe", &actor("openai/scribe", "kb_read, kb_write", ""))],
        "",
    )
    .await;
    fx.p.write("_kb/context/team.md", "# Team\nAda and Lin.\n");
    fx.fake.queue_model(
        "scribe",
        [
            Behavior::calls(&[
                (
                    "kb_write",
                    json!({"path": "inbox/note.md", "content": "noted", "mode": "append"}),
                ),
                ("kb_read", json!({"path": "context/team.md"})),
            ]),
            Behavior::reply("All done."),
        ],
    );
    let c = fx.connect().await;
    let v = run(&c, "scribe", json!("take a note")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "All done.");
    assert_eq!(
        std::fs::read_to_string(fx.p.kb().join("inbox/note.md")).unwrap(),
        "noted"
    );
    // The first request offered the tools; the second carried the model's
    // calls and both results, in call order.
    let first = &fx.fake.requests()[0].body;
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kb_read", "kb_write"]);
    let msgs = messages(&fx, "scribe", 1);
    let asked = msgs.iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(
        asked["tool_calls"].as_array().unwrap().len(),
        2,
        "{asked:#}"
    );
    let results = tool_contents(&msgs);
    assert_eq!(results.len(), 2, "{msgs:#?}");
    assert!(results[0].contains("\"created\":true"), "{}", results[0]);
    assert!(results[1].contains("Ada and Lin"), "{}", results[1]);
    // Everything is visible in task_status.
    let s = status(&c, &id(&v)).await;
    assert_eq!(
        turn_kinds(&s),
        ["model", "tool_result", "tool_result"],
        "{s:#}"
    );
    assert_eq!(s["turns"][0]["calls"].as_array().unwrap().len(), 2);
    let kinds: Vec<&str> = s["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["turn", "primary"]);
    assert_eq!(s["root_task_id"], s["task_id"]);
    assert_eq!(s["tree"]["turns"], 2, "{s:#}");
    // The outbox file shows the calls too.
    let outbox = std::fs::read_to_string(fx.p.kb().join(s["kb_path"].as_str().unwrap())).unwrap();
    assert!(outbox.contains("kb_write"), "{outbox}");
}

#[tokio::test]
async fn anthropic_tool_use_streams_and_results_go_back_as_blocks() {
    let fx = Fx::new(
        &[("reader", &actor("anthropic/claude-x", "kb_list", ""))],
        "",
    )
    .await;
    fx.p.write("_kb/context/a.md", "# A\n");
    fx.fake.queue_model(
        "claude-x",
        [
            Behavior::call("kb_list", json!({"path": "context"})),
            Behavior::reply("Listed."),
        ],
    );
    let c = fx.connect().await;
    let v = run(&c, "reader", json!("list context")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "Listed.");
    let reqs = fx.fake.requests();
    assert_eq!(reqs[0].body["tools"][0]["name"], "kb_list");
    assert!(reqs[0].body["tools"][0]["input_schema"].is_object());
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let assistant = &msgs[1];
    assert_eq!(assistant["content"][0]["type"], "tool_use", "{msgs:#?}");
    assert_eq!(assistant["content"][0]["input"], json!({"path": "context"}));
    let result = &msgs[2]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], assistant["content"][0]["id"]);
    assert!(
        result["content"].as_str().unwrap().contains("a.md"),
        "{result}"
    );
}

#[tokio::test]
async fn bad_calls_are_errors_the_model_reads_and_the_loop_goes_on() {
    let fx = Fx::new(&[("nowrite", &actor("openai/nw", "kb_read", ""))], "").await;
    fx.fake.queue_model(
        "nw",
        [
            Behavior::call("kb_write", json!({"path": "x.md", "content": "x"})),
            Behavior::call("rm_rf", json!({})),
            Behavior::raw_call("kb_read", "{not json"),
            Behavior::call("kb_read", json!({"path": 42})),
            Behavior::call("kb_read", json!({"path": "../../etc/passwd"})),
            Behavior::reply("I could not do it."),
        ],
    );
    let c = fx.connect().await;
    let v = run(&c, "nowrite", json!("try things")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let last = messages(&fx, "nw", 5);
    let errors = tool_contents(&last);
    assert_eq!(errors.len(), 5, "{last:#?}");
    assert!(
        errors[0].contains("kb_write is not allowed for agent `nowrite`"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("there is no tool `rm_rf`"),
        "{}",
        errors[1]
    );
    assert!(errors[2].contains("not valid JSON"), "{}", errors[2]);
    assert!(
        errors[3].contains("do not match its schema"),
        "{}",
        errors[3]
    );
    assert!(errors[4].contains("kb_read"), "{}", errors[4]);
    assert!(!fx.p.kb().join("x.md").exists());
    let s = status(&c, &id(&v)).await;
    let errs = s["turns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["error"].is_string())
        .count();
    assert_eq!(errs, 5, "{s:#}");
}

#[tokio::test]
async fn a_loop_that_never_answers_fails_with_max_turns_and_keeps_its_text() {
    let fx = Fx::new(
        &[("looper", &actor("openai/loop", "kb_list", "max_turns: 3\n"))],
        "",
    )
    .await;
    fx.fake.set_default(Behavior::Calls {
        text: "still looking".into(),
        calls: vec![common::fake_provider::FakeCall {
            id: "c1".into(),
            name: "kb_list".into(),
            arguments: "{}".into(),
        }],
    });
    let c = fx.connect().await;
    let v = run(&c, "looper", json!("loop")).await;
    assert_eq!(v["state"], "failed", "{v:#}");
    assert_eq!(v["reason"], "max_turns");
    assert_eq!(v["output"], "still looking");
    assert_eq!(fx.fake.request_count(), 3);
}

#[tokio::test]
async fn a_child_runs_on_the_other_wire_format_and_the_tree_is_visible() {
    let fx = Fx::new(
        &[
            ("boss", &actor("openai/boss", "agent_run", "")),
            ("helper", &agent("anthropic/helper-model")),
        ],
        "[prices.\"openai/boss\"]\ninput = 1.0\noutput = 1.0\n[prices.\"anthropic/helper-model\"]\ninput = 2.0\noutput = 2.0\n",
    )
    .await;
    fx.fake.queue_model(
        "boss",
        [
            Behavior::call(
                "agent_run",
                json!({"agent": "helper", "input": "what is 2+2?"}),
            ),
            Behavior::reply("The helper says 4."),
        ],
    );
    fx.fake.on_model("helper-model", Behavior::reply("4"));
    let c = fx.connect().await;
    let v = run(&c, "boss", json!("ask the helper")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "The helper says 4.");
    let results = tool_contents(&messages(&fx, "boss", 1));
    assert_eq!(results, ["4"]);
    let s = status(&c, &id(&v)).await;
    assert_eq!(
        turn_kinds(&s),
        ["model", "child_started", "tool_result"],
        "{s:#}"
    );
    let child = s["turns"][1]["child_task_id"].as_str().unwrap().to_string();
    assert_eq!(s["turns"][2]["child_task_id"], child);
    let cs = status(&c, &child).await;
    assert_eq!(cs["agent"], "helper");
    assert_eq!(cs["parent_task_id"], s["task_id"]);
    assert_eq!(cs["root_task_id"], s["task_id"]);
    // The root shows the cost of the whole tree: its own calls and the child's.
    assert_eq!(s["tree"]["tasks"], 2, "{s:#}");
    let tree_cost = s["tree"]["cost_usd"].as_f64().unwrap();
    let own = s["cost_usd"].as_f64().unwrap();
    let childs = cs["cost_usd"].as_f64().unwrap();
    assert!(childs > 0.0 && own > 0.0, "{s:#} {cs:#}");
    assert!(
        (tree_cost - own - childs).abs() < 1e-5,
        "{tree_cost} {own} {childs}"
    );
    // usage_report of the tree: both agents, the same total.
    let u = c
        .ok("usage_report", json!({"root_task_id": s["task_id"]}))
        .await;
    let agents: Vec<&str> = u["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["boss", "helper"], "{u:#}");
    assert!(
        (u["total_cost_usd"].as_f64().unwrap() - tree_cost).abs() < 1e-5,
        "{u:#}"
    );
    let listed = c
        .ok("task_list", json!({"root_task_id": s["task_id"]}))
        .await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2, "{listed:#}");
}

#[tokio::test]
async fn depth_and_cycles_are_refused_to_the_calling_model() {
    let fx = Fx::new(
        &[
            ("a", &actor("openai/a", "agent_run", "")),
            ("b", &actor("openai/b", "agent_run", "")),
            ("c", &actor("openai/c", "agent_run", "")),
        ],
        "",
    )
    .await;
    // a -> b; b tries a (cycle) then c; c tries b... but max_depth 2 stops
    // c's own child first.
    fx.fake.queue_model(
        "a",
        [
            Behavior::call("agent_run", json!({"agent": "b", "input": "go"})),
            Behavior::reply("a done"),
        ],
    );
    fx.fake.queue_model(
        "b",
        [
            Behavior::call("agent_run", json!({"agent": "a", "input": "back"})),
            Behavior::call("agent_run", json!({"agent": "c", "input": "on"})),
            Behavior::reply("b done"),
        ],
    );
    fx.fake.queue_model(
        "c",
        [
            Behavior::call("agent_run", json!({"agent": "b", "input": "deeper"})),
            Behavior::reply("c done"),
        ],
    );
    let c = fx.connect().await;
    let v = c
        .ok(
            "agent_run",
            json!({"agent": "a", "input": "start", "max_depth": 2, "wait_seconds": 60}),
        )
        .await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let b_results = tool_contents(&messages(&fx, "b", 2));
    assert!(
        b_results[0].contains("agent `a` is already on the delegation path (a → b → a)"),
        "{b_results:?}"
    );
    assert_eq!(b_results[1], "c done");
    let c_results = tool_contents(&messages(&fx, "c", 1));
    assert!(
        c_results[0].contains("depth limit 2 reached: answer from what you have"),
        "{c_results:?}"
    );
}

#[tokio::test]
async fn the_tree_task_limit_refuses_the_extra_child() {
    let fx = Fx::new(
        &[
            ("fan", &actor("openai/fan", "agent_run", "")),
            ("leaf", &agent("openai/leaf")),
        ],
        "[limits]\nmax_tree_tasks = 3\n",
    )
    .await;
    fx.fake.queue_model(
        "fan",
        [
            Behavior::calls(&[
                ("agent_run", json!({"agent": "leaf", "input": "1"})),
                ("agent_run", json!({"agent": "leaf", "input": "2"})),
                ("agent_run", json!({"agent": "leaf", "input": "3"})),
            ]),
            Behavior::reply("fanned"),
        ],
    );
    fx.fake.on_model("leaf", Behavior::reply("leaf"));
    let c = fx.connect().await;
    let v = run(&c, "fan", json!("fan out")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let results = tool_contents(&messages(&fx, "fan", 1));
    let refused: Vec<&String> = results
        .iter()
        .filter(|r| r.contains("task limit of 3"))
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(refused.len(), 1, "{results:?}");
    let leaves = fx
        .fake
        .requests()
        .iter()
        .filter(|r| r.model == "leaf")
        .count();
    assert_eq!(leaves, 2);
}

#[tokio::test]
async fn concurrent_children_cannot_overspend_the_tree_budget() {
    // Each leaf call reserves 1000 input tokens' worth plus max_tokens 1000 at
    // $1 per 1M tokens... priced so that a budget fits exactly two calls.
    let fx = Fx::new(
        &[
            ("fan", &actor("openai/fan", "agent_run", "max_tokens: 100\n")),
            ("leaf", "---\ndescription: leaf\nmodel: openai/leaf\nmax_tokens: 1000\n---\nLeaf.\n"),
        ],
        "[prices.\"openai/leaf\"]\ninput = 10.0\noutput = 10.0\n[prices.\"openai/fan\"]\ninput = 0.0\noutput = 0.0\n",
    )
    .await;
    fx.fake.queue_model(
        "fan",
        [
            Behavior::calls(&[
                ("agent_run", json!({"agent": "leaf", "input": "one"})),
                ("agent_run", json!({"agent": "leaf", "input": "two"})),
                ("agent_run", json!({"agent": "leaf", "input": "three"})),
                ("agent_run", json!({"agent": "leaf", "input": "four"})),
            ]),
            Behavior::reply("spent"),
        ],
    );
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    fx.fake
        .on_model("leaf", Behavior::gate(&release, "leaf answer"));
    let c = fx.connect().await;
    // A leaf call reserves about (input ~20 tokens + 1000 out) * $10/M ≈ $0.0102:
    // $0.025 fits two reservations at once, not three.
    let started = c
        .ok(
            "agent_run",
            json!({"agent": "fan", "input": "spend", "budget_usd": 0.025, "wait_seconds": 0}),
        )
        .await;
    fx.fake.wait_in_flight(2).await;
    // The other two children are refused before any call is sent (their
    // reservations do not fit beside the two in flight): then release.
    let root = id(&started);
    common::eventually(
        "two children refused",
        std::time::Duration::from_secs(30),
        || {
            let c = &c;
            let root = root.clone();
            async move {
                let l = c
                    .ok(
                        "task_list",
                        json!({"root_task_id": root, "state": ["failed"]}),
                    )
                    .await;
                (l["tasks"].as_array().unwrap().len() == 2).then_some(())
            }
        },
    )
    .await;
    release.notify_waiters();
    let v = wait_done(&c, &id(&started)).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let leaves = fx
        .fake
        .requests()
        .iter()
        .filter(|r| r.model == "leaf")
        .count();
    assert_eq!(leaves, 2, "only two reservations fit at once");
    let results = tool_contents(&messages(&fx, "fan", 1));
    let refused = results
        .iter()
        .filter(|r| r.contains("the tree budget of $0.0250 would be exceeded"))
        .count();
    assert_eq!(refused, 2, "{results:?}");
    let s = status(&c, &id(&v)).await;
    assert!(s["tree"]["cost_usd"].as_f64().unwrap() <= 0.025, "{s:#}");
    assert_eq!(s["tree"]["reserved_usd"], 0.0, "{s:#}");
}

#[tokio::test]
async fn a_crash_after_a_tool_result_resumes_without_running_the_tool_again() {
    let fx = Fx::new(&[("logger", &actor("openai/log", "kb_write", ""))], "").await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    fx.fake.queue_model(
        "log",
        [
            Behavior::call(
                "kb_write",
                json!({"path": "inbox/log.md", "content": "one line\n", "mode": "append"}),
            ),
            Behavior::gate(&gate, "never delivered"),
        ],
    );
    let c = fx.connect().await;
    let d = c
        .ok(
            "agent_delegate",
            json!({"agent": "logger", "input": "log it"}),
        )
        .await;
    // The second turn is in flight: the append and its result are stored.
    fx.fake
        .wait_for("the second turn", |f| {
            f.request_count() == 2 && f.in_flight() == 1
        })
        .await;
    c.kill().await;

    fx.fake.queue_model("log", [Behavior::reply("Logged.")]);
    let c = fx.connect().await;
    let v = wait_done(&c, &id(&d)).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "Logged.");
    assert_eq!(
        std::fs::read_to_string(fx.p.kb().join("inbox/log.md")).unwrap(),
        "one line\n",
        "the append happened once"
    );
    // The resumed turn carried the stored call and its result.
    let msgs = messages(&fx, "log", 2);
    let results = tool_contents(&msgs);
    assert_eq!(results.len(), 1, "{msgs:#?}");
    assert!(results[0].contains("\"created\":true"), "{}", results[0]);
    let s = status(&c, &id(&d)).await;
    assert_eq!(turn_kinds(&s), ["model", "tool_result"], "{s:#}");
    c.close().await;
}

#[tokio::test]
async fn a_crash_while_a_child_runs_re_attaches_to_it() {
    let fx = Fx::new(
        &[
            ("boss", &actor("openai/boss", "agent_run", "")),
            ("helper", &agent("anthropic/helper-model")),
        ],
        "",
    )
    .await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    fx.fake.queue_model(
        "boss",
        [Behavior::call(
            "agent_run",
            json!({"agent": "helper", "input": "slow work"}),
        )],
    );
    fx.fake
        .queue_model("helper-model", [Behavior::gate(&gate, "never delivered")]);
    let c = fx.connect().await;
    let d = c
        .ok(
            "agent_delegate",
            json!({"agent": "boss", "input": "delegate"}),
        )
        .await;
    fx.fake
        .wait_for("the child's call", |f| {
            f.requests().iter().any(|r| r.model == "helper-model") && f.in_flight() == 1
        })
        .await;
    c.kill().await;

    fx.fake
        .queue_model("helper-model", [Behavior::reply("child result")]);
    fx.fake
        .queue_model("boss", [Behavior::reply("boss result")]);
    let c = fx.connect().await;
    let v = wait_done(&c, &id(&d)).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "boss result");
    let helpers = c.ok("task_list", json!({"agent": "helper"})).await;
    assert_eq!(
        helpers["tasks"].as_array().unwrap().len(),
        1,
        "the child was re-attached, not created again: {helpers:#}"
    );
    assert_eq!(tool_contents(&messages(&fx, "boss", 1)), ["child result"]);
    c.close().await;
}

#[tokio::test]
async fn the_tree_turn_limit_stops_a_long_loop() {
    let fx = Fx::new(
        &[("looper", &actor("openai/loop", "kb_list", ""))],
        "[limits]\nmax_tree_turns = 2\n",
    )
    .await;
    fx.fake.set_default(Behavior::call("kb_list", json!({})));
    let c = fx.connect().await;
    let v = run(&c, "looper", json!("loop")).await;
    assert_eq!(v["state"], "failed", "{v:#}");
    assert_eq!(v["reason"], "tree_limit");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("turn limit of 2 ([limits] max_tree_turns)"),
        "{v:#}"
    );
    assert_eq!(fx.fake.request_count(), 2);
}

#[tokio::test]
async fn the_tree_time_limit_refuses_the_next_turn() {
    let fx = Fx::new(
        &[("slow", &actor("openai/slow", "kb_list", ""))],
        "[limits]\nmax_tree_secs = 1\n",
    )
    .await;
    // The first turn takes longer than the tree may live: the next model
    // call is refused, never sent.
    fx.fake.queue_model(
        "slow",
        [Behavior::Delay {
            by: std::time::Duration::from_millis(1200),
            then: Box::new(Behavior::Calls {
                text: "looking".into(),
                calls: vec![common::fake_provider::FakeCall {
                    id: "c".into(),
                    name: "kb_list".into(),
                    arguments: "{}".into(),
                }],
            }),
        }],
    );
    let c = fx.connect().await;
    let v = run(&c, "slow", json!("go")).await;
    assert_eq!(v["state"], "failed", "{v:#}");
    assert_eq!(v["reason"], "tree_limit", "{v:#}");
    assert!(
        v["error"].as_str().unwrap().contains("time limit of 1s"),
        "{v:#}"
    );
    assert_eq!(v["output"], "looking");
    assert_eq!(fx.fake.request_count(), 1);
}

#[tokio::test]
async fn file_tools_read_the_project_but_not_its_secrets() {
    let fx = Fx::new(
        &[(
            "dev",
            &actor("openai/dev", "file_read, file_list, file_search", ""),
        )],
        "",
    )
    .await;
    fx.p.write("src/lib.rs", "pub fn answer() -> u32 {\n    42\n}\n");
    fx.p.write(".env", "OPENAI_API_KEY=hidden\n");
    fx.p.write(".gitignore", "target/\n*.secret\n");
    fx.p.write("target/out.txt", "build output\n");
    fx.p.write("notes.secret", "ignored\n");
    fx.p.write("keys.txt", format!("the key is {OPENAI_KEY}\n"));
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("passwd"), "root:x:0:0\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), fx.p.root().join("link")).unwrap();
    // A FIFO nobody writes to: opening it must not block the tool.
    let made = std::process::Command::new("mkfifo")
        .arg(fx.p.root().join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    fx.fake.queue_model(
        "dev",
        [
            Behavior::calls(&[
                ("file_list", json!({})),
                ("file_read", json!({"path": "src/lib.rs"})),
                ("file_read", json!({"path": ".env"})),
                ("file_read", json!({"path": "target/out.txt"})),
                ("file_read", json!({"path": "notes.secret"})),
                ("file_read", json!({"path": "link/passwd"})),
                ("file_read", json!({"path": "../outside"})),
                ("file_search", json!({"pattern": "fn answer"})),
                ("file_read", json!({"path": "keys.txt"})),
                ("file_read", json!({"path": "pipe"})),
            ]),
            Behavior::reply("Read."),
        ],
    );
    let c = fx.connect().await;
    let v = run(&c, "dev", json!("look around")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let r = tool_contents(&messages(&fx, "dev", 1));
    assert_eq!(r.len(), 10, "{r:#?}");
    let listing: Value = serde_json::from_str(&r[0]).unwrap();
    let paths: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"src") && paths.contains(&"keys.txt"),
        "{paths:?}"
    );
    for hidden in [".env", "target", "notes.secret", ".dispatch", "_kb/.x"] {
        assert!(!paths.contains(&hidden), "{hidden} listed: {paths:?}");
    }
    assert!(r[1].contains("42"), "{}", r[1]);
    assert!(r[2].contains("hidden files"), "{}", r[2]);
    assert!(r[3].contains("ignored by .gitignore"), "{}", r[3]);
    assert!(r[4].contains("ignored by .gitignore"), "{}", r[4]);
    assert!(
        !r[5].contains("root:x"),
        "a link out of the project was followed: {}",
        r[5]
    );
    assert!(r[6].contains("without `..`"), "{}", r[6]);
    assert!(
        r[7].contains("src/lib.rs") && r[7].contains("\"line\":1"),
        "{}",
        r[7]
    );
    assert!(
        !r[8].contains(OPENAI_KEY),
        "a key reached the model: {}",
        r[8]
    );
}

#[tokio::test]
async fn a_workflow_budget_holds_for_all_its_steps_together() {
    let fx = Fx::new(
        &[(
            "leaf",
            "---\ndescription: leaf\nmodel: openai/leaf\nmax_tokens: 1000\n---\nLeaf.\n",
        )],
        "[prices.\"openai/leaf\"]\ninput = 10.0\noutput = 10.0\n",
    )
    .await;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    fx.fake
        .on_model("leaf", Behavior::gate(&release, "leaf answer"));
    let c = fx.connect().await;
    // One leaf call reserves about $0.0102: $0.015 fits one at a time.
    let started = c
        .ok(
            "workflow_run",
            json!({"workflow": {"steps": [
                {"id": "a", "agent": "leaf", "input": "one"},
                {"id": "b", "agent": "leaf", "input": "two"}
            ]}, "budget_usd": 0.015, "wait_seconds": 0}),
        )
        .await;
    let run_id = started["run_id"].as_str().unwrap().to_string();
    fx.fake.wait_in_flight(1).await;
    common::eventually(
        "one step refused",
        std::time::Duration::from_secs(30),
        || {
            let (c, run_id) = (&c, run_id.clone());
            async move {
                let v = c.ok("workflow_status", json!({"run_id": run_id})).await;
                let failed = v["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| s["state"] == "failed")
                    .count();
                (failed == 1).then_some(())
            }
        },
    )
    .await;
    release.notify_waiters();
    let v = c.ok("workflow_status", json!({"run_id": run_id})).await;
    let steps = v["steps"].as_array().unwrap();
    let failed = steps.iter().find(|s| s["state"] == "failed").unwrap();
    let task = status(&c, failed["task_id"].as_str().unwrap()).await;
    assert_eq!(task["reason"], "tree_limit", "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("the tree budget of $0.0150 would be exceeded"),
        "{task:#}"
    );
    assert_eq!(task["root_task_id"], run_id.as_str());
    let leaves = fx
        .fake
        .requests()
        .iter()
        .filter(|r| r.model == "leaf")
        .count();
    assert_eq!(leaves, 1);
}

#[tokio::test]
async fn a_turn_that_fails_over_goes_to_the_next_model_with_the_same_conversation() {
    let fx = Fx::new(
        &[(
            "robust",
            "---\ndescription: fails over\nmodel: [openai/first, anthropic/second]\ntools: [kb_list]\n---\nAct.\n",
        )],
        "[limits]\nmax_tool_result_bytes = 300\n",
    )
    .await;
    for i in 0..40 {
        fx.p.write(&format!("_kb/context/file-{i:02}.md"), "# x\n");
    }
    fx.fake.queue_model(
        "first",
        [
            Behavior::call("kb_list", json!({"path": "context"})),
            Behavior::status(500),
            Behavior::status(500),
            Behavior::status(500),
        ],
    );
    fx.fake
        .queue_model("second", [Behavior::reply("answered by the second model")]);
    let c = fx.connect().await;
    let v = run(&c, "robust", json!("list")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "answered by the second model");
    assert_eq!(v["model"], "anthropic/second");
    let second = fx
        .fake
        .requests()
        .into_iter()
        .find(|r| r.model == "second")
        .unwrap();
    let msgs = second.body["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["content"][0]["type"], "tool_use", "{msgs:#?}");
    assert_eq!(msgs[1]["content"][0]["name"], "kb_list");
    let result = msgs[2]["content"][0]["content"].as_str().unwrap();
    // The listing was longer than the limit: cut, with a note saying so.
    assert!(result.len() < 700, "{}", result.len());
    assert!(
        result.contains("only the first 300 are shown ([limits] max_tool_result_bytes)"),
        "{result}"
    );
}

#[tokio::test]
async fn the_audit_judges_the_final_answer_and_a_revision_loops_again() {
    let judge =
        "---\ndescription: judges\nmodel: openai/judge\n---\nAudit. Reply with a JSON verdict.\n";
    let fx = Fx::new(
        &[
            (
                "writer",
                &actor(
                    "openai/writer",
                    "kb_read, kb_list",
                    "mirror: judge\nmax_retries: 1\n",
                ),
            ),
            ("judge", judge),
        ],
        "",
    )
    .await;
    fx.p.write("_kb/context/facts.md", "# Facts\nThe sky is blue.\n");
    fx.fake.queue_model(
        "writer",
        [
            Behavior::call("kb_read", json!({"path": "context/facts.md"})),
            Behavior::reply("Draft one."),
            Behavior::call("kb_list", json!({"path": "context"})),
            Behavior::reply("Draft two, with the facts."),
        ],
    );
    fx.fake.queue_model(
        "judge",
        [
            Behavior::reply(
                &json!({"verdict": "needs-revision", "feedback": "cite the facts file"})
                    .to_string(),
            ),
            Behavior::reply(&json!({"verdict": "pass", "feedback": "good"}).to_string()),
        ],
    );
    let c = fx.connect().await;
    let v = run(&c, "writer", json!("write")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "Draft two, with the facts.");
    let judged: Vec<String> = fx
        .fake
        .requests()
        .iter()
        .filter(|r| r.model == "judge")
        .map(|r| r.body["messages"].to_string())
        .collect();
    assert!(
        judged[0].contains("Draft one.") && judged[1].contains("Draft two"),
        "{judged:?}"
    );
    // The revision's first turn carried the feedback and offered the tools again.
    let revision = fx
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.model == "writer")
        .nth(2)
        .unwrap();
    assert!(
        revision.body["messages"]
            .to_string()
            .contains("cite the facts file")
    );
    assert_eq!(revision.body["tools"].as_array().unwrap().len(), 2);
    let s = status(&c, &id(&v)).await;
    let answers: Vec<u64> = s["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["answer"].as_u64().unwrap())
        .collect();
    assert_eq!(answers, [1, 1, 2, 2], "{s:#}");
    let kinds: Vec<&str> = s["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["turn", "primary", "audit", "turn", "primary", "audit"]
    );
}

#[tokio::test]
async fn a_key_the_model_writes_into_a_tool_call_never_reaches_the_kb() {
    let fx = Fx::new(&[("leaky", &actor("openai/leaky", "kb_write", ""))], "").await;
    fx.fake.queue_model(
        "leaky",
        [
            Behavior::call(
                "kb_write",
                json!({"path": "inbox/keys.md", "content": format!("the key: {OPENAI_KEY}")}),
            ),
            Behavior::reply("Saved."),
        ],
    );
    let c = fx.connect().await;
    let v = run(&c, "leaky", json!("save the key")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let written = std::fs::read_to_string(fx.p.kb().join("inbox/keys.md")).unwrap();
    assert!(!written.contains(OPENAI_KEY), "{written}");
    let s = status(&c, &id(&v)).await;
    assert!(!s.to_string().contains(OPENAI_KEY), "{s:#}");
}

#[tokio::test]
async fn a_parent_waiting_on_several_children_at_once_gets_its_one_slot_back() {
    // `fan` may run one task at a time: while it waits on its children it
    // gives its slot up, and takes it back once, when the last one is done.
    let fx = Fx::new(
        &[
            ("fan", &actor("openai/fan", "agent_run", "")),
            ("leaf", &agent("openai/leaf")),
        ],
        "[limits.agents]\nfan = 1\n",
    )
    .await;
    fx.fake.queue_model(
        "fan",
        [
            Behavior::calls(&[
                ("agent_run", json!({"agent": "leaf", "input": "1"})),
                ("agent_run", json!({"agent": "leaf", "input": "2"})),
                ("agent_run", json!({"agent": "leaf", "input": "3"})),
            ]),
            Behavior::reply("all back"),
        ],
    );
    fx.fake.on_model("leaf", Behavior::reply("leaf"));
    let c = fx.connect().await;
    let v = run(&c, "fan", json!("fan out")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "all back");
}
