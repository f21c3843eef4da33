//! MCP tasks (protocol 2025-11-25): a task-augmented `tools/call` answers at
//! once with a task handle, and `tasks/get`, `tasks/result`, `tasks/list`,
//! `tasks/cancel` and `notifications/tasks/status` follow it.
//!
//! An MCP task **is** the dispatch task or workflow run the call started (the
//! same id), so it lives in the store: it outlives a restart of the server and
//! answers every client of the same subject. A row in the store keeps what
//! the protocol adds (the tool, the owner, `ttl`, `pollInterval`); status and
//! message are read from the work itself every time, so every instance and
//! every restart tells the same story.
//!
//! The methods whose names rmcp already gives to the 2026-07-28 Tasks
//! extension reach this module under names of their own (see
//! [`super::task_wire`]); the handlers here never see JSON-RPC.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, ErrorCode};
use serde_json::{Value, json};

use super::schema::JsonObject;
use super::tasks::{
    self, AgentDelegateArgs, AgentRunArgs, CallCtx, MAX_WAIT_SECS, Started, TaskView,
};
use super::tools::{ToolError, ToolReply};
use super::workflows::{self, WorkflowRunArgs, is_run_id};
use crate::config::TasksSection;
use crate::engine::Engine;
use crate::task::{AttemptKind, ClientTask, Millis, RunState, TaskState, TurnEvent, now_millis};
use crate::workflow::StepState;

/// The tools a client may call as a task (`execution.taskSupport:
/// "optional"`); every other tool answers at once (`"forbidden"`).
pub const TASK_TOOLS: [&str; 3] = ["agent_run", "agent_delegate", "workflow_run"];

/// Whether `tool` may be called as a task (its canonical or slash name).
pub fn supports_tasks(tool: &str) -> bool {
    let name = tool.replacen('/', "_", 1);
    TASK_TOOLS.contains(&name.as_str())
}

/// The most tasks one `tasks/list` page holds.
const PAGE: u32 = 50;

/// The status of an MCP task, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Queued or running.
    Working,
    /// Waiting for a human to answer a question (a tool marked `ask`).
    InputRequired,
    /// Finished with its result.
    Completed,
    /// Finished without one (failed, rejected by its auditor, timed out).
    Failed,
    /// Stopped by a client.
    Cancelled,
}

impl Status {
    /// The protocol's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Working => "working",
            Status::InputRequired => "input_required",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the task is done.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Working | Status::InputRequired)
    }

    fn of_task(state: TaskState) -> Status {
        match state {
            TaskState::Queued | TaskState::Running => Status::Working,
            TaskState::Succeeded => Status::Completed,
            TaskState::Failed => Status::Failed,
            TaskState::Cancelled => Status::Cancelled,
        }
    }

    fn of_run(state: RunState) -> Status {
        match state {
            RunState::Running => Status::Working,
            RunState::Succeeded => Status::Completed,
            RunState::Failed | RunState::Partial => Status::Failed,
            RunState::Cancelled => Status::Cancelled,
        }
    }
}

/// Where an MCP task stands, read from its work.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Its status.
    pub status: Status,
    /// What is happening: "calling kb_search", "audit round 2", "waiting on 3 steps".
    pub message: String,
    /// When the work last changed, as far as the store knows.
    pub updated_at: Millis,
}

/// Why a task method failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such task for this caller.
    #[error(
        "no task `{0}`: check the taskId (tasks/list shows yours; a task belongs to the user who started it)"
    )]
    NotFound(String),
    /// Past its ttl.
    #[error("task `{0}` finished and its ttl has passed: it is no longer kept")]
    Expired(String),
    /// `tasks/cancel` of a finished task.
    #[error("task `{id}` is already {status}: only a working task can be cancelled")]
    Finished {
        /// The task.
        id: String,
        /// Its final status.
        status: &'static str,
    },
    /// A task-augmented call of a tool that answers at once.
    #[error(
        "tool `{0}` cannot run as a task (execution.taskSupport is \"forbidden\"): call it without `task`; agent_run, agent_delegate and workflow_run can"
    )]
    NotATaskTool(String),
    /// The call's arguments or the request's params.
    #[error("{0}")]
    BadParams(String),
    /// The work could not be started.
    #[error("{0}")]
    Tool(#[from] ToolError),
}

