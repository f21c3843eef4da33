//! Where things live (`--root`, `--agents`, `--kb`) and the optional
//! `dispatch.toml` next to them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::agent::BUILTIN_PROVIDERS;
use crate::agent::reader::ReadContext;

/// Name of the optional config file under the project root.
pub const CONFIG_FILE: &str = "dispatch.toml";

/// How the project root was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    /// `--root` (or `DISPATCH_ROOT`) named it.
    Given,
    /// The nearest folder at or above the working folder that holds this
    /// marker: `dispatch.toml`, `agents/` or `.git`.
    Found(&'static str),
    /// Nothing at or above the working folder marks a project: the working
    /// folder itself.
    WorkingFolder,
}

impl RootOrigin {
    /// How it was found, in a few words (for logs and `agent_list`).
    pub fn describe(self) -> String {
        match self {
            RootOrigin::Given => "given by --root".to_string(),
            RootOrigin::Found(marker) => format!("the nearest folder with {marker}"),
            RootOrigin::WorkingFolder => {
                "the working folder (no dispatch.toml, agents/ or .git above it)".to_string()
            }
        }
    }
}

/// What marks a project root, in the order they are looked for in each folder.
const ROOT_MARKERS: [(&str, &str); 3] = [
    (CONFIG_FILE, "dispatch.toml"),
    ("agents", "agents/"),
    (".git", ".git"),
];

/// The project's folders.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The project root (`--root`, else found from the working folder).
    pub root: PathBuf,
    /// How the root was chosen.
    pub origin: RootOrigin,
    /// Agent files (`--agents`, default `ROOT/agents`).
    pub agents: PathBuf,
    /// True when `--agents` named the folder (then it must exist).
    pub agents_given: bool,
    /// Knowledge base (`--kb`, default `ROOT/_kb`).
    pub kb: PathBuf,
}

/// Errors finding the project.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// `--root` names nothing.
    #[error(
        "--root {0}: no such folder; pass the project folder (the one with agents/ or dispatch.toml)"
    )]
    NoRoot(PathBuf),
    /// `--root` names a file.
    #[error("--root {0} is a file, not a folder; pass the project folder")]
    RootIsFile(PathBuf),
    /// The working folder cannot be read (deleted while in it, say).
    #[error("cannot read the working folder: {0}; cd into the project or pass --root DIR")]
    WorkingFolder(std::io::Error),
}

impl Paths {
    /// The folders under `root` as given (no search, no checks): for
    /// programs and tests that name their project.
    pub fn new(root: &Path, agents: Option<&Path>, kb: Option<&Path>) -> Paths {
        Paths {
            root: root.to_path_buf(),
            origin: RootOrigin::Given,
            agents: agents.map_or_else(|| root.join("agents"), Path::to_path_buf),
            agents_given: agents.is_some(),
            kb: kb.map_or_else(|| root.join("_kb"), Path::to_path_buf),
        }
    }

    /// The folders as the command line names them: `root` must be an
    /// existing folder (nothing is created); without it, the project is the
    /// nearest folder at or above the working folder that has
    /// `dispatch.toml`, `agents/` or `.git`, else the working folder.
    pub fn discover(
        root: Option<&Path>,
        agents: Option<&Path>,
        kb: Option<&Path>,
    ) -> Result<Paths, PathsError> {
        let cwd = std::env::current_dir().map_err(PathsError::WorkingFolder)?;
        Self::discover_from(&cwd, root, agents, kb)
    }

    /// [`Paths::discover`] from the working folder `cwd`.
    pub fn discover_from(
        cwd: &Path,
        root: Option<&Path>,
        agents: Option<&Path>,
        kb: Option<&Path>,
    ) -> Result<Paths, PathsError> {
        let (root, origin) = match root {
            Some(r) => {
                let abs = cwd.join(r);
                match std::fs::metadata(&abs) {
                    Ok(m) if m.is_dir() => (r.to_path_buf(), RootOrigin::Given),
                    Ok(_) => return Err(PathsError::RootIsFile(r.to_path_buf())),
                    Err(_) => return Err(PathsError::NoRoot(r.to_path_buf())),
                }
            }
            None => find_root(cwd),
        };
        let mut paths = Paths::new(&root, agents, kb);
        paths.origin = origin;
        Ok(paths)
    }

