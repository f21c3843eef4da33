//! The task engine: admission under concurrency limits, the one state machine,
//! cancellation, waiting, crash recovery.
//!
//! Every task is driven by its own tokio task, started the moment the task is
//! submitted (no batches, no polling loop). The driver waits for a slot, runs
//! the agent, writes the outbox file and persists the final state. Each state
//! change goes to the store *before* anything acts on it, and a supervisor
//! marks a task `failed` if its driver dies, so no path leaves a task
//! `running` in the store while nothing runs it.

pub mod approval;
mod audit;
mod input;
mod keys;
mod lease;
mod outbox;
mod owner;
mod report;
mod router;
mod run;
mod slots;
pub mod tools;
mod tree;
mod views;
mod workflow;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use audit::{AuditTrail, Decision, Issue, Report, Round, Verdict};
pub use input::render_input;
pub use keys::{KeyCheck, missing_by_variable};
pub use outbox::rfc3339;
pub use report::{UsageReport, UsageReportRow};
pub use router::{RouteDecision, RouterConfig};
pub use run::DryRun;
pub use slots::SharedSlots;
pub use tree::{CallLimits, usd_to_micros};
pub use views::{RunView, StepView, run_view};
pub use workflow::{RunEvent, RunRequest};

use crate::agent::ModelRef;
use crate::kb::Kb;
use crate::metrics::{BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, Metrics};
use crate::provider::{BreakerState, Providers};
use crate::registry::Registry;
use crate::store::{Store, StoreError, TaskFilter, TaskPage};
use crate::task::{Attempt, FailReason, Task, TaskId, TaskState, TreeLimits, now_millis};

/// Limits and policies of the engine (from `dispatch.toml`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tasks running at once, over all agents.
    pub global_limit: usize,
    /// Tasks running at once per agent, unless overridden.
    pub per_agent_limit: usize,
    /// Per-agent overrides.
    pub agent_limits: BTreeMap<String, usize>,
    /// Tasks allowed to wait for a slot; more are refused with "queue full".
    pub queue_capacity: usize,
    /// Deepest `parent_task_id` chain `agent_delegate` accepts.
    pub max_depth: u32,
    /// Longest answer kept in a task's output (the outbox file has it whole).
    pub max_answer_bytes: usize,
    /// Times a task interrupted by a crash is re-queued before it fails.
    pub max_requeues: u32,
    /// How long this process's claim on its tasks lasts without a renewal
    /// (`[store] lease_secs`); renewed, and the store swept for work whose
    /// driver is gone, every third of it.
    pub lease: Duration,
    /// Per-attempt timeout for agents that name none.
    pub default_timeout: Duration,
    /// The router for `agent_delegate` without an agent.
    pub router: RouterConfig,
    /// The model `usage_report` compares costs against.
    pub baseline: Option<ModelRef>,
    /// Seed for audit sampling (reproducible runs); random when `None`.
    pub audit_seed: Option<u64>,
    /// What agents that act may do, and the limits on their trees.
    pub acting: ActingConfig,
}

/// The tool loop's settings and the limits of every delegation tree.
#[derive(Debug, Clone)]
pub struct ActingConfig {
    /// Model turns per answer for agents that name no `max_turns`.
    pub max_turns: u32,
    /// The limits every tree gets (a call may lower them, never raise them).
    pub tree: TreeLimits,
    /// Longest tool result sent to a model, bytes.
    pub max_tool_result_bytes: usize,
    /// Longest one tool call may take.
    pub tool_timeout: Duration,
    /// Longest a call of a tool marked `ask` waits for a human.
    pub approval_timeout: Duration,
    /// The project root, for the read-only file tools.
    pub project_root: Option<std::path::PathBuf>,
    /// Subjects that may write the KB's shared `context/` (`[auth] context_writers`).
    pub context_writers: Vec<String>,
}