impl TaskError {
    /// The JSON-RPC error code the protocol gives it.
    pub fn code(&self) -> ErrorCode {
        match self {
            TaskError::NotATaskTool(_) => ErrorCode::METHOD_NOT_FOUND,
            TaskError::Tool(ToolError::Internal(_)) => ErrorCode::INTERNAL_ERROR,
            _ => ErrorCode::INVALID_PARAMS,
        }
    }
}

fn engine_error(e: crate::engine::EngineError) -> ToolError {
    ToolError::Engine(e.to_string())
}

/// The task methods for one caller.
pub struct Tasks<'a> {
    /// The engine that runs the work.
    pub engine: &'a Arc<Engine>,
    /// `[tasks]`.
    pub config: &'a TasksSection,
    /// The caller.
    pub call: &'a CallCtx,
}

impl Tasks<'_> {
    /// A task-augmented `tools/call`: start the work, record the task, and
    /// answer with `CreateTaskResult` at once. `ttl_ms` is the client's ask.
    pub async fn create(
        &self,
        tool: &str,
        arguments: Option<JsonObject>,
        ttl_ms: Option<u64>,
    ) -> Result<Value, TaskError> {
        let name = tool.replacen('/', "_", 1);
        if !supports_tasks(&name) {
            return Err(TaskError::NotATaskTool(tool.to_string()));
        }
        let (started, _) = self.start(&name, arguments).await?;
        let record = self.keep(&name, &started, ttl_ms).await?;
        // 2025-11-25 status notifications (the 2026-07-28 extension has none
        // of that shape: its clients poll).
        if let Some(peer) = self.call.peer.clone() {
            notify_changes(self.engine.clone(), peer, record.clone());
        }
        let progress = self.progress(&record).await?;
        Ok(json!({ "task": task_json(&record, &progress) }))
    }

    /// Records `started` as the caller's task.
    async fn keep(
        &self,
        tool: &str,
        started: &Started,
        ttl_ms: Option<u64>,
    ) -> Result<ClientTask, TaskError> {
        let record = ClientTask {
            id: started.id().to_string(),
            tool: tool.to_string(),
            subject: self.call.subject.clone(),
            created_at: started.created_at(),
            ttl_ms: Some(self.ttl(ttl_ms)),
            poll_ms: self.config.poll_interval_ms,
        };
        self.engine
            .store()
            .put_client_task(&record)
            .await
            .map_err(|e| ToolError::Internal(e.to_string()))?;
        Ok(record)
    }

    /// A `tools/call` from a client of the 2026-07-28 Tasks extension: the
    /// plain call's answer if the work ends within `[tasks] answer_within_ms`
    /// (or the call's own shorter `wait_seconds`), else a task to poll.
    pub async fn call_or_task(
        &self,
        tool: &str,
        arguments: Option<JsonObject>,
    ) -> Result<Answered, TaskError> {
        let name = tool.replacen('/', "_", 1);
        let (started, wait) = self.start(&name, arguments).await?;
        let mut bound = Duration::from_millis(self.config.answer_within_ms);
        if let Some(w) = wait.filter(|w| w.is_finite() && *w >= 0.0) {
            bound = bound.min(Duration::from_secs_f64(w.min(MAX_WAIT_SECS)));
        }
        let subject = self.call.subject.as_deref();
        let done = tokio::select! {
            d = async {
                match &started {
                    Started::Task(t, _) => self.engine.wait(&t.id, subject, bound).await.map(|t| t.state.is_terminal()),
                    Started::Run(r) => self.engine.wait_run(&r.id, subject, bound).await.map(|r| r.state.is_terminal()),
                }
            } => d.map_err(engine_error)?,
            () = self.call.cancelled.cancelled() => false,
        };
        let record = self.keep(&name, &started, None).await?;
        if done {
            return Ok(Answered::Now(
                final_reply(self.engine, &record, self.call).await,
            ));
        }
        let progress = self.progress(&record).await?;
        Ok(Answered::Task(record, progress))
    }

    /// Where the caller's task stands and, once it has ended with a result
    /// (not cancelled), that result.
    pub async fn detailed(&self, id: &str) -> Result<Detailed, TaskError> {
        let (record, progress) = self.record(id).await?;
        let outcome = match progress.status {
            Status::Completed | Status::Failed => {
                Some(final_reply(self.engine, &record, self.call).await)
            }
            Status::Working | Status::InputRequired | Status::Cancelled => None,
        };
        Ok(Detailed {
            record,
            progress,
            outcome,
        })
    }

    /// The retention granted for a client's ask, ms.
    fn ttl(&self, asked: Option<u64>) -> u64 {
        let max = self.config.max_ttl_secs.saturating_mul(1000);
        match asked {
            Some(ms) => ms.min(max),
            None => self.config.default_ttl_secs.saturating_mul(1000).min(max),
        }
    }

    /// Starts the work of `tool`; also says how long the caller asked to
    /// wait (`wait_seconds`), if it did.
    async fn start(
        &self,
        tool: &str,
        arguments: Option<JsonObject>,
    ) -> Result<(Started, Option<f64>), TaskError> {
        let args = Value::Object(arguments.unwrap_or_default());
        let bad = |e: serde_json::Error| {
            TaskError::BadParams(format!("invalid arguments for {tool}: {e}"))
        };
        Ok(match tool {
            "agent_run" => {
                let a: AgentRunArgs = serde_json::from_value(args).map_err(bad)?;
                let wait = a.wait_seconds;
                (
                    tasks::start_agent_run(self.engine, a, self.call).await?,
                    wait,
                )
            }
            "agent_delegate" => {
                let a: AgentDelegateArgs = serde_json::from_value(args).map_err(bad)?;
                let (task, _) = tasks::start_delegate(self.engine, a, self.call).await?;
                let events = self
                    .engine
                    .subscribe(&task.id)
                    .unwrap_or_else(|| tokio::sync::broadcast::channel(1).1);
                (Started::Task(Box::new(task), events), None)
            }
            _ => {
                let a: WorkflowRunArgs = serde_json::from_value(args).map_err(bad)?;
                let (def, agent) =
                    workflows::definition(self.engine, a.workflow.as_ref(), a.agent.as_deref())?;
                let limits = tasks::call_limits(a.budget_usd, a.max_depth)?;
                let run =
                    workflows::start(self.engine, def, agent, a.input, limits, self.call).await?;
                (Started::Run(Box::new(run)), a.wait_seconds)
            }
        })
    }

    /// The caller's task `id`, unless it is gone.
    /// The caller's task `id` and where it stands.
    pub async fn get_record(&self, id: &str) -> Result<(ClientTask, Progress), TaskError> {
        self.record(id).await
    }

    async fn record(&self, id: &str) -> Result<(ClientTask, Progress), TaskError> {
        let record = self
            .engine
            .store()
            .get_client_task(id)
            .await
            .map_err(|e| ToolError::Internal(e.to_string()))?
            .filter(|r| self.call.subject.is_none() || r.subject == self.call.subject)
            .ok_or_else(|| TaskError::NotFound(clip(id)))?;
        let progress = self.progress(&record).await?;
        if record.expired(now_millis(), progress.status.is_terminal()) {
            return Err(TaskError::Expired(clip(id)));
        }
        Ok((record, progress))
    }

    async fn progress(&self, record: &ClientTask) -> Result<Progress, TaskError> {
        progress_of(self.engine, record)
            .await
            .map_err(|_| TaskError::NotFound(clip(&record.id)))
    }

    /// `tasks/get`.
    pub async fn get(&self, id: &str) -> Result<Value, TaskError> {
        let (record, progress) = self.record(id).await?;
        Ok(task_json(&record, &progress))
    }

    /// `tasks/result`: waits until the task is done, then returns exactly the
    /// `CallToolResult` the plain call would have (for `agent_delegate`: the
    /// finished task, as `agent_run` shows it).
    pub async fn result(&self, id: &str) -> Result<Value, TaskError> {
        let (record, _) = self.record(id).await?;
        let reply = final_reply(self.engine, &record, self.call).await;
        let result: CallToolResult = super::call_result(&record.tool, reply);
        let mut out =
            serde_json::to_value(result).map_err(|e| ToolError::Internal(e.to_string()))?;
        if let Some(o) = out.as_object_mut() {
            // 2025-11-25 results carry no result type.
            o.remove("resultType");
            o.insert(
                "_meta".into(),
                json!({ RELATED_TASK: { "taskId": record.id } }),
            );
        }
        Ok(out)
    }

    /// `tasks/list`: the caller's tasks, newest first, `PAGE` at a time.
    pub async fn list(&self, cursor: Option<&str>) -> Result<Value, TaskError> {
        let page = self
            .engine
            .store()
            .list_client_tasks(self.call.subject.as_deref(), cursor, PAGE)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::BadCursor { .. } => TaskError::BadParams(format!(
                    "{e}: pass the nextCursor of the previous tasks/list page"
                )),
                other => TaskError::Tool(ToolError::Internal(other.to_string())),
            })?;
        let now = now_millis();
        let mut tasks = Vec::with_capacity(page.tasks.len());
        for record in &page.tasks {
            // Work deleted from the store under its record is not listed.
            let Ok(progress) = progress_of(self.engine, record).await else {
                continue;
            };
            if !record.expired(now, progress.status.is_terminal()) {
                tasks.push(task_json(record, &progress));
            }
        }
        let mut out = json!({ "tasks": tasks });
        if let Some(next) = page.next_cursor {
            out["nextCursor"] = Value::String(next);
        }
        Ok(out)
    }

    /// `tasks/cancel`: stops a working task; the answer is the task as it is
    /// then (`cancelled` once its work has stopped).
    pub async fn cancel(&self, id: &str) -> Result<Value, TaskError> {
        let (record, progress) = self.record(id).await?;
        if progress.status.is_terminal() {
            return Err(TaskError::Finished {
                id: record.id,
                status: progress.status.as_str(),
            });
        }
        let subject = self.call.subject.as_deref();
        if is_run_id(&record.id) {
            self.engine
                .cancel_run(&record.id, subject)
                .await
                .map_err(engine_error)?;
        } else {
            self.engine
                .cancel(&record.id, subject)
                .await
                .map_err(engine_error)?;
        }
        let progress = self.progress(&record).await?;
        Ok(task_json(&record, &progress))
    }
}

