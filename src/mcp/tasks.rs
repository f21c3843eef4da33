//! The task tools: `agent_run`, `agent_delegate`, `task_status`,
//! `task_result`, `task_list`, `task_cancel`, `usage_report`.

use std::sync::Arc;
use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::Peer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::tools::{ToolError, ToolReply};
use super::workflows::{RunView, is_run_id};
use crate::agent::parse_model;
use crate::engine::{CallLimits, Engine, RouteDecision, Submit, UsageReport};
use crate::store::TaskFilter;
use crate::task::{Attempt, FailReason, RunState, Task, TaskState};

/// Default and longest `wait_seconds` of `agent_run` (below the usual 60 s client timeout).
pub const DEFAULT_WAIT_SECS: f64 = 45.0;
/// Longest wait any tool accepts.
pub const MAX_WAIT_SECS: f64 = 3600.0;

/// What a tool call knows about its caller.
#[derive(Clone)]
pub struct CallCtx {
    /// The client, for progress notifications.
    pub peer: Option<Peer<RoleServer>>,
    /// The client's progress token for this request, if it asked for progress.
    pub progress_token: Option<ProgressToken>,
    /// Cancelled when the client sends `notifications/cancelled` for this request.
    pub cancelled: CancellationToken,
    /// The authenticated subject (HTTP with OAuth2); `None` on stdio.
    pub subject: Option<String>,
    /// The transport the call came in on.
    pub transport: super::Transport,
    /// Silence after which a waiting call is told its task is still going
    /// (`[progress] heartbeat_secs`); `None`: never.
    pub heartbeat: Option<Duration>,
    /// Who answers the questions of the trees this call starts (tools
    /// marked `ask`); `None`: they are refused.
    pub approver: Option<crate::engine::approval::AskVia>,
}

impl CallCtx {
    /// A context for callers that are not MCP requests (tests, the CLI).
    pub fn detached() -> CallCtx {
        CallCtx {
            peer: None,
            progress_token: None,
            cancelled: CancellationToken::new(),
            subject: None,
            transport: super::Transport::Stdio,
            heartbeat: None,
            approver: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Arguments

/// Arguments of `agent_run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRunArgs {
    /// The agent to run (see agent_list), e.g. `code-review`.
    pub agent: String,
    /// What the agent works on: a string, or an object whose fields become sections
    /// (e.g. `{"diff": "...", "context": "..."}`). Include everything it needs: it does
    /// not see your conversation.
    pub input: Value,
    /// Seconds to wait for the result (default 45, at most 3600). If the task is not
    /// finished by then, you get its id and state: poll with task_result.
    pub wait_seconds: Option<f64>,
    /// An inline workflow to run instead of a single agent (the prototype's form):
    /// `{"steps": [{"id", "agent", "input", "depends_on"}]}`; `agent` names the run.
    pub dag: Option<Value>,
    /// Most USD the whole delegation tree (this task and every task it starts)
    /// may spend; never above `[limits] max_tree_cost_usd`.
    pub budget_usd: Option<f64>,
    /// Deepest delegation below this task; never above `[limits] max_depth`.
    pub max_depth: Option<u32>,
}

/// Arguments of `agent_delegate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDelegateArgs {
    /// The agent to run; omit to let the router choose (it says which and why).
    pub agent: Option<String>,
    /// What the agent works on: a string or an object.
    pub input: Value,
    /// The task on whose behalf this one is delegated (limits nesting depth).
    pub parent_task_id: Option<String>,
    /// Most USD the whole delegation tree may spend (a new tree only).
    pub budget_usd: Option<f64>,
    /// Deepest delegation below this task (a new tree only).
    pub max_depth: Option<u32>,
}

/// The caller's tree limits, checked.
pub(super) fn call_limits(
    budget_usd: Option<f64>,
    max_depth: Option<u32>,
) -> Result<CallLimits, ToolError> {
    if let Some(b) = budget_usd
        && !(b.is_finite() && b > 0.0)
    {
        return Err(ToolError::BadArguments {
            tool: "agent_run",
            message: format!("budget_usd must be a positive number of dollars, not {b}"),
        });
    }
    Ok(CallLimits {
        budget_usd,
        max_depth,
    })
}

/// Arguments of `task_status` and `task_cancel`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// The task id returned by agent_run or agent_delegate.
    pub task_id: String,
}

