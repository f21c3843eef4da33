//! Streamable HTTP resumption (`Last-Event-ID`) against the real binary, in raw
//! HTTP so every header and SSE field is visible.
//!
//! What rmcp 3.9.0's `LocalSessionManager` (our session manager) supports, and
//! these tests pin: each POST request's SSE stream starts with a priming event
//! (`id: 0/<stream>`, empty data, `retry:`), every later event on it has an id
//! `<index>/<stream>`, and the last events of a stream whose request is still
//! running are cached in memory, so `GET /mcp` with `Mcp-Session-Id` and
//! `Last-Event-ID` replays them and then carries the rest of the stream, the
//! tool result included. Once the result has been sent, the stream and its
//! cache are gone; an id that cannot be resumed gets `200` with an empty
//! stream that ends at once. A session resumes only for the subject that
//! opened it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::sync::Arc;

use common::DEADLINE;
use common::auth_server::{ALL_SCOPES, AUDIENCE, AuthServer};
use common::fake_provider::Behavior;
use common::http::{HttpServer, client, server};
use serde_json::{Value, json};
use tokio::sync::Notify;

const PROTOCOL: &str = "2025-06-18";

/// One SSE event as the server framed it.
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    retry: Option<u64>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// `(index, stream)` from an id `index/stream`.
    fn position(&self) -> (u64, String) {
        let id = self
            .id
            .as_deref()
            .unwrap_or_else(|| panic!("no id: {self:?}"));
        let (index, stream) = id
            .split_once('/')
            .unwrap_or_else(|| panic!("id {id:?} is not index/stream"));
        (index.parse().expect("numeric index"), stream.to_string())
    }
}