/// How a call that may become a task was answered.
pub enum Answered {
    /// The work ended within the bound: the plain call's outcome.
    Now(Result<ToolReply, ToolError>),
    /// Still working: the task that carries it.
    Task(ClientTask, Progress),
}

/// A task with its result, for `tasks/get` of the 2026-07-28 extension.
pub struct Detailed {
    /// The task.
    pub record: ClientTask,
    /// Where it stands.
    pub progress: Progress,
    /// The plain call's outcome, once the work has ended (not when cancelled).
    pub outcome: Option<Result<ToolReply, ToolError>>,
}

/// `_meta` key that ties a result or message to its task.
pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

fn clip(id: &str) -> String {
    crate::provider::clip(id, 80)
}

/// The task as the protocol shows it.
pub fn task_json(record: &ClientTask, progress: &Progress) -> Value {
    json!({
        "taskId": record.id,
        "status": progress.status.as_str(),
        "statusMessage": progress.message,
        "createdAt": tasks::rfc3339(record.created_at),
        "lastUpdatedAt": tasks::rfc3339(progress.updated_at.max(record.created_at)),
        "ttl": record.ttl_ms,
        "pollInterval": record.poll_ms,
    })
}

/// Where the work of `record` stands, from the store; `input_required`
/// while a question of its tree waits for a human.
pub async fn progress_of(
    engine: &Arc<Engine>,
    record: &ClientTask,
) -> Result<Progress, crate::engine::EngineError> {
    let mut p = work_progress(engine, record).await?;
    if p.status == Status::Working {
        let open = engine.inbox().questions(&record.id);
        if let Some(first) = open.first() {
            p.status = Status::InputRequired;
            p.message = format!(
                "input_required: {} question(s) for a human; the first: may {} call {}? (answer with tasks/update)",
                open.len(),
                first.question.agent,
                first.question.tool
            );
        } else if p.message.starts_with("waiting for a human") {
            p.status = Status::InputRequired;
        }
    }
    Ok(p)
}

