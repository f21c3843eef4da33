//! The engine against the zero-latency fake provider on 127.0.0.1, with the
//! real SQLite store (WAL, under a temp dir) and outbox files, as `agent_run`
//! uses it (`submit_watched`, then `wait`):
//!
//! - overhead: 256 clients in a closed loop (each submits a task and waits
//!   for its result, then the next), limits raised to 256 so none waits for
//!   a slot. The openai provider is wrapped in a stamping `Provider` that
//!   records when the engine enters and leaves the provider call; per task,
//!   `before` = submit -> provider call entered, `after` = provider call
//!   returned -> the waiter has the result, overhead = before + after (the
//!   provider call itself, reqwest + loopback HTTP + the fake + SSE parsing,
//!   is excluded and reported apart). Target: p50 <= 0.5 ms, p99 <= 2 ms.
//!   Also with 1 task in flight, and bare provider calls for reference.
//! - throughput: 10,000 tasks submitted at once, time to the last result, with
//!   the shipped limits and with limits raised to 256. Target: >= 2,000/s.
//! - memory: 10,000 `agent_run`-like calls in flight in a child process
//!   against a fake (another child process) that answers after an hour, with
//!   the shipped running limits (32 at the provider, the rest queued) and with
//!   all 10,000 admitted; VmRSS read from /proc. Target: < 200 MB. Then the
//!   idle VmRSS of `dispatch serve` after `initialize` (target: < 20 MB).
//!
//! - instances (PostgreSQL only): 1, 2 and 3 engines on one database, each
//!   with its own connection pool, 10,000 tasks submitted round-robin at
//!   once, with the shipped limits held across them by the store's slots.
//!   The engines share this process (so its 2 cores): what is measured is
//!   the database's share of the work, not more CPU.
//!
//! Loopback only; stops by itself in a few minutes.
//! Run: `cargo bench --bench engine` (or `-- overhead|throughput|memory|idle`
//! for one part). With `DISPATCH_BENCH_POSTGRES_URL=postgres://USER@HOST/DB`
//! (a user that may create databases) the throughput runs store on that
//! PostgreSQL server, each in a new database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
#[path = "../tests/common/fake_provider.rs"]
mod fake_provider;

use common::status_kb;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatch::app::App;
use dispatch::config::Paths;
use dispatch::engine::{Engine, Submit};
use dispatch::provider::{
    ChatRequest, ChatResponse, ProgressFn, Provider, ProviderError, Providers,
};
use dispatch::store::{SqliteStore, Store};
use dispatch::task::{Task, TaskState};
use serde_json::json;

const RUNS: usize = 5;
const IN_FLIGHT: usize = 256;
/// Tasks per overhead run (the first and last `IN_FLIGHT` are ramp-up and
/// ramp-down, not counted).
const OVERHEAD_TASKS: usize = IN_FLIGHT * 16;
const SEQUENTIAL_TASKS: usize = 500;
const THROUGHPUT_TASKS: usize = 10_000;
const RSS_TASKS: usize = 10_000;
const RSS_RUNS: usize = 3;

const RAISED: &str = "global = 256\nper_agent = 256\nper_provider = 256\nqueue = 20000\n";
/// Room for 256 held calls plus the measured ones.
const RAISED_HELD: &str = "global = 512\nper_agent = 512\nper_provider = 512\nqueue = 20000\n";
const SHIPPED: &str = "queue = 20000\n"; // global 64, per_agent 32, per_provider 32

