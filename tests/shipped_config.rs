//! The shipped configuration must stay true to the code: the agents load
//! cleanly, and the OpenCode and VS Code files name agents, tools and CLI
//! arguments that exist.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::BTreeSet;

use clap::Parser;
use common::*;
use dispatch::cli::{Cli, Command};
use serde_json::Value;

fn read_json(rel: &str) -> Value {
    let text =
        std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn shipped_agent_names() -> BTreeSet<String> {
    let config = dispatch::config::Config::load(&repo_root().join("dispatch.toml")).unwrap();
    let snap =
        dispatch::registry::load_dir(&repo_root().join("agents"), &config.read_context(), None);
    assert_eq!(snap.errors().count(), 0, "{:#?}", snap.diagnostics);
    snap.agents.keys().cloned().collect()
}

/// A shipped client config starts the installed binary (`dispatch`, put on
/// PATH by `cargo install --locked --path .`), never a build: a first start
/// that compiles for minutes makes clients give up. Its arguments must parse
/// as our CLI and mean `serve`.
fn assert_serve_command(argv: &[String]) {
    assert_eq!(
        argv[0], "dispatch",
        "{argv:?} does not start the installed binary"
    );
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
    assert!(
        matches!(cli.command, Command::Serve(_)),
        "{argv:?} is not `serve`"
    );
}

#[test]
fn shipped_agents_load_without_errors_or_warnings() {
    let snap = dispatch::registry::load_dir(
        &repo_root().join("agents"),
        &dispatch::agent::reader::ReadContext::default(),
        None,
    );
    assert!(snap.diagnostics.is_empty(), "{:#?}", snap.diagnostics);
    let names: Vec<&str> = snap.agents.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "code-review",
            "code-review-auditor",
            "docs-sync",
            "incident-response",
            "meeting-prep",
            "onboarding",
            "orchestrator",
            "review-and-document"
        ]
    );
    let review = snap.get("code-review").unwrap();
    assert_eq!(review.mirror.as_deref(), Some("code-review-auditor"));
    assert!(review.escalate.is_some());
    let auditor = snap.get("code-review-auditor").unwrap();
    for word in ["verdict", "pass", "needs-revision", "fail", "feedback"] {
        assert!(
            auditor.system_prompt.contains(word),
            "auditor prompt lacks {word}"
        );
    }
    for a in snap.agents.values() {
        assert!(
            a.agent.system_prompt.lines().count() >= 15,
            "{} has a thin prompt",
            a.agent.name
        );
        assert!(!a.agent.description.is_empty());
    }
    assert!(snap.get("review-and-document").unwrap().is_workflow());
}