async fn work_progress(
    engine: &Arc<Engine>,
    record: &ClientTask,
) -> Result<Progress, crate::engine::EngineError> {
    if is_run_id(&record.id) {
        let (run, steps) = engine.run_status(&record.id, None).await?;
        let status = Status::of_run(run.state);
        let open: Vec<&str> = steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Pending | StepState::Running))
            .map(|s| s.step_id.as_str())
            .collect();
        let running: Vec<&str> = steps
            .iter()
            .filter(|s| s.state == StepState::Running)
            .map(|s| s.step_id.as_str())
            .collect();
        let message = match status {
            Status::Working if running.is_empty() => format!("waiting on {} steps", open.len()),
            Status::Working => format!(
                "running {}; waiting on {} steps",
                running.join(", "),
                open.len()
            ),
            _ => finished_message(status, run.error.as_deref()),
        };
        let updated_at = steps
            .iter()
            .flat_map(|s| [s.started_at, s.finished_at])
            .flatten()
            .chain(
                [Some(run.created_at), run.finished_at]
                    .into_iter()
                    .flatten(),
            )
            .max()
            .unwrap_or(run.created_at);
        return Ok(Progress {
            status,
            message,
            updated_at,
        });
    }
    let (task, attempts) = engine.status(&record.id, None).await?;
    let turns = engine.turns(&record.id).await?;
    let status = Status::of_task(task.state);
    let message = match task.state {
        TaskState::Queued => "queued: waiting for a free slot".to_string(),
        TaskState::Running => {
            // Before its first call ends, the agent's first model is the one at work.
            let first_model = task.model.clone().or_else(|| {
                engine
                    .agent(&task.agent)
                    .ok()
                    .and_then(|a| a.models.first().map(ToString::to_string))
            });
            running_message(first_model.as_deref(), &turns, &attempts)
        }
        _ => finished_message(
            status,
            task.error.as_deref().or(task.reason.map(|r| r.as_str())),
        ),
    };
    let updated_at = [task.started_at, task.finished_at, Some(task.created_at)]
        .into_iter()
        .flatten()
        .chain(turns.last().map(|t| t.at))
        .chain(attempts.iter().map(|a| {
            a.started_at
                .saturating_add(i64::try_from(a.latency_ms).unwrap_or(0))
        }))
        .max()
        .unwrap_or(task.created_at);
    Ok(Progress {
        status,
        message,
        updated_at,
    })
}