fn main() {
    // SAFETY: the first thing the process does, before any other thread exists.
    unsafe {
        std::env::set_var("OPENAI_API_KEY", "sk-bench");
        std::env::remove_var("OPENAI_BASE_URL");
        std::env::remove_var("DISPATCH_DATABASE_URL");
    }
    match std::env::var("DISPATCH_BENCH_CHILD").as_deref() {
        Ok("fake") => return child_fake(),
        Ok("rss") => return child_rss(),
        _ => {}
    }

    // `cargo bench --bench engine -- throughput` runs one part (overhead,
    // throughput, memory, idle); no name runs them all.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let part = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {} (other work on the machine skews every figure)",
        load().trim()
    );
    let host_start = HostTimes::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if part("overhead") {
            overhead().await;
        }
        if part("throughput") {
            throughput().await;
        }
        if part("instances") {
            instances().await;
        }
    });
    drop(rt);
    if part("memory") {
        memory();
    }
    if part("idle") {
        idle_server();
    }
    println!("load average at end: {}", load().trim());
    if let (Some(start), Some(end)) = (host_start, HostTimes::now()) {
        end.report_since(&start);
    }
    drop(std::mem::take(
        &mut *KEEP.lock().unwrap_or_else(|p| p.into_inner()),
    ));
}

// ---------------------------------------------------------------------------
// Helpers

/// Temp dirs are removed when the bench ends, not between runs: deleting
/// thousands of outbox files slows the next run's file creation on some file
/// systems (ext4 without a journal skips recently freed inodes one by one).
static KEEP: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

fn keep(dir: tempfile::TempDir) {
    KEEP.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    rusage_time(libc::RUSAGE_SELF)
}

/// User + system CPU time of `who` (`RUSAGE_SELF`, `RUSAGE_CHILDREN`) so far.
fn rusage_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The machine's CPU time by kind (`/proc/stat`), and this process's own,
/// to tell how much of the machine other work took while the bench ran.
struct HostTimes {
    /// Clock ticks: busy (user, nice, system, irq, softirq), idle (idle,
    /// iowait), steal (taken by the hypervisor for other guests).
    busy: u64,
    idle: u64,
    steal: u64,
    /// This process and its waited-for children.
    own: Duration,
}

impl HostTimes {
    fn now() -> Option<HostTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
        Some(HostTimes {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
            own: cpu_time() + rusage_time(libc::RUSAGE_CHILDREN),
        })
    }

    /// Prints the shares of the machine's CPU time since `start`.
    fn report_since(&self, start: &HostTimes) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let busy = self.busy.saturating_sub(start.busy) as f64 / hz;
        let idle = self.idle.saturating_sub(start.idle) as f64 / hz;
        let steal = self.steal.saturating_sub(start.steal) as f64 / hz;
        let own = self.own.saturating_sub(start.own).as_secs_f64();
        let total = busy + idle + steal;
        if total <= 0.0 {
            return;
        }
        let share = |v: f64| 100.0 * v / total;
        println!(
            "machine's CPU during the bench: this bench {:.0} %, other processes {:.0} %, \
             steal {:.1} %, idle {:.0} %",
            share(own.min(busy)),
            share((busy - own).max(0.0)),
            share(steal),
            share(idle)
        );
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A project with one agent `a` on `openai/gpt-4o-mini`, the openai provider
/// pointed at `base_url`, and these `[limits]`.
fn project(base_url: &str, limits: &str) -> tempfile::TempDir {
    common::project(&format!(
        "[providers.openai]\nbase_url = \"{base_url}\"\n\n[limits]\n{limits}"
    ))
}

fn input(i: usize) -> serde_json::Value {
    json!(format!("bench {i}"))
}

/// What `agent_run` does without a progress token: submit, drop the event
/// receiver, wait for the result.
async fn agent_run(engine: &Arc<Engine>, i: usize) -> Task {
    let (task, events) = engine
        .submit_watched(Submit {
            agent: "a".into(),
            input: input(i),
            ..Submit::default()
        })
        .await
        .expect("submit");
    drop(events);
    engine
        .wait(&task.id, None, Duration::from_secs(3600))
        .await
        .expect("wait")
}