impl Default for ActingConfig {
    fn default() -> Self {
        ActingConfig {
            max_turns: 20,
            tree: TreeLimits {
                max_depth: 3,
                max_tasks: 50,
                max_turns: 200,
                max_secs: None,
                budget_micros: None,
            },
            max_tool_result_bytes: 64 * 1024,
            tool_timeout: Duration::from_secs(60),
            approval_timeout: Duration::from_secs(300),
            project_root: None,
            context_writers: Vec::new(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            global_limit: 64,
            per_agent_limit: 32,
            agent_limits: BTreeMap::new(),
            queue_capacity: 10_000,
            max_depth: 3,
            max_answer_bytes: 4 * 1024 * 1024,
            max_requeues: 1,
            lease: Duration::from_secs(15),
            default_timeout: crate::provider::DEFAULT_REQUEST_TIMEOUT,
            router: RouterConfig::default(),
            baseline: None,
            audit_seed: None,
            acting: ActingConfig::default(),
        }
    }
}

/// What can go wrong asking the engine for something. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No agent by that name.
    #[error("unknown agent `{name}`: {available}; call agent_list for details")]
    UnknownAgent {
        /// The name asked for.
        name: String,
        /// Comma-separated loaded agents, or why there are none.
        available: String,
    },
    /// No task by that id (or not visible to the caller).
    #[error("no task `{0}`: check the id (task_list shows recent tasks)")]
    UnknownTask(String),
    /// The wait queue is full.
    #[error(
        "queue full: {waiting} tasks are already waiting for a slot (limit {capacity}); retry later, or raise `queue` under [limits] in dispatch.toml"
    )]
    QueueFull {
        /// Tasks waiting.
        waiting: usize,
        /// The limit.
        capacity: usize,
    },
    /// Delegation nested too deep.
    #[error("delegation too deep: task {parent} is already at depth {depth} (limit {limit})")]
    TooDeep {
        /// The parent task.
        parent: TaskId,
        /// Its depth.
        depth: u32,
        /// The limit.
        limit: u32,
    },
    /// The server is stopping.
    #[error("the server is shutting down: retry on the next start")]
    ShuttingDown,
    /// No model of a chain the run needs has a key.
    #[error("missing_key: {0}")]
    MissingKey(String),
    /// No workflow run by that id (or not visible to the caller).
    #[error(
        "no workflow run `{0}`: check the id (task_list shows recent tasks; runs start with `run-`)"
    )]
    UnknownRun(String),
    /// The router could not choose an agent.
    #[error("{0}")]
    Unroutable(String),
    /// The input is unusable.
    #[error("{0}")]
    BadInput(String),
    /// The store failed.
    #[error("task store: {0}")]
    Store(#[from] StoreError),
}

/// Something that happened to a task, for progress notifications.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TaskEvent {
    /// The task changed state.
    State {
        /// The new state.
        state: TaskState,
    },
    /// A provider call started on a model.
    Calling {
        /// `provider/model`.
        model: String,
        /// What for.
        what: String,
    },
    /// A provider call ended.
    Attempt {
        /// The attempt.
        attempt: Box<Attempt>,
    },
    /// Streamed output so far.
    Streaming {
        /// Characters received in the current call.
        chars: u64,
    },
    /// The tool loop is doing something ("calling kb_search", "waiting on child ...").
    Acting {
        /// What.
        what: String,
    },
    /// A turn of the tool loop was stored.
    Turn {
        /// The turn.
        turn: Box<crate::task::Turn>,
    },
}

impl TaskEvent {
    /// A one-line description for a progress notification.
    pub fn describe(&self, agent: &str) -> String {
        match self {
            TaskEvent::State { state } => format!("{agent}: {state}"),
            TaskEvent::Calling { model, what } => format!("{agent}: {what} on {model}"),
            TaskEvent::Attempt { attempt } => {
                let model = format!("{}/{}", attempt.provider, attempt.model);
                if attempt.ok {
                    format!(
                        "{agent}: {model} answered ({} tokens, {} ms)",
                        attempt.output_tokens, attempt.latency_ms
                    )
                } else {
                    format!(
                        "{agent}: {model} failed: {}",
                        attempt.error.as_deref().unwrap_or("unknown error")
                    )
                }
            }
            TaskEvent::Streaming { chars } => format!("{agent}: streaming ({chars} chars)"),
            TaskEvent::Acting { what } => format!("{agent}: {what}"),
            TaskEvent::Turn { turn } => match &turn.event {
                crate::task::TurnEvent::Model { calls, .. } => {
                    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
                    format!("{agent}: the model asked for {}", names.join(", "))
                }
                crate::task::TurnEvent::ChildStarted {
                    agent: child,
                    child_task_id,
                    ..
                } => {
                    format!("{agent}: started child {child} ({child_task_id})")
                }
                crate::task::TurnEvent::ToolResult {
                    name,
                    bytes,
                    is_error,
                    ..
                } => {
                    if *is_error {
                        format!("{agent}: {name} returned an error")
                    } else {
                        format!("{agent}: {name} returned {bytes} bytes")
                    }
                }
                crate::task::TurnEvent::Asked { name, .. } => {
                    format!("{agent}: waiting for a human to approve {name}")
                }
            },
        }
    }
}

/// What `cancel` did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CancelOutcome {
    /// The task id.
    pub task_id: TaskId,
    /// True if this call cancelled it; false if it had already finished.
    pub cancelled: bool,
    /// The state now (for a running task, `cancelled` once its call is aborted).
    pub state: TaskState,
}

/// Events a slow subscriber may fall behind by before it skips ahead
/// (`RecvError::Lagged`). tokio allocates every slot when the channel is
/// made, once per task: 256 slots cost 18 KB a task, 16 about 1 KB, and a
/// task sends a handful of events (states, calls, attempts, streaming every
/// ~200 characters), which progress forwarding drains as they come.
const EVENT_BUFFER: usize = 16;

/// A task's live handles, while a driver owns it.
struct Live {
    cancel: CancellationToken,
    events: broadcast::Sender<TaskEvent>,
    state: watch::Sender<TaskState>,
    /// Who may see the task (a `None` subject sees all), so waiting on a live
    /// task needs no read of the store.
    subject: Option<String>,
    /// The task as persisted in its final state, set before that state is
    /// published: a waiter woken by it has the outcome without a store read.
    finished: OnceLock<Task>,
}