    /// `ROOT/dispatch.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// `path` relative to the project root when it is inside it (for what
    /// clients see: never where the project lives on this machine).
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

/// The nearest folder at or above `cwd` with a root marker.
fn find_root(cwd: &Path) -> (PathBuf, RootOrigin) {
    for dir in cwd.ancestors() {
        for (name, marker) in ROOT_MARKERS {
            let p = dir.join(name);
            let is_marker = match name {
                CONFIG_FILE => p.is_file(),
                "agents" => p.is_dir(),
                // A worktree's `.git` is a file.
                _ => p.exists(),
            };
            if is_marker {
                return (dir.to_path_buf(), RootOrigin::Found(marker));
            }
        }
    }
    (cwd.to_path_buf(), RootOrigin::WorkingFolder)
}

/// Errors reading `dispatch.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("{path}:{line}:{column}: error: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// An OpenAI-compatible endpoint declared in `dispatch.toml`:
///
/// ```toml
/// [providers.together]
/// base_url = "https://api.together.xyz/v1"
/// api_key_env = "TOGETHER_API_KEY"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL of the API (`https://host/v1` for OpenAI-compatible endpoints).
    pub base_url: Option<String>,
    /// Environment variable that holds the key (never the key itself).
    pub api_key_env: Option<String>,
    /// Wire format: `openai` (default) or `anthropic`.
    #[serde(default)]
    pub kind: Option<WireFormat>,
}

/// The wire format a `[providers.NAME]` endpoint speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// OpenAI-compatible chat completions.
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

/// The contents of `dispatch.toml`; every section is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Providers by name; built-in names may be listed to override their base URL.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Concurrency and queue limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Retries, backoff, breaker and timeouts.
    #[serde(default)]
    pub resilience: ResilienceSection,
    /// The router of `agent_delegate`.
    #[serde(default)]
    pub router: RouterSection,
    /// Price overrides, USD per million tokens, keyed by `provider/model-id` or model id.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
    /// `usage_report` settings.
    #[serde(default)]
    pub report: ReportSection,
    /// Crash recovery.
    #[serde(default)]
    pub recovery: RecoverySection,
    /// Mirror audits.
    #[serde(default)]
    pub audit: AuditSection,
    /// The HTTP server (`dispatch serve --http`).
    #[serde(default)]
    pub http: HttpSection,
    /// Progress notifications.
    #[serde(default)]
    pub progress: ProgressSection,
    /// MCP tasks (task-augmented `tools/call`).
    #[serde(default)]
    pub tasks: TasksSection,
    /// The task store (SQLite file or PostgreSQL server).
    #[serde(default)]
    pub store: StoreSection,
    /// OAuth2 resource server for HTTP: without it, HTTP is unauthenticated.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    /// Where agent files are read from besides `agents/`.
    #[serde(default)]
    pub agents: AgentsSection,
    /// Model aliases (`sonnet = "anthropic/claude-sonnet-4-5"`): a bare word
    /// in an agent file's `model` that names a model. These add to and
    /// override [`DEFAULT_MODEL_ALIASES`].
    #[serde(default)]
    pub model_aliases: BTreeMap<String, toml::Spanned<String>>,
    /// Other MCP servers whose tools agents may call (`NAME/*`, `NAME/tool`).
    #[serde(default)]
    pub mcp_servers: BTreeMap<toml::Spanned<String>, McpServerConfig>,
}

/// `[mcp_servers.NAME]`: another MCP server, started by a command (stdio)
/// or reached at a Streamable HTTP `url`. `${VAR}` in `env` and `headers`
/// values is taken from dispatch's environment (keep tokens there, not in
/// the file).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct McpServerConfig {
    /// The command and its arguments (`["npx", "-y", "@modelcontextprotocol/server-github"]`).
    pub command: Option<Vec<String>>,
    /// Environment for the command. The server gets only these and a few
    /// harmless variables (`PATH`, `HOME`, `LANG`, `TMPDIR`, ...), never
    /// dispatch's provider keys.
    pub env: BTreeMap<String, String>,
    /// The command's working folder, relative to the project root (default: the root).
    pub cwd: Option<PathBuf>,
    /// A Streamable HTTP endpoint instead of a command.
    pub url: Option<String>,
    /// HTTP headers sent to `url` (`Authorization = "Bearer ${GITHUB_TOKEN}"`).
    pub headers: BTreeMap<String, String>,
    /// Longest one tool call may take, seconds (default `[limits] tool_timeout_secs`).
    pub timeout_secs: Option<u64>,
}

