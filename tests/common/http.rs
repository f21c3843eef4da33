//! The server over HTTP: spawn `dispatch serve --http`, and talk to it with the
//! rmcp Streamable HTTP client or with a small legacy HTTP+SSE client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use super::{DEADLINE, Project, Spawn, TestClient, bin};

/// A reqwest client (reqwest is built without a default TLS provider).
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::new()
}

/// reqwest and rmcp's HTTP client need a rustls provider even for plain HTTP.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A free loopback port (for configs that must name the URL before start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `dispatch serve --http`.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
    pub stderr: Arc<Mutex<String>>,
}

impl HttpServer {
    /// Start on `127.0.0.1:port` (0 = any) and wait for "listening on".
    pub async fn start(project: &Project, spawn: Spawn, port: u16) -> HttpServer {
        install_crypto();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--root")
            .arg(project.root())
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"));
        spawn.apply(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn dispatch");
        let stderr = child.stderr.take().expect("stderr");
        let captured = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = oneshot::channel();
        let sink = captured.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(addr) = rest.split_whitespace().next()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(a)) => a,
            _ => panic!(
                "server did not start: {}",
                captured.lock().unwrap().as_str()
            ),
        };
        HttpServer {
            addr,
            child,
            stderr: captured,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Connect the rmcp Streamable HTTP client (with a bearer token if given).
    pub async fn streamable(
        &self,
        token: Option<&str>,
    ) -> Result<rmcp::service::RunningService<rmcp::RoleClient, TestClient>, String> {
        let mut cfg = StreamableHttpClientTransportConfig::with_uri(self.url("/mcp"));
        if let Some(t) = token {
            cfg = cfg.auth_header(t.to_string());
        }
        let transport = StreamableHttpClientTransport::from_config(cfg);
        let (tx, _rx) = mpsc::unbounded_channel();
        TestClient { notes: tx }
            .serve(transport)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// Send `signal` to the server process (SIGKILL, SIGSTOP, SIGCONT...).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// SIGKILL and wait until it is gone.
    pub async fn kill(mut self) {
        self.signal(libc::SIGKILL);
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("server dies after SIGKILL")
            .expect("wait");
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("server exits after SIGTERM")
            .expect("wait")
    }
}

/// Call a tool over an rmcp client session; returns (is_error, structured or text).
pub async fn call(
    c: &rmcp::service::RunningService<rmcp::RoleClient, TestClient>,
    name: &str,
    args: Value,
) -> (bool, Value) {
    let mut params = CallToolRequestParams::new(name.to_string());
    params.arguments = args.as_object().cloned();
    let r = c.call_tool(params).await.expect("tools/call");
    let text = super::text_of(&r);
    (
        r.is_error == Some(true),
        r.structured_content.unwrap_or(Value::String(text)),
    )
}

/// A legacy HTTP+SSE client: `GET /sse`, then `POST` to the endpoint it names.
pub struct SseClient {
    http: reqwest::Client,
    base: String,
    pub endpoint: String,
    token: Option<String>,
    next_id: i64,
    pending: Arc<Mutex<HashMap<i64, oneshot::Sender<Value>>>>,
    pub notifications: mpsc::UnboundedReceiver<Value>,
}

/// What `GET /sse` answered when it was not a stream.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: String,
}

impl SseClient {
    /// Open the stream and read the `endpoint` event.
    pub async fn connect(base: &str, token: Option<&str>) -> Result<SseClient, Refused> {
        let http = client();
        let mut req = http.get(format!("{base}/sse"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.expect("GET /sse");
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Err(Refused {
                status,
                www_authenticate: www,
                body: resp.text().await.unwrap_or_default(),
            });
        }
        let (ep_tx, ep_rx) = oneshot::channel::<String>();
        let pending: Arc<Mutex<HashMap<i64, oneshot::Sender<Value>>>> = Arc::default();
        let (note_tx, note_rx) = mpsc::unbounded_channel();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut ep_tx = Some(ep_tx);
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = "message";
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            event = if e.trim() == "endpoint" {
                                "endpoint"
                            } else {
                                "message"
                            };
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    if event == "endpoint" {
                        if let Some(tx) = ep_tx.take() {
                            let _ = tx.send(data);
                        }
                        continue;
                    }
                    let v: Value = serde_json::from_str(&data).expect("SSE data is JSON");
                    match v.get("id").and_then(Value::as_i64) {
                        Some(id) if v.get("method").is_none() => {
                            if let Some(tx) = p.lock().unwrap().remove(&id) {
                                let _ = tx.send(v);
                            }
                        }
                        _ => {
                            let _ = note_tx.send(v);
                        }
                    }
                }
            }
        });
        let endpoint = tokio::time::timeout(DEADLINE, ep_rx)
            .await
            .expect("endpoint event in time")
            .expect("endpoint event");
        Ok(SseClient {
            http,
            base: base.to_string(),
            endpoint,
            token: token.map(str::to_string),
            next_id: 1,
            pending,
            notifications: note_rx,
        })
    }

    /// POST a raw body to the session's endpoint; returns the status.
    pub async fn post_raw(&self, body: Vec<u8>, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{}", self.base, self.endpoint))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token.or(self.token.as_deref()) {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("POST /messages")
    }

    /// Send a request and wait for its answer on the stream.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let r = self.post_raw(msg.to_string().into_bytes(), None).await;
        assert_eq!(
            r.status().as_u16(),
            202,
            "{}",
            r.text().await.unwrap_or_default()
        );
        tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("answer on the SSE stream in time")
            .expect("answer")
    }

    /// The next notification the server sent on the stream.
    #[allow(dead_code)]
    pub async fn next_notification(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.notifications.recv())
            .await
            .expect("a notification in time")
            .expect("the stream is open")
    }

    /// Send a notification.
    pub async fn notify(&self, method: &str) {
        let msg = json!({"jsonrpc": "2.0", "method": method});
        let r = self.post_raw(msg.to_string().into_bytes(), None).await;
        assert_eq!(r.status().as_u16(), 202);
    }

    /// `initialize` + `notifications/initialized`.
    pub async fn handshake(&mut self) -> Value {
        let r = self
            .request(
                "initialize",
                json!({"protocolVersion": "2024-11-05", "capabilities": {},
                       "clientInfo": {"name": "legacy-sse-test", "version": "0"}}),
            )
            .await;
        self.notify("notifications/initialized").await;
        r
    }

    /// `tools/call`; returns the result object.
    pub async fn call(&mut self, name: &str, args: Value) -> Value {
        let r = self
            .request("tools/call", json!({"name": name, "arguments": args}))
            .await;
        r["result"].clone()
    }
}

/// A project with one agent `helper` on the fake's `openai/gpt-4o-mini`,
/// `toml` as its `dispatch.toml`, and `dispatch serve --http` on it.
pub async fn server(toml: &str) -> (super::fixture::Fx, HttpServer) {
    let fx = super::fixture::Fx::new(
        &[("helper", &super::fixture::agent("openai/gpt-4o-mini"))],
        toml,
    )
    .await;
    let s = HttpServer::start(&fx.p, fx.spawn(), 0).await;
    (fx, s)
}