fn finished_message(status: Status, error: Option<&str>) -> String {
    match (status, error) {
        (Status::Completed, _) => "completed".into(),
        (Status::Cancelled, _) => "cancelled".into(),
        (_, Some(e)) => format!("failed: {}", crate::provider::clip(e, 300)),
        _ => "failed".into(),
    }
}

/// What a running task is doing, from its last turn or provider call.
fn running_message(
    model: Option<&str>,
    turns: &[crate::task::Turn],
    attempts: &[crate::task::Attempt],
) -> String {
    let audits = attempts
        .iter()
        .filter(|a| a.kind == AttemptKind::Audit)
        .count();
    match turns.last().map(|t| &t.event) {
        Some(TurnEvent::Model { calls, .. }) if !calls.is_empty() => {
            let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
            return format!("calling {}", names.join(", "));
        }
        Some(TurnEvent::ChildStarted {
            agent,
            child_task_id,
            ..
        }) => return format!("waiting on {agent} ({child_task_id})"),
        Some(TurnEvent::ToolResult { name, .. }) if audits == 0 => {
            return format!("thinking over the result of {name}");
        }
        Some(TurnEvent::Asked { name, .. }) => {
            return format!("waiting for a human to approve {name} (elicitation)");
        }
        _ => {}
    }
    match attempts.last() {
        Some(a) if a.kind == AttemptKind::Audit => format!("audit round {audits}"),
        Some(a) if a.kind == AttemptKind::AuditRepair => {
            format!("revising after audit round {audits}")
        }
        Some(a) if !a.ok => format!("retrying after {}/{} failed", a.provider, a.model),
        _ if audits > 0 => format!("audit round {}", audits + 1),
        _ => match model {
            Some(m) => format!("calling {m}"),
            None => "running".to_string(),
        },
    }
}