fn outbox_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("_kb/outbox"))
        .map(|d| d.count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Overhead

/// Timestamps per task, in ns since `base` (0 = not yet).
struct Marks {
    base: Instant,
    submit: Vec<AtomicU64>,
    entered: Vec<AtomicU64>,
    returned: Vec<AtomicU64>,
    done: Vec<AtomicU64>,
}

impl Marks {
    fn new(n: usize) -> Marks {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Marks {
            base: Instant::now(),
            submit: v(),
            entered: v(),
            returned: v(),
            done: v(),
        }
    }

    fn stamp(&self, v: &[AtomicU64], i: usize) {
        v[i].store(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn get(v: &[AtomicU64], i: usize) -> u64 {
        v[i].load(Ordering::Relaxed)
    }
}

/// The real provider, with the moments its call starts and ends recorded
/// (the task is found by its user message, `bench <i>`).
struct Stamped {
    inner: Arc<dyn Provider>,
    marks: Arc<Marks>,
}

fn index_of(req: &ChatRequest) -> Option<usize> {
    req.messages
        .first()?
        .content
        .strip_prefix("bench ")?
        .parse()
        .ok()
}

#[async_trait::async_trait]
impl Provider for Stamped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<&ProgressFn>,
    ) -> Result<ChatResponse, ProviderError> {
        let i = index_of(req).filter(|&i| i < self.marks.entered.len());
        if let Some(i) = i {
            self.marks.stamp(&self.marks.entered, i);
        }
        let r = self.inner.chat(model, req, timeout, progress).await;
        if let Some(i) = i {
            self.marks.stamp(&self.marks.returned, i);
        }
        r
    }
}

/// `App::engine(false)`, with the openai provider wrapped in `Stamped`.
async fn stamped_engine(app: &App, marks: &Arc<Marks>) -> Arc<Engine> {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&app.database_url()).await.expect("store"));
    let providers = app.providers().expect("providers");
    let inner = providers.get("openai").cloned().expect("openai provider");
    let providers = providers.with_provider(Arc::new(Stamped {
        inner,
        marks: marks.clone(),
    }));
    Engine::new(
        store,
        Arc::new(providers),
        app.registry.clone(),
        app.kb.clone(),
        app.engine_config().expect("engine config"),
    )
}

#[derive(Default)]
struct Samples {
    before: Vec<u64>,
    after: Vec<u64>,
    overhead: Vec<u64>,
    provider: Vec<u64>,
    total: Vec<u64>,
}

impl Samples {
    fn sort(&mut self) {
        for v in [
            &mut self.before,
            &mut self.after,
            &mut self.overhead,
            &mut self.provider,
            &mut self.total,
        ] {
            v.sort_unstable();
        }
    }
}

struct OverheadRun {
    s: Samples,
    tasks_per_sec: f64,
    cpu_per_task: Duration,
}