impl Live {
    fn visible_to(&self, subject: Option<&str>) -> bool {
        subject.is_none() || self.subject.as_deref() == subject
    }
}

/// Set a task's call, token and cost totals from its stored attempts. A call
/// that was never sent (an open breaker, a missing key: failed at once, no
/// status, no time) is listed but not counted, as while the task runs.
fn totals_from(task: &mut Task, attempts: &[Attempt]) {
    let sent = |a: &&Attempt| a.ok || a.http_status.is_some() || a.latency_ms > 0;
    task.attempts = attempts.iter().filter(sent).count() as u32;
    task.input_tokens = attempts.iter().map(|a| a.input_tokens).sum();
    task.output_tokens = attempts.iter().map(|a| a.output_tokens).sum();
    task.cost_usd = attempts.iter().map(|a| a.cost_usd).sum();
}

/// What recovery did with one task.
enum Recovered {
    /// Re-queued (or resumed) and driven here.
    Resumed,
    /// Failed as interrupted (its re-queues used up).
    Failed,
}

/// Both slots a running task holds (its agent's, then the global one).
/// The slots a running task holds: its agent's and the global one, here
/// and (on a shared store) across instances. Dropped, they are given back:
/// the store's first, then this process's, so that the next task admitted
/// here finds the store's free.
struct Permits {
    local: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    shared: Vec<slots::SharedSlot>,
}

impl Permits {
    fn new(
        agent: OwnedSemaphorePermit,
        global: OwnedSemaphorePermit,
        shared: Vec<slots::SharedSlot>,
    ) -> Permits {
        Permits {
            local: Some((agent, global)),
            shared,
        }
    }
}

impl Drop for Permits {
    fn drop(&mut self) {
        slots::give_all_then(std::mem::take(&mut self.shared), self.local.take());
    }
}

/// How a driver starts.
struct Start {
    /// The slots, when the task was admitted at once and persisted `running`;
    /// `None` for a `queued` task that must wait for them.
    permits: Option<Permits>,
    /// The attempts already stored for the task when they are known (a new
    /// task's routing calls); `None` to read them (a recovered task may have
    /// some from an earlier run).
    prior: Option<Vec<Attempt>>,
    /// Those of `prior` not stored yet: stored with the final state.
    unstored: Vec<Attempt>,
}

impl Start {
    /// The start of a task taken on from the store: it waits for its
    /// slots and reads what an earlier run stored.
    fn fresh() -> Start {
        Start {
            permits: None,
            prior: None,
            unstored: Vec::new(),
        }
    }
}

/// The engine. Cheap to share: hold it in an `Arc`.
pub struct Engine {
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    registry: Arc<Registry>,
    kb: Kb,
    cfg: EngineConfig,
    global: Arc<Semaphore>,
    agent_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    waiting: AtomicUsize,
    live: Mutex<HashMap<TaskId, Arc<Live>>>,
    shutdown: CancellationToken,
    /// Set when the process is stopping: no new work is admitted, and a
    /// client going away no longer cancels the tasks it started.
    stopping: CancellationToken,
    /// Set when the grace period is over: drivers still running store their
    /// task as `queued` (not counted as a crash) and stop.
    requeue_now: CancellationToken,
    /// Set once this process holds its lease ([`Engine::hold_lease`]).
    lease: tokio::sync::OnceCell<()>,
    /// Cancelled when the lease is given up (at the end of a shutdown).
    released: CancellationToken,
    /// A claimed task could not be taken on; the next sweep looks for it.
    strays: std::sync::atomic::AtomicBool,
    /// When the lease was renewed and when it lapsed.
    renewed: lease::Renewals,
    /// Slots shared with the other instances, on a store they share.
    shared: Option<SharedSlots>,
    sampler: audit::Sampler,
    runs: Mutex<HashMap<String, Arc<workflow::LiveRun>>>,
    metrics: Arc<Metrics>,
    /// The project root for the file tools, opened on first use.
    files: OnceLock<Option<Arc<tools::ProjectFiles>>>,
    /// Other MCP servers' tools (`[mcp_servers]`), when any are declared.
    external: OnceLock<Arc<dyn tools::ExternalTools>>,
    /// Who answers the questions of tools marked `ask`, per tree.
    approvers: approval::Approvers,
    /// The questions that wait for an answer from a later request.
    inbox: approval::Inbox,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Input for [`Engine::submit`].
#[derive(Debug, Clone, Default)]
pub struct Submit {
    /// The agent to run.
    pub agent: String,
    /// Its input: a string or a JSON object.
    pub input: serde_json::Value,
    /// The delegating task.
    pub parent_id: Option<TaskId>,
    /// The owner (authenticated subject), if any.
    pub subject: Option<String>,
    /// How the agent was chosen, when the router chose it.
    pub routing: Option<RouteDecision>,
    /// Use this id (a workflow step records it before submitting, so a crash
    /// in between cannot start the step twice).
    pub id: Option<TaskId>,
    /// Limits the caller sets on the task's delegation tree (a root task
    /// only; never above the configured ones).
    pub limits: CallLimits,
    /// Join this tree as one of its first tasks (a workflow step joins its
    /// run's tree, when the run has one).
    pub tree: Option<TaskId>,
    /// Who answers the questions of the tree this task roots (tools marked
    /// `ask`); ignored for a task that joins another's tree.
    pub approver: Option<approval::AskVia>,
}

impl Engine {
    /// An engine over these parts. Call [`Engine::recover`] once when this
    /// process owns the store's unfinished work (the server does; a one-shot
    /// CLI command does not).
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        registry: Arc<Registry>,
        kb: Kb,
        cfg: EngineConfig,
    ) -> Arc<Engine> {
        let cfg_seed = cfg.audit_seed;
        // One registry for the engine and its providers: the providers'.
        let metrics = providers.metrics().clone();
        // Several instances share a PostgreSQL store; a SQLite file is one host's.
        let shared = (store.backend() == crate::store::Backend::Postgres)
            .then(|| SharedSlots::new(store.clone()));
        Arc::new(Engine {
            global: Arc::new(Semaphore::new(cfg.global_limit.max(1))),
            store,
            providers,
            registry,
            kb,
            cfg,
            agent_slots: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            stopping: CancellationToken::new(),
            requeue_now: CancellationToken::new(),
            lease: tokio::sync::OnceCell::new(),
            released: CancellationToken::new(),
            strays: std::sync::atomic::AtomicBool::new(false),
            renewed: lease::Renewals::default(),
            shared,
            sampler: audit::Sampler::new(cfg_seed),
            runs: Mutex::new(HashMap::new()),
            metrics,
            files: OnceLock::new(),
            external: OnceLock::new(),
            approvers: approval::Approvers::default(),
            inbox: approval::Inbox::default(),
        })
    }

