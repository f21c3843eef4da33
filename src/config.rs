//! Where things live (`--root`, `--agents`, `--kb`) and the optional
//! `dispatch.toml` next to them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::agent::BUILTIN_PROVIDERS;
use crate::agent::reader::ReadContext;

/// Name of the optional config file under the project root.
pub const CONFIG_FILE: &str = "dispatch.toml";

/// The project's folders.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The project root (`--root`, default: the current directory).
    pub root: PathBuf,
    /// Agent files (`--agents`, default `ROOT/agents`).
    pub agents: PathBuf,
    /// Knowledge base (`--kb`, default `ROOT/_kb`).
    pub kb: PathBuf,
}

impl Paths {
    /// Resolve the folders from the CLI options.
    pub fn new(root: &Path, agents: Option<&Path>, kb: Option<&Path>) -> Paths {
        Paths {
            root: root.to_path_buf(),
            agents: agents.map_or_else(|| root.join("agents"), Path::to_path_buf),
            kb: kb.map_or_else(|| root.join("_kb"), Path::to_path_buf),
        }
    }

    /// `ROOT/dispatch.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
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
    pub kind: Option<String>,
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
    /// OAuth2 resource server for HTTP: without it, HTTP is unauthenticated.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
}

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
    /// On SIGTERM/ctrl-c, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
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
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
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
                message: e.message().to_string(),
            }
        })
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
        ReadContext {
            known_providers: self.known_providers(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
