//! Agent definitions: what an `agents/*.agent.md` file says, once read.
//!
//! [`reader`] turns one file into an [`Agent`] (or diagnostics); [`validate`]
//! checks what only the whole set can tell (duplicate names, mirrors that name
//! no agent, mirror cycles). The registry owns loading and reloading.

mod model_ref;
pub mod reader;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use model_ref::{BUILTIN_PROVIDERS, ModelRef, ModelSpec, parse_model};

/// Bounds that agent files are checked against.
pub mod limits {
    /// Highest sampling temperature any provider accepts.
    pub const MAX_TEMPERATURE: f64 = 2.0;
    /// Upper bound for `max_tokens` (no current model emits more).
    pub const MAX_TOKENS: u64 = 1_000_000;
    /// Upper bound for `max_retries` (revision rounds cost a full call each).
    pub const MAX_RETRIES: u64 = 10;
    /// Upper bound for `max_turns` of a tool loop.
    pub const MAX_TURNS: u64 = 1000;
    /// Default revision rounds when an agent has a mirror and says nothing.
    pub const DEFAULT_MAX_RETRIES: u32 = 2;
    /// Shortest accepted `timeout`.
    pub const MIN_TIMEOUT_SECS: u64 = 1;
    /// Longest accepted `timeout` (one hour).
    pub const MAX_TIMEOUT_SECS: u64 = 3600;
}

/// The format an agent file was written in, as far as its keys tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// `dispatch`'s own keys (or nothing that says otherwise).
    Dispatch,
    /// The TypeScript prototype: `model: {id, provider, params}`, `maxRetries`, ...
    Prototype,
    /// VS Code custom agents (`handoffs`, `argument-hint`, ...).
    VsCode,
    /// Claude Code subagents (`color`, `permissionMode`, comma-separated `tools`, ...).
    ClaudeCode,
}

/// Hints the router uses for `agent_delegate` without an agent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Routing {
    /// Words or phrases that point at this agent (matched case-insensitively).
    pub keywords: Vec<String>,
    /// Regular expressions that point at this agent.
    pub patterns: Vec<String>,
}

/// How many of an agent's answers its mirror audits.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct AuditPolicy {
    /// Share of tasks audited, 0.0..=1.0.
    pub rate: f64,
    /// Floor the adaptive rate falls towards.
    pub min_rate: f64,
    /// Lower the rate while audits keep passing; back to 1.0 after a rejection.
    pub adaptive: bool,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        AuditPolicy {
            rate: 1.0,
            min_rate: 1.0,
            adaptive: false,
        }
    }
}

/// One agent, as loaded from its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Unique name (defaults to the file name without `.agent.md`).
    pub name: String,
    /// One line for humans and for the router.
    pub description: String,
    /// Failover chain; the first model is the primary. May be empty when the file
    /// names no model `dispatch` can call (e.g. a VS Code display name).
    pub models: Vec<ModelRef>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Output token cap.
    pub max_tokens: Option<u32>,
    /// Auditor agent.
    pub mirror: Option<String>,
    /// Revision rounds after a `needs-revision` verdict.
    pub max_retries: u32,
    /// Model turns a tool loop may take for one answer; `None` uses `[limits] max_turns`.
    pub max_turns: Option<u32>,
    /// Model for one last attempt after the revision rounds run out.
    pub escalate: Option<ModelRef>,
    /// Total time allowed for one attempt.
    pub timeout: Option<Duration>,
    /// Tools this agent may use.
    pub tools: Vec<String>,
    /// Hints for the router.
    pub routing: Routing,
    /// Selective auditing; `None` audits every answer when there is a mirror.
    pub audit: Option<AuditPolicy>,
    /// A workflow definition (`dag:`), kept as JSON until the workflow engine reads it.
    pub dag: Option<serde_json::Value>,
    /// The markdown body: the system prompt.
    pub system_prompt: String,
    /// The file this agent came from.
    pub source: PathBuf,
    /// Which format the file looks like.
    pub format: SourceFormat,
    /// Keys `dispatch` does not use, kept as written.
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Where each top-level key is in the file (line, column), for diagnostics
    /// that only the whole set can find.
    pub positions: BTreeMap<String, (usize, usize)>,
}

impl Agent {
    /// The position of `key` in the source file, or the file's start.
    pub fn position(&self, key: &str) -> (usize, usize) {
        self.positions.get(key).copied().unwrap_or((1, 1))
    }

    /// True when this agent runs a workflow rather than a model.
    pub fn is_workflow(&self) -> bool {
        self.dag.is_some()
    }
}

#[cfg(test)]
mod tests;