    /// The project's files for the file tools (`None` without a project
    /// root, or when it cannot be opened).
    fn project_files(&self) -> Option<Arc<tools::ProjectFiles>> {
        self.files
            .get_or_init(|| {
                let root = self.cfg.acting.project_root.as_ref()?;
                match tools::ProjectFiles::open(root) {
                    Ok(f) => Some(Arc::new(f)),
                    Err(e) => {
                        tracing::warn!(error = %e, "the file tools are not available: cannot open the project root");
                        None
                    }
                }
            })
            .clone()
    }

    /// Give agents the tools of other MCP servers (once; later calls are ignored).
    pub fn set_external(&self, external: Arc<dyn tools::ExternalTools>) {
        let _ = self.external.set(external);
    }

    /// A task's delegation tree, if it is in one.
    pub async fn tree(&self, task: &Task) -> Result<Option<crate::task::Tree>, EngineError> {
        if task.root_id.is_none() {
            return Ok(None);
        }
        Ok(self.store.get_tree(task.root()).await?)
    }

    /// A task's stored tool-loop turns.
    pub async fn turns(&self, id: &str) -> Result<Vec<crate::task::Turn>, EngineError> {
        Ok(self.store.turns(id).await?)
    }

    /// The engine's metrics (shared with its providers).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The Prometheus text exposition (OpenMetrics text; content type
    /// [`crate::metrics::CONTENT_TYPE`]), sampling gauges now: tasks per state
    /// (from the store, so every process sharing it is counted), the queue
    /// depth and the breaker states. A store error keeps the last sampled counts.
    pub async fn metrics_text(&self) -> String {
        match self.store.counts_by_state().await {
            Ok(counts) => {
                for (state, n) in counts {
                    self.metrics.set_tasks(state.as_str(), n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count tasks by state"),
        }
        match self.store.leases().await {
            Ok(leases) => self.metrics.set_instances(
                owner::this_process(),
                leases.iter().filter(|l| l.live).count(),
            ),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the leases"),
        }
        self.metrics.set_queue_depth(self.queue_depth());
        for (provider, state) in self.providers.breaker_states() {
            let level = match state {
                BreakerState::Closed { .. } => BREAKER_CLOSED,
                BreakerState::HalfOpen { .. } => BREAKER_HALF_OPEN,
                BreakerState::Open { .. } => BREAKER_OPEN,
            };
            self.metrics.set_breaker_state(&provider, level);
        }
        self.metrics.render()
    }

    /// Count a task that this process just persisted in a terminal state.
    fn record_finished(&self, task: &Task) {
        let failure = match (task.state, task.reason) {
            (TaskState::Failed, Some(r)) => Some(r.as_str()),
            (TaskState::Failed, None) => Some(FailReason::Internal.as_str()),
            _ => None,
        };
        let millis = task
            .finished_at
            .unwrap_or_else(now_millis)
            .saturating_sub(task.created_at);
        let elapsed = Duration::from_millis(u64::try_from(millis).unwrap_or(0));
        self.metrics
            .task_finished(&task.agent, task.state.as_str(), failure, elapsed);
    }

    /// The store (for read-only queries by front ends).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Questions of the tree rooted at `root_id` (tools marked `ask`) go to
    /// `approver` while the root runs in this process. Set it before the
    /// root is submitted (pass its id in [`Submit::id`]).
    pub fn set_approver(&self, root_id: &str, approver: Arc<dyn approval::Approver>) {
        self.approvers.set(root_id, approver);
    }

    /// Questions of trees without an approver go to `approver` (the CLI's
    /// flags or terminal); without one they are refused.
    pub fn set_default_approver(&self, approver: Arc<dyn approval::Approver>) {
        self.approvers.set_fallback(approver);
    }

    /// The questions that wait for an answer from a later request.
    pub fn inbox(&self) -> &approval::Inbox {
        &self.inbox
    }

    /// No one will answer the questions of the tree rooted at `root_id` any
    /// more: those waiting in the inbox and any asked later are refused,
    /// the model told `why`.
    pub fn stop_asking(&self, root_id: &str, why: &str) {
        self.inbox.shut(root_id, why, || {
            let task = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(root_id);
            task || self.live_run(root_id).is_some()
        });
    }

    /// Ask whoever answers for the question's tree.
    pub(crate) async fn approve(&self, question: &approval::Question) -> crate::task::Approval {
        self.approvers
            .ask(question, self.cfg.acting.approval_timeout)
            .await
    }

    /// The providers (for breaker states and prices).
    pub fn providers(&self) -> &Arc<Providers> {
        &self.providers
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Tasks waiting for a slot right now.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Take on the work whose driver is gone: tasks a crash (of this
    /// process's predecessor, or of another instance) left `running` are
    /// re-queued or failed, `queued` ones driven, and interrupted workflow
    /// runs resumed. Returns how many tasks were resumed and how many
    /// failed as interrupted.
    ///
    /// Each task is claimed first, under a lease ([`lease`]): of several
    /// instances recovering at once, only one takes each task.
    pub async fn recover(self: &Arc<Self>) -> Result<(usize, usize), EngineError> {
        let (mut resumed, failed) = self.claim_orphans().await?;
        self.adopt_strays().await?;
        // Runs last: their steps re-attach to the tasks recovered above.
        resumed += self.recover_runs().await?;
        Ok((resumed, failed))
    }

    /// Recover now and then every third of the lease, and whenever another
    /// process announces a task queued with no driver, for as long as the
    /// engine lives: an instance that dies leaves tasks only another can finish.
    pub fn spawn_recovery_sweep(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        let stopping = self.stopping.clone();
        let every = self.poll_every();
        let mut changes = self.store.changes();
        tokio::spawn(async move {
            // A deadline, not a sleep per turn: announcements that need no
            // sweep must not keep putting the next one off.
            let mut next = tokio::time::Instant::now() + every;
            loop {
                let heard = async {
                    match changes.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                    change = heard => {
                        let change = match change {
                            Ok(c) => c,
                            Err(broadcast::error::RecvError::Lagged(_)) => crate::store::Change::Missed,
                            Err(broadcast::error::RecvError::Closed) => {
                                // The store stopped announcing: the deadline alone from here on.
                                changes = None;
                                continue;
                            }
                        };
                        let Some(engine) = weak.upgrade() else { return };
                        if !engine.heard(&change) {
                            continue;
                        }
                    }
                }
                let Some(engine) = weak.upgrade() else { return };
                if let Err(e) = engine.recover().await {
                    tracing::warn!(error = %e, "recovery sweep failed");
                }
                // Announcements queued meanwhile get no sweep of their own (the
                // next one, a third of the lease away at the latest, takes what
                // they announced): a stopping instance that re-queues a thousand
                // tasks calls for one sweep, not a thousand. Tasks that ended
                // elsewhere still stop here.
                if let Some(rx) = changes.as_mut() {
                    while let Ok(change) = rx.try_recv() {
                        engine.heard(&change);
                    }
                }
                next = tokio::time::Instant::now() + every;
            }
        });
    }

    /// Resolve an agent name against the current registry.
    pub fn agent(&self, name: &str) -> Result<Arc<crate::agent::Agent>, EngineError> {
        let snap = self.registry.snapshot();
        snap.get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownAgent {
                name: echo(name),
                available: snap.available(),
            })
    }

    /// Which keys `agent`'s runs need and lack (its chain and its auditor's).
    pub fn key_check(&self, agent: &crate::agent::Agent) -> KeyCheck {
        KeyCheck::of(agent, &self.registry.snapshot(), &self.providers)
    }

    /// Per environment variable that should hold a key and does not: the
    /// provider it is for and the agents whose models use it.
    pub fn missing_keys(&self) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
        missing_by_variable(&self.registry.snapshot(), &self.providers)
    }

    /// Create a task (persisted as `queued`) and start driving it.
    pub async fn submit(self: &Arc<Self>, req: Submit) -> Result<Task, EngineError> {
        self.submit_watched(req).await.map(|(t, _)| t)
    }

    /// Like [`Engine::submit`], with a receiver of the task's events that is
    /// subscribed before the task starts, so no event can be missed.
    pub async fn submit_watched(
        self: &Arc<Self>,
        req: Submit,
    ) -> Result<(Task, broadcast::Receiver<TaskEvent>), EngineError> {
        let (agent, depth, root) = self.admissible(&req).await?;
        // Before the task names this process its owner.
        self.hold_lease().await?;
        let mut task = Task::new(&req.agent, req.input);
        if let Some(id) = req.id {
            task.id = id;
        }
        task.owner = Some(owner::this_process().to_string());
        let place = tree::Placement {
            parent: req.parent_id.as_ref(),
            run_tree: req.tree.as_ref(),
            limits: req.limits,
        };
        let tree = self.place_in_tree(&mut task, place, &agent, root).await;
        task.parent_id = req.parent_id;
        task.depth = depth;
        task.subject = req.subject;
        task.routing = req
            .routing
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok());
        // The classifier's calls are part of this task's cost (their tokens
        // and cost were counted in the metrics when the router made them).
        for a in req.routing.iter().flat_map(|r| &r.attempts) {
            task.attempts += 1;
            task.input_tokens += a.input_tokens;
            task.output_tokens += a.output_tokens;
            task.cost_usd += a.cost_usd;
        }
        // A slot free now means the task can start at once: it is persisted
        // straight as `running` (the queued -> running move made before the
        // one write), which saves a commit on the way to the provider.
        let admitted = self.try_admit(&task.agent).await;
        if admitted.is_some() {
            task.state = TaskState::Running;
            task.started_at = Some(now_millis());
        }
        if let Some(tree) = &tree {
            // Before the task: a driver that starts finds its tree.
            self.store.open_tree(tree).await?;
        }
        self.store.create_task(&task).await?;
        // Before the driver starts, so its first question finds whoever answers.
        if let Some(via) = req.approver
            && task.root() == task.id
        {
            self.approvers.set(&task.id, via.0);
        }
        // From here on the task exists: whatever fails, its driver must
        // start, or it would stay `queued`/`running` with nothing driving it.
        // A routing call that cannot be stored now is kept for the commit of
        // the final state instead.
        let (prior, unstored) = self.store_routing_calls(&task, req.routing.as_ref()).await;
        let start = Start {
            permits: admitted,
            prior: Some(prior),
            unstored,
        };
        let (_, events) = self.spawn_driver(task.clone(), start);
        Ok((task, events))
    }

    /// Whether `req` may become a task: the agent, the task's depth and its
    /// tree's root (for a child), or why not.
    async fn admissible(
        &self,
        req: &Submit,
    ) -> Result<(Arc<crate::agent::Agent>, u32, Option<TaskId>), EngineError> {
        if self.is_stopping() {
            return Err(EngineError::ShuttingDown);
        }
        let agent = self.agent(&req.agent)?;
        if let Some(why) = self.key_check(&agent).blocking() {
            return Err(EngineError::MissingKey(why));
        }
        input::validate(&req.input)?;
        let (depth, root) = match &req.parent_id {
            None => (0, None),
            Some(parent) => {
                let p = self.visible_task(parent, req.subject.as_deref()).await?;
                if p.depth + 1 > self.cfg.max_depth {
                    return Err(EngineError::TooDeep {
                        parent: p.id,
                        depth: p.depth,
                        limit: self.cfg.max_depth,
                    });
                }
                (p.depth + 1, p.root_id.clone())
            }
        };
        let waiting = self.waiting.load(Ordering::Relaxed);
        if waiting >= self.cfg.queue_capacity {
            return Err(EngineError::QueueFull {
                waiting,
                capacity: self.cfg.queue_capacity,
            });
        }
        Ok((agent, depth, root))
    }

    /// Choose an agent for `input` with the router (keywords, patterns, then
    /// the orchestrator's model).
    pub async fn route(&self, input: &serde_json::Value) -> Result<RouteDecision, EngineError> {
        router::route(self, input).await
    }

    /// Register the live handles and start the driver under a supervisor.
    fn spawn_driver(
        self: &Arc<Self>,
        task: Task,
        start: Start,
    ) -> (Arc<Live>, broadcast::Receiver<TaskEvent>) {
        let (events, first) = broadcast::channel(EVENT_BUFFER);
        let (state, _) = watch::channel(task.state);
        let live = Arc::new(Live {
            cancel: self.shutdown.child_token(),
            events,
            state,
            subject: task.subject.clone(),
            finished: OnceLock::new(),
        });
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.id.clone(), live.clone());
        if start.permits.is_none() {
            self.waiting.fetch_add(1, Ordering::Relaxed);
        }
        let me = self.clone();
        let handle_live = live.clone();
        tokio::spawn(async move {
            let id = task.id.clone();
            // One tokio task per task: the panic is caught here rather than
            // by a second, supervising task.
            let driver = std::panic::AssertUnwindSafe(run::drive(
                me.clone(),
                task,
                handle_live.clone(),
                start,
            ));
            if let Err(panic) = futures_util::FutureExt::catch_unwind(driver).await {
                // A panic in the driver is a bug; the task must still end.
                let what = panic_message(panic.as_ref());
                tracing::error!(task = %id, error = %what, "task driver died");
                me.fail_orphan(&id, &format!("internal error: {what}"))
                    .await;
            }
            me.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            // A root's approver serves its tree while the root runs here.
            me.approvers.forget(&id);
            me.inbox.forget(&id);
            // Wake waiters even if the driver died before saying so.
            handle_live.state.send_modify(|_| {});
        });
        (live, first)
    }

    /// Mark a task whose driver died as failed, whatever state it was left in.
    async fn fail_orphan(&self, id: &str, error: &str) {
        for _ in 0..3 {
            let Ok(Some(mut task)) = self.store.get_task(id).await else {
                return;
            };
            if task.state.is_terminal() {
                return;
            }
            let from = task.state;
            task.state = TaskState::Failed;
            task.reason = Some(FailReason::Internal);
            task.error = Some(error.to_string());
            task.finished_at = Some(now_millis());
            match self.store.update_task(&task, from).await {
                Ok(()) => {
                    self.record_finished(&task);
                    return;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "cannot mark a dead task as failed");
                    return;
                }
            }
        }
    }

