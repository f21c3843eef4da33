//! LLM providers: the only module that knows an LLM wire format.
//!
//! - [`Provider`] is one endpoint that answers a [`ChatRequest`]: the
//!   OpenAI-compatible client ([`OpenAiProvider`], used for `openai`,
//!   `openrouter`, `ollama` and custom endpoints) and the Anthropic Messages
//!   client ([`AnthropicProvider`]).
//! - [`Providers`] holds every provider, one pooled HTTP client, a circuit
//!   breaker per provider and the [`PriceTable`]; [`Providers::call_chain`]
//!   runs an agent's model chain with retries, backoff and failover, and
//!   reports every attempt as it happens (and counts and times it in the
//!   shared [`crate::metrics::Metrics`], cancelled calls included).
//! - [`ProviderError`] says what went wrong in words a user can act on; keys
//!   never appear in it (see [`ApiKey`]).
//!
//! Cost accounting lives here too ([`PriceTable`], [`estimate_tokens`]),
//! because only the provider layer knows where a cost figure came from.

mod anthropic;
mod breaker;
mod chain;
mod error;
mod http;
mod limit;
mod openai;
mod price;
mod retry;
mod secret;
mod sse;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use anthropic::AnthropicProvider;
pub use breaker::{BreakerState, Clock, ManualClock, SystemClock};
pub use chain::{
    AttemptLog, ChainError, ChainErrorKind, ChainSuccess, ModelFailure, Providers, SleepFn,
};
pub use error::ProviderError;
pub use limit::{Gate, Held, Limited, limit_concurrency};
pub use openai::{OpenAiFlavor, OpenAiProvider};
pub use price::{Cost, Price, PriceTable, estimate_request_tokens, estimate_tokens};
pub use retry::{backoff_delay, parse_retry_after};
pub use secret::{ApiKey, clip, scrub, scrub_keys};

/// Providers `dispatch` knows without any configuration (one list, owned by
/// the agent reader, so the two cannot drift apart).
pub use crate::agent::BUILTIN_PROVIDERS;

/// The per-request timeout used when an agent names none.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The `max_tokens` sent to Anthropic when the agent names none (the Messages
/// API requires the field).
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The caller (the task input, revision feedback, ...).
    User,
    /// A model (an earlier answer, when a conversation is replayed).
    Assistant,
}

impl Role {
    /// The wire name, the same in both API formats.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of the conversation sent to a model.
///
/// An assistant turn may carry the tool calls the model asked for; the user
/// turn after it carries their results (the OpenAI format sends each result
/// as a `tool` message of its own, the Anthropic one as `tool_result` blocks
/// of one user message: `provider` makes either from this one shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Tools the model asked to call (assistant turns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Results of the previous turn's calls (user turns), in call order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolResult>,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message {
            role: Role::Assistant,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }

    /// An assistant turn that asked for tools.
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Message {
        Message {
            tool_calls: calls,
            ..Message::assistant(content)
        }
    }

    /// The results of the previous turn's calls.
    pub fn results(results: Vec<ToolResult>) -> Message {
        Message {
            tool_results: results,
            ..Message::user("")
        }
    }
}

/// A tool offered to the model: its name (`^[a-zA-Z0-9_-]{1,64}$`), what it
/// does, and its arguments' JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: serde_json::Value,
}

/// One call a model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; results name it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not checked here (a
    /// model's bad JSON is an error the model sees, not a failed call).
    pub arguments: String,
}

/// The result of one call, sent back to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call's id.
    pub call_id: String,
    /// The tool's name (the Anthropic format does not need it; logs do).
    pub name: String,
    /// What the tool returned, or the error, as text.
    pub content: String,
    /// True when `content` is an error.
    #[serde(default)]
    pub is_error: bool,
}

/// What to ask a model, independent of the wire format.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The system prompt (the agent file's body); empty means none.
    pub system: String,
    /// The conversation, oldest first; normally ends with a user message.
    pub messages: Vec<Message>,
    /// Sampling temperature; `None` leaves the provider's default.
    pub temperature: Option<f64>,
    /// Output token limit; `None` leaves the provider's default (Anthropic: 4096).
    pub max_tokens: Option<u32>,
    /// Stream the answer (deltas go to the progress callback) or wait for it whole.
    pub stream: bool,
    /// Tools the model may call; empty sends none.
    pub tools: Vec<ToolSpec>,
}

impl ChatRequest {
    /// A request with a system prompt and one user message, streaming.
    pub fn new(system: impl Into<String>, user: impl Into<String>) -> ChatRequest {
        ChatRequest {
            system: system.into(),
            messages: vec![Message::user(user)],
            temperature: None,
            max_tokens: None,
            stream: true,
            tools: Vec::new(),
        }
    }
}

