//! What a new user meets in the first hour, against the real binary: the
//! project is found from a subfolder, a `--root` that does not exist is an
//! error, Claude Code and VS Code agent files load from their own folders,
//! `tools/list` is small and uses only standard JSON Schema, and missing
//! provider keys are said up front.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

fn dispatch(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(cwd);
    for k in [
        "DISPATCH_ROOT",
        "DISPATCH_AGENTS",
        "DISPATCH_KB",
        "OPENAI_API_KEY",
        "OPENROUTER_API_KEY",
        "ANTHROPIC_API_KEY",
        "DISPATCH_DATABASE_URL",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run dispatch")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn serve_started_in_a_subfolder_finds_the_project_and_writes_nothing_there() {
    let p = Project::with_shipped_agents();
    let deep = p.root().join("src").join("deep");
    std::fs::create_dir_all(&deep).unwrap();
    let c = connect_in(&deep, Spawn::default()).await;
    let list = c.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"].as_array().unwrap().len(), 8, "{list:#}");
    let root = std::fs::canonicalize(p.root()).unwrap();
    assert_eq!(list["project"]["root"], root.display().to_string());
    assert_eq!(
        list["project"]["found_by"],
        "the nearest folder with agents/"
    );
    assert_eq!(
        list["project"]["agent_folders"],
        json!(["agents/", ".claude/agents/", ".github/agents/"])
    );
    let review = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "code-review")
        .unwrap();
    assert_eq!(review["file"], "agents/code-review.agent.md");
    eventually("the log names the root", DEADLINE, || async {
        c.stderr()
            .contains("project root: the nearest folder with agents/")
            .then_some(())
    })
    .await;
    c.close().await;
    assert!(p.root().join("_kb").is_dir());
    assert!(p.root().join(".dispatch").is_dir());
    for stray in ["_kb", ".dispatch"] {
        assert!(
            !deep.join(stray).exists(),
            "{stray} created in the subfolder"
        );
        assert!(!p.root().join("src").join(stray).exists());
    }
}

#[tokio::test]
async fn an_empty_project_says_where_it_looked() {
    let p = Project::new();
    let c = connect(&p).await;
    let e = c
        .err("agent_run", json!({"agent": "code-review", "input": "x"}))
        .await;
    assert!(
        e.contains(
            "unknown agent `code-review`: no agents are loaded (looked in agents/, .claude/agents/, .github/agents/)"
        ),
        "{e}"
    );
    c.close().await;
}

#[test]
fn a_root_that_does_not_exist_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-project");
    for args in [
        vec!["serve", "--root"],
        vec!["agents", "--root"],
        vec!["tasks", "--root"],
    ] {
        let mut args = args.clone();
        let m = missing.to_string_lossy().into_owned();
        args.push(&m);
        let o = dispatch(&args, dir.path(), &[]);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", err(&o));
        assert!(
            err(&o).contains(&format!("--root {m}: no such folder")),
            "{}",
            err(&o)
        );
        assert!(!missing.exists(), "{args:?} created the root");
    }
}

const CLAUDE_SUBAGENT: &str = "---
name: reviewer
description: Reviews code changes. Use proactively after edits.
tools: Read, Grep, Glob
model: sonnet
color: blue
---
You are a meticulous reviewer.
";

const VSCODE_AGENT: &str = "---
description: Plans a feature before any code is written
tools: ['search', 'fetch']
model: Claude Sonnet 4 (copilot)
handoffs:
  - label: Implement
    agent: agent
---
You plan features.
";

#[tokio::test]
async fn claude_code_and_vscode_agents_load_from_their_own_folders() {
    let p = Project::new();
    p.write(".claude/agents/reviewer.md", CLAUDE_SUBAGENT);
    p.write(".claude/agents/NOTES.md", "# just notes\n");
    p.write(".github/agents/planner.agent.md", VSCODE_AGENT);
    let c = connect(&p).await;
    let list = c.ok("agent_list", json!({})).await;
    let agents = list["agents"].as_array().unwrap();
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["planner", "reviewer"], "{list:#}");
    let reviewer = &agents[1];
    assert_eq!(reviewer["file"], ".claude/agents/reviewer.md");
    assert_eq!(reviewer["format"], "claude_code");
    assert_eq!(reviewer["models"], json!(["anthropic/claude-sonnet-4-5"]));
    let planner = &agents[0];
    assert_eq!(planner["file"], ".github/agents/planner.agent.md");
    assert_eq!(planner["format"], "vs_code");
    // A markdown file that is not an agent is named, not silently skipped.
    assert!(list["warnings"].as_u64().unwrap() >= 1, "{list:#}");
    // Hot reload in the Claude Code folder; a newcomer cannot take a name.
    p.write(
        ".claude/agents/second.md",
        "---\nname: second\nmodel: haiku\n---\nSecond.\n",
    );
    p.write(
        ".github/agents/impostor.agent.md",
        "---\nname: reviewer\nmodel: openai/gpt-4o\n---\nI am not the reviewer.\n",
    );
    let list = eventually("the new files are read", DEADLINE, || async {
        let l = c.ok("agent_list", json!({})).await;
        let n = l["agents"].as_array().unwrap().len();
        let errors = l["load_errors"].as_array().unwrap().len();
        (n == 3 && errors == 1).then_some(l)
    })
    .await;
    let reviewer = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "reviewer")
        .unwrap();
    assert_eq!(reviewer["file"], ".claude/agents/reviewer.md", "{list:#}");
    assert_eq!(reviewer["models"], json!(["anthropic/claude-sonnet-4-5"]));
    let refusal = &list["load_errors"][0];
    assert_eq!(refusal["file"], ".github/agents/impostor.agent.md");
    assert!(
        refusal["message"].as_str().unwrap().contains(
            "duplicate agent name `reviewer`: .claude/agents/reviewer.md already defines it"
        ),
        "{refusal}"
    );
    c.close().await;
}

