//! What a Python client pays: 200 sequential `agent_run` calls from the
//! stock Python `mcp` SDK (which validates every structured result against
//! the tool's output schema) over stdio to `dispatch serve` (the bench build
//! of the binary), against the zero-latency fake provider on 127.0.0.1.
//!
//! The SDK comes from PyPI into virtual environments under cargo's target
//! folder: the newest release and the newest 1.x (whose `call_tool` compiled
//! the output schema on every call). Runs alternate between the two; each
//! prints p50/p95/p99 of the calls (after 10 warm-up calls) and the client's
//! CPU time per call. With `DISPATCH_BENCH_OLD_BIN=PATH`, each run also
//! drives that binary (an older build), interleaved with this one. Loopback
//! only. Run: `cargo bench --bench python_client`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
#[path = "../tests/common/fake_provider.rs"]
mod fake_provider;

use std::path::{Path, PathBuf};
use std::process::Command;

const RUNS: usize = 3;
const SDKS: [(&str, &str); 2] = [("latest", "mcp"), ("1.x", "mcp<2")];

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = fake_provider::FakeProvider::start().await;
        fake.set_default(fake_provider::Behavior::reply("ok"));
        let dir = common::project("");
        let venvs: Vec<(&str, PathBuf)> = SDKS
            .iter()
            .map(|(label, req)| (*label, venv(label, req)))
            .collect();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/agent_run.py");
        println!("== 200 sequential agent_run calls from the Python mcp SDK over stdio");
        let mut servers = vec![("this build", env!("CARGO_BIN_EXE_dispatch").to_string())];
        if let Ok(old) = std::env::var("DISPATCH_BENCH_OLD_BIN") {
            servers.push(("old build", old));
        }
        let mut p50s: Vec<(String, Vec<f64>)> = Vec::new();
        for run in 0..RUNS {
            for (i, (label, venv, server, bin)) in venvs
                .iter()
                .flat_map(|(l, v)| servers.iter().map(move |(s, b)| (*l, v, *s, b.clone())))
                .enumerate()
            {
                let python = venv.join("bin/python");
                let base = fake.base_url_openai();
                let out = tokio::task::spawn_blocking({
                    let script = script.clone();
                    let root = dir.path().to_path_buf();
                    move || {
                        Command::new(python)
                            .arg(script)
                            .arg(bin)
                            .args(["serve", "--root"])
                            .arg(root)
                            .env("OPENAI_BASE_URL", base)
                            .env("OPENAI_API_KEY", "sk-bench")
                            .env("DISPATCH_LOG", "warn")
                            .output()
                            .expect("run python")
                    }
                })
                .await
                .expect("join");
                assert!(
                    out.status.success(),
                    "python client failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("one JSON line");
                let mut ms: Vec<f64> = v["ms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                ms.sort_by(f64::total_cmp);
                let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
                println!(
                    "  run {} {server}, mcp {} ({label}): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; client CPU {:.2} ms/call; tools/list {} bytes",
                    run + 1,
                    v["mcp"].as_str().unwrap_or("?"),
                    pct(0.5),
                    pct(0.95),
                    pct(0.99),
                    v["client_cpu_ms_per_call"].as_f64().unwrap_or(0.0),
                    v["tools_list_bytes"]
                );
                if p50s.len() <= i {
                    p50s.push((format!("{server}, mcp {label}"), Vec::new()));
                }
                p50s[i].1.push(pct(0.5));
            }
        }
        for (label, mut v) in p50s {
            v.sort_by(f64::total_cmp);
            println!("  median p50 ({label}): {:.2} ms (target <= 10 ms)", v[v.len() / 2]);
        }
    });
}

/// A virtual environment with `requirement` installed (made once).
fn venv(label: &str, requirement: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("python-mcp-{label}"));
    let python = dir.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 -m venv")
            .success();
        assert!(ok, "cannot make a virtual environment at {}", dir.display());
    }
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ])
        .status()
        .expect("pip")
        .success();
    assert!(ok, "cannot install {requirement} from PyPI");
    dir
}
