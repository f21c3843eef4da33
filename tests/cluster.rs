//! Several `dispatch serve --http` instances on one PostgreSQL database and
//! one project folder (one `_kb/`): they share the work, an instance killed
//! or paused under load loses its tasks to the others (claimed once its
//! lease has run out, and fenced off if it comes back), nothing is lost,
//! nothing runs twice once its result is committed, and every instance
//! answers for every task.
//!
//! Needs a PostgreSQL server (see `tests/postgres_store.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::http::{HttpServer, call, free_port};
use common::*;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Notify;

/// A lease of 2 s: a dead instance's tasks move within about 3 s.
const TOML: &str = "[store]\nlease_secs = 2\n[http]\nrate_limit_per_minute = 0\n";

/// End the sessions, stop the servers, drop the database.
async fn stop(sessions: Vec<Session>, servers: Vec<HttpServer>, db: PgDatabase) {
    for s in sessions {
        s.cancel().await.ok();
    }
    for s in servers {
        s.terminate().await;
    }
    db.drop().await;
}

/// `n` instances on one database and one project.
async fn cluster(fx: &Fx, db: &PgDatabase, n: usize) -> Vec<HttpServer> {
    let mut spawn = fx.spawn();
    spawn
        .env
        .push(("DISPATCH_DATABASE_URL".into(), db.url.clone()));
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(HttpServer::start(&fx.p, spawn.clone(), free_port()).await);
    }
    servers
}

type Session = rmcp::service::RunningService<rmcp::RoleClient, TestClient>;

async fn delegate(c: &Session, input: &str) -> String {
    let (err, v) = call(
        c,
        "agent_delegate",
        json!({"agent": "writer", "input": input}),
    )
    .await;
    assert!(!err, "{v:#}");
    v["task_id"].as_str().expect("task_id").to_string()
}

async fn result(c: &Session, id: &str) -> Value {
    let (err, v) = call(c, "task_result", json!({"task_id": id, "wait_seconds": 50})).await;
    assert!(!err, "{v:#}");
    assert_eq!(v["done"], true, "{v:#}");
    v
}

/// Per task: owner, epoch, requeues, state, output.
async fn rows(db: &PgDatabase) -> BTreeMap<String, (String, i64, i64, String, Option<String>)> {
    let mut pg = PgConnection::connect(&db.url).await.unwrap();
    let rows = sqlx::query("SELECT id, owner, epoch, requeues, state, output FROM tasks")
        .fetch_all(&mut pg)
        .await
        .unwrap();
    pg.close().await.unwrap();
    rows.iter()
        .map(|r| {
            (
                r.get("id"),
                (
                    r.get::<Option<String>, _>("owner").unwrap_or_default(),
                    r.get("epoch"),
                    r.get("requeues"),
                    r.get("state"),
                    r.get("output"),
                ),
            )
        })
        .collect()
}

/// How many attempts each task has stored, and how many of them answered.
async fn attempts(db: &PgDatabase) -> BTreeMap<String, (i64, i64)> {
    let mut pg = PgConnection::connect(&db.url).await.unwrap();
    let rows = sqlx::query(
        "SELECT task_id, COUNT(*) AS n, COUNT(*) FILTER (WHERE ok) AS ok FROM attempts GROUP BY task_id",
    )
    .fetch_all(&mut pg)
    .await
    .unwrap();
    pg.close().await.unwrap();
    rows.iter()
        .map(|r| (r.get("task_id"), (r.get("n"), r.get("ok"))))
        .collect()
}

