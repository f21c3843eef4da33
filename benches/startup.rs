//! Time from spawning `dispatch serve` to its answer to `initialize`, with 100
//! agent files in the project (target: < 50 ms). Run: `cargo bench --bench startup`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 100;
const RUNS: usize = 30;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("mkdir");
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/code-review.agent.md");
    let template = std::fs::read_to_string(shipped).expect("shipped agent");
    for i in 0..AGENTS {
        // Same realistic file, unique names, no mirrors (they would need the auditor).
        let text = template
            .replace("name: code-review\n", &format!("name: agent-{i:03}\n"))
            .replace("mirror: code-review-auditor\n", "");
        std::fs::write(agents.join(format!("agent-{i:03}.agent.md")), text).expect("write");
    }
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
    let mut samples = Vec::with_capacity(RUNS);
    for run in 0..=RUNS {
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dispatch"))
            .args(["serve", "--root"])
            .arg(dir.path())
            .env("DISPATCH_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{init}").expect("write");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let elapsed = start.elapsed();
        assert!(line.contains("\"serverInfo\""), "unexpected answer: {line}");
        drop(stdin);
        child.wait().expect("wait");
        if run > 0 {
            samples.push(elapsed); // run 0 warms the page cache
        }
    }
    report("spawn -> initialize answer, 100 agents", &mut samples);
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms ({} runs)",
        ms(p(0.5)),
        ms(p(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}
