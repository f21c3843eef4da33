//! dispatch as the client of other MCP servers (`[mcp_servers.NAME]`), so
//! agents can call their tools. The only code that speaks MCP as a client.
//!
//! A server is started (or connected to) on first use, its tool list
//! cached and fetched again after it says the list changed
//! (`notifications/tools/list_changed`). Each call has a timeout. A server
//! that died, or could not be started, is started again on the next use,
//! but not before a backoff (1 s, doubling to 60 s) has passed: until then
//! calls get an error the model reads, saying when the next try is.
//!
//! A stdio server gets a clean environment: `PATH`, `HOME`, `LANG`,
//! `TMPDIR` and a few like them, plus its own `env` from the config, never
//! dispatch's provider keys. `${VAR}` in `env` and `headers` values comes
//! from dispatch's environment; header values are never logged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

use crate::config::McpServerConfig;
use crate::engine::tools::{ExternalTool, ExternalTools, ToolOutput};

/// Longest wait for a server to start and answer `initialize`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A server that stops sooner than this after its start counts as a failed start.
const EARLY_DEATH: Duration = Duration::from_secs(10);
/// Longest wait before a failed server is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Variables a stdio server inherits from dispatch (nothing secret).
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SHELL",
    "TERM",
    "SYSTEMROOT",
];

/// Every declared server.
pub struct McpClients {
    servers: BTreeMap<String, Arc<Server>>,
}

struct Server {
    name: String,
    cfg: McpServerConfig,
    root: PathBuf,
    timeout: Duration,
    state: Mutex<State>,
    /// Set by the server's `tools/list_changed`.
    stale: Arc<AtomicBool>,
    /// The last list fetched: offered while the server is down, so a model
    /// that calls one of its tools learns why it fails and when it is retried.
    last: std::sync::Mutex<Option<Arc<Vec<ExternalTool>>>>,
}

enum State {
    Idle,
    Up {
        service: RunningService<RoleClient, Handler>,
        tools: Option<Arc<Vec<ExternalTool>>>,
        /// Failed starts and early deaths before this start.
        failures: u32,
        started: Instant,
        /// The process of a stdio server (killed at shutdown).
        pid: Option<u32>,
    },
    Down {
        failures: u32,
        retry_at: Instant,
        error: String,
    },
}

/// The client side's handler: notes list changes.
#[derive(Clone)]
struct Handler {
    stale: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        let mut c = ClientConfig::new(
            Default::default(),
            Implementation::new("dispatch", env!("CARGO_PKG_VERSION")),
        );
        // The newest revision that has `initialize`: what servers in use speak.
        c.protocol_version = ProtocolVersion::LATEST_WITH_INITIALIZE;
        c
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.stale.store(true, Ordering::Relaxed);
    }
}

impl McpClients {
    /// The servers of `[mcp_servers]`; `root` is the project root (a
    /// server's default working folder), `timeout` the default call timeout.
    pub fn new(
        servers: &BTreeMap<toml::Spanned<String>, McpServerConfig>,
        root: &Path,
        timeout: Duration,
    ) -> McpClients {
        let servers = servers
            .iter()
            .map(|(name, cfg)| {
                let name = name.get_ref().clone();
                let server = Server {
                    name: name.clone(),
                    timeout: cfg.timeout_secs.map_or(timeout, Duration::from_secs),
                    cfg: cfg.clone(),
                    root: root.to_path_buf(),
                    state: Mutex::new(State::Idle),
                    stale: Arc::new(AtomicBool::new(false)),
                    last: std::sync::Mutex::new(None),
                };
                (name, Arc::new(server))
            })
            .collect();
        McpClients { servers }
    }

    /// True when no server is declared.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    fn server(&self, name: &str) -> Result<&Arc<Server>, String> {
        self.servers
            .get(name)
            .ok_or_else(|| format!("no [mcp_servers.{name}] is declared in dispatch.toml"))
    }
}

#[async_trait::async_trait]
impl ExternalTools for McpClients {
    fn servers(&self) -> Vec<String> {
        self.servers.keys().cloned().collect()
    }

    async fn tools(&self, server: &str) -> Result<Vec<ExternalTool>, String> {
        let s = self.server(server)?;
        Ok(s.tools().await?.as_ref().clone())
    }