/// Arguments of `task_result`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskResultArgs {
    /// The task id.
    pub task_id: String,
    /// Seconds to wait for it to finish (default 0: answer at once; at most 3600).
    pub wait_seconds: Option<f64>,
}

/// Arguments of `task_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListArgs {
    /// Only tasks in these states: queued, running, succeeded, failed, cancelled.
    #[serde(default)]
    pub state: Vec<TaskState>,
    /// Only this agent's tasks.
    pub agent: Option<String>,
    /// Only tasks delegated by this task.
    pub parent_task_id: Option<String>,
    /// Only the tasks of the delegation tree with this root (the root included).
    pub root_task_id: Option<String>,
    /// Only tasks created in this window: `7d`, `24h`, `30m`, or an RFC 3339 time.
    pub since: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Tasks per page (default 50, at most 1000).
    pub limit: Option<u32>,
}

/// Arguments of `usage_report`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReportArgs {
    /// Window start: `7d`, `24h`, `30m`, or an RFC 3339 time (default: 30d).
    pub since: Option<String>,
    /// Window end, same forms (default: now).
    pub until: Option<String>,
    /// Baseline model for the saving (`provider/model-id`; default from dispatch.toml).
    pub baseline: Option<String>,
    /// Only the delegation tree with this root (a task id, or a workflow run id):
    /// what the whole tree cost, per agent and model.
    pub root_task_id: Option<String>,
}

// ---------------------------------------------------------------------------
// Outputs

/// One turn of a tool loop, as tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnView {
    /// Order within the task.
    pub seq: u32,
    /// Which answer of the audit loop (1 = the first).
    pub answer: u32,
    /// `model` (the model asked for tools), `child_started`, `asked`, `tool_result`.
    pub kind: String,
    /// The model, for a model turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The calls a model turn asked for: `name(arguments)`, clipped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
    /// The tool, for a result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The result's size before any cut, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Wall time of the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The error the model was shown, clipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The child task (`agent_run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_task_id: Option<String>,
    /// The question put to a human (`asked`), or the one a result answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// The human's answer to a call of a tool marked `ask`, and who gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::task::Approval>,
}

impl From<&crate::task::Turn> for TurnView {
    fn from(t: &crate::task::Turn) -> TurnView {
        use crate::task::TurnEvent;
        let mut v = TurnView {
            seq: t.seq,
            answer: t.answer,
            kind: t.event.kind().to_string(),
            model: None,
            calls: Vec::new(),
            tool: None,
            bytes: None,
            latency_ms: None,
            error: None,
            child_task_id: None,
            question: None,
            approval: None,
        };
        match &t.event {
            TurnEvent::Model { model, calls, .. } => {
                v.model = Some(model.clone());
                v.calls = calls
                    .iter()
                    .map(|c| crate::provider::clip(&format!("{}({})", c.name, c.arguments), 200))
                    .collect();
            }
            TurnEvent::ChildStarted {
                child_task_id,
                agent,
                ..
            } => {
                v.tool = Some(format!("agent_run {agent}"));
                v.child_task_id = Some(child_task_id.clone());
            }
            TurnEvent::ToolResult {
                name,
                content,
                is_error,
                bytes,
                latency_ms,
                child_task_id,
                approval,
                ..
            } => {
                v.tool = Some(name.clone());
                v.bytes = Some(*bytes);
                v.latency_ms = Some(*latency_ms);
                v.error = is_error.then(|| crate::provider::clip(content, 300));
                v.child_task_id = child_task_id.clone();
                v.approval = approval.clone();
            }
            TurnEvent::Asked { name, question, .. } => {
                v.tool = Some(name.clone());
                v.question = Some(question.clone());
            }
        }
        v
    }
}

