//! `dispatch run`, `tasks`, `task` and `report` through the same engine, against
//! the fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::process::{Output, Stdio};

use common::fake_provider::{Behavior, FakeProvider};
use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const KEY: &str = "sk-cli-test-SECRET-3141";

async fn setup() -> (Project, FakeProvider) {
    let p = Project::new();
    p.write_agent(
        "writer.agent.md",
        "---\ndescription: writes\nmodel: [openai/gpt-4o-mini, anthropic/claude-haiku-4-5]\nmax_tokens: 800\n---\nYou write short texts.\n",
    );
    p.write(
        "dispatch.toml",
        "[resilience]\nbase_delay_ms = 1\nmax_attempts = 1\n[report]\nbaseline = \"openai/gpt-4o\"\n",
    );
    let fake = FakeProvider::start().await;
    fake.set_default(Behavior::reply_with_usage("The answer.", 1000, 200, None));
    (p, fake)
}

fn cmd(p: &Project, fake: &FakeProvider, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .arg("--root")
        .arg(p.root())
        .env("OPENAI_BASE_URL", fake.base_url_openai())
        .env("OPENAI_API_KEY", KEY)
        .env("ANTHROPIC_BASE_URL", fake.base_url_anthropic())
        .env("ANTHROPIC_API_KEY", KEY)
        .env("DISPATCH_LOG", "info")
        .env_remove("DISPATCH_DATABASE_URL")
        .stdin(Stdio::null());
    c
}

async fn out(mut c: Command) -> Output {
    c.output().await.expect("run dispatch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn run_prints_the_output_and_a_summary() {
    let (p, fake) = setup().await;
    let o = out(cmd(&p, &fake, &["run", "writer", "write a haiku"])).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "The answer.\n");
    let err = text(&o.stderr);
    assert!(
        err.contains("writer · succeeded") && err.contains("openai/gpt-4o-mini"),
        "{err}"
    );
    // Not a terminal: progress comes as plain lines.
    assert!(err.contains("writer: running"), "{err}");
    assert!(!err.contains(KEY));
    let req = fake.last_request().unwrap();
    assert_eq!(req.body["messages"][1]["content"], "write a haiku");
    // The outbox file was written like the server writes it.
    let outbox: Vec<_> = std::fs::read_dir(p.kb().join("outbox"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(outbox.len(), 1);
}

#[tokio::test]
async fn run_reads_files_stdin_and_json_objects() {
    let (p, fake) = setup().await;
    p.write("input.md", "from a file");
    let o = out(cmd(
        &p,
        &fake,
        &[
            "run",
            "writer",
            &format!("@{}", p.root().join("input.md").display()),
        ],
    ))
    .await;
    assert!(o.status.success());
    assert_eq!(
        fake.last_request().unwrap().body["messages"][1]["content"],
        "from a file"
    );

    let mut c = cmd(&p, &fake, &["run", "writer", "-"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"diff\": \"+ a\"}")
        .await
        .unwrap();
    let o = child.wait_with_output().await.unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        fake.last_request().unwrap().body["messages"][1]["content"],
        "## diff\n\n+ a"
    );

    let o = out(cmd(&p, &fake, &["run", "writer", "@/no/such/file"])).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("cannot read input file"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn run_json_and_failure_exit_codes() {
    let (p, fake) = setup().await;
    let o = out(cmd(&p, &fake, &["run", "writer", "x", "--json"])).await;
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["task"]["state"], "succeeded");
    assert_eq!(v["task"]["output"], "The answer.");
    assert_eq!(v["calls"][0]["kind"], "primary");

    fake.set_default(Behavior::status(401));
    let o = out(cmd(&p, &fake, &["run", "writer", "x"])).await;
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("failed") && err.contains("OPENAI_API_KEY"),
        "{err}"
    );
    assert!(!err.contains(KEY), "{err}");

    let o = out(cmd(&p, &fake, &["run", "nobody", "x"])).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("unknown agent `nobody`"));
}

#[tokio::test]
async fn dry_run_calls_nothing() {
    let (p, fake) = setup().await;
    let o = out(cmd(
        &p,
        &fake,
        &["run", "writer", "a short request", "--dry-run"],
    ))
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(
        s.contains("openai/gpt-4o-mini > anthropic/claude-haiku-4-5"),
        "{s}"
    );
    assert!(
        s.contains("You write short texts.") && s.contains("a short request"),
        "{s}"
    );
    assert!(
        s.contains("up to 800 out") && s.contains("cost:    ~$"),
        "{s}"
    );
    assert_eq!(fake.request_count(), 0);
    let o = out(cmd(
        &p,
        &fake,
        &["run", "writer", "x", "--dry-run", "--json"],
    ))
    .await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["price_known"], true);
    assert!(v["estimated_cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn tasks_task_and_report() {
    let (p, fake) = setup().await;
    for _ in 0..2 {
        assert!(
            out(cmd(&p, &fake, &["run", "writer", "x"]))
                .await
                .status
                .success()
        );
    }
    let o = out(cmd(&p, &fake, &["tasks"])).await;
    let s = text(&o.stdout);
    assert!(s.starts_with("ID"), "{s}");
    assert_eq!(s.lines().filter(|l| l.contains("writer")).count(), 2, "{s}");

    let o = out(cmd(&p, &fake, &["tasks", "--json", "--state", "succeeded"])).await;
    let tasks: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = tasks[0]["id"].as_str().unwrap().to_string();
    let o = out(cmd(&p, &fake, &["tasks", "--state", "done"])).await;
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("unknown task state `done`"));

    let o = out(cmd(&p, &fake, &["task", &id])).await;
    let s = text(&o.stdout);
    assert!(
        s.contains("#1 primary openai/gpt-4o-mini ok") && s.contains("output:\nThe answer."),
        "{s}"
    );

    let o = out(cmd(&p, &fake, &["report", "--since", "1h"])).await;
    let s = text(&o.stdout);
    assert!(s.contains("total: 2 calls"), "{s}");
    assert!(s.contains("on openai/gpt-4o alone"), "{s}");
    let o = out(cmd(&p, &fake, &["report", "--json"])).await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total_calls"], 2);
}