impl McpServerConfig {
    /// What is wrong with it, if anything.
    fn check(&self, name: &str) -> Result<(), String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "[mcp_servers.{name}]: a server name may hold only letters, digits, `_` and `-` (agents allow its tools as `{name}/*`)"
            ));
        }
        match (&self.command, &self.url) {
            (Some(c), None) if c.first().is_some_and(|p| !p.trim().is_empty()) => Ok(()),
            (Some(_), None) => Err(format!(
                "[mcp_servers.{name}]: `command` must name a program: command = [\"npx\", \"-y\", \"server\"]"
            )),
            (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
            (None, Some(u)) => Err(format!(
                "[mcp_servers.{name}]: `url` must be an http:// or https:// URL, not `{u}`"
            )),
            (Some(_), Some(_)) => Err(format!(
                "[mcp_servers.{name}]: give either `command` or `url`, not both"
            )),
            (None, None) => Err(format!(
                "[mcp_servers.{name}]: give `command = [...]` (a stdio server) or `url = \"https://...\"` (Streamable HTTP)"
            )),
        }
    }
}

/// `[agents]`: which other tools' agent folders of the project are loaded.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// Load Claude Code subagents from `.claude/agents/*.md`.
    pub claude_code: bool,
    /// Load VS Code custom agents from `.github/agents/*.agent.md`.
    pub vscode: bool,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            claude_code: true,
            vscode: true,
        }
    }
}

/// The model aliases Claude Code subagents use, and the models they mean
/// here. `inherit` (Claude Code: the conversation's model) has no
/// conversation to inherit from in dispatch, so it means the middle tier.
pub const DEFAULT_MODEL_ALIASES: &[(&str, &str)] = &[
    ("sonnet", "anthropic/claude-sonnet-4-5"),
    ("opus", "anthropic/claude-opus-4-1"),
    ("haiku", "anthropic/claude-haiku-4-5"),
    ("inherit", "anthropic/claude-sonnet-4-5"),
];

/// `[http]`: the HTTP server's hardening. Everything has a safe default for a
/// server on a loopback address.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// The URL clients use to reach the server (`https://dispatch.example.com`);
    /// its host is allowed in `Host` and it is the base of the OAuth metadata
    /// URL. Default: derived from `[auth] audience`, else the bound address.
    pub public_url: Option<String>,
    /// Accepted `Host` header values (`name` or `name:port`) besides loopback
    /// names and the host of `public_url`; requests naming another host get
    /// 403 (DNS rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Accepted browser `Origin`s (`https://app.example.com`,
    /// `http://localhost:*`) besides loopback origins; others get 403. Requests
    /// without `Origin` (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    /// Largest request body in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests (POSTs) per minute allowed per subject (per client address
    /// without auth); over it, 429 with `Retry-After`. 0 disables the limit.
    pub rate_limit_per_minute: u32,
    /// Requests a subject may send in a burst above the steady rate.
    pub rate_limit_burst: u32,
    /// Longest time to answer a request before 408 (streams, once started,
    /// are not cut).
    pub request_timeout_secs: u64,
    /// On SIGTERM/ctrl-c (and, over stdio, when stdin closes), how long
    /// tool calls and tasks in flight may take to finish; tasks still
    /// running then are stored as queued for the next start.
    pub shutdown_grace_secs: u64,
    /// Longest wait for a request's headers, also between requests on a
    /// kept-alive connection: slow-header and idle connections are closed.
    pub header_read_timeout_secs: u64,
    /// Connections served at once; 0 derives it from the open-file limit.
    pub max_connections: usize,
    /// Serve `/metrics` (Prometheus). With `[auth]`, it needs `dispatch:read`.
    pub metrics: bool,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            public_url: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            rate_limit_per_minute: 600,
            rate_limit_burst: 60,
            request_timeout_secs: 300,
            shutdown_grace_secs: 10,
            header_read_timeout_secs: 30,
            max_connections: 0,
            metrics: true,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Seed for sampling which answers are audited (reproducible runs); random if unset.
    pub seed: Option<u64>,
}

/// `[progress]`: progress notifications to clients that ask for them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProgressSection {
    /// After this many seconds without news of a task a client waits on
    /// (one long provider call, a task still queued), a notification says it
    /// is still going and for how long (0: never).
    pub heartbeat_secs: u64,
}

impl Default for ProgressSection {
    fn default() -> Self {
        ProgressSection { heartbeat_secs: 10 }
    }
}