/// A delegation tree, as tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TreeView {
    /// Tasks in the tree, the root included.
    pub tasks: u32,
    /// Model turns over the whole tree.
    pub turns: u32,
    /// What the whole tree has spent, USD.
    pub cost_usd: f64,
    /// Held by calls in flight, USD.
    pub reserved_usd: f64,
    /// Its limits.
    pub limits: crate::task::TreeLimits,
}

impl From<&crate::task::Tree> for TreeView {
    fn from(t: &crate::task::Tree) -> TreeView {
        TreeView {
            tasks: t.tasks,
            turns: t.turns,
            cost_usd: t.spent_micros as f64 / 1e6,
            reserved_usd: t.reserved_micros as f64 / 1e6,
            limits: t.limits,
        }
    }
}

/// One provider call, as tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CallView {
    /// Order within the task.
    pub seq: u32,
    /// primary, audit, audit_repair, escalation, routing.
    pub kind: String,
    /// The agent whose model was called.
    pub agent: String,
    /// `provider/model-id`.
    pub model: String,
    /// Whether it answered.
    pub ok: bool,
    /// The error, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// HTTP status of a failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Latency in milliseconds.
    pub latency_ms: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// reported, price_table or unknown.
    pub cost_source: String,
    /// The audit verdict (with feedback and issues), for audits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Value>,
    /// The message that asked for this revision, for revision calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_message: Option<String>,
}

impl From<&Attempt> for CallView {
    fn from(a: &Attempt) -> Self {
        CallView {
            seq: a.seq,
            kind: a.kind.as_str().to_string(),
            agent: a.agent.clone(),
            model: format!("{}/{}", a.provider, a.model),
            ok: a.ok,
            error: a.error.clone(),
            http_status: a.http_status,
            latency_ms: a.latency_ms,
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens,
            cost_usd: a.cost_usd,
            cost_source: a.cost_source.as_str().to_string(),
            verdict: a.verdict.clone(),
            revision_message: a.revision_message.clone(),
        }
    }
}