#[test]
fn the_cli_loads_a_given_claude_folder_and_names_what_it_skips() {
    let p = Project::new();
    p.write(".claude/agents/reviewer.md", CLAUDE_SUBAGENT);
    p.write(".claude/agents/README.md", "Our agents.\n");
    let o = dispatch(
        &["agents", "check", "--agents", ".claude/agents"],
        p.root(),
        &[],
    );
    let text = out(&o);
    assert!(o.status.success(), "{text}{}", err(&o));
    assert!(
        text.contains(
            ".claude/agents/README.md:1:1: warning: not an agent file (no front matter), skipped"
        ),
        "{text}"
    );
    assert!(text.contains("1 agent(s) loaded from 1 file(s)"), "{text}");
    // The other sources can be turned off.
    p.write("dispatch.toml", "[agents]\nclaude_code = false\n");
    let o = dispatch(&["agents", "check"], p.root(), &[]);
    assert!(out(&o).contains("0 agent(s) loaded"), "{}", out(&o));
}

#[tokio::test]
async fn tools_list_is_small_and_uses_only_standard_formats() {
    let p = Project::with_shipped_agents();
    let c = connect(&p).await;
    let tools = c.service.list_all_tools().await.expect("tools/list");
    let whole = serde_json::to_string(&json!({ "tools": tools })).unwrap();
    assert!(
        whole.len() <= 24 * 1024,
        "tools/list is {} bytes",
        whole.len()
    );
    let standard = [
        "date-time",
        "date",
        "time",
        "duration",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "uri",
        "uri-reference",
        "uuid",
        "regex",
    ];
    for t in &tools {
        let out = serde_json::to_string(t.output_schema.as_ref().expect("output schema")).unwrap();
        assert!(
            out.len() <= 2048,
            "{}: output schema {} bytes",
            t.name,
            out.len()
        );
        let all = serde_json::to_value(t).unwrap();
        let mut formats = Vec::new();
        collect_formats(&all, &mut formats);
        for f in formats {
            assert!(standard.contains(&f.as_str()), "{}: format {f}", t.name);
        }
    }
    c.close().await;
}

fn collect_formats(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(f)) = m.get("format") {
                out.push(f.clone());
            }
            m.values().for_each(|x| collect_formats(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_formats(x, out)),
        _ => {}
    }
}

#[test]
fn missing_keys_are_said_before_anything_runs() {
    let p = Project::with_shipped_agents();
    let o = dispatch(&["agents"], p.root(), &[]);
    let table = out(&o);
    assert!(o.status.success(), "{}", err(&o));
    let docs = table.lines().find(|l| l.starts_with("docs-sync ")).unwrap();
    assert!(
        docs.contains("missing OPENAI_API_KEY, OPENROUTER_API_KEY"),
        "{table}"
    );
    // One of the chain's keys is enough to run (the other model is skipped).
    let o = dispatch(&["agents"], p.root(), &[("OPENAI_API_KEY", "sk-x")]);
    let table = out(&o);
    let docs = table.lines().find(|l| l.starts_with("docs-sync ")).unwrap();
    assert!(
        docs.contains("partial: OPENROUTER_API_KEY unset"),
        "{table}"
    );

    let o = dispatch(&["run", "docs-sync", "--dry-run", "hello"], p.root(), &[]);
    let text = out(&o);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        text.contains(
            "keys:    missing_key: no model of `docs-sync` has a key: set OPENROUTER_API_KEY (for openrouter/openai/gpt-4o-mini) or OPENAI_API_KEY (for openai/gpt-4o-mini)"
        ),
        "{text}"
    );
    assert!(text.contains("up to 4096 out"), "{text}");
}

#[test]
fn dry_run_says_what_max_tokens_the_request_sends() {
    let p = Project::new();
    p.write_agent(
        "claude.agent.md",
        &agent_file("claude", "anthropic/claude-haiku-4-5"),
    );
    p.write_agent("gpt.agent.md", &agent_file("gpt", "openai/gpt-4o-mini"));
    let keys = [("ANTHROPIC_API_KEY", "k"), ("OPENAI_API_KEY", "k")];
    let o = dispatch(&["run", "claude", "--dry-run", "hi"], p.root(), &keys);
    assert!(
        out(&o).contains("up to 4096 out (max_tokens sent"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("keys:    ok"), "{}", out(&o));
    let o = dispatch(&["run", "gpt", "--dry-run", "hi"], p.root(), &keys);
    assert!(out(&o).contains("no max_tokens is sent"), "{}", out(&o));
}