/// `[tasks]`: how long MCP tasks are kept and how often clients poll them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSection {
    /// Retention of a finished task when the client asks for none, seconds
    /// from its creation (a task still working is never forgotten).
    pub default_ttl_secs: u64,
    /// The longest retention a client may ask for, seconds; longer asks are cut to it.
    pub max_ttl_secs: u64,
    /// The `pollInterval` clients are given, milliseconds.
    pub poll_interval_ms: u64,
    /// A 2026-07-28 client that declares the tasks extension gets the answer
    /// of `agent_run` / `workflow_run` if it comes within this many
    /// milliseconds, and a task to poll otherwise.
    pub answer_within_ms: u64,
}

impl Default for TasksSection {
    fn default() -> Self {
        TasksSection {
            default_ttl_secs: 24 * 3600,
            max_ttl_secs: 7 * 24 * 3600,
            poll_interval_ms: 1_000,
            answer_within_ms: 2_000,
        }
    }
}

/// `[store]`: where tasks, runs and usage are kept. `DISPATCH_DATABASE_URL`
/// overrides `url`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `postgres://user@host/db` for a PostgreSQL server, or a SQLite file
    /// (`sqlite://PATH` or a path); default `ROOT/.dispatch/dispatch.db`.
    /// Keep a password out of this file: put the URL in
    /// `DISPATCH_DATABASE_URL`, or use `~/.pgpass` / `PGPASSWORD`.
    pub url: Option<String>,
    /// PostgreSQL: connections in the pool.
    pub pool_size: u32,
    /// PostgreSQL: longest wait for a connection (to connect, or a free one
    /// in the pool), seconds.
    pub connect_timeout_secs: u64,
    /// How long an instance's claim on its tasks lasts without a renewal,
    /// seconds: an instance that dies (or stops answering) loses its tasks
    /// to the others this long after its last renewal, plus one poll
    /// (a third of it). Renewed every third of it.
    pub lease_secs: u64,
}

impl StoreSection {
    /// What is wrong with it, if anything.
    fn check(&self) -> Result<(), String> {
        if self.pool_size == 0 || self.connect_timeout_secs == 0 || self.lease_secs == 0 {
            return Err(
                "[store] pool_size, connect_timeout_secs and lease_secs must be at least 1"
                    .to_string(),
            );
        }
        Ok(())
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: None,
            pool_size: 8,
            connect_timeout_secs: 10,
            lease_secs: 15,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Tasks running at once over all agents.
    pub global: usize,
    /// Tasks running at once per agent.
    pub per_agent: usize,
    /// Provider requests in flight per provider.
    pub per_provider: usize,
    /// Tasks allowed to wait for a slot.
    pub queue: usize,
    /// Deepest delegation chain.
    pub max_depth: u32,
    /// Longest answer a tool result carries, in bytes; a longer one is cut
    /// there with a note, and the outbox file keeps the whole answer.
    pub max_answer_bytes: usize,
    /// Model turns a tool loop may take for one answer (an agent's
    /// `max_turns` overrides it).
    pub max_turns: u32,
    /// Tasks in one delegation tree, the root included.
    pub max_tree_tasks: u32,
    /// Model turns over all tasks of one delegation tree.
    pub max_tree_turns: u32,
    /// Wall time of one delegation tree, from the root's creation (0 = none).
    pub max_tree_secs: u64,
    /// Money one delegation tree may spend, USD (none when absent).
    pub max_tree_cost_usd: Option<f64>,
    /// Longest tool result sent to a model, bytes; longer ones are cut with a note.
    pub max_tool_result_bytes: usize,
    /// Longest a tool call (a file search, another MCP server's tool) may take, seconds.
    pub tool_timeout_secs: u64,
    /// Longest a call of a tool marked `ask` waits for a human's answer,
    /// seconds; then it is refused.
    pub approval_timeout_secs: u64,
    /// Per-agent overrides of `per_agent`.
    pub agents: BTreeMap<String, usize>,
    /// Per-provider overrides of `per_provider`.
    pub providers: BTreeMap<String, usize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            global: 64,
            per_agent: 32,
            per_provider: 32,
            queue: 10_000,
            max_depth: 3,
            max_answer_bytes: 4 * 1024 * 1024,
            max_turns: 20,
            max_tree_tasks: 50,
            max_tree_turns: 200,
            max_tree_secs: 0,
            max_tree_cost_usd: None,
            max_tool_result_bytes: 64 * 1024,
            tool_timeout_secs: 60,
            approval_timeout_secs: 300,
            agents: BTreeMap::new(),
            providers: BTreeMap::new(),
        }
    }
}

