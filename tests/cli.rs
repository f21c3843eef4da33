//! The command line: `agents`, `agents check`, `--version`, `--help`, and the
//! folder overrides.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::process::{Command, Output};

use common::*;

fn run(args: &[&str], project: &Project) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--root")
        .arg(project.root())
        .env_remove("DISPATCH_ROOT")
        .env_remove("DISPATCH_AGENTS")
        .env_remove("DISPATCH_KB")
        .output()
        .expect("run dispatch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn version_and_help() {
    let o = Command::new(bin()).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("dispatch {}", env!("CARGO_PKG_VERSION"))
    );
    let o = Command::new(bin()).arg("--help").output().unwrap();
    let help = stdout(&o);
    for word in ["serve", "agents", "--root", "--agents", "--kb"] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
    let o = Command::new(bin())
        .args(["agents", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&o).contains("check"));
}

#[test]
fn agents_prints_a_table() {
    let p = Project::with_shipped_agents();
    let o = run(&["agents"], &p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME")
            && header.contains("MODELS")
            && header.contains("MIRROR")
            && header.contains("DESCRIPTION")
    );
    let review = out
        .lines()
        .find(|l| l.starts_with("code-review "))
        .expect("code-review row");
    assert!(
        review.contains("openrouter/anthropic/claude-sonnet-4 > "),
        "{review}"
    );
    assert!(review.contains("code-review-auditor"), "{review}");
    assert_eq!(out.lines().count(), 9, "{out}");
}