/// The reply the plain call of `record.tool` gives once the work is done,
/// waiting for it as long as it takes (the request's cancellation ends the
/// wait, not the work).
async fn final_reply(
    engine: &Arc<Engine>,
    record: &ClientTask,
    call: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let subject = call.subject.as_deref();
    let long = Duration::from_secs_f64(MAX_WAIT_SECS);
    if is_run_id(&record.id) {
        loop {
            let run = tokio::select! {
                r = engine.wait_run(&record.id, subject, long) => r.map_err(engine_error)?,
                () = call.cancelled.cancelled() => return Err(ToolError::Engine("tasks/result was cancelled".into())),
            };
            if run.state.is_terminal() {
                break;
            }
        }
        let (run, steps) = engine
            .run_status(&record.id, subject)
            .await
            .map_err(engine_error)?;
        let view = workflows::view(engine, &run, &steps).await;
        if record.tool == "workflow_run" {
            return workflows::reply(&view);
        }
        return tasks::reply_task(tasks::run_task_view(engine, view, call).await?);
    }
    loop {
        let task = tokio::select! {
            t = engine.wait(&record.id, subject, long) => t.map_err(engine_error)?,
            () = call.cancelled.cancelled() => return Err(ToolError::Engine("tasks/result was cancelled".into())),
        };
        if task.state.is_terminal() {
            return tasks::reply_task(TaskView::of(&task, true));
        }
    }
}

/// Tell a connected client of each change of its task, until it is done or
/// the client is gone (`notifications/tasks/status`).
fn notify_changes(
    engine: Arc<Engine>,
    peer: rmcp::service::Peer<rmcp::RoleServer>,
    record: ClientTask,
) {
    let events = engine.subscribe(&record.id);
    let run_events = engine.subscribe_run(&record.id);
    tokio::spawn(async move {
        let mut last: Option<Progress> = None;
        let mut events = events;
        let mut run_events = run_events;
        loop {
            let Ok(now) = progress_of(&engine, &record).await else {
                return;
            };
            if last.as_ref() != Some(&now) {
                let params = task_json(&record, &now);
                let note = rmcp::model::CustomNotification::new(
                    "notifications/tasks/status",
                    Some(params),
                );
                if peer
                    .send_notification(rmcp::model::ServerNotification::CustomNotification(note))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if now.status.is_terminal() {
                return;
            }
            last = Some(now);
            // Wake on the work's next event; when there is no feed here (the
            // work ended, or runs elsewhere), wait for the end.
            let subject = record.subject.as_deref();
            use tokio::sync::broadcast::error::RecvError;
            let woke = match (&mut events, &mut run_events) {
                (Some(rx), _) => !matches!(rx.recv().await, Err(RecvError::Closed)),
                (None, Some(rx)) => !matches!(rx.recv().await, Err(RecvError::Closed)),
                (None, None) => {
                    let long = Duration::from_secs_f64(MAX_WAIT_SECS);
                    if is_run_id(&record.id) {
                        let _ = engine.wait_run(&record.id, subject, long).await;
                    } else {
                        let _ = engine.wait(&record.id, subject, long).await;
                    }
                    true
                }
            };
            if !woke {
                events = None;
                run_events = None;
            }
        }
    });
}
