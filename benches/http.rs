//! The HTTP server end to end: `dispatch serve --http 127.0.0.1:0` (the
//! release binary, a child process) against the zero-latency fake provider on
//! 127.0.0.1 (in this process), driven by rmcp's Streamable HTTP client.
//!
//! - overhead: 256 `agent_run` calls in flight (a closed loop over one MCP
//!   session per client, 256 sessions), each timed from `tools/call` sent to
//!   its result received: HTTP, JSON-RPC, session routing, the engine with
//!   SQLite and outbox files, and the (instant) provider round trip. p50/p99
//!   over all calls after the first round, median of the runs.
//! - sessions: Streamable HTTP sessions opened (initialize + initialized) and
//!   held at once, and the server's VmRSS before and after, per session.
//!
//! Loopback only; stops by itself. Run: `cargo bench --bench http`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
#[path = "../tests/common/fake_provider.rs"]
mod fake_provider;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

const RUNS: usize = 3;
const IN_FLIGHT: usize = 256;
const CALLS_PER_CLIENT: usize = 12;
const SESSIONS: [usize; 2] = [100, 1_000];

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = fake_provider::FakeProvider::start().await;
        fake.set_default(fake_provider::Behavior::reply("ok"));
        let dir = common::project(
            "[limits]\nglobal = 256\nper_agent = 256\nper_provider = 256\nqueue = 20000\n\
             [http]\nrate_limit_per_minute = 0\n",
        );
        let (mut child, addr) = spawn(dir.path(), &fake.base_url_openai());
        let url = format!("http://{addr}/mcp");

        println!("== overhead: agent_run over Streamable HTTP, {IN_FLIGHT} in flight");
        let (mut p50s, mut p99s, mut rates) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            let (p50, p99, per_sec) = overhead(&url).await;
            println!(
                "  run {}: p50 {:.2} ms, p99 {:.2} ms, {:.0} calls/s",
                run + 1,
                p50,
                p99,
                per_sec
            );
            p50s.push(p50);
            p99s.push(p99);
            rates.push(per_sec);
        }
        println!(
            "  median: p50 {:.2} ms, p99 {:.2} ms, {:.0} calls/s",
            median(p50s),
            median(p99s),
            median(rates)
        );

        println!("== sessions held open (Streamable HTTP)");
        let pid = child.id();
        for n in SESSIONS {
            let before = common::status_kb(Some(pid), "VmRSS");
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(connect(&url).await);
            }
            let after = common::status_kb(Some(pid), "VmRSS");
            println!(
                "  {n} sessions: VmRSS {:.1} MB -> {:.1} MB, {:.1} KB per session",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                after.saturating_sub(before) as f64 / n as f64
            );
            for c in held {
                let _ = c.cancel().await;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    });
}

type Session = rmcp::service::RunningService<rmcp::RoleClient, ()>;

async fn connect(url: &str) -> Session {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    cfg.max_concurrent_requests = 4;
    ().serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .expect("connect")
}

/// p50 and p99 in ms, and calls per second.
async fn overhead(url: &str) -> (f64, f64, f64) {
    let mut clients = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        clients.push(Arc::new(connect(url).await));
    }
    let start = Instant::now();
    let mut handles = Vec::with_capacity(IN_FLIGHT);
    for c in &clients {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(CALLS_PER_CLIENT);
            for _ in 0..CALLS_PER_CLIENT {
                let mut p = CallToolRequestParams::new("agent_run");
                p.arguments = serde_json::json!({"agent": "a", "input": "x"})
                    .as_object()
                    .cloned();
                let t = Instant::now();
                let r = c.call_tool(p).await.expect("tools/call");
                assert_ne!(r.is_error, Some(true), "{r:?}");
                times.push(t.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let times = h.await.expect("client");
        // The first call of each client overlaps the ramp-up.
        all.extend(times.into_iter().skip(1));
    }
    let elapsed = start.elapsed();
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            let _ = c.cancel().await;
        }
    }
    all.sort();
    let q = |x: f64| all[((all.len() - 1) as f64 * x).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(q(0.5)),
        ms(q(0.99)),
        (IN_FLIGHT * CALLS_PER_CLIENT) as f64 / elapsed.as_secs_f64(),
    )
}

fn spawn(root: &std::path::Path, base_url: &str) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispatch"))
        .args(["serve", "--http", "127.0.0.1:0", "--root"])
        .arg(root)
        .env("DISPATCH_LOG", "info")
        .env("OPENAI_BASE_URL", base_url)
        .env("OPENAI_API_KEY", "sk-bench")
        .env_remove("DISPATCH_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dispatch");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("stderr");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .expect("address")
                .parse()
                .expect("address");
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