    async fn call(&self, server: &str, tool: &str, args: Value) -> ToolOutput {
        let s = match self.server(server) {
            Ok(s) => s,
            Err(e) => return ToolOutput::error(e),
        };
        s.call(tool, args).await
    }

    async fn shutdown(&self) {
        for s in self.servers.values() {
            s.stop().await;
        }
    }
}

impl Server {
    /// The peer of a running server, starting it if needed (and allowed).
    async fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut state = self.state.lock().await;
        if let State::Up {
            service,
            failures,
            started,
            ..
        } = &*state
        {
            if !service.is_transport_closed() {
                return Ok(service.peer().clone());
            }
            // A server that dies soon after it started counts as a failed
            // start (so a crash loop backs off); one that ran a while is
            // started again at once.
            let early = started.elapsed() < EARLY_DEATH;
            let failures = if early { failures + 1 } else { 0 };
            tracing::warn!(server = %self.name, "MCP server stopped");
            *state = self.down(failures, "it stopped".into());
        }
        if let State::Down {
            retry_at, error, ..
        } = &*state
        {
            let now = Instant::now();
            if now < *retry_at {
                return Err(format!(
                    "the MCP server `{}` is down ({error}); dispatch tries it again in {}s",
                    self.name,
                    (*retry_at - now).as_secs().max(1)
                ));
            }
        }
        let failures = match &*state {
            State::Down { failures, .. } => *failures,
            _ => 0,
        };
        match tokio::time::timeout(START_TIMEOUT, self.start()).await {
            Ok(Ok((service, pid))) => {
                tracing::info!(server = %self.name, "MCP server started");
                let peer = service.peer().clone();
                *state = State::Up {
                    service,
                    tools: None,
                    failures,
                    started: Instant::now(),
                    pid,
                };
                Ok(peer)
            }
            Ok(Err(e)) => {
                let msg = format!("the MCP server `{}` could not be started: {e}", self.name);
                tracing::warn!(server = %self.name, "{msg}");
                *state = self.down(failures + 1, e);
                Err(msg)
            }
            Err(_) => {
                let e = format!("it did not answer within {}s", START_TIMEOUT.as_secs());
                *state = self.down(failures + 1, e.clone());
                Err(format!(
                    "the MCP server `{}` could not be started: {e}",
                    self.name
                ))
            }
        }
    }

    /// A failed state that is retried after a backoff.
    fn down(&self, failures: u32, error: String) -> State {
        let backoff = if failures == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1u64 << (failures - 1).min(6)).min(MAX_BACKOFF)
        };
        State::Down {
            failures,
            retry_at: Instant::now() + backoff,
            error,
        }
    }

    /// Start (or connect to) the server; the process id of a stdio one.
    async fn start(&self) -> Result<(RunningService<RoleClient, Handler>, Option<u32>), String> {
        let handler = Handler {
            stale: self.stale.clone(),
        };
        if let Some(url) = &self.cfg.url {
            let mut headers = HashMap::new();
            for (k, v) in &self.cfg.headers {
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("`{k}` is not a valid HTTP header name"))?;
                let mut value = reqwest::header::HeaderValue::from_str(&expand(v)?)
                    .map_err(|_| format!("the value of header `{k}` is not valid in HTTP"))?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            let config =
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers);
            let transport = StreamableHttpClientTransport::from_config(config);
            let service = handler.serve(transport).await.map_err(|e| e.to_string())?;
            return Ok((service, None));
        }
        let Some(argv) = self.cfg.command.as_ref().filter(|c| !c.is_empty()) else {
            return Err("no `command` or `url`".into());
        };
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.env_clear();
        for k in PASSED_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &self.cfg.env {
            cmd.env(k, expand(v)?);
        }
        cmd.current_dir(match &self.cfg.cwd {
            Some(c) => self.root.join(c),
            None => self.root.clone(),
        });
        cmd.kill_on_drop(true);
        let (transport, stderr) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
        if let Some(err) = stderr {
            // Its log lines go to ours (stderr), never to stdout.
            let name = self.name.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(server = %name, "{line}");
                }
            });
        }
        let pid = transport.id();
        let service = handler.serve(transport).await.map_err(|e| e.to_string())?;
        Ok((service, pid))
    }

    /// Stop the server: kill a stdio server's process first (it is not
    /// reaped before the transport lets go of it, so its pid is still its
    /// own), then close the connection.
    async fn stop(&self) {
        let state = std::mem::replace(&mut *self.state.lock().await, State::Idle);
        if let State::Up { service, pid, .. } = state {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a pid this process spawned and has not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), service.cancel()).await;
        }
    }

    /// The server's tools, from the cache unless it said they changed (the
    /// last list when the server cannot be reached now).
    async fn tools(&self) -> Result<Arc<Vec<ExternalTool>>, String> {
        let fetched = self.fetch_tools().await;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(t) => {
                *last = Some(t.clone());
                Ok(t)
            }
            Err(e) => last.clone().ok_or(e),
        }
    }

    async fn fetch_tools(&self) -> Result<Arc<Vec<ExternalTool>>, String> {
        let peer = self.peer().await?;
        {
            let state = self.state.lock().await;
            if let State::Up { tools: Some(t), .. } = &*state
                && !self.stale.load(Ordering::Relaxed)
            {
                return Ok(t.clone());
            }
        }
        self.stale.store(false, Ordering::Relaxed);
        let listed = tokio::time::timeout(self.timeout, peer.list_all_tools())
            .await
            .map_err(|_| format!("`{}` did not list its tools in time", self.name))?
            .map_err(|e| self.failed(&e.to_string()))?;
        let tools: Arc<Vec<ExternalTool>> = Arc::new(
            listed
                .into_iter()
                .map(|t| ExternalTool {
                    name: t.name.to_string(),
                    description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                    input_schema: Value::Object((*t.input_schema).clone()),
                })
                .collect(),
        );
        if let State::Up { tools: cached, .. } = &mut *self.state.lock().await {
            *cached = Some(tools.clone());
        }
        Ok(tools)
    }

    fn failed(&self, e: &str) -> String {
        format!("the MCP server `{}` failed: {e}", self.name)
    }

    async fn call(&self, tool: &str, args: Value) -> ToolOutput {
        let peer = match self.peer().await {
            Ok(p) => p,
            Err(e) => return ToolOutput::error(e),
        };
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = match args {
            Value::Object(m) => Some(m),
            _ => None,
        };
        match tokio::time::timeout(self.timeout, peer.call_tool(params)).await {
            Err(_) => ToolOutput::error(format!(
                "{}/{tool} did not answer within {}s",
                self.name,
                self.timeout.as_secs()
            )),
            // A closed transport means the server died: `peer` starts it
            // again (after the backoff, if it died early) on the next use.
            Ok(Err(e)) => ToolOutput::error(self.failed(&e.to_string())),
            Ok(Ok(result)) => output_of(result),
        }
    }
}

