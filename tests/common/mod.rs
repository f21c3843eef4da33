//! Shared helpers for the integration tests: a throwaway project folder, the
//! real `dispatch` binary spawned over stdio, and an rmcp client speaking to it.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dispatch")
}

/// The repository root (for the shipped agents and configs).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary project: `agents/` plus whatever the test writes.
pub struct Project {
    pub dir: TempDir,
}

impl Project {
    /// An empty project with an `agents/` folder.
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("agents")).expect("agents dir");
        Project { dir }
    }

    /// A project with a copy of the shipped agents.
    pub fn with_shipped_agents() -> Project {
        let p = Project::new();
        for entry in std::fs::read_dir(repo_root().join("agents")).expect("shipped agents") {
            let entry = entry.expect("entry");
            std::fs::copy(
                entry.path(),
                p.root().join("agents").join(entry.file_name()),
            )
            .expect("copy");
        }
        p
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn kb(&self) -> PathBuf {
        self.root().join("_kb")
    }

    /// Write `agents/<file>` (atomically, so the watcher never sees half a file).
    pub fn write_agent(&self, file: &str, content: &str) {
        let path = self.root().join("agents").join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, content).expect("write agent");
        std::fs::rename(&tmp, &path).expect("rename agent");
    }

    /// Write a file at a path relative to the project root.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.root().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }
}

/// A minimal valid agent file.
pub fn agent_file(name: &str, model: &str) -> String {
    format!(
        "---\nname: {name}\ndescription: test agent {name}\nmodel: {model}\n---\nYou are {name}.\n"
    )
}

/// Something the server told the client on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    ResourceListChanged,
    Progress(String),
}

/// The test's MCP client handler: forwards notifications to a channel.
#[derive(Clone)]
pub struct TestClient {
    notes: mpsc::UnboundedSender<Note>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("dispatch-tests", "0"),
        )
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.notes.send(Note::ResourceListChanged);
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self
            .notes
            .send(Note::Progress(params.message.unwrap_or_default()));
    }
}

/// A connected client plus the server's captured stderr.
pub struct Client {
    pub service: RunningService<RoleClient, TestClient>,
    pub notes: mpsc::UnboundedReceiver<Note>,
    pub stderr: Arc<Mutex<String>>,
    pub child: tokio::process::Child,
}

/// Options for spawning the server.
#[derive(Default, Clone)]
pub struct Spawn {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Spawn {
    /// Debug logs, none of the developer's keys or store, then our args and env.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.args(&self.args);
        cmd.env("DISPATCH_LOG", "debug");
        for key in [
            "OPENAI_API_KEY",
            "OPENROUTER_API_KEY",
            "ANTHROPIC_API_KEY",
            "DISPATCH_DATABASE_URL",
        ] {
            cmd.env_remove(key);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }
}

/// Spawn `dispatch serve --root <project>` and connect to it.
pub async fn connect(project: &Project) -> Client {
    connect_with(project, Spawn::default()).await
}

/// Like [`connect`] with extra environment and arguments.
pub async fn connect_with(project: &Project, spawn: Spawn) -> Client {
    let mut cmd = Command::new(bin());
    cmd.arg("serve").arg("--root").arg(project.root());
    spawn.apply(&mut cmd);
    connect_cmd(cmd).await
}

/// `dispatch serve` started in the folder `cwd` without `--root`: the
/// server finds its project from there.
pub async fn connect_in(cwd: &Path, spawn: Spawn) -> Client {
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .current_dir(cwd)
        .env_remove("DISPATCH_ROOT");
    spawn.apply(&mut cmd);
    connect_cmd(cmd).await
}

/// Spawn `cmd` (a `dispatch serve` command line) and connect to it.
pub async fn connect_cmd(mut cmd: Command) -> Client {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn dispatch");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let captured = Arc::new(Mutex::new(String::new()));
    if let Some(mut stderr) = child.stderr.take() {
        let sink = captured.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let service = TestClient { notes: tx }
        .serve((stdout, stdin))
        .await
        .expect("MCP handshake");
    Client {
        service,
        notes: rx,
        stderr: captured,
        child,
    }
}

impl Client {
    /// Call a tool with JSON arguments.
    pub async fn call(&self, name: &str, args: Value) -> CallToolResult {
        let mut params = CallToolRequestParams::new(name.to_string());
        params.arguments = match args {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => panic!("arguments must be an object, got {other}"),
        };
        self.service.call_tool(params).await.expect("tools/call")
    }

    /// Call a tool that must succeed; returns its structured content.
    pub async fn ok(&self, name: &str, args: Value) -> Value {
        let r = self.call(name, args).await;
        assert_ne!(r.is_error, Some(true), "{name} failed: {}", text_of(&r));
        let structured = r.structured_content.clone().expect("structured content");
        // The text block carries the same JSON for clients that ignore structured
        // content, except for results that read better as text (agent outputs).
        let text = text_of(&r);
        if name != "agent_run" && name != "task_result" {
            let text: Value = serde_json::from_str(&text).expect("text is JSON");
            assert_eq!(text, structured);
        } else if let Some(id) = structured["task_id"].as_str() {
            assert!(text.contains(id), "{text}");
        }
        structured
    }

    /// Call a tool that must fail with `isError`; returns the message.
    pub async fn err(&self, name: &str, args: Value) -> String {
        let r = self.call(name, args).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{name} should fail: {}",
            text_of(&r)
        );
        text_of(&r)
    }

    /// Wait for a notification, with a deadline.
    pub async fn next_note(&mut self, deadline: Duration) -> Option<Note> {
        tokio::time::timeout(deadline, self.notes.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Close stdin and wait for the server to exit; returns its exit status.
    pub async fn close(mut self) -> std::process::ExitStatus {
        let _ = self.service.cancel().await;
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("server exits after stdin closes")
            .expect("wait")
    }

    /// SIGKILL the server (a crash), and wait for it to die.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
        let _ = self.service.cancel().await;
    }
}

/// The concatenated text blocks of a result.
pub fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Poll `f` until it yields `Some`, or panic after `deadline` naming `what`.
/// Polling is not synchronisation by sleeping: the condition decides, the
/// deadline only bounds a broken run.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A generous deadline for things that normally take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);
pub mod auth_server;
pub mod fake_provider;
pub mod fixture;
pub mod http;
pub mod python;

/// The PostgreSQL server of the store's own tests (one file, compiled in both
/// crates): `DISPATCH_TEST_POSTGRES_URL`, or a throwaway cluster.
#[path = "../../src/store/pg_test.rs"]
mod pg;

/// A fresh, empty PostgreSQL database for one test, on the store tests'
/// server; `None` (after saying so on stderr) when there is none and
/// `DISPATCH_REQUIRE_POSTGRES=1` is not set. Call [`PgDatabase::drop`] at
/// the end (a failed test leaves its database to the throwaway cluster).
pub async fn postgres_db(test: &str) -> Option<PgDatabase> {
    let dbs = pg::databases_or_skip(test)?;
    let url = dbs.fresh().await.expect("a fresh database");
    Some(PgDatabase { dbs, url })
}

/// One test's PostgreSQL database.
pub struct PgDatabase {
    dbs: pg::Databases,
    /// Its URL (`postgres://…`), for `DISPATCH_DATABASE_URL`.
    pub url: String,
}

impl PgDatabase {
    /// Drops the database.
    pub async fn drop(self) {
        self.dbs.drop_all().await.expect("drop the test database");
    }
}
