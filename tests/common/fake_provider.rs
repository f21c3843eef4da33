//! A scriptable fake LLM provider for integration tests and benchmarks.
//!
//! [`FakeProvider::start`] serves, on `127.0.0.1` and a free port:
//! - `POST /v1/chat/completions`: the OpenAI format, streamed (SSE `data:`
//!   chunks, a usage chunk when `stream_options.include_usage` is set, then
//!   `data: [DONE]`) or whole;
//! - `POST /v1/messages`: the Anthropic format, streamed (the real event
//!   sequence: `message_start`, `content_block_start`, `ping`,
//!   `content_block_delta`…, `content_block_stop`, `message_delta`,
//!   `message_stop`) or whole.
//!
//! Each request's [`Behavior`] is chosen by, in order: a per-model rule
//! ([`FakeProvider::on_model`]), the FIFO queue ([`FakeProvider::push`]), the
//! default ([`FakeProvider::set_default`], initially a short reply).
//!
//! Everything is recorded: each request (path, headers, JSON body, model),
//! counts, in-flight and peak concurrency, and disconnects (requests whose
//! client went away before the response was complete, seen by a drop guard
//! that lives as long as the handler or the response stream).
//!
//! Waiting helpers ([`FakeProvider::wait_for`] and friends) let tests
//! synchronise on these without sleeping. Dependencies: axum, tokio,
//! serde_json, and futures-util (for the response stream).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer with `text` (in `chunk_count` deltas when streaming), after `delay`.
    Reply {
        /// The answer.
        text: String,
        /// Reported prompt tokens.
        input_tokens: u64,
        /// Reported completion tokens.
        output_tokens: u64,
        /// `usage.cost` to report (OpenAI format only), if any.
        cost: Option<f64>,
        /// Wait before answering.
        delay: Duration,
        /// Number of text deltas when streaming (at least 1).
        chunk_count: usize,
    },
    /// Answer with an error status. `$AUTH` in `body` is replaced by the
    /// request's `authorization` or `x-api-key` header (a provider echoing
    /// credentials); an empty body becomes the format's usual error JSON.
    Status {
        /// HTTP status.
        code: u16,
        /// `Retry-After` header value, if any (seconds or an HTTP date).
        retry_after: Option<String>,
        /// Response body.
        body: String,
    },
    /// Start a 200 answer, send `chunks` text deltas (streaming) or part of the
    /// JSON (whole), then hang forever without closing.
    StallAfter {
        /// Deltas sent before the stall.
        chunks: usize,
    },
    /// Never answer (not even headers).
    Hang,
    /// 200 with invalid JSON (whole) or invalid JSON in an SSE `data:` (streaming).
    Malformed,
    /// Reply with the last user message.
    Echo,
    /// Answer with tool calls (and optional text): streamed as the formats
    /// stream them (OpenAI `tool_calls` deltas by index, Anthropic
    /// `tool_use` blocks with `input_json_delta`s), or whole.
    Calls {
        /// Text beside the calls.
        text: String,
        /// The calls.
        calls: Vec<FakeCall>,
    },
    /// Wait `by`, then behave as `then`.
    Delay {
        /// How long.
        by: Duration,
        /// What to do after.
        then: Box<Behavior>,
    },
    /// Wait until `release` is notified, then behave as `then`. Release all
    /// waiting requests with `release.notify_waiters()` (after
    /// [`FakeProvider::wait_in_flight`]), or one with `notify_one()`.
    Gate {
        /// The latch.
        release: Arc<Notify>,
        /// What to do once released.
        then: Box<Behavior>,
    },
}

impl Behavior {
    /// A reply with 10 input and 5 output tokens, no cost, no delay, 3 chunks.
    pub fn reply(text: &str) -> Behavior {
        Behavior::Reply {
            text: text.to_string(),
            input_tokens: 10,
            output_tokens: 5,
            cost: None,
            delay: Duration::ZERO,
            chunk_count: 3,
        }
    }

    /// A reply that reports tokens and, optionally, a cost.
    pub fn reply_with_usage(
        text: &str,
        input_tokens: u64,
        output_tokens: u64,
        cost: Option<f64>,
    ) -> Behavior {
        Behavior::Reply {
            text: text.to_string(),
            input_tokens,
            output_tokens,
            cost,
            delay: Duration::ZERO,
            chunk_count: 3,
        }
    }