/// The ids `task_list` gives, sorted.
async fn list(c: &Session) -> Vec<String> {
    let (err, v) = call(c, "task_list", json!({"limit": 100})).await;
    assert!(!err, "{v:#}");
    let mut ids: Vec<String> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// `usage_report`'s rows and calls.
async fn usage(c: &Session) -> (Value, Value) {
    let (err, v) = call(c, "usage_report", json!({})).await;
    assert!(!err, "{v:#}");
    (v["rows"].clone(), v["total_calls"].clone())
}

/// Requests the fake received whose messages mention `input`.
fn requests_for(fx: &Fx, input: &str) -> usize {
    fx.fake
        .requests()
        .iter()
        .filter(|r| r.body["messages"].to_string().contains(input))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_its_tasks_to_the_others_and_nothing_runs_twice() {
    let Some(db) = postgres_db("three instances, one killed").await else {
        return;
    };
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], TOML).await;
    // Every first call waits at the fake until released: the kill finds
    // each instance with all its tasks in flight.
    let release = Arc::new(Notify::new());
    fx.fake
        .push_all((0..30).map(|_| Behavior::gate(&release, "first answer")));
    fx.fake
        .set_default(Behavior::reply("answer after take-over"));
    let mut servers = cluster(&fx, &db, 3).await;
    let mut sessions = Vec::new();
    for s in &servers {
        sessions.push(s.streamable(None).await.unwrap());
    }
    let mut via = BTreeMap::new();
    for i in 0..30 {
        let id = delegate(&sessions[i % 3], &format!("job-{i:02}")).await;
        via.insert(id, i);
    }
    fx.fake.wait_in_flight(30).await;
    let before = rows(&db).await;
    let owners: BTreeSet<&String> = before.values().map(|r| &r.0).collect();
    assert_eq!(
        owners.len(),
        3,
        "each instance drives the tasks it was given"
    );
    // The third instance's holder tag: the owner of the tasks sent to it.
    let (third, _) = via.iter().find(|(_, i)| **i % 3 == 2).unwrap();
    let killed_holder = before[third].0.clone();

    let killed = servers.pop().unwrap();
    sessions.pop().unwrap().cancel().await.ok();
    killed.kill().await;
    release.notify_waiters();

    // The two left answer for all 30, whoever drove them.
    for id in via.keys() {
        let v = result(&sessions[0], id).await;
        assert_eq!(v["state"], "succeeded", "{v:#}");
    }
    let after = rows(&db).await;
    let stored = attempts(&db).await;
    let mut taken_over = 0;
    for (id, i) in &via {
        let (owner, epoch, requeues, state, output) = &after[id];
        assert_eq!(state, "succeeded");
        let input = format!("job-{i:02}");
        if before[id].0 == killed_holder {
            // Claimed once after the kill, re-run from its stored state.
            taken_over += 1;
            assert_ne!(owner, &killed_holder);
            assert_eq!((*epoch, *requeues), (1, 1), "task {id}");
            assert_eq!(output.as_deref(), Some("answer after take-over"));
            assert_eq!(
                requests_for(&fx, &input),
                2,
                "{input}: the killed call and the re-run"
            );
        } else {
            // Finished where it ran: never claimed, never called again.
            assert_eq!(owner, &before[id].0);
            assert_eq!((*epoch, *requeues), (0, 0), "task {id}");
            assert_eq!(output.as_deref(), Some("first answer"));
            assert_eq!(requests_for(&fx, &input), 1, "{input}");
        }
        assert_eq!(
            stored.get(id),
            Some(&(1, 1)),
            "task {id}: one answer stored"
        );
    }
    assert_eq!(taken_over, 10);
    // One shared `_kb/`: every task's outbox file, each with its final answer.
    for id in via.keys() {
        let file = fx.p.kb().join(format!("outbox/writer-{id}.md"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(after[id].4.as_deref().unwrap()), "{text}");
    }

    // Every instance gives the same answers.
    let listed = list(&sessions[0]).await;
    assert_eq!(listed, via.keys().cloned().collect::<Vec<_>>());
    assert_eq!(list(&sessions[1]).await, listed);
    let report = usage(&sessions[0]).await;
    assert_eq!(report.1, 30, "one answered call per task: {report:?}");
    assert_eq!(usage(&sessions[1]).await, report);
    stop(sessions, servers, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_is_fenced_off_when_it_comes_back() {
    let Some(db) = postgres_db("a paused instance").await else {
        return;
    };
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], TOML).await;
    let release = Arc::new(Notify::new());
    fx.fake.push_all([
        Behavior::gate(&release, "from the paused holder"),
        Behavior::reply("from the new holder"),
    ]);
    let servers = cluster(&fx, &db, 2).await;
    let a = servers[0].streamable(None).await.unwrap();
    let b = servers[1].streamable(None).await.unwrap();
    let id = delegate(&b, "the job").await;
    fx.fake.wait_in_flight(1).await;
    let paused_holder = rows(&db).await[&id].0.clone();

    servers[1].signal(libc::SIGSTOP);
    // Its lease runs out; the other takes the task over and finishes it.
    let v = result(&a, &id).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["output"], "from the new holder", "{v:#}");
    let (owner, epoch, requeues, _, _) = rows(&db).await[&id].clone();
    assert_ne!(owner, paused_holder);
    assert_eq!((epoch, requeues), (1, 1));

    // Back again, with its answer in hand: nothing of it is written.
    servers[1].signal(libc::SIGCONT);
    release.notify_waiters();
    eventually("the paused instance to give the task up", DEADLINE, || {
        let said = servers[1].stderr();
        async move {
            said.contains("another process took this task over")
                .then_some(())
        }
    })
    .await;
    let (_, epoch, _, state, output) = rows(&db).await[&id].clone();
    assert_eq!(epoch, 1);
    assert_eq!(state, "succeeded");
    assert_eq!(output.as_deref(), Some("from the new holder"));
    assert_eq!(attempts(&db).await.get(&id), Some(&(1, 1)));
    let outbox = std::fs::read_to_string(fx.p.kb().join(format!("outbox/writer-{id}.md"))).unwrap();
    assert!(outbox.contains("from the new holder"), "{outbox}");
    assert!(!outbox.contains("from the paused holder"), "{outbox}");
    // And it answers for the task as the store has it.
    let v = result(&b, &id).await;
    assert_eq!(v["output"], "from the new holder", "{v:#}");
    a.cancel().await.ok();
    b.cancel().await.ok();
    for s in servers {
        s.terminate().await;
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_limit_holds_across_the_instances() {
    // Each instance alone would let 4 calls in flight (12 for three).
    the_instances_keep_together_to("a shared provider limit", "per_provider = 4", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_global_limits_hold_across_the_instances() {
    the_instances_keep_together_to("a shared agent limit", "per_agent = 3", 3).await;
    the_instances_keep_together_to("a shared global limit", "global = 2", 2).await;
}

/// Three instances with `limits` in `[limits]` never have more than `peak`
/// calls at the fake at once, and reach it.
async fn the_instances_keep_together_to(test: &str, limits: &str, peak: usize) {
    let Some(db) = postgres_db(test).await else {
        return;
    };
    let toml = format!("{TOML}[limits]\n{limits}\n");
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], &toml).await;
    fx.fake.set_default(Behavior::Delay {
        by: std::time::Duration::from_millis(50),
        then: Box::new(Behavior::reply("slow answer")),
    });
    let servers = cluster(&fx, &db, 3).await;
    let mut sessions = Vec::new();
    for s in &servers {
        sessions.push(s.streamable(None).await.unwrap());
    }
    let mut ids = Vec::new();
    for i in 0..36 {
        ids.push(delegate(&sessions[i % 3], &format!("job-{i:02}")).await);
    }
    for id in &ids {
        let v = result(&sessions[0], id).await;
        assert_eq!(v["state"], "succeeded", "{v:#}");
    }
    assert_eq!(fx.fake.completed(), 36);
    assert_eq!(
        fx.fake.peak_in_flight(),
        peak,
        "the three instances together kept to {limits}"
    );
    // Each instance's metrics say which instance it is, and how many there are.
    let mut holders = BTreeSet::new();
    for s in &servers {
        let text = common::http::client()
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("dispatch_instances_live 3\n"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("dispatch_instance{holder="))
            .unwrap_or_else(|| panic!("no dispatch_instance in {text}"));
        holders.insert(line.to_string());
    }
    assert_eq!(holders.len(), 3, "{holders:?}");
    stop(sessions, servers, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_the_instances() {
    let Some(db) = postgres_db("a shared rate limit").await else {
        return;
    };
    let toml =
        "[store]\nlease_secs = 2\n[http]\nrate_limit_per_minute = 60\nrate_limit_burst = 4\n";
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], toml).await;
    let servers = cluster(&fx, &db, 2).await;
    let http = common::http::client();
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..12 {
        let r = http
            .post(servers[i % 2].url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            refused += 1;
        } else {
            admitted += 1;
        }
    }
    // One client address, one burst of 4, whichever instance it reaches.
    assert_eq!((admitted, refused), (4, 8));
    for s in servers {
        s.terminate().await;
    }
    db.drop().await;
}

/// A 2026-07-28 client needs no sticky routing: it starts an MCP task on one
/// instance and polls another, and the task outlives the first instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_client_polls_any_instance_for_its_task() {
    let Some(python) = common::python::python_2026("MCP tasks across instances") else {
        return;
    };
    let Some(db) = postgres_db("MCP tasks across instances").await else {
        return;
    };
    let toml = format!("{TOML}[tasks]\nanswer_within_ms = 0\n");
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], &toml).await;
    let release = Arc::new(Notify::new());
    fx.fake.push(Behavior::gate(&release, "never sent"));
    fx.fake
        .set_default(Behavior::reply("finished by the other instance"));
    let mut servers = cluster(&fx, &db, 2).await;
    let spec = json!({"tool": "agent_run", "arguments": {"agent": "writer", "input": "x"}});
    let first = servers[0].url("/mcp");
    let started = common::python::py26(&python, &[], "start", &first, &spec.to_string()).await;
    let handle = &started;
    assert_eq!(handle["resultType"], "task", "{started:#}");
    let id = handle["taskId"].as_str().unwrap().to_string();
    fx.fake.wait_in_flight(1).await;

    // The other instance answers for it while the first works on it...
    let other = servers[1].url("/mcp");
    let got = common::python::py26(&python, &[], "get", &other, &id).await;
    assert_eq!(got["status"], "working", "{got:#}");
    // ... and once the first is gone, takes it over and finishes it.
    servers.remove(0).kill().await;
    release.notify_waiters();
    let out = common::python::py26(&python, &[], "wait", &other, &id).await;
    let polls = out["polls"].as_array().unwrap();
    let last = polls.last().unwrap();
    assert_eq!(last["status"], "completed", "{out:#}");
    assert_eq!(
        last["result"]["structuredContent"]["output"], "finished by the other instance",
        "{out:#}"
    );
    for s in servers {
        s.terminate().await;
    }
    db.drop().await;
}
