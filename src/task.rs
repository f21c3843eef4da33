//! Tasks and their one state machine.
//!
//! A task is one run of one agent on one input. Its state changes only through
//! [`TaskState::can_become`]; the engine persists every change before acting on
//! it, so after a crash the store says exactly what was in flight.
//!
//! ```text
//! queued ──> running ──> succeeded
//!   │  │        │ │ └──> failed
//!   │  │        │ └────> cancelled
//!   │  │        └──────> queued      (re-queued after a crash)
//!   │  └───────────────> cancelled
//!   └──────────────────> failed      (e.g. recovery gave up)
//! ```

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A task's identifier: a ULID (26 characters, sortable by creation time).
pub type TaskId = String;

/// A fresh task id. Ids from one process sort in creation order even within
/// one millisecond (a monotonic generator), which keeps paging stable.
pub fn new_task_id() -> TaskId {
    static GEN: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut g = GEN.lock().unwrap_or_else(|p| p.into_inner());
    let id = g
        .get_or_insert_with(ulid::Generator::new)
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::generate());
    id.to_string().to_ascii_lowercase()
}

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// Now, in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a concurrency slot.
    Queued,
    /// Calling models.
    Running,
    /// Finished with an accepted output.
    Succeeded,
    /// Finished without an accepted output; `reason` says why.
    Failed,
    /// Stopped by a client.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 5] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// True for states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The transitions of the state machine (see the module docs).
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Queued, Running | Cancelled | Failed)
                | (Running, Succeeded | Failed | Cancelled | Queued)
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error parsing a [`TaskState`].
#[derive(Debug, thiserror::Error)]
#[error("unknown task state `{0}`: use queued, running, succeeded, failed or cancelled")]
pub struct ParseStateError(pub String);

impl FromStr for TaskState {
    type Err = ParseStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_string()))
    }
}

/// Why a task failed (or was cancelled), as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// Every model in the chain failed.
    ProviderError,
    /// The request was refused for good (400/401/403/404/422 or a missing key).
    Rejected,
    /// The agent's timeout ran out.
    Timeout,
    /// The server stopped while the task ran, and it was not re-queued.
    Interrupted,
    /// The auditor kept rejecting the output.
    AuditRejected,
    /// The auditor's verdict was `fail`.
    AuditFailed,
    /// The auditor's answer could not be parsed, twice.
    AuditError,
    /// A client cancelled it.
    Cancelled,
    /// The agent is not runnable (no model, unknown agent after reload, ...).
    Invalid,
    /// A bug: an internal error was caught.
    Internal,
    /// A tool loop reached its `max_turns` without a final answer.
    MaxTurns,
    /// A limit of the task's delegation tree (turns, tasks, time, money) ran out.
    TreeLimit,
}

impl FailReason {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::ProviderError => "provider_error",
            FailReason::Rejected => "rejected",
            FailReason::Timeout => "timeout",
            FailReason::Interrupted => "interrupted",
            FailReason::AuditRejected => "audit_rejected",
            FailReason::AuditFailed => "audit_failed",
            FailReason::AuditError => "audit_error",
            FailReason::Cancelled => "cancelled",
            FailReason::Invalid => "invalid",
            FailReason::Internal => "internal",
            FailReason::MaxTurns => "max_turns",
            FailReason::TreeLimit => "tree_limit",
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use FailReason::*;
        [
            ProviderError,
            Rejected,
            Timeout,
            Interrupted,
            AuditRejected,
            AuditFailed,
            AuditError,
            Cancelled,
            Invalid,
            Internal,
            MaxTurns,
            TreeLimit,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("unknown fail reason `{s}`"))
    }
}