/// A tool result as the model reads it: its text blocks, else its
/// structured content as JSON.
fn output_of(r: CallToolResult) -> ToolOutput {
    let mut text: Vec<String> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    if text.is_empty()
        && let Some(s) = &r.structured_content
    {
        text.push(s.to_string());
    }
    ToolOutput {
        content: text.join("\n"),
        is_error: r.is_error == Some(true),
    }
}

/// `${VAR}` replaced from the environment; an unset variable is an error
/// naming it (never its neighbours' values).
fn expand(v: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            return Err(format!(
                "an unclosed `${{` in `{}`",
                crate::provider::clip(v, 40)
            ));
        };
        let var = &after[..j];
        match std::env::var(var) {
            Ok(val) => out.push_str(&val),
            Err(_) => {
                return Err(format!(
                    "{var} is not set: export it before starting dispatch"
                ));
            }
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_and_a_missing_one_is_named() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("DISPATCH_TEST_TOKEN_X", "abc") };
        assert_eq!(
            expand("Bearer ${DISPATCH_TEST_TOKEN_X}!").unwrap(),
            "Bearer abc!"
        );
        assert_eq!(expand("plain").unwrap(), "plain");
        let e = expand("${DISPATCH_TEST_NOT_SET_Y}").unwrap_err();
        assert!(e.contains("DISPATCH_TEST_NOT_SET_Y is not set"), "{e}");
        assert!(expand("${OPEN").is_err());
    }
}
