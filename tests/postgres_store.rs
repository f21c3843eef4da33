//! The real binary on a real PostgreSQL server: `DISPATCH_DATABASE_URL` or
//! `[store] url` picks it, tasks and their tool turns land in it and outlive
//! the process, and a URL dispatch cannot use is a clear error.
//!
//! The server is the store tests' (`DISPATCH_TEST_POSTGRES_URL`, or a
//! throwaway cluster they start); without one these tests say so and pass,
//! unless `DISPATCH_REQUIRE_POSTGRES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::http::HttpServer;
use common::*;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};

/// An agent that reads the KB before it answers (a tool loop, so turns are stored).
fn reader() -> String {
    "---\ndescription: reads, then answers\nmodel: openai/reader\ntools: [kb_read]\n---\nRead first.\n"
        .to_string()
}

#[tokio::test]
async fn tasks_and_their_turns_live_in_postgresql_and_outlive_the_server() {
    let Some(db) = postgres_db("tasks on PostgreSQL").await else {
        return;
    };
    let fx = Fx::new(&[("reader", &reader())], "").await;
    fx.p.write("_kb/context/team.md", "# Team\nAda and Grace.\n");
    fx.fake.queue_model(
        "reader",
        [
            Behavior::call("kb_read", json!({"path": "context/team.md"})),
            Behavior::reply("the team is Ada and Grace"),
        ],
    );
    let mut spawn = fx.spawn();
    spawn
        .env
        .push(("DISPATCH_DATABASE_URL".into(), db.url.clone()));
    let c = connect_with(&fx.p, spawn.clone()).await;
    let out = run(&c, "reader", json!("who is on the team?")).await;
    assert_eq!(out["state"], "succeeded", "{out:#}");
    let task = id(&out);
    c.close().await;

    // In the database itself: the task, its attempts and its turns.
    let mut pg = PgConnection::connect(&db.url).await.unwrap();
    let row = sqlx::query("SELECT state, output FROM tasks WHERE id = $1")
        .bind(&task)
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("state"), "succeeded");
    assert_eq!(
        row.get::<Option<String>, _>("output").as_deref(),
        Some("the team is Ada and Grace")
    );
    let turns: i64 = sqlx::query("SELECT count(*) AS n FROM turns WHERE task_id = $1")
        .bind(&task)
        .fetch_one(&mut pg)
        .await
        .unwrap()
        .get("n");
    assert_eq!(turns, 2, "the model's turn and the tool's result");
    pg.close().await.unwrap();
    // ... and not in a SQLite file beside the project.
    assert!(!fx.p.root().join(".dispatch/dispatch.db").exists());

    // A new server process answers for it from the database.
    let c = connect_with(&fx.p, spawn).await;
    let st = status(&c, &task).await;
    assert_eq!(st["state"], "succeeded", "{st:#}");
    assert_eq!(st["turns"].as_array().map(Vec::len), Some(2), "{st:#}");
    c.close().await;
    db.drop().await;
}

#[tokio::test]
async fn a_store_url_in_dispatch_toml_is_used_and_the_environment_wins() {
    let Some(db) = postgres_db("[store] url").await else {
        return;
    };
    let fx = Fx::new(
        &[("writer", &agent("openai/gpt-4o-mini"))],
        &format!("[store]\nurl = \"{}\"\npool_size = 2\n", db.url),
    )
    .await;
    fx.fake.set_default(Behavior::reply("kept in postgres"));
    let c = fx.connect().await;
    let out = run(&c, "writer", json!("hello")).await;
    assert_eq!(out["state"], "succeeded", "{out:#}");
    c.close().await;
    let mut pg = PgConnection::connect(&db.url).await.unwrap();
    let n: i64 = sqlx::query("SELECT count(*) AS n FROM tasks")
        .fetch_one(&mut pg)
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 1);
    pg.close().await.unwrap();
    assert!(!fx.p.root().join(".dispatch/dispatch.db").exists());

    // DISPATCH_DATABASE_URL overrides the file's url.
    let file = fx.p.root().join("elsewhere.db");
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(["tasks", "--json", "--root"]).arg(fx.p.root());
    fx.spawn().apply(&mut cmd);
    let out = cmd
        .env("DISPATCH_DATABASE_URL", &file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(file.exists(), "the environment's SQLite file was used");
    db.drop().await;
}

