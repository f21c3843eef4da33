//! stdio against hostile and careless clients: every line gets an answer
//! (JSON-RPC errors for what is not a request) and the next request is still
//! served; closing stdin is a graceful stop that neither loses nor pays
//! twice for the work in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::*;
use serde_json::{Value, json};

/// A raw line-level session with `dispatch serve` after the handshake.
struct Raw {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    replies: std::sync::mpsc::Receiver<Value>,
}

impl Raw {
    fn start(p: &Project) -> Raw {
        let mut child = Command::new(bin())
            .args(["serve", "--root"])
            .arg(p.root())
            .env("DISPATCH_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout is not JSON-RPC ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut raw = Raw {
            child,
            stdin,
            replies,
        };
        raw.send(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#);
        raw.send(b"\n");
        assert_eq!(raw.next()["id"], 0);
        raw.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn next(&self) -> Value {
        self.replies
            .recv_timeout(DEADLINE)
            .expect("a reply within the deadline")
    }
}

#[test]
fn every_bad_line_is_answered_and_the_next_request_served() {
    let p = Project::new();
    let mut raw = Raw::start(&p);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let huge = vec![b'x'; 16 * 1024 * 1024 + 10];
    let cases: Vec<(&str, Vec<u8>, i64, Value)> = vec![
        ("invalid UTF-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}".to_vec(), -32700, Value::Null),
        ("a lone surrogate", br#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":"\ud800"}}"#.to_vec(), -32700, Value::Null),
        ("a NUL byte", b"{\"jsonrpc\":\"2.0\",\0\"id\":3}".to_vec(), -32700, Value::Null),
        ("nesting over 128", deep.into_bytes(), -32700, Value::Null),
        ("two messages on a line", br#"{"jsonrpc":"2.0","id":"a","method":"ping"}{"jsonrpc":"2.0","id":"b","method":"ping"}"#.to_vec(), -32700, Value::Null),
        ("not a request", br#"{"jsonrpc":"2.0","id":7}"#.to_vec(), -32600, json!(7)),
        ("not a request, string id", br#"{"id":"x-1","params":{}}"#.to_vec(), -32600, json!("x-1")),
        ("plain garbage", b"hello".to_vec(), -32700, Value::Null),
        ("a line over 16 MiB", huge, -32700, Value::Null),
    ];
    for (n, (what, line, code, id)) in cases.into_iter().enumerate() {
        raw.send(&line);
        raw.send(b"\n");
        let err = raw.next();
        assert_eq!(err["jsonrpc"], "2.0", "{what}: {err}");
        assert_eq!(err["error"]["code"], code, "{what}: {err}");
        assert_eq!(err["id"], id, "{what}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().len() < 400,
            "{what}: the error is clipped"
        );
        let ping = format!("{{\"jsonrpc\":\"2.0\",\"id\":\"ping-{n}\",\"method\":\"ping\"}}\n");
        raw.send(ping.as_bytes());
        let pong = raw.next();
        assert_eq!(pong["id"], format!("ping-{n}"), "{what}: {pong}");
        assert!(pong.get("result").is_some(), "{what}: {pong}");
    }
    // A lone CR ends a line: it must not swallow the request after it.
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":\"cr\",\"method\":\"ping\"}\r{\"jsonrpc\":\"2.0\",\"id\":\"after\",\"method\":\"ping\"}\r\n");
    let mut ids = vec![raw.next()["id"].clone(), raw.next()["id"].clone()];
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, [json!("after"), json!("cr")]);
    drop(raw.stdin);
    let status = raw.child.wait().unwrap();
    assert!(status.success());
}

fn task_json(p: &Project, id: &str) -> Value {
    let o = Command::new(bin())
        .args(["task", id, "--json", "--root"])
        .arg(p.root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// stdin closes while a task waits on its provider: the task gets the grace
/// period, finishes, and is stored once; the provider is called once.
#[tokio::test]
async fn closing_stdin_lets_running_tasks_finish() {
    let fx = Fx::new(&[("a", &agent("openai/gpt-4o-mini"))], "").await;
    let gate = Arc::new(tokio::sync::Notify::new());
    fx.fake
        .set_default(Behavior::gate(&gate, "finished after stdin closed"));
    let c = fx.connect().await;
    let started = c
        .ok("agent_delegate", json!({"agent": "a", "input": "x"}))
        .await;
    let task = id(&started);
    fx.fake.wait_in_flight(1).await;
    let stderr = c.stderr.clone();
    let mut child = {
        let Client { service, child, .. } = c;
        let _ = service.cancel().await; // closes the server's stdin
        child
    };
    // The provider answers only once the server is stopping.
    eventually("the server waits for its running task", DEADLINE, || {
        let log = stderr.lock().unwrap().clone();
        async move {
            log.contains("shutting down: waiting up to 10 s for the running tasks")
                .then_some(())
        }
    })
    .await;
    gate.notify_waiters();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    let t = task_json(&fx.p, &task);
    assert_eq!(t["task"]["state"], "succeeded", "{t:#}");
    assert_eq!(t["task"]["output"], "finished after stdin closed");
    assert_eq!(t["task"]["requeues"], 0);
    assert_eq!(fx.fake.request_count(), 1, "paid once");
}

/// A task that cannot finish within the grace period is stored as queued,
/// not counted as a crash, and resumed by the next start.
#[tokio::test]
async fn a_task_past_the_grace_period_resumes_without_counting_as_a_crash() {
    let fx = Fx::new(
        &[("a", &agent("openai/gpt-4o-mini"))],
        "[http]\nshutdown_grace_secs = 1\n[recovery]\nmax_requeues = 0\n",
    )
    .await;
    fx.fake.set_default(Behavior::Hang);
    let c = fx.connect().await;
    let started = c
        .ok("agent_delegate", json!({"agent": "a", "input": "x"}))
        .await;
    let task = id(&started);
    fx.fake.wait_in_flight(1).await;
    assert!(c.close().await.success());
    let t = task_json(&fx.p, &task);
    assert_eq!(t["task"]["state"], "queued", "{t:#}");
    assert_eq!(t["task"]["requeues"], 0);
    // With max_requeues = 0, a crash would have failed it as interrupted.
    fx.fake.set_default(Behavior::reply("resumed"));
    let c = fx.connect().await;
    let done = wait_done(&c, &task).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["output"], "resumed");
    c.close().await;
}
