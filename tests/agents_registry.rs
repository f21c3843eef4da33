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
    let messages = load_error_lines(&out);
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

/// Each load error as `file: message`.
fn load_error_lines(out: &Value) -> Vec<String> {
    out["load_errors"]
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
        .collect()
}

fn load_errors(out: &Value) -> String {
    load_error_lines(out).join("\n")
}

fn models_of(out: &Value, name: &str) -> Value {
    out["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .map(|a| a["models"].clone())
        .unwrap_or(Value::Null)
}

fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(ok.success());
}

/// A new file claiming a loaded agent's name (sorting before it) does not
/// take the agent over: the holder keeps running on its own model, and the
/// newcomer's diagnostic names the holder.
#[tokio::test]
async fn an_intruder_with_a_loaded_name_never_takes_it_over() {
    let p = Project::new();
    p.write_agent("g1.agent.md", &agent_file("g1", "openai/gpt-4o-mini"));
    let c = connect(&p).await;
    assert_eq!(names(&agents(&c).await), ["g1"]);
    p.write_agent(
        "a-intruder.agent.md",
        &agent_file("g1", "anthropic/claude-opus-4-1"),
    );
    let out = eventually("the intruder is reported", DEADLINE, || async {
        let out = agents(&c).await;
        load_errors(&out)
            .contains("a-intruder.agent.md")
            .then_some(out)
    })
    .await;
    assert_eq!(names(&out), ["g1"]);
    assert_eq!(
        models_of(&out, "g1"),
        json!(["openai/gpt-4o-mini"]),
        "{out}"
    );
    let errors = load_errors(&out);
    assert!(errors.contains("duplicate agent name `g1`"), "{errors}");
    assert!(errors.contains("g1.agent.md"), "{errors}");
    c.close().await;
}

/// Devices, FIFOs and oversized files are diagnostics: reading them never
/// blocks or fills memory, at start, on reload, or in `dispatch agents check`.
#[tokio::test]
async fn special_and_huge_agent_files_are_reported_and_never_block() {
    let p = Project::new();
    p.write_agent("good.agent.md", &agent_file("good", "openai/gpt-4o-mini"));
    let agents_dir = p.root().join("agents");
    std::os::unix::fs::symlink("/dev/zero", agents_dir.join("zero.agent.md")).unwrap();
    mkfifo(&agents_dir.join("pipe.agent.md"));
    std::fs::write(
        agents_dir.join("huge.agent.md"),
        format!("---\nmodel: openai/gpt-4o\n---\n{}", "x".repeat(2 << 20)),
    )
    .unwrap();

    // A fresh server answers `initialize` (connect does it) and lists.
    let c = connect(&p).await;
    let out = agents(&c).await;
    assert_eq!(names(&out), ["good"]);
    let errors = load_errors(&out);
    for file in ["zero.agent.md", "pipe.agent.md"] {
        assert!(
            errors
                .lines()
                .any(|l| l.contains(file) && l.contains("not a regular file")),
            "{errors}"
        );
    }
    assert!(
        errors
            .lines()
            .any(|l| l.contains("huge.agent.md") && l.contains("at most")),
        "{errors}"
    );
    // While serving: a new FIFO does not stop the next file from loading.
    mkfifo(&agents_dir.join("later.agent.md"));
    p.write_agent("next.agent.md", &agent_file("next", "openai/gpt-4o-mini"));
    eventually("the next agent loads", DEADLINE, || async {
        (names(&agents(&c).await) == ["good", "next"]).then_some(())
    })
    .await;
    c.close().await;

    // The CLI check finishes and names them too.
    let mut check = tokio::process::Command::new(bin());
    check
        .args(["agents", "check", "--root"])
        .arg(p.root())
        .kill_on_drop(true);
    let done = tokio::time::timeout(DEADLINE, check.output())
        .await
        .expect("`dispatch agents check` finishes")
        .unwrap();
    let text =
        String::from_utf8_lossy(&done.stdout).to_string() + &String::from_utf8_lossy(&done.stderr);
    assert!(!done.status.success(), "{text}");
    for file in [
        "zero.agent.md",
        "pipe.agent.md",
        "later.agent.md",
        "huge.agent.md",
    ] {
        assert!(text.contains(file), "{file}: {text}");
    }
}
