//! The MCP tools: their names, schemas, descriptions, annotations and handlers.
//!
//! Handlers take parsed arguments and return a [`ToolReply`] or a
//! [`ToolError`]; the server turns both into a `CallToolResult` (errors as
//! `isError: true` with a message that says what to fix, never as a protocol
//! error the model cannot read).

use std::sync::{Arc, LazyLock};

use rmcp::handler::server::common::{schema_for_input, schema_for_output};
use rmcp::model::{Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::schema::JsonObject;
use super::tasks::{self, CallCtx};
use super::workflows;
use crate::agent::SourceFormat;
use crate::app::App;
use crate::diag::Diagnostic;
use crate::engine::{CancelOutcome, Engine, UsageReport};
pub use crate::kb::args::{KbListArgs, KbReadArgs, KbSearchArgs, KbWriteArgs};
use crate::kb::{KbError, KbView, SearchQuery};

/// A tool call that failed in a way the caller can fix or should know about.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// No tool by that name.
    #[error("unknown tool `{0}`: call tools/list for the available tools")]
    UnknownTool(String),
    /// Arguments did not match the schema.
    #[error("invalid arguments for {tool}: {message}")]
    BadArguments {
        /// Tool name.
        tool: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The knowledge base refused or failed.
    #[error(transparent)]
    Kb(#[from] KbError),
    /// The engine refused or failed (message says what to do).
    #[error("{0}")]
    Engine(String),
    /// A blocking task died (a bug, reported rather than hidden).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a successful tool returns: structured JSON, and the text block for
/// clients that read only text (the same JSON unless a tool has a better
/// reading, such as an agent's output).
#[derive(Debug)]
pub struct ToolReply {
    /// The structured content.
    pub structured: Value,
    /// The text content; `None` means the JSON itself.
    pub text: Option<String>,
}

impl ToolReply {
    /// Structured content, sent as JSON text too.
    pub fn json(structured: Value) -> ToolReply {
        ToolReply {
            structured,
            text: None,
        }
    }

    /// Structured content with its own text.
    pub fn with_text(structured: Value, text: String) -> ToolReply {
        ToolReply {
            structured,
            text: Some(text),
        }
    }
}

/// Static description of one tool.
pub struct ToolSpec {
    /// Canonical name (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: &'static str,
    /// The prototype's slash name, still accepted on call.
    pub legacy_name: &'static str,
    /// The MCP tool definition.
    pub tool: Tool,
}

fn tool<I: JsonSchema + 'static, O: JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    description: &'static str,
    annotations: ToolAnnotations,
) -> Tool {
    // Our own types always produce object schemas; a failure here is a bug
    // caught by the tests, so fall back to an open object rather than panic.
    let input = schema_for_input::<I>().unwrap_or_else(|e| {
        tracing::error!(tool = name, error = %e, "input schema is not an object");
        rmcp::handler::server::common::schema_for_empty_input()
    });
    let mut input = Value::Object(JsonObject::clone(&input));
    super::schema::standard_formats(&mut input);
    let input = match input {
        Value::Object(m) => Arc::new(m),
        _ => rmcp::handler::server::common::schema_for_empty_input(),
    };
    let mut t = Tool::new(name, description, input);
    t.title = Some(title.to_string());
    t.output_schema = Some(Arc::new(super::schema::shallow_output(
        &schema_for_output::<O>(),
    )));
    t.annotations = Some(annotations.with_title_opt(title));
    t
}

trait WithTitle {
    fn with_title_opt(self, title: &str) -> Self;
}

impl WithTitle for ToolAnnotations {
    fn with_title_opt(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }
}

fn read_only() -> ToolAnnotations {
    ToolAnnotations::new()
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(false)
}

/// Every tool this server offers, in the order `tools/list` shows them.
pub static TOOLS: LazyLock<Vec<ToolSpec>> = LazyLock::new(|| {
    vec![
        ToolSpec {
            name: "agent_list",
            legacy_name: "agent/list",
            tool: tool::<AgentListArgs, AgentListOutput>(
                "agent_list",
                "List agents",
                "List the specialist agents this server can run: name, description, model chain \
                 (first = primary, the rest = failover), mirror auditor, tools, and any problems \
                 in their agent files. Call this to choose an agent or to see why one is missing.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "agent_run",
            legacy_name: "agent/run",
            tool: tool::<tasks::AgentRunArgs, tasks::TaskView>(
                "agent_run",
                "Run an agent",
                "Run a specialist agent on an input and wait for its answer (up to `wait_seconds`, \
                 default 45). Returns the output with the task id, model used, calls, tokens, cost \
                 and the KB path of the saved result. If the task is not finished in time you get \
                 its id and state instead: call task_result with that id to wait for the output. \
                 The agent sees only `input`, so include the material it needs (diff, logs, files).",
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
        },
        ToolSpec {
            name: "agent_delegate",
            legacy_name: "agent/delegate",
            tool: tool::<tasks::AgentDelegateArgs, tasks::DelegateOutput>(
                "agent_delegate",
                "Delegate to an agent",
                "Queue a task for a specialist agent and return its id at once, for long or \
                 background work. Omit `agent` to let the router choose from the agents' routing \
                 hints and a cheap classifier; the choice and its reason are returned. Collect the \
                 output later with task_result.",
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
        },
        ToolSpec {
            name: "task_status",
            legacy_name: "task/status",
            tool: tool::<tasks::TaskIdArgs, tasks::TaskView>(
                "task_status",
                "Task status",
                "State of a task and every provider call made for it (model, outcome, tokens, \
                 cost, latency), without the output. Use task_result for the output.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "task_result",
            legacy_name: "task/result",
            tool: tool::<tasks::TaskResultArgs, tasks::TaskView>(
                "task_result",
                "Task result",
                "The output of a task with its accounting. Pass `wait_seconds` to wait for a task \
                 that is still queued or running; it returns as soon as the task finishes.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "task_list",
            legacy_name: "task/list",
            tool: tool::<tasks::TaskListArgs, tasks::TaskListOutput>(
                "task_list",
                "List tasks",
                "Recent tasks, newest first, filtered by state, agent, parent task or age \
                 (`since`: 7d, 24h, ...). Pages: pass `next_cursor` back as `cursor`.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "task_cancel",
            legacy_name: "task/cancel",
            tool: tool::<tasks::TaskIdArgs, CancelOutcome>(
                "task_cancel",
                "Cancel a task",
                "Cancel a queued or running task; a running one has its model request aborted. \
                 Cancelling a finished task changes nothing and says so.",
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(true)
                    .open_world(false),
            ),
        },
        ToolSpec {
            name: "usage_report",
            legacy_name: "usage/report",
            tool: tool::<tasks::UsageReportArgs, UsageReport>(
                "usage_report",
                "Usage and cost report",
                "Tokens and cost per agent and model over a window (`since`, default 30d), the \
                 share spent on audits, and the saving against running everything on one \
                 baseline model.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "workflow_run",
            legacy_name: "workflow/run",
            tool: tool::<workflows::WorkflowRunArgs, workflows::RunView>(
                "workflow_run",
                "Run a workflow",
                "Run a multi-step workflow (a DAG of agents): an inline `workflow` or a workflow \
                 agent such as `review-and-document`. Each step starts as soon as its own \
                 dependencies are done; independent steps run in parallel. Step inputs use \
                 `{{input}}`, `{{step.output}}` and `{{step.output.field}}`. Everything is \
                 validated before anything runs. Waits up to `wait_seconds` (default 45; 0 returns \
                 at once) and returns every step's state, task and cost.",
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(true),
            ),
        },
        ToolSpec {
            name: "workflow_status",
            legacy_name: "workflow/status",
            tool: tool::<workflows::RunIdArgs, workflows::RunView>(
                "workflow_status",
                "Workflow status",
                "State of a workflow run: each step's state, task id, output file and cost, the \
                 totals, and the final output once done. Cancel a run with task_cancel and its id.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "kb_read",
            legacy_name: "kb/read",
            tool: tool::<KbReadArgs, crate::kb::ReadChunk>(
                "kb_read",
                "Read a knowledge-base file",
                "Read a text file from the markdown knowledge base (`_kb`). `path` is relative to \
                 the KB root, e.g. `outbox/code-review-42.md` or `context/team.md`. Large files \
                 come in chunks: pass the returned `next_offset` as `offset` to continue until \
                 `eof` is true. Use kb_list or kb_search to find paths.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "kb_write",
            legacy_name: "kb/write",
            tool: tool::<KbWriteArgs, crate::kb::WriteOutcome>(
                "kb_write",
                "Write a knowledge-base file",
                "Write a text file in the knowledge base, atomically. `path` is relative to the KB \
                 root; folders are created as needed. `mode`: `overwrite` (default) replaces the \
                 file, `append` adds to its end, `create_new` fails if it already exists. Put \
                 standing context in `context/`, requests in `inbox/`.",
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(true)
                    .idempotent(false)
                    .open_world(false),
            ),
        },
        ToolSpec {
            name: "kb_list",
            legacy_name: "kb/list",
            tool: tool::<KbListArgs, crate::kb::Listing>(
                "kb_list",
                "List knowledge-base files",
                "List files and folders in the knowledge base with type, size, modification time \
                 and, for markdown, the title. `path` is a KB-relative folder (omit for the root: \
                 inbox/, outbox/, context/, sessions/); `recursive` descends into sub-folders.",
                read_only(),
            ),
        },
        ToolSpec {
            name: "kb_search",
            legacy_name: "kb/search",
            tool: tool::<KbSearchArgs, crate::kb::SearchResults>(
                "kb_search",
                "Search the knowledge base",
                "Search the text of every knowledge-base file, line by line. `query` is literal \
                 text unless `regex` is true. Returns `path:line: snippet` matches sorted by path; \
                 read a hit in full with kb_read. Binary and very large files are skipped.",
                read_only(),
            ),
        },
    ]
});

/// Map a called name (canonical or the prototype's slash form) to a tool.
pub fn find(name: &str) -> Option<&'static ToolSpec> {
    TOOLS
        .iter()
        .find(|t| t.name == name || t.legacy_name == name)
}

pub(super) fn parse<T: DeserializeOwned>(
    tool: &'static str,
    args: Option<serde_json::Map<String, Value>>,
) -> Result<T, ToolError> {
    let value = Value::Object(args.unwrap_or_default());
    serde_json::from_value(value).map_err(|e| ToolError::BadArguments {
        tool,
        message: format!("{e}; see the tool's input schema"),
    })
}

/// Everything a tool handler may use.
pub struct Ctx<'a> {
    /// The opened project.
    pub app: &'a Arc<App>,
    /// The task engine.
    pub engine: &'a Arc<Engine>,
    /// The caller.
    pub call: &'a CallCtx,
    /// Where KB changes are announced to the sessions.
    pub kb_changes: &'a tokio::sync::broadcast::Sender<crate::app::KbChange>,
}

/// Run the tool `name` with `args`.
pub async fn call(
    ctx: &Ctx<'_>,
    name: &str,
    args: Option<serde_json::Map<String, Value>>,
) -> Result<ToolReply, ToolError> {
    let spec = find(name).ok_or_else(|| ToolError::UnknownTool(crate::engine::echo(name)))?;
    let app = ctx.app;
    let (engine, caller) = (ctx.engine, ctx.call);
    match spec.name {
        "agent_list" => {
            let a: AgentListArgs = parse(spec.name, args)?;
            Ok(ToolReply::json(to_value(agent_list(
                app, engine, &a, caller,
            ))?))
        }
        "agent_run" => tasks::agent_run(engine, parse(spec.name, args)?, caller).await,
        "agent_delegate" => tasks::agent_delegate(engine, parse(spec.name, args)?, caller).await,
        "task_status" => tasks::task_status(engine, parse(spec.name, args)?, caller).await,
        "task_result" => tasks::task_result(engine, parse(spec.name, args)?, caller).await,
        "task_list" => tasks::task_list(engine, parse(spec.name, args)?, caller).await,
        "task_cancel" => tasks::task_cancel(engine, parse(spec.name, args)?, caller).await,
        "usage_report" => tasks::usage_report(engine, parse(spec.name, args)?, caller).await,
        "workflow_run" => workflows::workflow_run(engine, parse(spec.name, args)?, caller).await,
        "workflow_status" => {
            workflows::workflow_status(engine, parse(spec.name, args)?, caller).await
        }
        "kb_read" => {
            let a: KbReadArgs = parse(spec.name, args)?;
            blocking_json(app, caller, move |kb| {
                kb.read(&a.path, a.offset.unwrap_or(0), a.limit)
            })
            .await
        }
        "kb_write" => {
            let a: KbWriteArgs = parse(spec.name, args)?;
            let reply = blocking(app, caller, move |kb| {
                kb.write(&a.path, &a.content, a.mode)
                    .map(|out| (kb.disk_path(&out.path), out))
            })
            .await?;
            // Told at once, not only by the watcher: a file written into a
            // folder created a moment before can land before the watcher
            // watches that folder, and its event is then never seen.
            let (disk, out) = reply;
            if out.created {
                let _ = ctx.kb_changes.send(std::sync::Arc::new(vec![disk]));
            }
            Ok(ToolReply::json(to_value(out)?))
        }
        "kb_list" => {
            let a: KbListArgs = parse(spec.name, args)?;
            let opts = a.options();
            blocking_json(app, caller, move |kb| {
                kb.list(a.path.as_deref().unwrap_or(""), &opts)
            })
            .await
        }
        "kb_search" => {
            let a: KbSearchArgs = parse(spec.name, args)?;
            let q = SearchQuery::from(a);
            blocking_json(app, caller, move |kb| kb.search(&q)).await
        }
        other => Err(ToolError::UnknownTool(other.to_string())),
    }
}

fn to_value<T: Serialize>(v: T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| ToolError::Internal(e.to_string()))
}

/// KB work on the caller's view of the KB ([`App::kb_view`]), on the
/// blocking pool so a slow disk cannot stall the JSON-RPC loop.
async fn blocking<T, F>(app: &Arc<App>, caller: &CallCtx, f: F) -> Result<T, ToolError>
where
    T: Send + 'static,
    F: FnOnce(&KbView) -> Result<T, KbError> + Send + 'static,
{
    let app = app.clone();
    let subject = caller.subject.clone();
    Ok(
        tokio::task::spawn_blocking(move || f(&app.kb_view(subject.as_deref())?))
            .await
            .map_err(|e| ToolError::Internal(format!("knowledge-base task failed: {e}")))??,
    )
}

/// [`blocking`], answered as JSON.
async fn blocking_json<T, F>(app: &Arc<App>, caller: &CallCtx, f: F) -> Result<ToolReply, ToolError>
where
    T: Serialize + Send + 'static,
    F: FnOnce(&KbView) -> Result<T, KbError> + Send + 'static,
{
    let out = blocking(app, caller, f).await?;
    Ok(ToolReply::json(to_value(out)?))
}

// ---------------------------------------------------------------------------
// Arguments and outputs

/// Arguments of `agent_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentListArgs {
    /// Include each agent's system prompt (long; off by default).
    #[serde(default)]
    pub include_prompts: bool,
}

/// One agent in `agent_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentInfo {
    /// Unique name to pass as `agent`.
    pub name: String,
    /// What the agent is for.
    pub description: String,
    /// Model chain: primary first, then failover models (`provider/model-id`).
    pub models: Vec<String>,
    /// Auditor agent that checks this agent's answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Revision rounds after the auditor asks for changes.
    pub max_retries: u32,
    /// Model for a last attempt after the revision rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalate: Option<String>,
    /// Tools the agent may use.
    pub tools: Vec<String>,
    /// True for workflow agents (a DAG of other agents).
    pub workflow: bool,
    /// Timeout per attempt in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// The agent file, relative to the project root.
    pub file: String,
    /// The file's dialect.
    pub format: SourceFormat,
    /// True when the file is broken now and this is its last good version.
    pub stale: bool,
    /// Problems in the agent's file.
    pub diagnostics: Vec<Diagnostic>,
    /// The system prompt, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Environment variables that hold no key although this agent's models
    /// (or its auditor's) need them; a run fails at once with `missing_key`
    /// when no model of a chain has its key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_keys: Vec<String>,
}

/// Where the agents came from.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProjectInfo {
    /// The project root; shown to local (stdio) clients only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// How the root was chosen.
    pub found_by: String,
    /// The folders agent files were read from, relative to the root.
    pub agent_folders: Vec<String>,
}

/// Result of `agent_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentListOutput {
    /// Loaded agents, by name.
    pub agents: Vec<AgentInfo>,
    /// Problems in files that did not load, and errors in files that did (stale agents).
    pub load_errors: Vec<Diagnostic>,
    /// Number of warnings across all agent files.
    pub warnings: usize,
    /// Reload counter; changes whenever agent files change.
    pub generation: u64,
    /// The project the agents belong to.
    pub project: ProjectInfo,
}

fn agent_list(app: &App, engine: &Engine, args: &AgentListArgs, call: &CallCtx) -> AgentListOutput {
    let snap = app.registry.snapshot();
    let relative = |p: &std::path::Path| app.paths.relative(p).display().to_string();
    let agents = snap
        .agents
        .values()
        .map(|l| {
            let a = &l.agent;
            AgentInfo {
                name: a.name.clone(),
                description: a.description.clone(),
                models: a.models.iter().map(ToString::to_string).collect(),
                mirror: a.mirror.clone(),
                max_retries: a.max_retries,
                escalate: a.escalate.as_ref().map(ToString::to_string),
                tools: a.tools.clone(),
                workflow: a.is_workflow(),
                timeout_seconds: a.timeout.map(|d| d.as_secs_f64()),
                file: relative(&a.source),
                format: a.format,
                stale: l.stale,
                diagnostics: l
                    .diagnostics
                    .iter()
                    .map(|d| relative_diag(app, d))
                    .collect(),
                prompt: args.include_prompts.then(|| a.system_prompt.clone()),
                missing_keys: engine.key_check(a).missing_vars(),
            }
        })
        .collect();
    AgentListOutput {
        agents,
        load_errors: snap.errors().map(|d| relative_diag(app, d)).collect(),
        warnings: snap.diagnostics.iter().filter(|d| !d.is_error()).count(),
        generation: snap.generation,
        project: ProjectInfo {
            root: (call.transport == super::Transport::Stdio)
                .then(|| app.paths.root.display().to_string()),
            found_by: app.paths.origin.describe(),
            agent_folders: snap.looked_in.clone(),
        },
    }
}

/// A diagnostic whose file is named relative to the project root.
fn relative_diag(app: &App, d: &Diagnostic) -> Diagnostic {
    let mut d = d.clone();
    d.file = app.paths.relative(&d.file).to_path_buf();
    d
}