/// `n` tasks through `clients` closed-loop clients; tasks in `skip..n - skip`
/// count. With `held` > 0, that many `agent_run` calls of agent `slow` are
/// first started and held at the fake (in flight at the provider) until the
/// `n` tasks are done.
async fn overhead_run(clients: usize, n: usize, skip: usize, held: usize) -> OverheadRun {
    let fake = fake_provider::FakeProvider::start().await;
    fake.set_default(fake_provider::Behavior::reply("ok"));
    let release = Arc::new(tokio::sync::Notify::new());
    fake.on_model("slow", fake_provider::Behavior::gate(&release, "ok"));
    let dir = project(
        &fake.base_url_openai(),
        if held > 0 { RAISED_HELD } else { RAISED },
    );
    std::fs::write(
        dir.path().join("agents/slow.agent.md"),
        "---\nmodel: openai/slow\n---\nBench.\n",
    )
    .expect("agent slow");
    let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
    let marks = Arc::new(Marks::new(n));
    let engine = stamped_engine(&app, &marks).await;
    let held_calls: Vec<_> = (0..held)
        .map(|j| {
            let e = engine.clone();
            tokio::spawn(async move {
                let (task, _) = e
                    .submit_watched(Submit {
                        agent: "slow".into(),
                        input: json!(format!("held {j}")),
                        ..Submit::default()
                    })
                    .await
                    .expect("submit held");
                e.wait(&task.id, None, Duration::from_secs(3600))
                    .await
                    .expect("wait held")
            })
        })
        .collect();
    fake.wait_in_flight(held).await;
    // Warm up: connections, SQLite pages, allocator.
    for h in (0..clients.min(64))
        .map(|_| {
            let e = engine.clone();
            tokio::spawn(async move { agent_run(&e, usize::MAX).await })
        })
        .collect::<Vec<_>>()
    {
        assert_eq!(h.await.expect("join").state, TaskState::Succeeded);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (engine, marks, next) = (engine.clone(), marks.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    marks.stamp(&marks.submit, i);
                    let t = agent_run(&engine, i).await;
                    marks.stamp(&marks.done, i);
                    assert_eq!(t.state, TaskState::Succeeded, "{:?}", t.error);
                    assert_eq!(t.attempts, 1);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    assert_eq!(
        fake.in_flight(),
        held,
        "the held calls stayed at the provider"
    );
    release.notify_waiters();
    for h in held_calls {
        assert_eq!(h.await.expect("held").state, TaskState::Succeeded);
    }
    assert_eq!(outbox_files(dir.path()), n + clients.min(64) + held);

    let mut s = Samples::default();
    for i in skip..n - skip {
        let [a, b, c, d] =
            [&marks.submit, &marks.entered, &marks.returned, &marks.done].map(|v| Marks::get(v, i));
        assert!(
            a > 0 && b >= a && c >= b && d >= c,
            "task {i}: {a} {b} {c} {d}"
        );
        s.before.push(b - a);
        s.after.push(d - c);
        s.overhead.push((b - a) + (d - c));
        s.provider.push(c - b);
        s.total.push(d - a);
    }
    s.sort();
    drop(engine);
    keep(dir);
    OverheadRun {
        s,
        tasks_per_sec: n as f64 / elapsed.as_secs_f64(),
        cpu_per_task: cpu / n as u32,
    }
}

/// The provider alone: `clients` closed-loop clients calling `chat` on the
/// same (concurrency-limited) openai provider, no engine.
async fn bare_provider_run(clients: usize, n: usize) -> (Vec<u64>, f64, Duration) {
    let fake = fake_provider::FakeProvider::start().await;
    fake.set_default(fake_provider::Behavior::reply("ok"));
    let dir = project(&fake.base_url_openai(), RAISED);
    let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
    let providers: Arc<Providers> = Arc::new(app.providers().expect("providers"));
    let call = |p: Arc<Providers>, i: usize| async move {
        let req = ChatRequest::new("Bench.", format!("bench {i}"));
        let provider = p.get("openai").expect("openai");
        let t = Instant::now();
        let r = provider
            .chat("gpt-4o-mini", &req, Duration::from_secs(60), None)
            .await
            .expect("chat");
        assert_eq!(r.text, "ok");
        t.elapsed().as_nanos() as u64
    };
    for h in (0..clients.min(64))
        .map(|i| tokio::spawn(call(providers.clone(), i)))
        .collect::<Vec<_>>()
    {
        h.await.expect("warm-up");
    }
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (p, next) = (providers.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return out;
                    }
                    out.push(call(p.clone(), i).await);
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0) / n as u32;
    lat.sort_unstable();
    keep(dir);
    (lat, rate, cpu)
}

async fn overhead() {
    for (clients, n, skip, held, what) in [
        (
            1,
            SEQUENTIAL_TASKS,
            0,
            IN_FLIGHT,
            "256 calls in flight at the provider, one client's calls measured",
        ),
        (1, SEQUENTIAL_TASKS, 0, 0, "1 call in flight"),
        (
            IN_FLIGHT,
            OVERHEAD_TASKS,
            IN_FLIGHT,
            0,
            "saturation: 256 closed-loop clients on a zero-latency provider",
        ),
    ] {
        println!(
            "== overhead, {what}; {} counted tasks per run, median of {RUNS} runs",
            n - 2 * skip
        );
        let mut per_run = Vec::new();
        for run in 0..RUNS {
            let r = overhead_run(clients, n, skip, held).await;
            let s = &r.s;
            println!(
                "  run {}: overhead p50 {:.3} ms p99 {:.3} ms | before p50 {:.3} after p50 {:.3} | provider call p50 {:.3} ms | submit->result p50 {:.2} ms p99 {:.2} ms | {:.0} tasks/s, {:.0} us CPU/task",
                run + 1,
                ms(pct(&s.overhead, 0.5)),
                ms(pct(&s.overhead, 0.99)),
                ms(pct(&s.before, 0.5)),
                ms(pct(&s.after, 0.5)),
                ms(pct(&s.provider, 0.5)),
                ms(pct(&s.total, 0.5)),
                ms(pct(&s.total, 0.99)),
                r.tasks_per_sec,
                r.cpu_per_task.as_secs_f64() * 1e6,
            );
            per_run.push(r);
        }
        let med = |f: &dyn Fn(&OverheadRun) -> f64| median_f(per_run.iter().map(f).collect());
        let row = |name: &str, pick: &dyn Fn(&Samples) -> &Vec<u64>| {
            println!(
                "  {name:<38} p50 {:>8.3} ms   p99 {:>8.3} ms",
                med(&|r| ms(pct(pick(&r.s), 0.5))),
                med(&|r| ms(pct(pick(&r.s), 0.99))),
            );
        };
        row("overhead (before + after)", &|s| &s.overhead);
        row("  before: submit -> provider call", &|s| &s.before);
        row("  after: provider return -> waiter", &|s| &s.after);
        row("provider call (not overhead)", &|s| &s.provider);
        row("submit -> result (total)", &|s| &s.total);
        println!(
            "  {:<38} {:.0} tasks/s, {:.0} us CPU per task (whole process: engine, fake, clients)",
            "rate",
            med(&|r| r.tasks_per_sec),
            med(&|r| r.cpu_per_task.as_secs_f64() * 1e6),
        );
    }

    println!("== reference: provider calls alone (no engine), median of {RUNS} runs");
    for (clients, n) in [(IN_FLIGHT, OVERHEAD_TASKS), (1, SEQUENTIAL_TASKS)] {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut rate = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..RUNS {
            let (lat, r, c) = bare_provider_run(clients, n).await;
            p50.push(ms(pct(&lat, 0.5)));
            p99.push(ms(pct(&lat, 0.99)));
            rate.push(r);
            cpu.push(c.as_secs_f64() * 1e6);
        }
        println!(
            "  {clients:>3} in flight: call p50 {:.3} ms p99 {:.3} ms, {:.0} calls/s, {:.0} us CPU per call",
            median_f(p50),
            median_f(p99),
            median_f(rate),
            median_f(cpu)
        );
    }
}

// ---------------------------------------------------------------------------
// Throughput

/// `DISPATCH_BENCH_POSTGRES_URL`: a PostgreSQL server (a URL to a database
/// its user may create databases from) that the throughput runs store on,
/// each in a database of its own; unset, they store on SQLite.
const POSTGRES_ENV: &str = "DISPATCH_BENCH_POSTGRES_URL";

/// A new database on the bench's PostgreSQL server: `[store] url = ...`
/// for the project's dispatch.toml; empty without a server.
async fn store_section() -> String {
    use sqlx::{Connection, Executor};
    let Ok(admin) = std::env::var(POSTGRES_ENV) else {
        return String::new();
    };
    let name = format!("bench_{:016x}", rand::random::<u64>());
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .expect("the bench's PostgreSQL");
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the bench database");
    c.close().await.expect("close");
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    format!("\n[store]\nurl = \"{base}/{name}\"\npool_size = 16\n")
}

/// `n` tasks submitted at once on one engine; tasks per second and this
/// process's CPU per task.
async fn throughput_run(limits: &str, n: usize) -> (f64, Duration) {
    engines_run(limits, 1, n).await
}

/// `n` tasks submitted at once, round-robin, on `engines` engines over one
/// store (each with its own connection pool); tasks per second and this
/// process's CPU per task.
async fn engines_run(limits: &str, engines: usize, n: usize) -> (f64, Duration) {
    let fake = fake_provider::FakeProvider::start().await;
    fake.set_default(fake_provider::Behavior::reply("ok"));
    let limits = format!("{limits}{}", store_section().await);
    let dir = project(&fake.base_url_openai(), &limits);
    let mut all = Vec::new();
    for _ in 0..engines {
        let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
        all.push(app.engine(false).await.expect("engine"));
    }
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let e = all[i % engines].clone();
            tokio::spawn(async move { agent_run(&e, i).await })
        })
        .collect();
    for h in handles {
        let t = h.await.expect("join");
        assert_eq!(t.state, TaskState::Succeeded, "{:?}", t.error);
    }
    let elapsed = t0.elapsed();
    let cpu = (cpu_time() - cpu0) / n as u32;
    assert_eq!(fake.request_count(), n);
    assert_eq!(outbox_files(dir.path()), n);
    drop(all);
    keep(dir);
    (n as f64 / elapsed.as_secs_f64(), cpu)
}

