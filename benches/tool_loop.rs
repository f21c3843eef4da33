//! The tool loop's own cost, with the real engine, SQLite store (WAL) and
//! outbox files, and a provider that answers at once, in process (no HTTP:
//! every microsecond measured is dispatch's):
//!
//! - per tool turn: an agent whose model asks for `kb_read` of a small KB
//!   file K times, then answers. Per task, dispatch's time = wall time minus
//!   the time inside the provider; the cost of a turn is the median over
//!   tasks of (time with K = 10 turns − median time with K = 0) / 10, i.e.
//!   storing the model turn and its attempt, running the tool, storing its
//!   result and building the next request. One task at a time, and 32 at
//!   once (per-turn cost = wall time of the batch, per turn, per task).
//!   Target: p50 <= 0.5 ms.
//! - a 50-task tree: a root whose model asks, in one turn, for 49 children
//!   (`agent_run`), each answering at once: wall time from submit to the
//!   root's result, and per child.
//!
//! Run: `cargo bench --bench tool_loop` (`-- turns` or `-- tree` for one part).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatch::app::App;
use dispatch::config::Paths;
use dispatch::engine::{Engine, Submit};
use dispatch::provider::{
    ChatRequest, ChatResponse, ProgressFn, Provider, ProviderError, ToolCall, Usage,
};
use dispatch::store::{SqliteStore, Store};
use dispatch::task::TaskState;
use serde_json::json;

const RUNS: usize = 5;
const TASKS: usize = 200;
const TURNS: usize = 10;
const BATCH: usize = 32;