    /// An error status with the format's default body.
    pub fn status(code: u16) -> Behavior {
        Behavior::Status {
            code,
            retry_after: None,
            body: String::new(),
        }
    }

    /// A 429 with a `Retry-After` header.
    pub fn rate_limited(retry_after: &str) -> Behavior {
        Behavior::Status {
            code: 429,
            retry_after: Some(retry_after.to_string()),
            body: String::new(),
        }
    }

    /// A request held until `release` is notified, then answered with `text`.
    pub fn gate(release: &Arc<Notify>, text: &str) -> Behavior {
        Behavior::Gate {
            release: release.clone(),
            then: Box::new(Behavior::reply(text)),
        }
    }
}

/// One scripted tool call.
#[derive(Debug, Clone)]
pub struct FakeCall {
    /// The call id.
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments as JSON text (may be invalid on purpose).
    pub arguments: String,
}

impl Behavior {
    /// One tool call with JSON arguments.
    pub fn call(name: &str, args: Value) -> Behavior {
        Behavior::calls(&[(name, args)])
    }

    /// Several tool calls in one turn.
    pub fn calls(calls: &[(&str, Value)]) -> Behavior {
        Behavior::Calls {
            text: String::new(),
            calls: calls
                .iter()
                .enumerate()
                .map(|(i, (n, a))| FakeCall {
                    id: format!("call_{i}_{n}"),
                    name: n.to_string(),
                    arguments: a.to_string(),
                })
                .collect(),
        }
    }

    /// One tool call whose arguments are this raw text.
    pub fn raw_call(name: &str, arguments: &str) -> Behavior {
        Behavior::Calls {
            text: String::new(),
            calls: vec![FakeCall {
                id: format!("call_raw_{name}"),
                name: name.to_string(),
                arguments: arguments.to_string(),
            }],
        }
    }
}

/// An HTTP date `secs` seconds from now (for `Retry-After`).
pub fn http_date_in(secs: u64) -> String {
    // RFC 7231 IMF-fixdate, computed by hand to stay dependency-free.
    let t = SystemTime::now() + Duration::from_secs(secs);
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = since / 86_400;
    let rem = since % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!("{weekday}, {d:02} {month} {y} {h:02}:{m:02}:{s:02} GMT")
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `/v1/chat/completions` or `/v1/messages`.
    pub path: String,
    /// All headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// The body's `model`.
    pub model: String,
}