    fn live_handle(&self, id: &str) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The semaphore of an agent's running limit.
    fn agent_slot(&self, agent: &str) -> Arc<Semaphore> {
        let mut slots = self.agent_slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(agent) {
            return s.clone();
        }
        let s = Arc::new(Semaphore::new(self.agent_limit(agent)));
        slots.insert(agent.to_string(), s.clone());
        s
    }

    /// How many of an agent's tasks may run at once (at least 1).
    fn agent_limit(&self, agent: &str) -> usize {
        self.cfg
            .agent_limits
            .get(agent)
            .copied()
            .unwrap_or(self.cfg.per_agent_limit)
            .max(1)
    }

    /// The task with `id` if `subject` may see it (a `None` subject sees all).
    pub async fn visible_task(&self, id: &str, subject: Option<&str>) -> Result<Task, EngineError> {
        match self.store.get_task(id).await? {
            Some(t) if subject.is_none() || t.subject.as_deref() == subject => Ok(t),
            _ => Err(EngineError::UnknownTask(echo(id))),
        }
    }

    /// The task and its attempts.
    pub async fn status(
        &self,
        id: &str,
        subject: Option<&str>,
    ) -> Result<(Task, Vec<Attempt>), EngineError> {
        let task = self.visible_task(id, subject).await?;
        let attempts = self.store.attempts(id).await?;
        Ok((task, attempts))
    }