/// Tokens billed for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (for Anthropic including cache reads and writes).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The answer text.
    pub text: String,
    /// The model as the provider reported it (may differ from the one asked for,
    /// e.g. a dated snapshot); the requested id when the provider said nothing.
    pub model: String,
    /// Tokens billed; zero when the provider did not report usage.
    pub usage: Usage,
    /// Cost in USD as the provider reported it (OpenRouter's `usage.cost`).
    pub reported_cost_usd: Option<f64>,
    /// Why generation stopped (`stop`, `length`, `end_turn`, `max_tokens`, ...).
    pub finish_reason: Option<String>,
    /// Tools the model asked to call, in order; empty for a final answer.
    pub tool_calls: Vec<ToolCall>,
}

/// Receives each streamed text delta as it arrives.
///
/// When a streamed attempt fails part-way and is retried, the deltas of the
/// failed attempt have already been delivered; the attempt callback of
/// [`Providers::call_chain`] tells the caller that a new attempt started.
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

/// One LLM endpoint.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name (`openai`, `openrouter`, a custom name, ...).
    fn name(&self) -> &str;

    /// The `max_tokens` sent when a request names none; `None` when the
    /// field is left out (the model's own limit applies).
    fn default_max_tokens(&self) -> Option<u32> {
        None
    }

    /// Send one request to `model` (the id without the provider prefix).
    ///
    /// `timeout` bounds the whole call, from connecting to the last byte of the
    /// answer. Dropping the future aborts the HTTP request. One call is one
    /// HTTP request: retries and failover belong to [`Providers::call_chain`].
    async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<&ProgressFn>,
    ) -> Result<ChatResponse, ProviderError>;
}

/// Which wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ProviderKind {
    /// OpenAI chat completions (`POST {base}/chat/completions`).
    #[default]
    #[serde(rename = "openai")]
    OpenAiCompatible,
    /// Anthropic Messages (`POST {base}/v1/messages`).
    #[serde(rename = "anthropic")]
    Anthropic,
}

/// How to reach one provider, as declared in `dispatch.toml` under
/// `[providers.NAME]`. For a built-in name it overrides the base URL and key
/// variable; the built-in's wire format is kept whatever `kind` says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    /// Base URL (`https://host/v1` for OpenAI-compatible, `https://host` for
    /// Anthropic). `<NAME>_BASE_URL` in the environment wins over it.
    pub base_url: Option<String>,
    /// The environment variable holding the key (never the key itself); default
    /// `<NAME>_API_KEY`, upper-cased with `-` turned into `_`.
    pub api_key_env: Option<String>,
    /// The wire format (custom providers only).
    pub kind: ProviderKind,
}

/// Retry, backoff, circuit-breaker and timeout settings shared by all providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResilienceConfig {
    /// HTTP attempts per model before failing over to the next one (at least 1).
    pub max_attempts_per_model: u32,
    /// First backoff ceiling; doubles per retry (full jitter picks 0..=ceiling).
    pub base_delay: Duration,
    /// Cap on any single wait, including a provider's `Retry-After`.
    pub max_delay: Duration,
    /// Consecutive retryable failures that open a provider's breaker (0 = never).
    pub breaker_threshold: u32,
    /// How long an open breaker rejects calls before letting one probe through.
    pub breaker_cooldown: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence allowed between bytes of a response body.
    pub idle_timeout: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            max_attempts_per_model: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// `NAME` → `NAME_SUFFIX`, upper-cased with `-` turned into `_` (`my-llm` →
/// `MY_LLM_API_KEY`).
pub fn env_var_name(provider: &str, suffix: &str) -> String {
    let mut s: String = provider
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    s.push('_');
    s.push_str(suffix);
    s
}

/// Whole seconds in [`human_duration`]'s form (`45s`, `2m5s`), for elapsed times.
pub(crate) fn human_duration_secs(d: Duration) -> String {
    human_duration(Duration::from_secs(d.as_secs().max(1)))
}

/// Compact human form of a duration for messages: `250ms`, `1.5s`, `30s`, `2m5s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else {
        let s = d.as_secs();
        if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{}m{}s", s / 60, s % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(env_var_name("openrouter", "API_KEY"), "OPENROUTER_API_KEY");
        assert_eq!(env_var_name("my-llm", "BASE_URL"), "MY_LLM_BASE_URL");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(30)), "30s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m5s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn kinds_deserialize_by_wire_name() {
        let s: ProviderSettings = serde_json::from_str(r#"{"kind":"anthropic"}"#).unwrap();
        assert_eq!(s.kind, ProviderKind::Anthropic);
        let s: ProviderSettings = serde_json::from_str(r#"{"base_url":"http://x/v1"}"#).unwrap();
        assert_eq!(s.kind, ProviderKind::OpenAiCompatible);
    }
}