async fn throughput() {
    for (name, limits) in [
        (
            "shipped limits (global 64, per_agent 32, per_provider 32)",
            SHIPPED,
        ),
        ("limits raised to 256", RAISED),
    ] {
        let store = match std::env::var(POSTGRES_ENV) {
            Ok(_) => "PostgreSQL",
            Err(_) => "SQLite",
        };
        println!(
            "== throughput on {store}, {THROUGHPUT_TASKS} tasks submitted at once, {name}, median of {RUNS}"
        );
        measure(RUNS, || throughput_run(limits, THROUGHPUT_TASKS)).await;
    }
}

async fn instances() {
    if std::env::var(POSTGRES_ENV).is_err() {
        println!("== instances: skipped (set {POSTGRES_ENV} to a PostgreSQL server)");
        return;
    }
    const INSTANCE_RUNS: usize = 3;
    for n in [1, 2, 3] {
        println!(
            "== {n} instance(s) on one PostgreSQL, {THROUGHPUT_TASKS} tasks at once, shipped limits shared, median of {INSTANCE_RUNS}"
        );
        measure(INSTANCE_RUNS, || engines_run(SHIPPED, n, THROUGHPUT_TASKS)).await;
    }
}

/// Run `f` (a run of `THROUGHPUT_TASKS` tasks) `runs` times, printing each
/// run and the medians.
async fn measure<F, Fut>(runs: usize, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (f64, Duration)>,
{
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for run in 0..runs {
        let (rate, cpu) = f().await;
        println!(
            "  run {}: {:.0} tasks/s ({:.2} s), {:.0} us CPU per task",
            run + 1,
            rate,
            THROUGHPUT_TASKS as f64 / rate,
            cpu.as_secs_f64() * 1e6
        );
        rates.push(rate);
        cpus.push(cpu.as_secs_f64() * 1e6);
    }
    println!(
        "  median: {:.0} tasks/s, {:.0} us CPU per task",
        median_f(rates),
        median_f(cpus)
    );
}

// ---------------------------------------------------------------------------
// Memory: child processes

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(mode: &str, env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.env("DISPATCH_BENCH_CHILD", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("read child");
        assert!(!l.is_empty(), "child ended early");
        l.trim().to_string()
    }

    fn send(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{s}").expect("write child");
        stdin.flush().expect("flush");
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait child");
        assert!(status.success(), "child failed: {status}");
    }
}

/// A fake provider whose answers take an hour. Prints `url <base>`, then
/// answers each stdin line with `inflight <n>`; ends at EOF.
fn child_fake() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fake = rt.block_on(async {
        let fake = fake_provider::FakeProvider::start().await;
        fake.set_default(fake_provider::Behavior::Reply {
            text: "ok".into(),
            input_tokens: 10,
            output_tokens: 5,
            cost: None,
            delay: Duration::from_secs(3600),
            chunk_count: 3,
        });
        fake
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "url {}", fake.base_url_openai()).expect("stdout");
    out.flush().expect("flush");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        writeln!(out, "inflight {}", fake.in_flight()).expect("stdout");
        out.flush().expect("flush");
    }
    rt.block_on(async move { drop(fake) });
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// The engine with `DISPATCH_BENCH_TASKS` agent_run-like calls in flight.
/// Prints `ready` once the engine is open; on `go`, submits them all and prints
/// `submitted`; at EOF cancels everything, waits, prints `done <cancelled>`.
fn child_rss() {
    let url = std::env::var("DISPATCH_BENCH_FAKE_URL").expect("fake url");
    let limits = std::env::var("DISPATCH_BENCH_LIMITS").expect("limits");
    let n: usize = std::env::var("DISPATCH_BENCH_TASKS")
        .expect("tasks")
        .parse()
        .expect("tasks");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = project(&url, &limits.replace("\\n", "\n"));
    // The fake answers after an hour: no timeout may fire while we measure.
    let toml = dir.path().join("dispatch.toml");
    let mut text = std::fs::read_to_string(&toml).expect("toml");
    text.push_str("\n[resilience]\nidle_timeout_secs = 7200\ndefault_timeout_secs = 7200\n");
    std::fs::write(&toml, text).expect("toml");
    rt.block_on(async {
        let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
        let engine = app.engine(false).await.expect("engine");
        let mut lines = BufReader::new(std::io::stdin()).lines();
        let mut out = std::io::stdout();
        writeln!(out, "ready").expect("stdout");
        out.flush().expect("flush");
        let go = tokio::task::block_in_place(|| lines.next());
        assert!(matches!(go, Some(Ok(ref l)) if l == "go"));
        let submitted = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (e, submitted) = (engine.clone(), submitted.clone());
                tokio::spawn(async move {
                    let (task, events) = e
                        .submit_watched(Submit {
                            agent: "a".into(),
                            input: input(i),
                            ..Submit::default()
                        })
                        .await
                        .expect("submit");
                    drop(events);
                    submitted.fetch_add(1, Ordering::Relaxed);
                    e.wait(&task.id, None, Duration::from_secs(7200))
                        .await
                        .expect("wait")
                })
            })
            .collect();
        while submitted.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writeln!(out, "submitted").expect("stdout");
        out.flush().expect("flush");
        // Hold everything in flight until the parent has measured.
        tokio::task::block_in_place(|| for _ in lines.by_ref() {});
        engine.cancel_all();
        let mut cancelled = 0;
        for h in handles {
            if h.await.expect("join").state == TaskState::Cancelled {
                cancelled += 1;
            }
        }
        writeln!(out, "done {cancelled}").expect("stdout");
        out.flush().expect("flush");
    });
}