/// `[resilience]` (durations in milliseconds or seconds, as the key says).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceSection {
    /// HTTP attempts per model before failing over.
    pub max_attempts: u32,
    /// First backoff ceiling.
    pub base_delay_ms: u64,
    /// Cap on any wait, `Retry-After` included.
    pub max_delay_ms: u64,
    /// Consecutive failures that open a provider's breaker (0 = never).
    pub breaker_threshold: u32,
    /// How long an open breaker waits before a probe.
    pub breaker_cooldown_secs: u64,
    /// Connect timeout.
    pub connect_timeout_secs: u64,
    /// Longest silence allowed inside a streamed answer.
    pub idle_timeout_secs: u64,
    /// Per-attempt timeout for agents without `timeout`.
    pub default_timeout_secs: u64,
}

impl Default for ResilienceSection {
    fn default() -> Self {
        ResilienceSection {
            max_attempts: 3,
            base_delay_ms: 500,
            max_delay_ms: 30_000,
            breaker_threshold: 5,
            breaker_cooldown_secs: 30,
            connect_timeout_secs: 10,
            idle_timeout_secs: 30,
            default_timeout_secs: 120,
        }
    }
}

/// `[router]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Agent used when neither hints nor the classifier decide.
    pub default_agent: Option<String>,
    /// Lowest classifier confidence accepted.
    pub min_confidence: f64,
    /// The agent whose model classifies requests.
    pub classifier: String,
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            default_agent: None,
            min_confidence: 0.6,
            classifier: "orchestrator".into(),
        }
    }
}

/// A price override.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// USD per million input tokens.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
}

/// `[report]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// The model `usage_report` compares against (`provider/model-id`).
    pub baseline: String,
}

impl Default for ReportSection {
    fn default() -> Self {
        ReportSection {
            baseline: "anthropic/claude-sonnet-4".into(),
        }
    }
}

/// `[recovery]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySection {
    /// Times a task interrupted by a crash is re-queued before it fails as `interrupted`.
    pub max_requeues: u32,
}

impl Default for RecoverySection {
    fn default() -> Self {
        RecoverySection { max_requeues: 1 }
    }
}

impl Config {
    /// Read `path` if it exists; a missing file is the default config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parse the text of a config file named `path` (for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span
                .map(|s| {
                    let before = &text.as_bytes()[..s.start.min(text.len())];
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                    (line, col)
                })
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let config: Config =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        let known = config.known_providers();
        for (alias, target) in &config.model_aliases {
            if let Err(message) = check_alias(alias, target.get_ref(), &known) {
                return Err(at(Some(target.span()), message));
            }
        }
        for (name, server) in &config.mcp_servers {
            if let Err(message) = server.check(name.get_ref()) {
                return Err(at(Some(name.span()), message));
            }
        }
        if let Err(message) = config.store.check() {
            return Err(at(None, message));
        }
        Ok(config)
    }

    /// Built-in providers plus the configured ones.
    pub fn known_providers(&self) -> BTreeSet<String> {
        BUILTIN_PROVIDERS
            .iter()
            .map(|s| s.to_string())
            .chain(self.providers.keys().cloned())
            .collect()
    }

    /// What the agent reader needs from the config.
    pub fn read_context(&self) -> ReadContext {
        let mut aliases: BTreeMap<String, String> = DEFAULT_MODEL_ALIASES
            .iter()
            .map(|(a, m)| (a.to_string(), m.to_string()))
            .collect();
        aliases.extend(
            self.model_aliases
                .iter()
                .map(|(a, m)| (a.clone(), m.get_ref().clone())),
        );
        ReadContext {
            known_providers: self.known_providers(),
            aliases,
        }
    }
}