impl RecordedRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request asked for a stream.
    pub fn stream(&self) -> bool {
        self.body
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

#[derive(Debug)]
struct Script {
    queue: VecDeque<Behavior>,
    default: Behavior,
    rules: HashMap<String, Behavior>,
    /// Per-model FIFO queues (before the model rule and the shared queue).
    model_queues: HashMap<String, VecDeque<Behavior>>,
}

#[derive(Debug)]
struct Shared {
    script: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    count: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    completed: AtomicUsize,
    disconnects: AtomicUsize,
    connections: AtomicUsize,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tracks one request in flight; counts a disconnect if dropped before `done`.
struct Flight {
    shared: Arc<Shared>,
    done: bool,
}

impl Flight {
    fn new(shared: &Arc<Shared>) -> Flight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        shared.changed.notify_waiters();
        Flight {
            shared: shared.clone(),
            done: false,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.done {
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.shared.disconnects.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }
}

/// The fake server. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    OpenAi,
    Anthropic,
}

impl FakeProvider {
    /// Bind `127.0.0.1:0` and serve until dropped.
    pub async fn start() -> FakeProvider {
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                default: Behavior::reply("fake answer"),
                rules: HashMap::new(),
                model_queues: HashMap::new(),
            }),
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake provider: no local address");
        let counter = shared.clone();
        // Count connections (to check pooling) and disable Nagle, as real
        // servers do, so small SSE writes are not delayed.
        let listener = listener.tap_io(move |tcp| {
            let _ = tcp.set_nodelay(true);
            counter.connections.fetch_add(1, Ordering::SeqCst);
        });
        let app = Router::new()
            .route(
                "/v1/chat/completions",
                post(|State(s): State<Arc<Shared>>, h: HeaderMap, b: Bytes| {
                    handle(s, Format::OpenAi, h, b)
                }),
            )
            .route(
                "/v1/messages",
                post(|State(s): State<Arc<Shared>>, h: HeaderMap, b: Bytes| {
                    handle(s, Format::Anthropic, h, b)
                }),
            )
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/v1`: the base URL for OpenAI-compatible clients.
    pub fn base_url_openai(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`: the base URL for Anthropic clients.
    pub fn base_url_anthropic(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queue a behavior for the next request not matched by a model rule.
    pub fn push(&self, b: Behavior) {
        lock(&self.shared.script).queue.push_back(b);
    }

    /// Queue several behaviors, in order.
    pub fn push_all(&self, bs: impl IntoIterator<Item = Behavior>) {
        lock(&self.shared.script).queue.extend(bs);
    }

    /// The behavior when no rule matches and the queue is empty.
    pub fn set_default(&self, b: Behavior) {
        lock(&self.shared.script).default = b;
    }

    /// Use `b` for every request whose `model` is `model` (wins over the queue).
    pub fn on_model(&self, model: &str, b: Behavior) {
        lock(&self.shared.script).rules.insert(model.to_string(), b);
    }

    /// Queue `bs` for requests to `model`, in order (before its rule).
    pub fn queue_model(&self, model: &str, bs: impl IntoIterator<Item = Behavior>) {
        lock(&self.shared.script)
            .model_queues
            .entry(model.to_string())
            .or_default()
            .extend(bs);
    }

    /// Remove a model rule.
    pub fn clear_model(&self, model: &str) {
        lock(&self.shared.script).rules.remove(model);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Requests received.
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Requests answered completely.
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// TCP connections accepted (fewer than requests when the client pools).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests whose client went away before the answer was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    /// Wait until `cond` holds (checked on every change), at most 10 s; then panic
    /// with `what`. No polling, no sleeps.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&FakeProvider) -> bool) {
        let wait = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                // Register before checking, so a change in between is not missed.
                changed.as_mut().enable();
                if cond(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            panic!(
                "fake provider: timed out waiting for {what} (requests {}, in flight {}, disconnects {})",
                self.request_count(),
                self.in_flight(),
                self.disconnects()
            );
        }
    }

    /// Wait until at least `n` requests are in flight.
    pub async fn wait_in_flight(&self, n: usize) {
        self.wait_for(&format!("{n} requests in flight"), |f| f.in_flight() >= n)
            .await;
    }

    /// Wait until at least `n` disconnects were seen.
    pub async fn wait_disconnects(&self, n: usize) {
        self.wait_for(&format!("{n} disconnects"), |f| f.disconnects() >= n)
            .await;
    }

    /// Wait until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: usize) {
        self.wait_for(&format!("{n} requests"), |f| f.request_count() >= n)
            .await;
    }
}

fn pick(shared: &Shared, model: &str) -> Behavior {
    let mut s = lock(&shared.script);
    if let Some(b) = s.model_queues.get_mut(model).and_then(VecDeque::pop_front) {
        return b;
    }
    if let Some(b) = s.rules.get(model) {
        return b.clone();
    }
    match s.queue.pop_front() {
        Some(b) => b,
        None => s.default.clone(),
    }
}

async fn handle(shared: Arc<Shared>, format: Format, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let stream = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let auth = headers
        .get("authorization")
        .or_else(|| headers.get("x-api-key"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let last_user = json
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    lock(&shared.requests).push(RecordedRequest {
        path: match format {
            Format::OpenAi => "/v1/chat/completions".into(),
            Format::Anthropic => "/v1/messages".into(),
        },
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: json,
        model: model.clone(),
    });
    shared.count.fetch_add(1, Ordering::SeqCst);

    let mut behavior = pick(&shared, &model);
    let mut flight = None;
    while let Behavior::Gate { release, then } = behavior {
        // Register with the latch before counting the request as in flight, so
        // a test that sees it in flight and calls `notify_waiters` cannot miss it.
        let released = release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if flight.is_none() {
            flight = Some(Flight::new(&shared));
        }
        released.await;
        behavior = *then;
    }
    let mut flight = flight.unwrap_or_else(|| Flight::new(&shared));
    while let Behavior::Delay { by, then } = behavior {
        tokio::time::sleep(by).await;
        behavior = *then;
    }
    if let Behavior::Echo = behavior {
        behavior = Behavior::Reply {
            text: last_user,
            input_tokens: 10,
            output_tokens: 5,
            cost: None,
            delay: Duration::ZERO,
            chunk_count: 3,
        };
    }

    match behavior {
        Behavior::Reply {
            text,
            input_tokens,
            output_tokens,
            cost,
            delay,
            chunk_count,
        } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let r = Reply {
                model: &model,
                text: &text,
                input_tokens,
                output_tokens,
                cost,
                chunk_count,
                calls: &[],
            };
            r.respond(format, stream, include_usage, flight)
        }
        Behavior::Status {
            code,
            retry_after,
            body,
        } => {
            flight.done = true;
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = if body.is_empty() {
                match format {
                    Format::OpenAi => json!({"error": {"message": format!("fake error {code}"), "type": "fake_error", "code": code}}),
                    Format::Anthropic => json!({"type": "error", "error": {"type": "fake_error", "message": format!("fake error {code}")}}),
                }
                .to_string()
            } else {
                body.replace("$AUTH", &auth)
            };
            let mut resp = json_response(status, &body);
            if let Some(ra) = retry_after
                && let Ok(v) = ra.parse()
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        Behavior::StallAfter { chunks } => {
            let r = Reply {
                model: &model,
                text: &"stall ".repeat(chunks.max(1)),
                input_tokens: 1,
                output_tokens: 1,
                cost: None,
                chunk_count: chunks.max(1),
                calls: &[],
            };
            if stream {
                let mut events = match format {
                    Format::OpenAi => r.openai_events(false),
                    Format::Anthropic => r.anthropic_events(),
                };
                // Keep the prologue and `chunks` deltas, drop the ending.
                let prologue = match format {
                    Format::OpenAi => 1,
                    Format::Anthropic => 3,
                };
                events.truncate(prologue + chunks);
                sse_response(events, flight, true)
            } else {
                let partial = r.openai_json().to_string();
                let half = partial.len() / 2;
                stream_response(
                    "application/json",
                    vec![Bytes::from(partial[..half].to_string())],
                    flight,
                    true,
                )
            }
        }
        Behavior::Calls { text, calls } => {
            let r = Reply {
                model: &model,
                text: &text,
                input_tokens: 10,
                output_tokens: 5,
                cost: None,
                chunk_count: 2,
                calls: &calls,
            };
            r.respond(format, stream, include_usage, flight)
        }
        Behavior::Hang => std::future::pending::<Response>().await,
        Behavior::Malformed => {
            if stream {
                let events = vec![match format {
                    Format::OpenAi => Bytes::from_static(b"data: {\"choices\": [oops\n\n"),
                    Format::Anthropic => {
                        Bytes::from_static(b"event: message_start\ndata: {\"type\": oops\n\n")
                    }
                }];
                sse_response(events, flight, false)
            } else {
                flight.done = true;
                json_response(StatusCode::OK, "{\"choices\": [oops")
            }
        }
        Behavior::Echo | Behavior::Gate { .. } | Behavior::Delay { .. } => {
            unreachable!("resolved above")
        }
    }
}

fn json_response(status: StatusCode, body: &str) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn sse_response(events: Vec<Bytes>, flight: Flight, stall: bool) -> Response {
    stream_response("text/event-stream", events, flight, stall)
}

/// A 200 whose body yields `chunks` one by one, then ends (marking the flight
/// done) or, with `stall`, never ends. The flight guard lives in the stream, so
/// a client that goes away mid-body shows up as a disconnect.
fn stream_response(
    content_type: &'static str,
    chunks: Vec<Bytes>,
    flight: Flight,
    stall: bool,
) -> Response {
    let state = (VecDeque::from(chunks), Some(flight));
    let body = futures_util::stream::unfold(state, move |(mut queue, mut flight)| async move {
        if let Some(c) = queue.pop_front() {
            return Some((Ok::<Bytes, Infallible>(c), (queue, flight)));
        }
        if stall {
            std::future::pending::<()>().await;
        }
        if let Some(f) = flight.as_mut() {
            f.done = true;
        }
        drop(flight);
        None
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// A scripted answer, rendered in either format.
struct Reply<'a> {
    model: &'a str,
    text: &'a str,
    input_tokens: u64,
    output_tokens: u64,
    cost: Option<f64>,
    chunk_count: usize,
    calls: &'a [FakeCall],
}

/// Arguments in two pieces (a stream splits them anywhere).
fn halves(s: &str) -> (String, String) {
    let chars: Vec<char> = s.chars().collect();
    let mid = chars.len() / 2;
    (chars[..mid].iter().collect(), chars[mid..].iter().collect())
}

impl Reply<'_> {
    /// The answer in `format`, streamed or whole.
    fn respond(
        &self,
        format: Format,
        stream: bool,
        include_usage: bool,
        mut flight: Flight,
    ) -> Response {
        if stream {
            let events = match format {
                Format::OpenAi => self.openai_events(include_usage),
                Format::Anthropic => self.anthropic_events(),
            };
            sse_response(events, flight, false)
        } else {
            flight.done = true;
            let body = match format {
                Format::OpenAi => self.openai_json(),
                Format::Anthropic => self.anthropic_json(),
            };
            json_response(StatusCode::OK, &body.to_string())
        }
    }

    fn finish_openai(&self) -> &'static str {
        if self.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
    }

    fn finish_anthropic(&self) -> &'static str {
        if self.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        }
    }

    fn openai_calls(&self) -> Value {
        Value::Array(
            self.calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect(),
        )
    }

    fn anthropic_blocks(&self) -> Vec<Value> {
        let mut blocks = Vec::new();
        if !self.text.is_empty() || self.calls.is_empty() {
            blocks.push(json!({"type": "text", "text": self.text}));
        }
        for c in self.calls {
            let input: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
            blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
        }
        blocks
    }

    fn pieces(&self) -> Vec<String> {
        let chars: Vec<char> = self.text.chars().collect();
        if chars.is_empty() {
            return Vec::new();
        }
        let n = self.chunk_count.max(1);
        let size = chars.len().div_ceil(n);
        chars.chunks(size).map(|c| c.iter().collect()).collect()
    }

    fn usage_openai(&self) -> Value {
        let mut u = json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        });
        if let Some(c) = self.cost {
            u["cost"] = json!(c);
        }
        u
    }

    fn openai_json(&self) -> Value {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": self.model,
            "choices": [{"index": 0, "message": if self.calls.is_empty() {
                json!({"role": "assistant", "content": self.text})
            } else {
                json!({"role": "assistant", "content": if self.text.is_empty() { Value::Null } else { json!(self.text) }, "tool_calls": self.openai_calls()})
            }, "finish_reason": self.finish_openai()}],
            "usage": self.usage_openai(),
        })
    }

    /// A comment first (as OpenRouter sends), one chunk per piece, the
    /// finish chunk, the usage chunk if asked for, `[DONE]`.
    fn openai_events(&self, include_usage: bool) -> Vec<Bytes> {
        let data = |v: Value| Bytes::from(format!("data: {v}\n\n"));
        let mut out = vec![Bytes::from_static(b": FAKE PROCESSING\n\n")];
        for p in self.pieces() {
            out.push(data(json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": self.model,
                "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}],
            })));
        }
        for (i, c) in self.calls.iter().enumerate() {
            let chunk = |delta: Value| {
                data(json!({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": self.model,
                    "choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": null}],
                }))
            };
            out.push(chunk(json!({"index": i, "id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": ""}})));
            let (a, b) = halves(&c.arguments);
            out.push(chunk(json!({"index": i, "function": {"arguments": a}})));
            out.push(chunk(json!({"index": i, "function": {"arguments": b}})));
        }
        out.push(data(json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": self.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_openai()}],
        })));
        if include_usage {
            out.push(data(json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": self.model,
                "choices": [], "usage": self.usage_openai(),
            })));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn anthropic_json(&self) -> Value {
        json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
            "content": self.anthropic_blocks(),
            "stop_reason": self.finish_anthropic(), "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        })
    }

    fn anthropic_events(&self) -> Vec<Bytes> {
        let ev = |name: &str, v: Value| Bytes::from(format!("event: {name}\ndata: {v}\n\n"));
        let mut out = vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
                }}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ev("ping", json!({"type": "ping"})),
        ];
        for p in self.pieces() {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
            ));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        for (i, c) in self.calls.iter().enumerate() {
            let index = i + 1;
            out.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}),
            ));
            let (a, b) = halves(&c.arguments);
            for piece in [a, b] {
                out.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            out.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        out.push(ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": self.finish_anthropic(), "stop_sequence": null},
                   "usage": {"output_tokens": self.output_tokens}}),
        ));
        out.push(ev("message_stop", json!({"type": "message_stop"})));
        out
    }
}