/// One task, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Identifier.
    pub id: TaskId,
    /// Agent name.
    pub agent: String,
    /// Current state.
    pub state: TaskState,
    /// The input as given (a string or a JSON object).
    pub input: serde_json::Value,
    /// The task that delegated this one, if any.
    pub parent_id: Option<TaskId>,
    /// The first task of its delegation tree (itself for a root task, whose
    /// `root_id` is stored empty and read back as its own id).
    #[serde(default)]
    pub root_id: Option<TaskId>,
    /// Delegation depth (0 for a task a client started).
    pub depth: u32,
    /// The authenticated subject that owns the task (HTTP with OAuth2); `None` on stdio.
    pub subject: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// When it last started running.
    pub started_at: Option<Millis>,
    /// When it reached a terminal state.
    pub finished_at: Option<Millis>,
    /// The model that produced the final output (`provider/model-id`).
    pub model: Option<String>,
    /// Provider calls made (all kinds).
    pub attempts: u32,
    /// Input tokens over all attempts.
    pub input_tokens: u64,
    /// Output tokens over all attempts.
    pub output_tokens: u64,
    /// Cost in USD over all attempts.
    pub cost_usd: f64,
    /// The final output (also for an audit-rejected task, marked by `reason`).
    pub output: Option<String>,
    /// Why it failed or was cancelled.
    pub reason: Option<FailReason>,
    /// Human-readable error.
    pub error: Option<String>,
    /// The outbox file, KB-relative.
    pub kb_path: Option<String>,
    /// How the router chose the agent, when it did.
    pub routing: Option<serde_json::Value>,
    /// Times the task was re-queued after a crash.
    pub requeues: u32,
    /// The server process driving it while queued or running
    /// (`host:pid:start-ms`): the holder of its lease. Another instance takes
    /// the task over only once that lease has run out.
    pub owner: Option<String>,
    /// The audit decision and the verdict of each round (JSON), for agents with a mirror.
    pub audit: Option<serde_json::Value>,
    /// The epoch of the claim its owner holds: each claim adds one, and the
    /// store refuses a write-back made under an older one (a fencing token).
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub epoch: u64,
}

impl Task {
    /// The root of its delegation tree: `root_id`, or itself.
    pub fn root(&self) -> &str {
        self.root_id.as_deref().unwrap_or(&self.id)
    }

    /// A new queued task.
    pub fn new(agent: &str, input: serde_json::Value) -> Task {
        Task {
            id: new_task_id(),
            agent: agent.to_string(),
            state: TaskState::Queued,
            input,
            parent_id: None,
            root_id: None,
            depth: 0,
            subject: None,
            created_at: now_millis(),
            started_at: None,
            finished_at: None,
            model: None,
            attempts: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            output: None,
            reason: None,
            error: None,
            kb_path: None,
            routing: None,
            requeues: 0,
            owner: None,
            epoch: 0,
            audit: None,
        }
    }
}

/// What one provider call was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptKind {
    /// The agent's own model answering (first try or a revision).
    Primary,
    /// The auditor judging an answer.
    Audit,
    /// The auditor asked again after an unparseable verdict.
    AuditRepair,
    /// The escalation model's last try.
    Escalation,
    /// The router's classifier.
    Routing,
    /// A turn of a tool loop that asked for tools (not an answer yet).
    Turn,
}

impl AttemptKind {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Primary => "primary",
            AttemptKind::Audit => "audit",
            AttemptKind::AuditRepair => "audit_repair",
            AttemptKind::Escalation => "escalation",
            AttemptKind::Routing => "routing",
            AttemptKind::Turn => "turn",
        }
    }
}

impl FromStr for AttemptKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use AttemptKind::*;
        [Primary, Audit, AuditRepair, Escalation, Routing, Turn]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown attempt kind `{s}`"))
    }
}

/// Where a cost figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// The provider reported it (OpenRouter's `usage.cost`).
    Reported,
    /// Computed from tokens and the price table.
    PriceTable,
    /// No price known: counted as 0.
    Unknown,
}

impl CostSource {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            CostSource::Reported => "reported",
            CostSource::PriceTable => "price_table",
            CostSource::Unknown => "unknown",
        }
    }
}

impl FromStr for CostSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reported" => Ok(CostSource::Reported),
            "price_table" => Ok(CostSource::PriceTable),
            "unknown" => Ok(CostSource::Unknown),
            _ => Err(format!("unknown cost source `{s}`")),
        }
    }
}

/// One provider call made for a task, successful or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    /// The task.
    pub task_id: TaskId,
    /// 1-based order within the task.
    pub seq: u32,
    /// What the call was for.
    pub kind: AttemptKind,
    /// The agent whose model was called (the auditor's name for audits).
    pub agent: String,
    /// Provider name.
    pub provider: String,
    /// Model id as sent (without the provider prefix).
    pub model: String,
    /// When the call started.
    pub started_at: Millis,
    /// Wall time of the call in milliseconds.
    pub latency_ms: u64,
    /// True if the call returned an answer.
    pub ok: bool,
    /// HTTP status when the provider answered with an error.
    pub http_status: Option<u16>,
    /// The error, when not ok (never contains a key).
    pub error: Option<String>,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed.
    pub output_tokens: u64,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Where the cost came from.
    pub cost_source: CostSource,
    /// The audit verdict, for audit attempts (JSON as parsed).
    pub verdict: Option<serde_json::Value>,
    /// The message sent to ask for a revision, for revision attempts.
    pub revision_message: Option<String>,
    /// What the model answered (primary, escalation and audit calls that succeeded).
    pub output: Option<String>,
}

/// A workflow run's id: `run-` and a ULID, so it is never mistaken for a task id.
pub fn new_run_id() -> String {
    format!("run-{}", new_task_id())
}

