//! The KB with `[auth]`: every subject has a KB of its own (its tasks'
//! outbox files, its runs' sessions, whatever it writes) and shares only
//! `context/`, which every subject reads and only `[auth] context_writers`
//! change. Driven over both HTTP transports, through every KB tool, the
//! resources and the list-changed notices.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::auth_server::{ALL_SCOPES, AUDIENCE, AuthServer};
use common::fake_provider::Behavior;
use common::fixture::{Fx, agent};
use common::http::{HttpServer, SseClient, call};
use rmcp::model::ReadResourceRequestParams;
use serde_json::{Value, json};

const SECRET: &str = "alice-private-4711";

async fn setup() -> (AuthServer, Fx, HttpServer) {
    let auth = AuthServer::start().await;
    let toml = format!(
        "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\ncontext_writers = [\"carol\"]\n",
        auth.issuer()
    );
    let fx = Fx::new(&[("helper", &agent("openai/gpt-4o-mini"))], &toml).await;
    fx.fake.set_default(Behavior::reply("an answer"));
    std::fs::create_dir_all(fx.p.kb().join("context")).unwrap();
    std::fs::write(fx.p.kb().join("context/team.md"), "# Team\nshared notes\n").unwrap();
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    (auth, fx, s)
}

fn paths(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn each_subject_sees_and_writes_only_its_own_kb() {
    let (auth, fx, s) = setup().await;
    let alice = s
        .streamable(Some(&auth.valid("alice", &ALL_SCOPES)))
        .await
        .unwrap();
    let bob_token = auth.valid("bob", &ALL_SCOPES);
    let bob = s.streamable(Some(&bob_token)).await.unwrap();

    // Alice's task and run leave files in her KB, under the usual names.
    let (err, run) = call(
        &alice,
        "agent_run",
        json!({"agent": "helper", "input": SECRET, "wait_seconds": 30}),
    )
    .await;
    assert!(!err, "{run}");
    let outbox = run["kb_path"].as_str().unwrap().to_string();
    assert!(outbox.starts_with("outbox/helper-"), "{outbox}");
    let (err, wf) = call(
        &alice,
        "workflow_run",
        json!({"workflow": {"steps": [{"id": "one", "agent": "helper"}]}, "input": SECRET, "wait_seconds": 30}),
    )
    .await;
    assert!(!err, "{wf}");
    let (err, mine) = call(&alice, "kb_read", json!({"path": outbox})).await;
    assert!(
        !err && mine["content"].as_str().unwrap().contains(SECRET),
        "{mine}"
    );
    let (_, listing) = call(&alice, "kb_list", json!({"path": "sessions"})).await;
    assert_eq!(paths(&listing).len(), 1, "{listing}");
    let (err, _) = call(
        &alice,
        "kb_write",
        json!({"path": "notes/plan.md", "content": SECRET}),
    )
    .await;
    assert!(!err);

    // Bob, through every tool: nothing of hers, under any name.
    for path in [outbox.as_str(), "notes/plan.md"] {
        let (err, msg) = call(&bob, "kb_read", json!({"path": path})).await;
        assert!(err, "{path}: {msg}");
        assert!(!msg.to_string().contains(SECRET), "{msg}");
    }
    for folder in ["outbox", "sessions", "notes", ""] {
        let (_, listing) = call(&bob, "kb_list", json!({"path": folder, "recursive": true})).await;
        assert!(!listing.to_string().contains("helper-"), "{listing}");
        assert!(!listing.to_string().contains("plan.md"), "{listing}");
        assert!(!listing.to_string().contains("subjects"), "{listing}");
    }
    let (_, found) = call(&bob, "kb_search", json!({"query": SECRET})).await;
    assert_eq!(found["matches"], json!([]), "{found}");
    let (_, found) = call(
        &bob,
        "kb_search",
        json!({"query": SECRET, "path": "outbox"}),
    )
    .await;
    assert_eq!(found["matches"], json!([]), "{found}");
    // Alice's whole space under its disk name is not reachable either.
    let disk = dispatch::kb::subject_folder("alice");
    let (err, _) = call(
        &bob,
        "kb_read",
        json!({"path": format!("subjects/{disk}/{outbox}")}),
    )
    .await;
    assert!(err);

    // Bob's writes land in his own KB: hers is untouched.
    let (err, w) = call(
        &bob,
        "kb_write",
        json!({"path": outbox, "content": "TAMPERED BY BOB"}),
    )
    .await;
    assert!(!err, "{w}");
    let (_, mine) = call(&alice, "kb_read", json!({"path": outbox})).await;
    assert!(mine["content"].as_str().unwrap().contains(SECRET), "{mine}");
    let (_, his) = call(&bob, "kb_read", json!({"path": outbox})).await;
    assert_eq!(his["content"], "TAMPERED BY BOB");

    // Resources: each sees its own files and the shared ones.
    let listed = |r: rmcp::model::ListResourcesResult| -> Vec<String> {
        r.resources.iter().map(|x| x.uri.clone()).collect()
    };
    let hers = listed(alice.list_resources(None).await.unwrap());
    let his = listed(bob.list_resources(None).await.unwrap());
    assert!(
        hers.iter().any(|u| u.ends_with("notes/plan.md")),
        "{hers:?}"
    );
    assert!(
        hers.contains(&"kb://context/team.md".to_string()),
        "{hers:?}"
    );
    assert!(his.contains(&"kb://context/team.md".to_string()), "{his:?}");
    assert!(!his.iter().any(|u| u.ends_with("notes/plan.md")), "{his:?}");
    assert!(!his.iter().any(|u| u.contains("sessions/")), "{his:?}");
    let read = bob
        .read_resource(ReadResourceRequestParams::new("kb://notes/plan.md"))
        .await;
    assert!(read.is_err(), "{read:?}");
    let read = alice
        .read_resource(ReadResourceRequestParams::new("kb://notes/plan.md"))
        .await
        .unwrap();
    assert!(format!("{read:?}").contains(SECRET));

    // Legacy SSE: the same wall.
    let mut sse = SseClient::connect(&s.url(""), Some(&bob_token))
        .await
        .unwrap();
    sse.handshake().await;
    let r = sse.call("kb_read", json!({"path": "notes/plan.md"})).await;
    assert_eq!(r["isError"], true, "{r}");
    let r = sse
        .request("resources/read", json!({"uri": "kb://notes/plan.md"}))
        .await;
    assert!(!r.to_string().contains(SECRET), "{r}");
    let r = sse.call("kb_search", json!({"query": SECRET})).await;
    assert_eq!(r["structuredContent"]["matches"], json!([]), "{r}");
    let r = sse
        .call("kb_list", json!({"path": "", "recursive": true}))
        .await;
    assert!(!r.to_string().contains("plan.md"), "{r}");
    let r = sse.request("resources/list", json!({})).await;
    assert!(!r.to_string().contains("plan.md"), "{r}");
    let r = sse
        .call(
            "kb_write",
            json!({"path": "notes/plan.md", "content": "TAMPERED OVER SSE"}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let (_, mine) = call(&alice, "kb_read", json!({"path": "notes/plan.md"})).await;
    assert_eq!(mine["content"], SECRET, "{mine}");

    // On disk, each subject's files are in its own folder.
    let kb = fx.p.kb();
    assert!(
        std::fs::read_to_string(kb.join("subjects").join(&disk).join(&outbox))
            .unwrap()
            .contains(SECRET)
    );
    assert!(!kb.join(&outbox).exists(), "nothing in the shared outbox");
}

#[tokio::test]
async fn context_is_shared_and_written_only_by_its_writers() {
    let (auth, fx, s) = setup().await;
    let bob = s
        .streamable(Some(&auth.valid("bob", &ALL_SCOPES)))
        .await
        .unwrap();
    let carol = s
        .streamable(Some(&auth.valid("carol", &ALL_SCOPES)))
        .await
        .unwrap();

    let (err, r) = call(&bob, "kb_read", json!({"path": "context/team.md"})).await;
    assert!(!err && r["content"].as_str().unwrap().contains("shared notes"));
    let (_, root) = call(&bob, "kb_list", json!({})).await;
    assert_eq!(
        paths(&root),
        ["context", "inbox", "outbox", "sessions"],
        "{root}"
    );
    let (_, found) = call(&bob, "kb_search", json!({"query": "shared notes"})).await;
    assert_eq!(found["matches"][0]["path"], "context/team.md", "{found}");

    let (err, msg) = call(
        &bob,
        "kb_write",
        json!({"path": "context/team.md", "content": "bob was here"}),
    )
    .await;
    assert!(err, "{msg}");
    assert!(msg.to_string().contains("context_writers"), "{msg}");
    let (err, msg) = call(
        &carol,
        "kb_write",
        json!({"path": "context/team.md", "content": "# Team\ncarol's edit\n"}),
    )
    .await;
    assert!(!err, "{msg}");
    let (_, r) = call(&bob, "kb_read", json!({"path": "context/team.md"})).await;
    assert!(
        r["content"].as_str().unwrap().contains("carol's edit"),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(fx.p.kb().join("context/team.md")).unwrap(),
        "# Team\ncarol's edit\n"
    );
}

#[tokio::test]
async fn list_changed_notices_follow_the_subjects_view() {
    let (auth, _fx, s) = setup().await;
    let alice_token = auth.valid("alice", &ALL_SCOPES);
    let carol_token = auth.valid("carol", &ALL_SCOPES);
    let mut bob = SseClient::connect(&s.url(""), Some(&auth.valid("bob", &ALL_SCOPES)))
        .await
        .unwrap();
    bob.handshake().await;
    let mut alice = SseClient::connect(&s.url(""), Some(&alice_token))
        .await
        .unwrap();
    alice.handshake().await;
    let carol = s.streamable(Some(&carol_token)).await.unwrap();

    // Alice writes in her own KB: she is told. Carol changes the shared
    // folder: both are told. (That Bob is not told of Alice's change is
    // `KbView::sees`, unit-tested in src/kb/tests.rs: a notice that never
    // comes cannot be awaited without a timer.)
    let r = alice
        .call("kb_write", json!({"path": "notes/a.md", "content": "x"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let n = alice.next_notification().await;
    assert_eq!(n["method"], "notifications/resources/list_changed", "{n}");
    let (err, _) = call(
        &carol,
        "kb_write",
        json!({"path": "context/new.md", "content": "y"}),
    )
    .await;
    assert!(!err);
    let n = alice.next_notification().await;
    assert_eq!(n["method"], "notifications/resources/list_changed", "{n}");
    let n = bob.next_notification().await;
    assert_eq!(n["method"], "notifications/resources/list_changed", "{n}");
    // Bob lists: the shared file is there, Alice's is not.
    let r = bob.request("resources/list", json!({})).await;
    let text = r.to_string();
    assert!(text.contains("kb://context/new.md"), "{text}");
    assert!(!text.contains("notes/a.md"), "{text}");
}
