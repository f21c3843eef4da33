//! `kb_search` over 10,000 files / 100 MB (target: < 1 s), through the library
//! and through the MCP tool of a running server. Run: `cargo bench --bench kb_search`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dispatch::kb::{Kb, SearchQuery};

const FILES: usize = 10_000;
const FILE_BYTES: usize = 10 * 1024;
const RUNS: usize = 7;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kb_dir = dir.path().join("_kb");
    let line = "The quick brown fox jumps over the lazy dog while the build runs again.\n";
    let mut body = String::with_capacity(FILE_BYTES);
    while body.len() + line.len() <= FILE_BYTES {
        body.push_str(line);
    }
    for i in 0..FILES {
        let sub = kb_dir.join(format!("outbox/batch-{:02}", i % 50));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let mut text = body.clone();
        if i % 100 == 0 {
            text.push_str(&format!("incident INC-{i} resolved by rollback\n"));
        }
        std::fs::write(sub.join(format!("note-{i:05}.md")), text).expect("write");
    }
    let total: usize = FILES * body.len();
    println!("corpus: {FILES} files, {:.1} MB", total as f64 / 1e6);

    let kb = Kb::open(&kb_dir).expect("open kb");
    let cases = [
        (
            "literal, 100 hits",
            SearchQuery {
                pattern: "resolved by rollback".into(),
                ..SearchQuery::default()
            },
        ),
        (
            "regex, 100 hits",
            SearchQuery {
                pattern: r"INC-\d+ resolved".into(),
                regex: true,
                ..SearchQuery::default()
            },
        ),
        (
            "literal, no hit",
            SearchQuery {
                pattern: "no such phrase anywhere".into(),
                ..SearchQuery::default()
            },
        ),
        (
            "case-insensitive, no hit",
            SearchQuery {
                pattern: "NO SUCH PHRASE".into(),
                case_insensitive: true,
                ..SearchQuery::default()
            },
        ),
    ];
    for (name, q) in &cases {
        let mut samples = Vec::new();
        for run in 0..=RUNS {
            let start = Instant::now();
            let r = kb.search(q).expect("search");
            let t = start.elapsed();
            assert_eq!(r.files_searched as usize, FILES);
            if run > 0 {
                samples.push(t);
            }
        }
        report(&format!("library kb.search ({name})"), &mut samples);
    }

    // The same through the MCP tool of a real server (includes JSON-RPC).
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
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"bench","version":"0"}}}}}}"#).expect("write");
    out.read_line(&mut line).expect("read");
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .expect("write");
    let mut samples = Vec::new();
    for id in 1..=RUNS + 1 {
        let start = Instant::now();
        writeln!(stdin, r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"kb_search","arguments":{{"query":"resolved by rollback"}}}}}}"#).expect("write");
        loop {
            line.clear();
            out.read_line(&mut line).expect("read");
            if line.contains(&format!("\"id\":{id},")) {
                break;
            }
        }
        if id > 1 {
            samples.push(start.elapsed());
        }
        assert!(line.contains("INC-0 resolved"), "unexpected answer");
    }
    report("MCP kb_search over stdio (literal, 100 hits)", &mut samples);
    drop(stdin);
    child.wait().expect("wait");
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: median {:.0} ms, min {:.0} ms, max {:.0} ms ({} runs)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}