    /// A page of tasks.
    pub async fn list(
        &self,
        filter: &TaskFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<TaskPage, EngineError> {
        Ok(self.store.list_tasks(filter, cursor, limit).await?)
    }

    /// Events of a live task (none once it has finished).
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<TaskEvent>> {
        self.live_handle(id).map(|l| l.events.subscribe())
    }

    /// Wait until the task is finished or `timeout` passes; returns the task as
    /// it is then. Returns early only on a terminal state, never on progress.
    pub async fn wait(
        &self,
        id: &str,
        subject: Option<&str>,
        timeout: Duration,
    ) -> Result<Task, EngineError> {
        // Clamp so that "wait forever" cannot overflow the clock.
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(365 * 86_400));
        if let Some(live) = self.live_handle(id) {
            if !live.visible_to(subject) {
                return Err(EngineError::UnknownTask(echo(id)));
            }
            let mut rx = live.state.subscribe();
            loop {
                if rx.borrow_and_update().is_terminal() || timeout.is_zero() {
                    break;
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    // Sender gone: the driver ended; the store has the outcome.
                    Ok(Err(_)) => break,
                    Err(_) => break,
                }
            }
            // The driver keeps the task it persisted last; otherwise (still
            // running, or it died) the store says where the task is.
            if let Some(task) = live.finished.get() {
                return Ok(task.clone());
            }
            let t = self.visible_task(id, subject).await?;
            if t.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(t);
            }
            // The driver ended without an outcome: another process holds
            // the task now, and the store will have its outcome.
        }
        self.wait_in_store(id, subject, deadline).await
    }

    /// Wait for a task driven elsewhere (another process, or none yet):
    /// read the store whenever it announces a change of this task (or may
    /// have missed one), and poll it anyway, since announcements only wake.
    async fn wait_in_store(
        &self,
        id: &str,
        subject: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<Task, EngineError> {
        // Subscribed before the first read, so no change after it is missed.
        let mut changes = self.store.changes();
        // Without announcements the poll is the only news: keep it short.
        let (mut pause, longest) = match changes {
            Some(_) => (Duration::from_millis(100), Duration::from_secs(2)),
            None => (Duration::from_millis(200), Duration::from_millis(200)),
        };
        loop {
            let t = self.visible_task(id, subject).await?;
            if t.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(t);
            }
            let until = (tokio::time::Instant::now() + pause).min(deadline);
            pause = (pause * 2).min(longest);
            let Some(rx) = changes.as_mut() else {
                tokio::time::sleep_until(until).await;
                continue;
            };
            let mut closed = false;
            loop {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Err(_) => break,
                    Ok(Ok(crate::store::Change::Task { id: changed, .. })) if changed != id => {}
                    Ok(Ok(crate::store::Change::Slot { .. })) => {}
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        closed = true;
                        break;
                    }
                    // This task, a missed announcement, or a receiver behind.
                    Ok(_) => break,
                }
            }
            if closed {
                // The store stopped announcing: poll alone from here on.
                changes = None;
                tokio::time::sleep_until(until).await;
            }
        }
    }

    /// Cancel a queued or running task. A running task's provider request is
    /// aborted; the task ends `cancelled` once its driver has stopped.
    pub async fn cancel(
        &self,
        id: &str,
        subject: Option<&str>,
    ) -> Result<CancelOutcome, EngineError> {
        let task = self.visible_task(id, subject).await?;
        if task.state.is_terminal() {
            return Ok(CancelOutcome {
                task_id: task.id,
                cancelled: false,
                state: task.state,
            });
        }
        match self.live_handle(id) {
            Some(live) => {
                live.cancel.cancel();
                let mut rx = live.state.subscribe();
                drop(live);
                // The driver persists `cancelled` and then publishes it.
                while !rx.borrow_and_update().is_terminal() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
                let t = self.visible_task(id, subject).await?;
                Ok(CancelOutcome {
                    task_id: t.id,
                    cancelled: t.state == TaskState::Cancelled,
                    state: t.state,
                })
            }
            None => {
                // Queued in the store but not driven by this process (e.g. a
                // one-shot CLI): cancel it in the store directly.
                let mut t = task;
                let from = t.state;
                t.state = TaskState::Cancelled;
                t.reason = Some(FailReason::Cancelled);
                t.finished_at = Some(now_millis());
                self.store.update_task(&t, from).await?;
                self.record_finished(&t);
                Ok(CancelOutcome {
                    task_id: t.id,
                    cancelled: true,
                    state: TaskState::Cancelled,
                })
            }
        }
    }

    /// The process is stopping: refuse new work, and let tasks in flight
    /// finish (see [`Engine::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    /// True once [`Engine::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// A graceful stop (stdin closed, SIGTERM): no new work is admitted and
    /// queued tasks stay queued; running tasks get `grace` to finish and be
    /// stored; those still running then are stored back as `queued`, their
    /// calls so far kept, without counting as a crash (`requeues`), for the
    /// next start to resume. Returns how many were re-queued.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.begin_shutdown();
        let running = || {
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|l| !l.state.borrow().is_terminal())
                .count()
        };
        let deadline = tokio::time::Instant::now() + grace;
        let now_running = running();
        if now_running > 0 {
            tracing::info!(
                tasks = now_running,
                "shutting down: waiting up to {} s for the running tasks to finish",
                grace.as_secs()
            );
        }
        while running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = running();
        if left > 0 {
            tracing::info!(
                tasks = left,
                "shutting down: storing the tasks still running as queued; they resume at the next start"
            );
        }
        self.requeue_now.cancel();
        // Drivers store and let go within moments; bound the wait anyway.
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.drivers() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(external) = self.external.get() {
            external.shutdown().await;
        }
        self.release_lease().await;
        left
    }

    /// Drivers alive in this process.
    fn drivers(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Cancel every live task (used at shutdown by one-shot commands).
    pub fn cancel_all(&self) {
        self.shutdown.cancel();
    }

    /// Token and cost totals over a window, with the saving against a baseline model.
    pub async fn usage(
        &self,
        query: &crate::store::UsageQuery,
        baseline: Option<&ModelRef>,
    ) -> Result<UsageReport, EngineError> {
        report::usage(self, query, baseline).await
    }

    /// What running `agent` on `input` would send, and roughly what it would cost.
    pub fn dry_run(&self, agent: &str, input: &serde_json::Value) -> Result<DryRun, EngineError> {
        run::dry_run(self, agent, input)
    }
}

/// `7d`, `24h`, `30m`, `90s` (that long ago) or an RFC 3339 time, as Unix
/// milliseconds; the error says which forms are accepted.
pub fn parse_when(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_millis() - d.as_millis() as i64);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0));
    }
    Err(format!(
        "`{s}` is not a time: use a duration ago such as `7d`, `24h`, `30m`, or an RFC 3339 time such as `2026-01-31T12:00:00Z`"
    ))
}

/// What a client sent, as an error message repeats it: at most 100
/// characters (a 10 MB id must not come back as a 10 MB error).
pub fn echo(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX).collect();
    out.push_str(&format!("… ({} bytes)", s.len()));
    out
}

/// What a caught panic says, for the task's error.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "the task driver panicked".to_string()
    }
}

fn fresh_permit() -> OwnedSemaphorePermit {
    let s = Arc::new(Semaphore::new(1));
    // A brand-new semaphore with one permit always grants it.
    match s.try_acquire_owned() {
        Ok(p) => p,
        Err(_) => unreachable!("a new semaphore with one permit has a permit"),
    }
}