/// Where a workflow run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Steps are running or waiting.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed and its descendants were skipped.
    Failed,
    /// Every step ran, but some failed with `continue_on_error`.
    Partial,
    /// A client cancelled it.
    Cancelled,
}

impl RunState {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Partial => "partial",
            RunState::Cancelled => "cancelled",
        }
    }

    /// True once the run will not change again.
    pub fn is_terminal(self) -> bool {
        self != RunState::Running
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use RunState::*;
        [Running, Succeeded, Failed, Partial, Cancelled]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown run state `{s}`"))
    }
}

/// Where one step of a run is (defined with the workflow diagrams that show it).
pub use crate::workflow::StepState;

/// A workflow run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    /// `run-<ulid>`.
    pub id: String,
    /// The workflow's name, if it has one.
    pub name: Option<String>,
    /// The workflow agent it was started from, if any.
    pub agent: Option<String>,
    /// Current state.
    pub state: RunState,
    /// The run's input (`{{input}}`).
    pub input: serde_json::Value,
    /// The workflow definition (JSON), as validated.
    pub definition: serde_json::Value,
    /// The owner (authenticated subject), if any.
    pub subject: Option<String>,
    /// The server process driving it (see `Task::owner`).
    pub owner: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// When it finished.
    pub finished_at: Option<Millis>,
    /// What went wrong, for failed or cancelled runs.
    pub error: Option<String>,
}

/// One step of a run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepRecord {
    /// The run.
    pub run_id: String,
    /// The step's id in the definition.
    pub step_id: String,
    /// Its position in the definition.
    pub idx: u32,
    /// Current state.
    pub state: StepState,
    /// The engine task running (or that ran) it.
    pub task_id: Option<TaskId>,
    /// Tasks started for it (1 + retries used).
    pub tries: u32,
    /// When its first task started.
    pub started_at: Option<Millis>,
    /// When it reached a final state.
    pub finished_at: Option<Millis>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Its output file in the KB (`sessions/<run>/<step>.md`).
    pub output_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_never_change() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        assert!("done".parse::<TaskState>().is_err());
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = new_task_id();
        let b = new_task_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 26);
    }
}

/// One step of a tool loop, stored before the loop acts on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Turn {
    /// The task.
    pub task_id: TaskId,
    /// Order within the task, from 1.
    pub seq: u32,
    /// Which answer of the audit loop it belongs to (1 for the first answer,
    /// 2 for the first revision, ...).
    pub answer: u32,
    /// When it was stored.
    pub at: Millis,
    /// What happened.
    pub event: TurnEvent,
}

/// What one stored turn says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TurnEvent {
    /// The model answered and asked for tools.
    Model {
        /// `provider/model` that answered.
        model: String,
        /// Its text beside the calls (often empty).
        text: String,
        /// The calls, in order.
        calls: Vec<ToolCallRecord>,
    },
    /// A child task was created for a call (stored before it is submitted,
    /// so a resumed parent re-attaches to it rather than creating another).
    ChildStarted {
        /// The call.
        call_id: String,
        /// The child task.
        child_task_id: TaskId,
        /// Its agent.
        agent: String,
    },
    /// A call's result, as sent back to the model.
    ToolResult {
        /// The call.
        call_id: String,
        /// The tool, as the model named it.
        name: String,
        /// What was sent back (cut to the limit).
        content: String,
        /// True when it is an error the model sees.
        is_error: bool,
        /// Size of the whole result before any cut.
        bytes: u64,
        /// Wall time of the call.
        latency_ms: u64,
        /// The child task, for `agent_run`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        child_task_id: Option<TaskId>,
        /// The human's answer, for a tool the agent file marks `ask`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<Approval>,
    },
    /// A human is asked to approve a call of a tool marked `ask` (stored
    /// before the question goes out; its answer is in the call's result).
    Asked {
        /// The call.
        call_id: String,
        /// The tool, as the model named it.
        name: String,
        /// The question.
        question: String,
    },
}

/// What a human said to a call of a tool marked `ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run it.
    Accepted,
    /// Do not.
    Declined,
    /// The human dismissed the question without choosing.
    Cancelled,
    /// No one could be asked (no client that can ask, no answer in time):
    /// the call is refused.
    Unanswered,
}

impl Decision {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accepted => "accepted",
            Decision::Declined => "declined",
            Decision::Cancelled => "cancelled",
            Decision::Unanswered => "unanswered",
        }
    }
}

