//! The agent registry seen through MCP: broken files next to good ones, hot
//! reload, and keeping the last good version of a file that an edit broke.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::*;
use serde_json::{Value, json};

async fn agents(c: &Client) -> Value {
    c.ok("agent_list", json!({})).await
}

fn names(out: &Value) -> Vec<String> {
    out["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_broken_file_is_reported_and_the_others_load() {
    let p = Project::new();
    p.write_agent("good.agent.md", &agent_file("good", "openai/gpt-4o-mini"));
    p.write_agent(
        "bad-yaml.agent.md",
        "---\nname: bad\nmodel: [unclosed\n---\nbody\n",
    );
    p.write_agent("bad-model.agent.md", "---\nmodel: gpt-4o\n---\nbody\n");
    p.write_agent(
        "nested/also-good.agent.md",
        &agent_file("also-good", "anthropic/claude-sonnet-4"),
    );
    let c = connect(&p).await;
    let out = agents(&c).await;
    assert_eq!(names(&out), ["also-good", "good"]);
    let errors = out["load_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let yaml = errors
        .iter()
        .find(|e| e["file"].as_str().unwrap().ends_with("bad-yaml.agent.md"))
        .unwrap();
    assert_eq!(yaml["severity"], "error");
    assert!(
        yaml["line"].as_u64().unwrap() >= 3,
        "line points into the YAML: {yaml}"
    );
    let model = errors
        .iter()
        .find(|e| e["file"].as_str().unwrap().ends_with("bad-model.agent.md"))
        .unwrap();
    assert_eq!(model["line"], 2);
    assert!(
        model["message"].as_str().unwrap().contains("openai/gpt-4o"),
        "{model}"
    );
    c.close().await;
}

#[tokio::test]
async fn new_changed_and_deleted_files_are_picked_up() {
    let p = Project::new();
    p.write_agent("first.agent.md", &agent_file("first", "openai/gpt-4o-mini"));
    let c = connect(&p).await;
    assert_eq!(names(&agents(&c).await), ["first"]);

    p.write_agent("second.agent.md", &agent_file("second", "openai/gpt-4o"));
    eventually("second agent appears", DEADLINE, || async {
        (names(&agents(&c).await) == ["first", "second"]).then_some(())
    })
    .await;

    p.write_agent(
        "second.agent.md",
        &agent_file("second", "anthropic/claude-haiku-4-5"),
    );
    eventually("second agent's model changes", DEADLINE, || async {
        let out = agents(&c).await;
        let second = out["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "second")
            .cloned()?;
        (second["models"] == json!(["anthropic/claude-haiku-4-5"])).then_some(())
    })
    .await;

    std::fs::remove_file(p.root().join("agents/first.agent.md")).unwrap();
    eventually("first agent disappears", DEADLINE, || async {
        (names(&agents(&c).await) == ["second"]).then_some(())
    })
    .await;
    c.close().await;
}

#[tokio::test]
async fn an_edit_that_breaks_a_file_keeps_the_last_good_version() {
    let p = Project::new();
    p.write_agent(
        "reviewer.agent.md",
        &agent_file("reviewer", "openai/gpt-4o"),
    );
    let c = connect(&p).await;
    let before = agents(&c).await;
    let generation = before["generation"].as_u64().unwrap();

    p.write_agent(
        "reviewer.agent.md",
        "---\nname: reviewer\nmodel: openai/gpt-4o\ntemperature: 7\n---\nbody\n",
    );
    let out = eventually("reload after the broken edit", DEADLINE, || async {
        let out = agents(&c).await;
        (out["generation"].as_u64().unwrap() > generation).then_some(out)
    })
    .await;
    let reviewer = &out["agents"][0];
    assert_eq!(reviewer["name"], "reviewer");
    assert_eq!(reviewer["stale"], true);
    assert_eq!(reviewer["models"], json!(["openai/gpt-4o"]));
    let err = &out["load_errors"][0];
    assert_eq!(err["line"], 4);
    assert!(
        err["message"].as_str().unwrap().contains("temperature"),
        "{err}"
    );
    assert_eq!(reviewer["diagnostics"][0]["message"], err["message"]);

    // Fixing it clears the error and the stale mark.
    p.write_agent(
        "reviewer.agent.md",
        &agent_file("reviewer", "openai/gpt-4.1"),
    );
    eventually("fixed agent", DEADLINE, || async {
        let out = agents(&c).await;
        let r = &out["agents"][0];
        (r["stale"] == false
            && r["models"] == json!(["openai/gpt-4.1"])
            && out["load_errors"] == json!([]))
        .then_some(())
    })
    .await;
    c.close().await;
}

#[tokio::test]
async fn mirror_problems_are_reported() {
    let p = Project::new();
    p.write_agent(
        "a.agent.md",
        "---\nmodel: openai/gpt-4o\nmirror: b\n---\nA\n",
    );
    p.write_agent(
        "b.agent.md",
        "---\nmodel: openai/gpt-4o\nmirror: a\n---\nB\n",
    );
    p.write_agent(
        "c.agent.md",
        "---\nmodel: openai/gpt-4o\nmirror: nobody\n---\nC\n",
    );
    p.write_agent("d.agent.md", &agent_file("d", "openai/gpt-4o"));
    p.write_agent("dup.agent.md", &agent_file("d", "openai/gpt-4o"));
    let c = connect(&p).await;
    let out = agents(&c).await;
    // Two files claim `d` at a fresh start: neither wins.
    assert!(names(&out).is_empty(), "{out}");
    let messages: Vec<String> = out["load_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["file"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    let all = messages.join("\n");
    assert!(all.contains("mirror cycle: a -> b -> a"), "{all}");
    assert!(all.contains("mirror cycle: b -> a -> b"), "{all}");
    assert!(
        all.contains("mirror `nobody` is not a loaded agent"),
        "{all}"
    );
    for (file, other) in [
        ("dup.agent.md", "agents/d.agent.md"),
        ("agents/d.agent.md", "dup.agent.md"),
    ] {
        assert!(
            messages.iter().any(
                |m| m.starts_with(&format!("{file}: duplicate agent name `d`"))
                    || (m.contains(&format!("{file}: duplicate agent name `d`"))
                        && m.contains(other))
            ),
            "{all}"
        );
    }
    c.close().await;
}