/// A task as tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskView {
    /// The task id: pass it to task_status, task_result, task_cancel.
    pub task_id: String,
    /// The agent.
    pub agent: String,
    /// queued, running, succeeded, failed or cancelled.
    pub state: TaskState,
    /// True once the state will not change again.
    pub done: bool,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailReason>,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The output (present for succeeded tasks, and for failed ones that kept one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The model that produced the output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Provider calls made.
    pub attempts: u32,
    /// Input tokens over all calls.
    pub input_tokens: u64,
    /// Output tokens over all calls.
    pub output_tokens: u64,
    /// Cost over all calls, USD.
    pub cost_usd: f64,
    /// Time from start to finish in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it finished (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The outbox file in the KB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kb_path: Option<String>,
    /// The delegating task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// The first task of its delegation tree (itself for a root; a workflow
    /// run's id for its steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_task_id: Option<String>,
    /// For the root of a delegation tree: its tasks, turns, cost and limits
    /// (task_status only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeView>,
    /// Every turn of its tool loops: model turns with their calls, tool
    /// results (size, time, error) and child tasks (task_status only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turns: Option<Vec<TurnView>>,
    /// How the router chose the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<Value>,
    /// For agents with a mirror: whether this task was audited and why, each
    /// round's verdict and feedback, and the final verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Value>,
    /// Every provider call (task_status only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<CallView>>,
    /// For workflow runs: the run with every step (see workflow_status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Value>,
    /// What to do next, when not done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub(super) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl TaskView {
    pub(super) fn of(t: &Task, with_output: bool) -> TaskView {
        let done = t.state.is_terminal();
        TaskView {
            task_id: t.id.clone(),
            agent: t.agent.clone(),
            state: t.state,
            done,
            reason: t.reason,
            error: t.error.clone(),
            output: if with_output { t.output.clone() } else { None },
            model: t.model.clone(),
            attempts: t.attempts,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cost_usd: (t.cost_usd * 1e6).round() / 1e6,
            latency_ms: match (t.started_at, t.finished_at) {
                (Some(s), Some(f)) => Some(f - s),
                _ => None,
            },
            created_at: rfc3339(t.created_at),
            finished_at: t.finished_at.map(rfc3339),
            kb_path: t.kb_path.clone(),
            parent_task_id: t.parent_id.clone(),
            root_task_id: Some(t.root().to_string()),
            tree: None,
            turns: None,
            routing: t.routing.clone(),
            audit: t.audit.clone(),
            calls: None,
            workflow: None,
            hint: (!done).then(|| {
                format!(
                    "not finished yet: call task_result with task_id \"{}\" and wait_seconds to get the output, or task_cancel to stop it",
                    t.id
                )
            }),
        }
    }

    /// Readable text: the output first, then one line of accounting.
    fn text(&self) -> String {
        let mut s = String::new();
        match (&self.output, self.state) {
            (Some(out), TaskState::Succeeded) => s.push_str(out),
            (Some(out), _) => {
                s.push_str(&format!(
                    "[{}: {}] The output below was NOT accepted.\n\n{out}",
                    self.state,
                    self.error.as_deref().unwrap_or("")
                ));
            }
            (None, _) => {
                if let Some(e) = &self.error {
                    s.push_str(&format!("Task {} {}: {e}", self.task_id, self.state));
                } else if let Some(h) = &self.hint {
                    s.push_str(&format!(
                        "Task {} ({}) is {}: {h}",
                        self.task_id, self.agent, self.state
                    ));
                } else {
                    s.push_str(&format!(
                        "Task {} ({}) is {}.",
                        self.task_id, self.agent, self.state
                    ));
                }
            }
        }
        if let Some(a) = &self.audit {
            let rounds: Vec<String> = a["rounds"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x["verdict"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if a["decision"]["audited"] == Value::Bool(false) {
                s.push_str(&format!(
                    "\n\n(not audited: {})",
                    a["decision"]["reason"].as_str().unwrap_or("")
                ));
            } else if !rounds.is_empty() {
                s.push_str(&format!(
                    "\n\naudit by {}: {}",
                    a["mirror"].as_str().unwrap_or("?"),
                    rounds.join(" → ")
                ));
            }
        }
        s.push_str(&format!(
            "\n\n---\ntask {} · {} · {}{} · {} call(s) · {} in / {} out tokens · ${:.6}{}{}",
            self.task_id,
            self.agent,
            self.state,
            self.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            self.attempts,
            self.input_tokens,
            self.output_tokens,
            self.cost_usd,
            self.model
                .as_deref()
                .map(|m| format!(" · {m}"))
                .unwrap_or_default(),
            self.kb_path
                .as_deref()
                .map(|p| format!(" · kb: {p}"))
                .unwrap_or_default(),
        ));
        s
    }
}

/// Result of `agent_delegate`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DelegateOutput {
    /// The new task's id.
    pub task_id: String,
    /// The agent running it.
    pub agent: String,
    /// Its state (normally queued or running).
    pub state: TaskState,
    /// How the router chose the agent, when you did not name one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RouteDecision>,
    /// What to do next.
    pub hint: String,
}

/// Result of `task_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskListOutput {
    /// Tasks, newest first (without outputs: use task_result).
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

// ---------------------------------------------------------------------------
// Handlers

pub(super) fn engine_error(e: crate::engine::EngineError) -> ToolError {
    ToolError::Engine(e.to_string())
}

pub(super) fn wait_of(v: Option<f64>, default: f64) -> Result<Duration, ToolError> {
    let secs = v.unwrap_or(default);
    if !secs.is_finite() || secs < 0.0 {
        return Err(ToolError::Engine(format!(
            "wait_seconds must be a number from 0 to {MAX_WAIT_SECS}"
        )));
    }
    Ok(Duration::from_secs_f64(secs.min(MAX_WAIT_SECS)))
}

/// A workflow run shown as a task (for `agent_run` on a workflow, and for
/// task tools given a run id).
fn run_as_task(v: RunView) -> Result<TaskView, ToolError> {
    let state = match v.state {
        RunState::Running => TaskState::Running,
        RunState::Succeeded => TaskState::Succeeded,
        RunState::Failed | RunState::Partial => TaskState::Failed,
        RunState::Cancelled => TaskState::Cancelled,
    };
    let error = match v.state {
        RunState::Partial => Some(format!("partial: {}", v.error.clone().unwrap_or_default())),
        _ => v.error.clone(),
    };
    Ok(TaskView {
        task_id: v.run_id.clone(),
        agent: v.name.clone().unwrap_or_else(|| "workflow".into()),
        state,
        done: v.done,
        reason: match v.state {
            RunState::Cancelled => Some(FailReason::Cancelled),
            _ => None,
        },
        error,
        output: v.output.clone(),
        model: None,
        attempts: v.steps.iter().map(|s| s.tries).sum(),
        input_tokens: v.input_tokens,
        output_tokens: v.output_tokens,
        cost_usd: v.cost_usd,
        latency_ms: Some(v.elapsed_ms),
        created_at: String::new(),
        finished_at: None,
        kb_path: Some(v.session.clone()),
        parent_task_id: None,
        root_task_id: None,
        tree: None,
        turns: None,
        routing: None,
        audit: None,
        calls: None,
        hint: v.hint.clone(),
        workflow: Some(to_value(&v)?),
    })
}

/// A run (waited for up to `wait`) as a task view.
pub(super) async fn run_view(
    engine: &Arc<Engine>,
    id: &str,
    ctx: &CallCtx,
    wait: Duration,
) -> Result<TaskView, ToolError> {
    let run = tokio::select! {
        r = engine.wait_run(id, ctx.subject.as_deref(), wait) => r.map_err(engine_error)?,
        _ = ctx.cancelled.cancelled() => engine.visible_run(id, ctx.subject.as_deref()).await.map_err(engine_error)?,
    };
    let steps = engine
        .store()
        .steps(&run.id)
        .await
        .map_err(|e| ToolError::Engine(e.to_string()))?;
    let mut t = run_as_task(super::workflows::view(engine, &run, &steps).await)?;
    t.created_at = rfc3339(run.created_at);
    t.finished_at = run.finished_at.map(rfc3339);
    Ok(t)
}

/// Work a tool call started: a task with its event feed, or a workflow run.
pub enum Started {
    /// A task (`agent_run` on an agent, `agent_delegate`).
    Task(
        Box<Task>,
        tokio::sync::broadcast::Receiver<crate::engine::TaskEvent>,
    ),
    /// A workflow run (`agent_run` on a workflow, `workflow_run`).
    Run(Box<crate::task::Run>),
}

impl Started {
    /// The task's or run's id.
    pub fn id(&self) -> &str {
        match self {
            Started::Task(t, _) => &t.id,
            Started::Run(r) => &r.id,
        }
    }

    /// When the task or run was created.
    pub fn created_at(&self) -> crate::task::Millis {
        match self {
            Started::Task(t, _) => t.created_at,
            Started::Run(r) => r.created_at,
        }
    }
}

/// `agent_run`'s first half, shared by the plain call and the MCP task:
/// submit the task, or start the workflow the agent (or `dag`) names.
pub async fn start_agent_run(
    engine: &Arc<Engine>,
    args: AgentRunArgs,
    ctx: &CallCtx,
) -> Result<Started, ToolError> {
    let is_workflow =
        args.dag.is_some() || engine.agent(&args.agent).is_ok_and(|a| a.is_workflow());
    let limits = call_limits(args.budget_usd, args.max_depth)?;
    if is_workflow {
        let (def, agent) =
            super::workflows::definition(engine, args.dag.as_ref(), Some(&args.agent))?;
        let run = super::workflows::start(engine, def, agent, args.input, limits, ctx).await?;
        return Ok(Started::Run(Box::new(run)));
    }
    let (task, events) = engine
        .submit_watched(Submit {
            agent: args.agent,
            input: args.input,
            subject: ctx.subject.clone(),
            limits,
            approver: ctx.approver.clone(),
            ..Submit::default()
        })
        .await
        .map_err(engine_error)?;
    Ok(Started::Task(Box::new(task), events))
}

/// `agent_run`: submit, then wait with progress; a client cancel cancels the task.
pub async fn agent_run(
    engine: &Arc<Engine>,
    args: AgentRunArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let wait = wait_of(args.wait_seconds, DEFAULT_WAIT_SECS)?;
    match start_agent_run(engine, args, ctx).await? {
        Started::Run(run) => {
            let v = super::workflows::wait_and_view(engine, &run.id, wait, ctx).await?;
            reply_task(run_task_view(engine, v, ctx).await?)
        }
        Started::Task(task, events) => {
            let task = wait_for_task(engine, &task, events, wait, ctx).await?;
            reply_task(TaskView::of(&task, true))
        }
    }
}

/// A run's view as `agent_run` shows it: a task, with its times.
pub(super) async fn run_task_view(
    engine: &Arc<Engine>,
    v: RunView,
    ctx: &CallCtx,
) -> Result<TaskView, ToolError> {
    let (created, finished) = match engine.visible_run(&v.run_id, ctx.subject.as_deref()).await {
        Ok(r) => (rfc3339(r.created_at), r.finished_at.map(rfc3339)),
        Err(_) => (String::new(), None),
    };
    let mut t = run_as_task(v)?;
    t.created_at = created;
    t.finished_at = finished;
    Ok(t)
}

/// Wait up to `wait` for a task, forwarding its events as progress; a
/// client that gives up on the request cancels the task (unless the server
/// is stopping).
async fn wait_for_task(
    engine: &Arc<Engine>,
    task: &Task,
    events: tokio::sync::broadcast::Receiver<crate::engine::TaskEvent>,
    wait: Duration,
    ctx: &CallCtx,
) -> Result<Task, ToolError> {
    let progress = spawn_progress(events, task, ctx);
    let waited = wait_or_cancel(engine, &task.id, wait, ctx).await;
    if let Some(mut p) = progress {
        // A finished task's events are all in the channel, which closes once
        // its driver lets go: forward them before the result, so the client
        // sees the whole story. Otherwise (still running, or given up) stop.
        let finished =
            !ctx.cancelled.is_cancelled() && matches!(&waited, Ok(t) if t.state.is_terminal());
        if !finished || tokio::time::timeout(PROGRESS_DRAIN, &mut p).await.is_err() {
            p.abort();
        }
    }
    waited
}

/// Wait up to `wait` for the task `id`. A client that gives up on the
/// request stops the work it started, unless the server is stopping (the
/// connection closing cancels every request then, and the task is to finish
/// or resume): the task as it is then.
pub(super) async fn wait_or_cancel(
    engine: &Arc<Engine>,
    id: &str,
    wait: Duration,
    ctx: &CallCtx,
) -> Result<Task, ToolError> {
    let subject = ctx.subject.as_deref();
    tokio::select! {
        t = engine.wait(id, subject, wait) => t.map_err(engine_error),
        () = ctx.cancelled.cancelled() => {
            if !engine.is_stopping() {
                let _ = engine.cancel(id, subject).await;
            }
            engine.visible_task(id, subject).await.map_err(engine_error)
        }
    }
}

/// A task view as a tool's reply (its text is the output, when there is one).
pub(super) fn reply_task(view: TaskView) -> Result<ToolReply, ToolError> {
    let text = view.text();
    Ok(ToolReply::with_text(to_value(&view)?, text))
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| ToolError::Internal(e.to_string()))
}