/// Answers at once: `loopN` asks for `kb_read` until the conversation holds
/// N results, `fan` asks for 49 children, anything else answers.
struct Scripted {
    inside_ns: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        "openai"
    }

    async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        _timeout: Duration,
        _progress: Option<&ProgressFn>,
    ) -> Result<ChatResponse, ProviderError> {
        let t = Instant::now();
        let results: usize = req.messages.iter().map(|m| m.tool_results.len()).sum();
        let calls = match model.strip_prefix("loop") {
            Some(n) if results < n.parse::<usize>().unwrap_or(0) => vec![ToolCall {
                id: format!("c{results}"),
                name: "kb_read".into(),
                arguments: r#"{"path":"context/a.md"}"#.into(),
            }],
            _ if model == "fan" && results == 0 => (0..49)
                .map(|i| ToolCall {
                    id: format!("f{i}"),
                    name: "agent_run".into(),
                    arguments: json!({"agent": "leaf", "input": format!("part {i}")}).to_string(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let r = ChatResponse {
            text: if calls.is_empty() {
                "done".into()
            } else {
                String::new()
            },
            model: model.to_string(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
            },
            reported_cost_usd: None,
            finish_reason: Some("stop".into()),
            tool_calls: calls,
        };
        self.inside_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(r)
    }
}

fn project() -> tempfile::TempDir {
    let dir = common::project(
        "[limits]\nglobal = 256\nper_agent = 256\nper_provider = 256\nqueue = 20000\nmax_tree_turns = 100000\n",
    );
    let agent = |name: &str, model: &str, tools: &str| {
        std::fs::write(
            dir.path().join(format!("agents/{name}.agent.md")),
            format!("---\nmodel: openai/{model}\ntools: [{tools}]\n---\nBench.\n"),
        )
        .expect("agent");
    };
    agent("loop0", "loop0", "kb_read");
    agent("loop10", &format!("loop{TURNS}"), "kb_read");
    agent("fan", "fan", "agent_run");
    agent("leaf", "leaf", "");
    std::fs::create_dir_all(dir.path().join("_kb/context")).expect("kb");
    std::fs::write(dir.path().join("_kb/context/a.md"), "# A\nA short file.\n").expect("kb file");
    dir
}

async fn engine(app: &App, inside: &Arc<AtomicU64>) -> Arc<Engine> {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&app.database_url()).await.expect("store"));
    let providers = app
        .providers()
        .expect("providers")
        .with_provider(Arc::new(Scripted {
            inside_ns: inside.clone(),
        }));
    Engine::new(
        store,
        Arc::new(providers),
        app.registry.clone(),
        app.kb.clone(),
        app.engine_config().expect("engine config"),
    )
}

/// Run one task of `agent`; dispatch's own time in ns (wall minus provider).
async fn one(engine: &Arc<Engine>, inside: &AtomicU64, agent: &str, i: usize) -> u64 {
    let before = inside.load(Ordering::Relaxed);
    let t = Instant::now();
    let task = engine
        .submit(Submit {
            agent: agent.into(),
            input: json!(format!("bench {i}")),
            ..Submit::default()
        })
        .await
        .expect("submit");
    let done = engine
        .wait(&task.id, None, Duration::from_secs(600))
        .await
        .expect("wait");
    assert_eq!(done.state, TaskState::Succeeded, "{:?}", done.error);
    let wall = t.elapsed().as_nanos() as u64;
    wall.saturating_sub(inside.load(Ordering::Relaxed) - before)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn pct(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn turns_run() -> (f64, f64, f64, f64) {
    let dir = project();
    let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
    let inside = Arc::new(AtomicU64::new(0));
    let engine = engine(&app, &inside).await;
    // Warm up: the store, the KB handles, the registry.
    for i in 0..20 {
        one(&engine, &inside, "loop10", i).await;
    }
    let base: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..TASKS {
            v.push(one(&engine, &inside, "loop0", i).await);
        }
        v
    };
    let fixed = median(base);
    let mut per_turn = Vec::new();
    for i in 0..TASKS {
        let own = one(&engine, &inside, "loop10", i).await;
        per_turn.push(own.saturating_sub(fixed) / TURNS as u64);
    }
    // 32 tasks at once: the batch's wall time per model call per task.
    let t = Instant::now();
    let handles: Vec<_> = (0..BATCH)
        .map(|i| {
            let (e, inside) = (engine.clone(), inside.clone());
            tokio::spawn(async move { one(&e, &inside, "loop10", i).await })
        })
        .collect();
    for h in handles {
        h.await.expect("join");
    }
    let batch_ns = t.elapsed().as_nanos() as f64 / (BATCH as f64 * (TURNS + 1) as f64);
    engine.shutdown(Duration::from_secs(5)).await;
    (
        median(per_turn.clone()) as f64 / 1e3,
        pct(per_turn, 0.99) as f64 / 1e3,
        fixed as f64 / 1e3,
        batch_ns / 1e3,
    )
}

async fn tree_run() -> (f64, f64) {
    let dir = project();
    let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
    let inside = Arc::new(AtomicU64::new(0));
    let engine = engine(&app, &inside).await;
    one(&engine, &inside, "fan", 0).await; // warm-up
    let t = Instant::now();
    let own = one(&engine, &inside, "fan", 1).await;
    let wall = t.elapsed().as_nanos() as f64;
    engine.shutdown(Duration::from_secs(5)).await;
    (wall / 1e6, own as f64 / 49.0 / 1e3)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // SAFETY: before any other thread exists.
    unsafe {
        std::env::set_var("OPENAI_API_KEY", "sk-bench");
        std::env::remove_var("DISPATCH_DATABASE_URL");
    }
    let part = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    println!(
        "machine: {} cores; {RUNS} runs each, medians of runs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if part.as_deref().is_none_or(|p| p == "turns") {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(turns_run().await);
        }
        let m = |f: fn(&(f64, f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!(
            "tool turn, one task at a time: p50 {:.0} µs, p99 {:.0} µs of dispatch's own time per turn (a task's fixed cost without turns: {:.0} µs)",
            m(|r| r.0),
            m(|r| r.1),
            m(|r| r.2)
        );
        println!(
            "tool turn, 32 tasks at once: {:.0} µs of wall time per model call per task",
            m(|r| r.3)
        );
    }
    if part.as_deref().is_none_or(|p| p == "tree") {
        let mut walls = Vec::new();
        let mut per_child = Vec::new();
        for _ in 0..RUNS {
            let (w, c) = tree_run().await;
            walls.push(w);
            per_child.push(c);
        }
        walls.sort_by(|a, b| a.total_cmp(b));
        per_child.sort_by(|a, b| a.total_cmp(b));
        println!(
            "50-task tree (a root that starts 49 children in one turn): {:.1} ms from submit to the root's result, {:.0} µs of dispatch's time per child",
            walls[RUNS / 2],
            per_child[RUNS / 2]
        );
    }
}