/// An alias must be a bare word and stand for a model dispatch can call.
fn check_alias(alias: &str, target: &str, known: &BTreeSet<String>) -> Result<(), String> {
    if alias.is_empty() || alias.contains(['/', ' ', '(']) {
        return Err(format!(
            "[model_aliases] `{alias}`: an alias is one word without `/` (agent files write `model: {alias}`)"
        ));
    }
    match crate::agent::parse_model(target) {
        Ok(crate::agent::ModelSpec::Ref(m)) if known.contains(&m.provider) => Ok(()),
        Ok(crate::agent::ModelSpec::Ref(m)) => Err(format!(
            "[model_aliases] {alias} = \"{target}\": unknown provider `{}`; declare [providers.{}] or use one of {}",
            m.provider,
            m.provider,
            known.iter().cloned().collect::<Vec<_>>().join(", ")
        )),
        Ok(_) => Err(format!(
            "[model_aliases] {alias} = \"{target}\": write `provider/model-id`, e.g. `anthropic/claude-sonnet-4-5`"
        )),
        Err(e) => Err(format!("[model_aliases] {alias}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_section_has_defaults_and_refuses_an_empty_pool() {
        let c = Config::parse("", Path::new("dispatch.toml")).unwrap();
        assert_eq!(c.store, StoreSection::default());
        let c = Config::parse(
            "[store]\nurl = \"postgres://dispatch@db/dispatch\"\npool_size = 3\n",
            Path::new("dispatch.toml"),
        )
        .unwrap();
        assert_eq!(
            c.store.url.as_deref(),
            Some("postgres://dispatch@db/dispatch")
        );
        assert_eq!(c.store.pool_size, 3);
        let e = Config::parse("[store]\npool_size = 0\n", Path::new("dispatch.toml")).unwrap_err();
        assert!(e.to_string().contains("pool_size"), "{e}");
    }

    #[test]
    fn custom_providers_are_known() {
        let c = Config::parse(
            "[providers.together]\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"TOGETHER_API_KEY\"\n",
            Path::new("dispatch.toml"),
        )
        .unwrap();
        assert!(c.known_providers().contains("together"));
        assert!(c.known_providers().contains("openai"));
    }

    #[test]
    fn a_bad_provider_kind_or_alias_has_a_position() {
        let e = Config::parse(
            "[providers.x]\nbase_url = \"http://127.0.0.1:1/v1\"\nkind = \"grpc\"\n",
            Path::new("dispatch.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("dispatch.toml:3:8: error:"), "{e}");
        assert!(e.contains("openai") && e.contains("anthropic"), "{e}");
        let e = Config::parse(
            "[model_aliases]\nsonnet = \"nowhere/x\"\n",
            Path::new("dispatch.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("dispatch.toml:2:10: error:"), "{e}");
        assert!(e.contains("unknown provider `nowhere`"), "{e}");
        let c = Config::parse(
            "[model_aliases]\nsonnet = \"openrouter/anthropic/claude-sonnet-4.5\"\n",
            Path::new("dispatch.toml"),
        )
        .unwrap();
        assert_eq!(
            c.read_context().aliases["sonnet"],
            "openrouter/anthropic/claude-sonnet-4.5"
        );
        assert_eq!(
            c.read_context().aliases["haiku"],
            "anthropic/claude-haiku-4-5"
        );
    }

    #[test]
    fn the_root_is_found_above_the_working_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("proj");
        std::fs::create_dir_all(root.join("agents")).unwrap();
        std::fs::create_dir_all(root.join("src/deep")).unwrap();
        let p = Paths::discover_from(&root.join("src/deep"), None, None, None).unwrap();
        assert_eq!(p.root, root);
        assert_eq!(p.origin, RootOrigin::Found("agents/"));
        assert_eq!(p.kb, root.join("_kb"));
        std::fs::write(root.join("src/dispatch.toml"), "").unwrap();
        let p = Paths::discover_from(&root.join("src/deep"), None, None, None).unwrap();
        assert_eq!(p.root, root.join("src"));
        assert_eq!(p.origin, RootOrigin::Found("dispatch.toml"));
        let lonely = dir.path().join("lonely");
        std::fs::create_dir_all(&lonely).unwrap();
        // The temp folder itself may sit in a repository; only say what is found.
        let p = Paths::discover_from(&lonely, None, None, None).unwrap();
        assert!(p.origin != RootOrigin::Found("agents/") || p.root != lonely);
    }

    #[test]
    fn a_missing_root_is_an_error_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = Paths::discover_from(dir.path(), Some(&missing), None, None).unwrap_err();
        assert!(e.to_string().contains("no such folder"), "{e}");
        assert!(!missing.exists());
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let e = Paths::discover_from(dir.path(), Some(Path::new("file")), None, None).unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_position() {
        let e = Config::parse(
            "[providers.x]\nbase_ur = \"u\"\n",
            Path::new("dispatch.toml"),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("dispatch.toml:2:1: error:"), "{s}");
        assert!(s.contains("base_ur"), "{s}");
    }
}