#[test]
fn check_passes_on_the_shipped_agents() {
    let p = Project::with_shipped_agents();
    let o = run(&["agents", "check"], &p);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("8 agent(s) loaded from 8 file(s) in agents/, .claude/agents/, .github/agents/: 0 error(s)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_prints_file_line_col_and_exits_1() {
    let p = Project::new();
    p.write_agent("ok.agent.md", &agent_file("ok", "openai/gpt-4o"));
    p.write_agent(
        "broken.agent.md",
        "---\nname: broken\nmax_retries: 99\nmodel: openai/gpt-4o\n---\nbody\n",
    );
    p.write_agent(
        "warn.agent.md",
        "---\nmodel: openai/gpt-4o\nhandoffs: []\nfancy: 1\n---\nbody\n",
    );
    let o = run(&["agents", "check"], &p);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let broken = p.root().join("agents/broken.agent.md");
    let expected = format!(
        "{}:3:1: error: `max_retries` is 99: use a whole number from 0 to 10",
        broken.display()
    );
    assert!(out.contains(&expected), "{out}");
    let warn = p.root().join("agents/warn.agent.md");
    assert!(
        out.contains(&format!(
            "{}:3:1: warning: `handoffs` (VS Code)",
            warn.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}:4:1: warning: unknown key `fancy`",
            warn.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("2 agent(s) loaded from 3 file(s) in agents/, .claude/agents/, .github/agents/: 1 error(s), 2 warning(s)"),
        "{out}"
    );
    // Warnings alone do not fail the check.
    std::fs::remove_file(&broken).unwrap();
    assert!(run(&["agents", "check"], &p).status.success());
}

#[test]
fn folder_overrides() {
    let p = Project::new();
    p.write("elsewhere/x.agent.md", agent_file("x", "ollama/llama3.1"));
    let o = Command::new(bin())
        .args(["agents", "--root"])
        .arg(p.root())
        .arg("--agents")
        .arg(p.root().join("elsewhere"))
        .output()
        .unwrap();
    assert!(
        stdout(&o).lines().any(|l| l.starts_with("x ")),
        "{}",
        stdout(&o)
    );
    // A missing agents folder is an error that names the fix.
    let o = Command::new(bin())
        .args(["agents", "check", "--agents"])
        .arg(p.root().join("nope"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("--agents"), "{}", stdout(&o));
}

#[test]
fn bad_config_is_reported_with_its_position() {
    let p = Project::new();
    p.write(
        "dispatch.toml",
        "[providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\nkey = 1\n",
    );
    let o = run(&["agents"], &p);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dispatch.toml:3:1: error:") && err.contains("key"),
        "{err}"
    );
}

#[test]
fn configured_providers_are_accepted_in_models() {
    let p = Project::new();
    p.write(
        "dispatch.toml",
        "[providers.local]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
    );
    p.write_agent("l.agent.md", &agent_file("l", "local/qwen2.5-coder"));
    p.write_agent("u.agent.md", &agent_file("u", "nowhere/model"));
    let o = run(&["agents", "check"], &p);
    let out = stdout(&o);
    assert!(out.contains("unknown provider `nowhere`"), "{out}");
    assert!(!out.contains("l.agent.md"), "{out}");
}

#[test]
fn check_warns_about_auditors_without_the_verdict_format() {
    let p = Project::new();
    p.write_agent(
        "writer.agent.md",
        "---\nmodel: openai/gpt-4o\nmirror: lazy-judge\nmax_retries: 2\n---\nWrite.\n",
    );
    p.write_agent(
        "lazy-judge.agent.md",
        "---\nmodel: openai/gpt-4o\n---\nJudge the answer.\n",
    );
    let o = run(&["agents", "check"], &p);
    assert!(o.status.success(), "a warning is not an error");
    let out = stdout(&o);
    assert!(
        out.contains("warning: `lazy-judge` audits other agents but its prompt does not state the verdict format"),
        "{out}"
    );
}

#[test]
fn a_store_that_cannot_open_is_reported_once_with_advice() {
    let p = Project::with_shipped_agents();
    // A folder where the database file should be.
    let folder = p.root().join("not-a-file.db");
    std::fs::create_dir_all(&folder).unwrap();
    let o = Command::new(bin())
        .args(["tasks", "--root"])
        .arg(p.root())
        .env("DISPATCH_DATABASE_URL", &folder)
        .env_remove("DISPATCH_ROOT")
        .output()
        .expect("run dispatch");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("task store: cannot open database at"), "{err}");
    assert!(err.contains("give the path of a file inside it"), "{err}");
    assert_eq!(
        err.matches("cannot open database").count(),
        1,
        "said more than once:\n{err}"
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let p = Project::with_shipped_agents();
    // The reader is gone before dispatch writes a byte: every write fails
    // with EPIPE, as with `dispatch tasks | head -1` after head exits.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    for args in [&["tasks"][..], &["agents"][..], &["agents", "check"][..]] {
        let o = Command::new(bin())
            .args(args)
            .arg("--root")
            .arg(p.root())
            .env_remove("DISPATCH_ROOT")
            .stdout(writer.try_clone().expect("clone"))
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run dispatch");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(o.status.success(), "{args:?}: {:?} {err}", o.status);
    }
}

#[tokio::test]
async fn a_stored_run_that_no_longer_validates_is_explained_in_words() {
    let p = Project::with_shipped_agents();
    let db = p.root().join(".dispatch").join("dispatch.db");
    let store = dispatch::store::SqliteStore::open(&db.display().to_string())
        .await
        .expect("store");
    use dispatch::store::Store;
    let cycle = serde_json::json!({"steps": [
        {"id": "a", "agent": "docs-sync", "depends_on": ["b"]},
        {"id": "b", "agent": "docs-sync", "depends_on": ["a"]}]});
    let stored = dispatch::task::Run {
        id: "run-01cycle".into(),
        name: None,
        agent: None,
        state: dispatch::task::RunState::Failed,
        input: serde_json::json!(""),
        definition: cycle,
        subject: None,
        owner: None,
        created_at: 1,
        finished_at: Some(2),
        error: None,
    };
    store.put_run(&stored).await.expect("put run");
    store.close().await.expect("close");
    let o = run(&["workflow", "show", "run-01cycle", "--mermaid"], &p);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the stored definition of run-01cycle no longer validates:\n- "),
        "{err}"
    );
    assert!(err.contains("cycle"), "{err}");
    assert!(!err.contains("Cycle {"), "debug formatting leaked: {err}");
    let o = run(&["workflow", "show", "run-nope"], &p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no workflow run `run-nope`"), "{err}");
}

#[test]
fn check_finds_invalid_workflows_with_their_position() {
    let p = Project::new();
    p.write_agent("ok.agent.md", &agent_file("ok", "openai/gpt-4o"));
    p.write_agent(
        "wf.agent.md",
        "---\nname: wf\ndescription: a broken workflow\ndag:\n  steps:\n    - {id: a, agent: nobody}\n    - {id: b, agent: ok, depends_on: [c]}\n    - {id: c, agent: ok, depends_on: [b]}\n    - {id: e, agent: ok}\n    - {id: e, agent: ok}\n    - {id: d, agent: ok, input: \"{{zzz.output}}\"}\n---\n",
    );
    let o = run(&["agents", "check"], &p);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let wf = p.root().join("agents/wf.agent.md");
    let at = format!("{}:4:1: error: invalid workflow in `dag`: ", wf.display());
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&at)).collect();
    let all = lines.join("\n");
    for needle in ["unknown agent `nobody`", "cycle", "duplicate", "zzz"] {
        assert!(all.contains(needle), "{needle} missing:\n{out}");
    }
    assert!(out.contains("1 agent(s) loaded from 2 file(s)"), "{out}");
}

#[test]
fn check_warns_of_an_mcp_server_no_config_declares() {
    let p = Project::new();
    p.write_agent(
        "gh.agent.md",
        "---\nmodel: openai/gpt-4o\ntools: [github/*, docs/search, kb_read]\n---\nbody\n",
    );
    p.write(
        "dispatch.toml",
        "[mcp_servers.docs]\nurl = \"https://mcp.example.com/mcp\"\n",
    );
    let o = run(&["agents", "check"], &p);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("gh.agent.md:3:1: warning: `github/...` names no [mcp_servers.github]"),
        "{out}"
    );
    assert!(!out.contains("[mcp_servers.docs]"), "{out}");
}