/// One memory run: returns (baseline kB, kB with `n` in flight, in flight at the fake).
fn rss_run(limits: &str, n: usize, expect_at_fake: usize) -> (u64, u64, usize) {
    let mut fake = Proc::spawn("fake", &[]);
    let url = fake
        .line()
        .strip_prefix("url ")
        .expect("url line")
        .to_string();
    let mut eng = Proc::spawn(
        "rss",
        &[
            ("DISPATCH_BENCH_FAKE_URL", url),
            ("DISPATCH_BENCH_LIMITS", limits.replace('\n', "\\n")),
            ("DISPATCH_BENCH_TASKS", n.to_string()),
        ],
    );
    let pid = eng.child.id();
    assert_eq!(eng.line(), "ready");
    std::thread::sleep(Duration::from_millis(300));
    let base = status_kb(Some(pid), "VmRSS");
    eng.send("go");
    assert_eq!(eng.line(), "submitted");
    let deadline = Instant::now() + Duration::from_secs(120);
    let in_flight = loop {
        fake.send("?");
        let l = fake.line();
        let k: usize = l
            .strip_prefix("inflight ")
            .and_then(|v| v.parse().ok())
            .expect("inflight line");
        if k >= expect_at_fake || Instant::now() > deadline {
            break k;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    let rss = status_kb(Some(pid), "VmRSS");
    drop(eng.stdin.take());
    let done = eng.line();
    assert_eq!(done, format!("done {n}"));
    eng.finish();
    fake.finish();
    (base, rss, in_flight)
}

fn memory() {
    for (name, limits, at_fake) in [
        (
            "shipped running limits (32 at the provider, the rest queued)",
            "queue = 20000\n".to_string(),
            32,
        ),
        (
            "all admitted (global = per_agent = per_provider = 10000)",
            format!(
                "global = {RSS_TASKS}\nper_agent = {RSS_TASKS}\nper_provider = {RSS_TASKS}\nqueue = 20000\n"
            ),
            RSS_TASKS,
        ),
    ] {
        println!(
            "== memory, {RSS_TASKS} tasks in flight, {name}, fake answers after 1 h (separate process), median of {RSS_RUNS}"
        );
        let mut rss = Vec::new();
        let mut base = Vec::new();
        for run in 0..RSS_RUNS {
            let (b, r, k) = rss_run(&limits, RSS_TASKS, at_fake);
            println!(
                "  run {}: VmRSS {:.1} MB with {RSS_TASKS} in flight ({k} at the fake), {:.1} MB before submitting",
                run + 1,
                mb(r),
                mb(b)
            );
            assert!(k >= at_fake, "only {k} requests reached the fake");
            rss.push(mb(r));
            base.push(mb(b));
        }
        println!(
            "  median: VmRSS {:.1} MB ({:.1} MB before submitting)",
            median_f(rss),
            median_f(base)
        );
    }
}

// ---------------------------------------------------------------------------
// Idle RSS of the real server

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after comm.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn idle_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("mkdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents");
    let mut count = 0;
    for e in std::fs::read_dir(&shipped).expect("shipped agents") {
        let p = e.expect("entry").path();
        if p.to_string_lossy().ends_with(".agent.md") {
            std::fs::copy(&p, agents.join(p.file_name().expect("name"))).expect("copy");
            count += 1;
        }
    }
    println!(
        "== idle RSS of `dispatch serve` ({count} shipped agents) after initialize, median of {RUNS}"
    );
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let mut samples = Vec::new();
    for run in 0..RUNS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dispatch"))
            .args(["serve", "--root"])
            .arg(dir.path())
            .env("DISPATCH_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        writeln!(stdin, "{init}").expect("write");
        stdout.read_line(&mut line).expect("read");
        assert!(line.contains("\"serverInfo\""), "unexpected answer: {line}");
        writeln!(stdin, "{initialized}").expect("write");
        writeln!(stdin, "{list}").expect("write");
        line.clear();
        stdout.read_line(&mut line).expect("read");
        assert!(line.contains("\"tools\""), "unexpected answer: {line}");
        // Idle: no CPU used for 1 s (at most 15 s).
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = cpu_ticks(pid);
        let mut quiet = 0;
        while quiet < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            let now = cpu_ticks(pid);
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        let rss = status_kb(Some(pid), "VmRSS");
        let hwm = status_kb(Some(pid), "VmHWM");
        println!(
            "  run {}: VmRSS {:.1} MB (peak VmHWM {:.1} MB)",
            run + 1,
            mb(rss),
            mb(hwm)
        );
        samples.push(mb(rss));
        drop(stdin);
        child.wait().expect("wait");
    }
    println!("  median: VmRSS {:.1} MB", median_f(samples));
}