#[tokio::test]
async fn a_database_url_dispatch_cannot_use_is_a_clear_error() {
    let p = Project::new();
    for (url, says) in [
        (
            "mysql://root:hunter2@127.0.0.1/dispatch",
            "cannot store tasks in `mysql://`",
        ),
        // Nothing listens on port 1: the error names the server, not the password.
        (
            "postgres://dispatch:hunter2@127.0.0.1:1/dispatch",
            "127.0.0.1:1",
        ),
    ] {
        let out = tokio::process::Command::new(bin())
            .args(["tasks", "--root"])
            .arg(p.root())
            .env("DISPATCH_DATABASE_URL", url)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
    }
    // Never a SQLite file named after the URL in the working folder.
    assert!(!p.root().join("mysql:").exists());
}

/// `dispatch store check` / `migrate` with `args` and `url`: exit status and stdout.
async fn store_cmd(p: &Project, url: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin())
        .arg("store")
        .args(args)
        .arg("--root")
        .arg(p.root())
        .env("DISPATCH_DATABASE_URL", url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("hunter2") && !String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    (out.status.success(), text)
}

#[tokio::test]
async fn dispatch_store_check_and_migrate_say_where_the_schema_stands() {
    let Some(db) = postgres_db("dispatch store").await else {
        return;
    };
    let p = Project::new();
    // The same server, with a password it ignores (trust), to see it hidden.
    let url = db
        .url
        .replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    let (ok, out) = store_cmd(&p, &url, &["check"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("(PostgreSQL)") && out.contains("postgres:***@"),
        "{out}"
    );
    assert!(out.contains("migration(s) to apply"), "{out}");

    let (ok, out) = store_cmd(&p, &url, &["migrate"]).await;
    assert!(ok, "{out}");
    let (ok, out) = store_cmd(&p, &url, &["check", "--json"]).await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "up_to_date", "{v:#}");
    assert_eq!(v["backend"], "postgres");

    // A migration this binary does not know: a newer dispatch made it.
    let mut pg = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut pg)
    .await
    .unwrap();
    pg.close().await.unwrap();
    let (ok, out) = store_cmd(&p, &url, &["check"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("newer than this dispatch (migration 99"),
        "{out}"
    );
    db.drop().await;
}

/// `/healthz` reports the store, and 503 once its database is gone (a load
/// balancer then sends work to another instance).
#[tokio::test]
async fn healthz_reports_the_postgresql_store_and_its_loss() {
    let Some(db) = postgres_db("healthz").await else {
        return;
    };
    let fx = Fx::new(&[("writer", &agent("openai/gpt-4o-mini"))], "").await;
    let mut spawn = fx.spawn();
    spawn
        .env
        .push(("DISPATCH_DATABASE_URL".into(), db.url.clone()));
    let s = HttpServer::start(&fx.p, spawn, 0).await;
    let health = || async {
        let r = common::http::client()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().await.unwrap())
    };
    let (code, v) = health().await;
    assert_eq!(code, 200, "{v:#}");
    assert_eq!(v["store"]["backend"], "postgres", "{v:#}");
    assert_eq!(v["store"]["ok"], true, "{v:#}");

    db.drop().await;
    let (code, v) = health().await;
    assert_eq!(code, 503, "{v:#}");
    assert_eq!(v["status"], "store_unreachable", "{v:#}");
    assert_eq!(v["store"]["ok"], false, "{v:#}");
    assert!(
        v["store"]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v:#}"
    );
}