/// A question about one tool call and its answer, recorded with the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Approval {
    /// What was asked.
    pub question: String,
    /// The answer.
    pub decision: Decision,
    /// Who answered: the authenticated subject, `stdio client`, `--approve`, `tty`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// How: `elicitation`, `tasks/update`, `flag`, `tty`.
    pub via: String,
    /// Why there was no answer, when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Approval {
    /// No one could be asked, for `why`.
    pub fn unanswered(question: &str, via: &str, why: impl Into<String>) -> Approval {
        Approval {
            question: question.to_string(),
            decision: Decision::Unanswered,
            by: None,
            via: via.to_string(),
            note: Some(why.into()),
        }
    }
}

/// A tool call as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallRecord {
    /// The provider's id for the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them.
    pub arguments: String,
}

impl TurnEvent {
    /// One line for people (`dispatch task`, the outbox file): the calls a
    /// model asked for, a child started, or a result's size, time or error.
    pub fn describe(&self) -> String {
        let clip = crate::provider::clip;
        match self {
            TurnEvent::Model { model, calls, .. } => {
                let calls: Vec<String> = calls
                    .iter()
                    .map(|c| clip(&format!("{}({})", c.name, c.arguments), 120))
                    .collect();
                format!("{model} asked for {}", calls.join(", "))
            }
            TurnEvent::ChildStarted {
                agent,
                child_task_id,
                ..
            } => format!("child task {child_task_id} ({agent}) started"),
            TurnEvent::ToolResult {
                name,
                content,
                is_error,
                bytes,
                latency_ms,
                child_task_id,
                ..
            } => {
                let child = child_task_id
                    .as_deref()
                    .map(|c| format!(" [child {c}]"))
                    .unwrap_or_default();
                if *is_error {
                    format!(
                        "{name} ERROR in {latency_ms} ms: {}{child}",
                        clip(content, 200)
                    )
                } else {
                    format!("{name} returned {bytes} bytes in {latency_ms} ms{child}")
                }
            }
            TurnEvent::Asked { name, .. } => format!("asked a human to approve {name}"),
        }
    }

    /// The stable code of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            TurnEvent::Model { .. } => "model",
            TurnEvent::ChildStarted { .. } => "child_started",
            TurnEvent::ToolResult { .. } => "tool_result",
            TurnEvent::Asked { .. } => "asked",
        }
    }
}

/// The limits and use of one delegation tree, as stored. Money is counted in
/// micro-dollars so that reservations add up exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tree {
    /// The root task.
    pub root_id: TaskId,
    /// Tasks in the tree so far, the root included.
    pub tasks: u32,
    /// Model turns so far.
    pub turns: u32,
    /// Money spent, micro-USD.
    pub spent_micros: i64,
    /// Money reserved by calls in flight, micro-USD.
    pub reserved_micros: i64,
    /// Limits.
    pub limits: TreeLimits,
    /// When the root was created.
    pub created_at: Millis,
}

/// The limits of one delegation tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TreeLimits {
    /// Deepest delegation (the root is at depth 0).
    pub max_depth: u32,
    /// Most tasks, the root included.
    pub max_tasks: u32,
    /// Most model turns over all its tasks.
    pub max_turns: u32,
    /// Wall time from the root's creation, seconds.
    pub max_secs: Option<u64>,
    /// Money, micro-USD.
    pub budget_micros: Option<i64>,
}

/// One charge against a tree, taken in one step by the store: all of it fits
/// the limits, or none of it is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCharge {
    /// Tasks to add.
    pub tasks: u32,
    /// Turns to add.
    pub turns: u32,
    /// Money to reserve, micro-USD.
    pub reserve_micros: i64,
    /// An earlier reservation to release, micro-USD.
    pub release_micros: i64,
    /// Money spent, micro-USD.
    pub spend_micros: i64,
}

/// A task or workflow run that a client started as an MCP task (a
/// task-augmented `tools/call`): what the protocol keeps beside the work.
/// Its id is the task's or run's own id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClientTask {
    /// The task id (`01…`) or run id (`run-…`).
    pub id: String,
    /// The tool that started it (its result is that tool's result).
    pub tool: String,
    /// Whose it is; `None` when the caller was not authenticated.
    pub subject: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// How long after its creation a finished one is kept, ms; `None`: for ever.
    pub ttl_ms: Option<u64>,
    /// How often a client is asked to poll it, ms.
    pub poll_ms: u64,
}

impl ClientTask {
    /// Whether it is past its retention at `now` (only finished work is
    /// forgotten: the caller decides that with `finished`).
    pub fn expired(&self, now: Millis, finished: bool) -> bool {
        finished
            && self.ttl_ms.is_some_and(|ttl| {
                self.created_at
                    .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
                    <= now
            })
    }
}

/// One page of client tasks, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTaskPage {
    /// The tasks.
    pub tasks: Vec<ClientTask>,
    /// Pass this to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}