/// SSE events read off a streaming response, one at a time.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    fn new(resp: reqwest::Response) -> Events {
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` when the
    /// stream ends. Panics if nothing comes within the deadline.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event {
                    id: None,
                    retry: None,
                    data: String::new(),
                };
                let mut fields = false;
                for line in block.lines() {
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match name {
                        "id" => ev.id = Some(value.to_string()),
                        "retry" => ev.retry = value.parse().ok(),
                        "data" => {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(value);
                        }
                        _ => continue,
                    }
                    fields = true;
                }
                if fields {
                    return Some(ev);
                }
                continue;
            }
            let chunk = tokio::time::timeout(DEADLINE, self.resp.chunk())
                .await
                .expect("an SSE event or the end of the stream in time")
                .expect("read the SSE stream");
            match chunk {
                Some(c) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&c).replace("\r\n", "\n")),
                None => return None,
            }
        }
    }

    /// Every event until the stream ends.
    async fn rest(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

/// Raw Streamable HTTP requests, with a bearer token if given.
struct Mcp<'a> {
    s: &'a HttpServer,
    token: Option<String>,
}

impl Mcp<'_> {
    fn new(s: &HttpServer, token: Option<String>) -> Mcp<'_> {
        Mcp { s, token }
    }

    async fn post(&self, session: Option<&str>, body: &Value) -> reqwest::Response {
        let mut rb = client()
            .post(self.s.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(body);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(id) = session {
            rb = rb
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", PROTOCOL);
        }
        rb.send().await.expect("POST /mcp")
    }

    async fn get(&self, session: Option<&str>, last_event_id: Option<&str>) -> reqwest::Response {
        let mut rb = client()
            .get(self.s.url("/mcp"))
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", PROTOCOL);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(id) = session {
            rb = rb.header("mcp-session-id", id);
        }
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        rb.send().await.expect("GET /mcp")
    }

    async fn delete(&self, session: &str) -> reqwest::Response {
        let mut rb = client()
            .delete(self.s.url("/mcp"))
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", PROTOCOL);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb.send().await.expect("DELETE /mcp")
    }

    /// `initialize` + `notifications/initialized`; returns the session id.
    async fn initialize(&self) -> String {
        let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "resume-test", "version": "0"}}});
        let r = self.post(None, &init).await;
        let session = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("Mcp-Session-Id")
            .to_string();
        let events = Events::new(r).rest().await;
        assert!(
            events
                .iter()
                .any(|e| !e.data.is_empty()
                    && e.json()["result"]["serverInfo"]["name"] == "dispatch"),
            "{events:?}"
        );
        let r = self
            .post(
                Some(&session),
                &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 202);
        session
    }

    /// A ping on the session answers: the session is alive and usable.
    async fn ping(&self, session: &str, id: u64) {
        let r = self
            .post(
                Some(session),
                &json!({"jsonrpc":"2.0","id": id,"method":"ping"}),
            )
            .await;
        let events = Events::new(r).rest().await;
        assert!(
            events.iter().any(|e| !e.data.is_empty()
                && e.json()["id"] == id
                && e.json().get("result").is_some()),
            "{events:?}"
        );
    }
}

/// `tools/call agent_run` with a progress token, so progress rides its stream.
fn agent_run(id: u64, input: &str) -> Value {
    json!({"jsonrpc":"2.0","id": id,"method":"tools/call","params":{
        "name": "agent_run",
        "arguments": {"agent": "helper", "input": input, "wait_seconds": 60},
        "_meta": {"progressToken": format!("progress-{id}")}}})
}

fn is_progress(e: &Event) -> bool {
    !e.data.is_empty() && e.json()["method"] == "notifications/progress"
}

fn progress_message(e: &Event) -> String {
    e.json()["params"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Opens the call's stream and reads the priming event and the first
/// progress event (the task's state: "running", or "queued" when no slot
/// was free); returns them with the stream still open.
async fn start_held_call(m: &Mcp<'_>, session: &str, id: u64) -> (Events, Event, Event) {
    let mut events = Events::new(m.post(Some(session), &agent_run(id, "slow work")).await);
    let priming = events.next().await.expect("the priming event");
    assert!(priming.data.is_empty(), "{priming:?}");
    assert_eq!(priming.retry, Some(3000), "{priming:?}");
    assert_eq!(priming.position().0, 0, "{priming:?}");
    let queued = events.next().await.expect("the first progress event");
    assert!(is_progress(&queued), "{queued:?}");
    let first = progress_message(&queued);
    assert!(
        first.ends_with(": running") || first.ends_with(": queued"),
        "{queued:?}"
    );
    assert_eq!(queued.position().1, priming.position().1, "same stream");
    (events, priming, queued)
}

#[tokio::test]
async fn a_dropped_tool_call_stream_resumes_from_last_event_id() {
    let (fx, s) = server("").await;
    let release = Arc::new(Notify::new());
    fx.fake
        .set_default(Behavior::gate(&release, "answer after the reconnect"));
    let m = Mcp::new(&s, None);
    let session = m.initialize().await;

    let (events, _priming, queued) = start_held_call(&m, &session, 2).await;
    let last_seen = queued.id.clone().expect("id");
    let (last_index, stream) = queued.position();
    // The client goes away mid-call; the call goes on without it.
    drop(events);
    fx.fake.wait_in_flight(1).await;

    let mut resumed = Events::new(m.get(Some(&session), Some(&last_seen)).await);
    // rmcp 3.9.0 replays from the Last-Event-ID event itself (inclusive), so a
    // client sees that one event twice; ids let it drop the duplicate.
    let again = resumed.next().await.expect("the replay");
    assert_eq!(again.id.as_deref(), Some(last_seen.as_str()), "{again:?}");
    // Then what the client missed: the task started and called the provider
    // while nobody was connected. It arrives before the provider answers.
    let missed = resumed.next().await.expect("a missed progress event");
    assert!(is_progress(&missed), "{missed:?}");
    assert!(!progress_message(&missed).contains("queued"), "{missed:?}");
    assert_eq!(missed.position(), (last_index + 1, stream.clone()));

    // Only now may the provider answer: the result comes on the resumed stream,
    // which then ends.
    release.notify_waiters();
    let rest = resumed.rest().await;
    let last = rest.last().expect("the tool result");
    let answer = last.json();
    assert_eq!(answer["id"], 2, "the stream ends with the result: {rest:?}");
    let result = &answer["result"]["structuredContent"];
    assert_eq!(result["state"], "succeeded", "{answer:#}");
    assert!(
        result["output"]
            .as_str()
            .unwrap_or_default()
            .contains("answer after the reconnect"),
        "{answer:#}"
    );
    let mut index = last_index + 1;
    for e in &rest {
        let (i, st) = e.position();
        assert_eq!(st, stream, "{e:?}");
        assert!(i > index, "ids increase: {e:?} after {index}");
        index = i;
    }
    // The session carries on.
    m.ping(&session, 3).await;
    assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
}

#[tokio::test]
async fn unusable_last_event_ids_get_an_empty_stream() {
    let (fx, s) = server("").await;
    fx.fake.set_default(Behavior::reply("quick answer"));
    let m = Mcp::new(&s, None);
    let session = m.initialize().await;

    // A call read to its end: its stream (and rmcp's cache of it) is gone.
    let mut events = Events::new(m.post(Some(&session), &agent_run(2, "quick")).await);
    let priming = events.next().await.expect("priming");
    let rest = events.rest().await;
    assert_eq!(
        rest.last().map(|e| e.json()["id"].clone()),
        Some(json!(2)),
        "{rest:?}"
    );
    let finished = priming.id.expect("priming id");

    // Garbage, an overflowing index, a stream that never existed, and the
    // finished stream: 200 with an empty stream that ends at once (rmcp
    // answers so rather than with an error status so that EventSource clients
    // stop retrying the same id). No panic, and the session stays usable.
    for id in [
        "garbage",
        "",
        "1/not-a-number",
        "99999999999999999999999/0",
        "0/4242",
        finished.as_str(),
    ] {
        let r = m.get(Some(&session), Some(id)).await;
        let events = Events::new(r).rest().await;
        assert!(events.is_empty(), "Last-Event-ID {id:?}: {events:?}");
    }
    m.ping(&session, 3).await;

    // Without a live session there is nothing to resume.
    let r = m
        .get(
            Some("00000000-0000-0000-0000-000000000000"),
            Some(&finished),
        )
        .await;
    assert_eq!(r.status().as_u16(), 404);
    let r = m.get(None, Some(&finished)).await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap_or_default().contains("Session ID"));
    assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
}

#[tokio::test]
async fn a_session_resumes_only_for_its_own_subject() {
    let auth = AuthServer::start().await;
    let toml = format!(
        "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let (fx, s) = server(&toml).await;
    let release = Arc::new(Notify::new());
    fx.fake
        .set_default(Behavior::gate(&release, "alice's private answer"));
    let alice = Mcp::new(&s, Some(auth.valid("alice", &ALL_SCOPES)));
    let bob = Mcp::new(&s, Some(auth.valid("bob", &ALL_SCOPES)));
    let session = alice.initialize().await;

    let (events, _priming, queued) = start_held_call(&alice, &session, 2).await;
    let last_seen = queued.id.clone().expect("id");
    drop(events);
    fx.fake.wait_in_flight(1).await;

    // Bob knows the session id and an event id: he may not resume the stream,
    // open the session's standalone stream, or end the session.
    let refused = |what: &str, r: reqwest::Response| {
        assert_eq!(r.status().as_u16(), 403, "{what}");
        let what = what.to_string();
        async move {
            let body = r.text().await.unwrap_or_default();
            assert!(body.contains("belongs to another user"), "{what}: {body}");
            assert!(!body.contains("private answer"), "{what}: {body}");
        }
    };
    refused("resume", bob.get(Some(&session), Some(&last_seen)).await).await;
    refused("standalone stream", bob.get(Some(&session), None).await).await;
    refused("delete", bob.delete(&session).await).await;
    refused(
        "post",
        bob.post(
            Some(&session),
            &json!({"jsonrpc":"2.0","id":9,"method":"ping"}),
        )
        .await,
    )
    .await;
    // No token at all: 401 before anything else.
    let anonymous = Mcp::new(&s, None);
    let r = anonymous.get(Some(&session), Some(&last_seen)).await;
    assert_eq!(r.status().as_u16(), 401);

    // Alice resumes: bob neither took her stream nor closed her session.
    let mut resumed = Events::new(alice.get(Some(&session), Some(&last_seen)).await);
    let again = resumed.next().await.expect("the replay");
    assert_eq!(again.id.as_deref(), Some(last_seen.as_str()), "{again:?}");
    release.notify_waiters();
    let rest = resumed.rest().await;
    let answer = rest.last().expect("the tool result").json();
    assert_eq!(answer["id"], 2, "{rest:?}");
    assert!(
        answer["result"]["structuredContent"]["output"]
            .as_str()
            .unwrap_or_default()
            .contains("alice's private answer"),
        "{answer:#}"
    );
    alice.ping(&session, 3).await;
    // Her own DELETE ends it.
    let r = alice.delete(&session).await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = alice.get(Some(&session), None).await;
    assert_eq!(r.status().as_u16(), 404);
}