/// How long a finished `agent_run` waits for its last progress
/// notifications to go out before it answers.
const PROGRESS_DRAIN: Duration = Duration::from_secs(1);

/// Forward a task's events to the client as progress notifications, with a
/// heartbeat after `ctx.heartbeat` of silence ("still running, 40s so far"),
/// so a client waiting through one long provider call hears that it lives.
fn spawn_progress(
    mut rx: tokio::sync::broadcast::Receiver<crate::engine::TaskEvent>,
    task: &Task,
    ctx: &CallCtx,
) -> Option<tokio::task::JoinHandle<()>> {
    use crate::engine::TaskEvent;
    let (peer, token) = (ctx.peer.clone()?, ctx.progress_token.clone()?);
    let agent = task.agent.clone();
    let mut state = task.state;
    let heartbeat = ctx.heartbeat;
    let since = std::time::Instant::now();
    Some(tokio::spawn(async move {
        let mut n = 0.0;
        let send = |n: f64, msg: String| {
            peer.notify_progress(ProgressNotificationParam::new(token.clone(), n).with_message(msg))
        };
        let _ = send(n, format!("{agent}: {state}")).await;
        loop {
            let quiet = async {
                match heartbeat {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => {
                        if let TaskEvent::State { state: s } = &ev {
                            state = *s;
                        }
                        ev.describe(&agent)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
                () = quiet => format!(
                    "{agent}: still {state}, {} so far",
                    crate::provider::human_duration_secs(since.elapsed())
                ),
            };
            n += 1.0;
            if send(n, msg).await.is_err() {
                break;
            }
        }
    }))
}

/// `agent_delegate`'s work, shared by the plain call and the MCP task: route
/// if needed, then submit.
pub async fn start_delegate(
    engine: &Arc<Engine>,
    args: AgentDelegateArgs,
    ctx: &CallCtx,
) -> Result<(Task, Option<RouteDecision>), ToolError> {
    let (agent, routing) = match args.agent {
        Some(a) => (a, None),
        None => {
            let r = engine.route(&args.input).await.map_err(engine_error)?;
            (r.agent.clone(), Some(r))
        }
    };
    let task = engine
        .submit(Submit {
            agent,
            input: args.input,
            parent_id: args.parent_task_id,
            subject: ctx.subject.clone(),
            routing: routing.clone(),
            id: None,
            limits: call_limits(args.budget_usd, args.max_depth)?,
            tree: None,
            approver: ctx.approver.clone(),
        })
        .await
        .map_err(engine_error)?;
    Ok((task, routing))
}

/// `agent_delegate`: route if needed, submit, return at once.
pub async fn agent_delegate(
    engine: &Arc<Engine>,
    args: AgentDelegateArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let (task, routing) = start_delegate(engine, args, ctx).await?;
    let out = DelegateOutput {
        hint: format!(
            "running in the background: call task_result with task_id \"{}\" (and wait_seconds) for the output",
            task.id
        ),
        task_id: task.id,
        agent: task.agent,
        state: task.state,
        routing,
    };
    let text = serde_json::to_string_pretty(&out).unwrap_or_default();
    Ok(ToolReply::with_text(to_value(&out)?, text))
}

/// `task_status`: state and every call, without the output.
pub async fn task_status(
    engine: &Arc<Engine>,
    args: TaskIdArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    if is_run_id(&args.task_id) {
        let mut view = run_view(engine, &args.task_id, ctx, Duration::ZERO).await?;
        view.output = None;
        let text = serde_json::to_string_pretty(&view).unwrap_or_default();
        return Ok(ToolReply::with_text(to_value(&view)?, text));
    }
    let (task, attempts) = engine
        .status(&args.task_id, ctx.subject.as_deref())
        .await
        .map_err(engine_error)?;
    let mut view = TaskView::of(&task, false);
    view.calls = Some(attempts.iter().map(CallView::from).collect());
    let turns = engine.turns(&task.id).await.map_err(engine_error)?;
    if !turns.is_empty() {
        view.turns = Some(turns.iter().map(TurnView::from).collect());
    }
    if task.root_id.as_deref() == Some(task.id.as_str()) {
        view.tree = engine
            .tree(&task)
            .await
            .map_err(engine_error)?
            .map(|t| TreeView::from(&t));
    }
    let text = serde_json::to_string_pretty(&view).unwrap_or_default();
    Ok(ToolReply::with_text(to_value(&view)?, text))
}

/// `task_result`: the output, optionally waiting for it.
pub async fn task_result(
    engine: &Arc<Engine>,
    args: TaskResultArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let wait = wait_of(args.wait_seconds, 0.0)?;
    if is_run_id(&args.task_id) {
        return reply_task(run_view(engine, &args.task_id, ctx, wait).await?);
    }
    // A client that asked for progress hears the task's events while it
    // waits, and a heartbeat through long silences.
    let progress = match (wait.is_zero(), engine.subscribe(&args.task_id)) {
        (false, Some(events)) => {
            let now = engine
                .visible_task(&args.task_id, ctx.subject.as_deref())
                .await
                .map_err(engine_error)?;
            spawn_progress(events, &now, ctx)
        }
        _ => None,
    };
    let task = tokio::select! {
        t = engine.wait(&args.task_id, ctx.subject.as_deref(), wait) => t.map_err(engine_error),
        _ = ctx.cancelled.cancelled() => engine.visible_task(&args.task_id, ctx.subject.as_deref()).await.map_err(engine_error),
    };
    if let Some(p) = progress {
        p.abort();
    }
    reply_task(TaskView::of(&task?, true))
}

/// `task_list`.
pub async fn task_list(
    engine: &Arc<Engine>,
    args: TaskListArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let filter = TaskFilter {
        states: args.state,
        agent: args.agent,
        parent_id: args.parent_task_id,
        root_id: args.root_task_id,
        subject: ctx.subject.clone(),
        since: args.since.as_deref().map(parse_when).transpose()?,
        until: None,
    };
    let page = engine
        .list(&filter, args.cursor.as_deref(), args.limit.unwrap_or(50))
        .await
        .map_err(engine_error)?;
    let out = TaskListOutput {
        tasks: page.tasks.iter().map(|t| TaskView::of(t, false)).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(ToolReply::json(to_value(&out)?))
}

/// `task_cancel`.
pub async fn task_cancel(
    engine: &Arc<Engine>,
    args: TaskIdArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    if is_run_id(&args.task_id) {
        let before = engine
            .visible_run(&args.task_id, ctx.subject.as_deref())
            .await
            .map_err(engine_error)?;
        let after = engine
            .cancel_run(&args.task_id, ctx.subject.as_deref())
            .await
            .map_err(engine_error)?;
        let out = crate::engine::CancelOutcome {
            task_id: after.id.clone(),
            cancelled: !before.state.is_terminal() && after.state == RunState::Cancelled,
            state: match after.state {
                RunState::Running => TaskState::Running,
                RunState::Succeeded => TaskState::Succeeded,
                RunState::Failed | RunState::Partial => TaskState::Failed,
                RunState::Cancelled => TaskState::Cancelled,
            },
        };
        return Ok(ToolReply::json(to_value(&out)?));
    }
    let out = engine
        .cancel(&args.task_id, ctx.subject.as_deref())
        .await
        .map_err(engine_error)?;
    Ok(ToolReply::json(to_value(&out)?))
}

/// `usage_report`.
pub async fn usage_report(
    engine: &Arc<Engine>,
    args: UsageReportArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let since = Some(parse_when(args.since.as_deref().unwrap_or("30d"))?);
    let until = args.until.as_deref().map(parse_when).transpose()?;
    let baseline = match args.baseline.as_deref() {
        None => None,
        Some(b) => match parse_model(b) {
            Ok(crate::agent::ModelSpec::Ref(m)) => Some(m),
            _ => {
                return Err(ToolError::Engine(format!(
                    "baseline `{b}` is not `provider/model-id`, e.g. `anthropic/claude-sonnet-4`"
                )));
            }
        },
    };
    let report: UsageReport = engine
        .usage(
            &crate::store::UsageQuery {
                since,
                until,
                subject: ctx.subject.clone(),
                root_id: args.root_task_id,
            },
            baseline.as_ref(),
        )
        .await
        .map_err(engine_error)?;
    Ok(ToolReply::json(to_value(&report)?))
}

/// `7d`, `24h`, `30m`, `90s` (ago) or an RFC 3339 time, as Unix milliseconds.
pub fn parse_when(s: &str) -> Result<i64, ToolError> {
    crate::engine::parse_when(s).map_err(ToolError::Engine)
}