#[test]
fn opencode_json_makes_orchestrator_the_default_and_runs_serve() {
    let v = read_json("opencode.json");
    assert_eq!(v["default_agent"], "orchestrator");
    let orch = &v["agent"]["orchestrator"];
    assert_eq!(orch["mode"], "primary");
    let model = orch["model"].as_str().expect("orchestrator model");
    assert!(
        model.contains("mini") || model.contains("haiku") || model.contains("flash"),
        "not a cheap model: {model}"
    );
    let prompt = orch["prompt"].as_str().unwrap();
    let file = prompt
        .strip_prefix("{file:./")
        .and_then(|s| s.strip_suffix('}'))
        .expect("prompt from a file");
    assert!(repo_root().join(file).is_file(), "{file} missing");
    assert!(shipped_agent_names().contains("orchestrator"));

    let server = &v["mcp"]["dispatch"];
    assert_eq!(server["type"], "local");
    let argv: Vec<String> = server["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_serve_command(&argv);
}

#[test]
fn vscode_mcp_json_runs_serve_in_the_workspace() {
    let v = read_json(".vscode/mcp.json");
    let server = &v["servers"]["dispatch"];
    assert_eq!(server["type"], "stdio");
    let mut argv = vec![server["command"].as_str().unwrap().to_string()];
    argv.extend(
        server["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    assert!(
        argv.iter().any(|a| a.contains("${workspaceFolder}")),
        "{argv:?}"
    );
    assert_serve_command(&argv);
    // Every ${input:x} refers to a declared input.
    let inputs: BTreeSet<&str> = v["inputs"].as_array().map_or_else(BTreeSet::new, |a| {
        a.iter().map(|i| i["id"].as_str().unwrap()).collect()
    });
    let text = std::fs::read_to_string(repo_root().join(".vscode/mcp.json")).unwrap();
    for cap in regex::Regex::new(r"\$\{input:([^}]+)\}")
        .unwrap()
        .captures_iter(&text)
    {
        assert!(inputs.contains(&cap[1]), "undeclared input {}", &cap[1]);
    }
}

/// The portable `.mcp.json` (Claude Code, Copilot agent sessions) needs no
/// interactive input: keys come from the environment.
#[test]
fn portable_mcp_json_runs_serve_without_inputs() {
    let v = read_json(".mcp.json");
    let server = &v["mcpServers"]["dispatch"];
    let mut argv = vec![server["command"].as_str().unwrap().to_string()];
    argv.extend(
        server["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    assert_serve_command(&argv);
    let text = std::fs::read_to_string(repo_root().join(".mcp.json")).unwrap();
    assert!(!text.contains("${input:"), "{text}");
}

/// The README's Claude Code line starts the installed binary too.
#[test]
fn readme_wires_clients_to_the_installed_binary() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("claude mcp add"))
        .expect("a `claude mcp add` line");
    let argv: Vec<String> = line
        .split_once(" -- ")
        .expect("`--` before the command")
        .1
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_serve_command(&argv);
    assert!(
        readme.contains("cargo install --locked --path ."),
        "install step"
    );
    // The first two commands of the README are the ones that must work on a
    // fresh machine.
    let first_block: Vec<&str> = readme
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .lines()
        .take(2)
        .collect();
    assert!(
        first_block[0].starts_with("cargo run --release -- serve"),
        "{first_block:?}"
    );
    assert!(first_block[1].starts_with("cargo test"), "{first_block:?}");
}

#[tokio::test]
async fn orchestrator_prompt_names_real_tools_and_agents() {
    let prompt =
        std::fs::read_to_string(repo_root().join(".opencode/prompts/orchestrator.txt")).unwrap();
    let p = Project::with_shipped_agents();
    let c = connect(&p).await;
    let tools: BTreeSet<String> = c
        .service
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    c.close().await;

    let mentioned: BTreeSet<String> = regex::Regex::new(r"\bdispatch_([a-z_]+)")
        .unwrap()
        .captures_iter(&prompt)
        .map(|c| c[1].to_string())
        .collect();
    assert!(
        mentioned.contains("agent_run") && mentioned.contains("agent_delegate"),
        "{mentioned:?}"
    );
    for t in &mentioned {
        assert!(
            tools.contains(t),
            "orchestrator.txt names dispatch_{t}, which the server does not offer ({tools:?})"
        );
    }
    // Every agent in the team list exists.
    let agents = shipped_agent_names();
    let listed: BTreeSet<String> = regex::Regex::new(r"(?m)^- `([a-z0-9-]+)`")
        .unwrap()
        .captures_iter(&prompt)
        .map(|c| c[1].to_string())
        .collect();
    assert!(listed.len() >= 7, "{listed:?}");
    for a in &listed {
        assert!(
            agents.contains(a),
            "orchestrator.txt lists `{a}`, which is not a shipped agent"
        );
    }
}

#[test]
fn the_shipped_workflow_validates() {
    let snap = dispatch::registry::load_dir(
        &repo_root().join("agents"),
        &dispatch::agent::reader::ReadContext::default(),
        None,
    );
    let wf = snap.get("review-and-document").unwrap();
    let def = dispatch::workflow::WorkflowDef::from_json(wf.dag.as_ref().unwrap()).unwrap();
    let plan = dispatch::workflow::validate(&def, &|a| snap.get(a).is_some())
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(plan.ids(), ["review", "docs", "notify"]);
}
