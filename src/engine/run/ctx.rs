//! One run's context and its provider calls.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::super::audit::AuditTrail;
use super::super::tools::{Policy, Toolbox};
use super::super::{Engine, Live, Permits, TaskEvent, input, usd_to_micros};
use super::attempts::{Attempts, Tally};
use crate::agent::{Agent, ModelRef};
use crate::kb::SharedAccess;
use crate::provider::{
    AttemptLog, ChainError, ChainErrorKind, ChatRequest, Message, ProgressFn, ToolCall,
    estimate_request_tokens,
};
use crate::store::{StoreError, TreeLimitKind};
use crate::task::{
    Attempt, AttemptKind, FailReason, Task, TaskState, Tree, TreeCharge, Turn, TurnEvent,
    now_millis,
};

/// Output tokens reserved for a request that sends no `max_tokens`.
const RESERVED_OUTPUT_TOKENS: u32 = 4096;

/// Why a tree's wall time refuses more work, if it does.
pub(super) fn tree_time_over(tree: &Tree) -> Option<String> {
    let secs = tree.limits.max_secs?;
    let deadline = tree.created_at + i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    (now_millis() >= deadline).then(|| {
        format!("the delegation tree's time limit of {secs}s ([limits] max_tree_secs) is over: answer from what you have")
    })
}

/// A refusal in words the model (and the user) can act on.
pub(super) fn refusal(limit: TreeLimitKind, max: i64, used: i64, asked: i64) -> String {
    match limit {
        TreeLimitKind::Money => format!(
            "the tree budget of ${:.4} would be exceeded: ${:.4} is spent or reserved and this call may cost up to ${:.4}; nothing was sent",
            max as f64 / 1e6,
            used as f64 / 1e6,
            asked as f64 / 1e6
        ),
        TreeLimitKind::Turns => format!(
            "the delegation tree's turn limit of {max} ([limits] max_tree_turns) is reached: answer from what you have"
        ),
        TreeLimitKind::Tasks => format!(
            "the delegation tree's task limit of {max} ([limits] max_tree_tasks) is reached ({used} tasks): answer from what you have"
        ),
    }
}

pub(super) struct RunCtx<'a> {
    pub engine: &'a Arc<Engine>,
    pub task: &'a Task,
    pub live: &'a Arc<Live>,
    pub tally: Arc<Tally>,
    pub attempts: Arc<Attempts>,
    /// Attempts recorded by an earlier run of this task (before a crash).
    pub prior: Vec<Attempt>,
    /// The audit decision and rounds, shared with the driver.
    pub trail: Arc<Mutex<Option<AuditTrail>>>,
    /// The delegation tree this task is charged to, if it is in one.
    pub tree: Option<Tree>,
    /// Every turn of the task's tool loops so far (earlier runs' too).
    pub turns: Arc<Mutex<Vec<Turn>>>,
    /// The concurrency slots held, given up while the task waits on children
    /// or on a human's approval.
    pub slots: Slots,
}

/// A task's concurrency slots, which it gives up while it waits on its
/// children (or a human): the first child waited on takes them away, the last one done
/// brings them back, so a task holds one slot however many children it
/// waits on at once (taking one back per child would wait on itself).
pub(super) struct Slots {
    held: Mutex<Option<Permits>>,
    waiting: std::sync::atomic::AtomicUsize,
    /// Held while the slots are taken back, so two children ending together
    /// do not both take them.
    regain: tokio::sync::Mutex<()>,
}

impl Slots {
    /// Slots already held by the driver.
    pub(super) fn new(permits: Permits) -> Slots {
        Slots {
            held: Mutex::new(Some(permits)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            regain: tokio::sync::Mutex::new(()),
        }
    }

    /// A wait on a child begins.
    pub(super) fn release(&self) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(held);
        }
    }

    /// A wait on a child ended: after the last one, take the slots back.
    pub(super) async fn regain(&self, engine: &Engine, agent: &str) {
        let _one = self.regain.lock().await;
        if self.waiting.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let permits = engine.admit(agent).await;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(permits);
    }
}

/// Why a provider call did not answer.
#[derive(Debug)]
pub(super) enum CallError {
    /// Every model failed.
    Chain(ChainError),
    /// The tree's limits refused the call before it was sent.
    Tree(String),
}

impl CallError {
    /// The task's fail reason.
    pub(super) fn reason(&self) -> FailReason {
        match self {
            CallError::Chain(e) => chain_failure(e),
            CallError::Tree(_) => FailReason::TreeLimit,
        }
    }

    /// What to tell the user.
    pub(super) fn message(&self) -> String {
        match self {
            CallError::Chain(e) => e.message.clone(),
            CallError::Tree(m) => m.clone(),
        }
    }
}

/// A provider chain call that answered, with its attempt held back until the
/// caller has added what only it knows (the verdict).
pub(super) struct Answer {
    pub(super) text: String,
    pub(super) model: ModelRef,
    pub(super) attempt: Attempt,
    /// Tools the model asked for (none for an answer).
    pub(super) tool_calls: Vec<ToolCall>,
}

/// One answer of the primary (or escalation) model.
#[derive(Clone)]
pub(super) struct Draft {
    pub(super) text: String,
    pub(super) model: String,
    pub(super) escalation: bool,
}

impl RunCtx<'_> {
    /// The callback that turns the provider layer's attempt logs into stored
    /// attempts. Failed calls are stored at once; the successful one is kept
    /// in `pending` for the caller to complete.
    pub(super) fn recorder(
        &self,
        kind: AttemptKind,
        agent: &str,
        revision: Option<String>,
        pending: Arc<Mutex<Option<Attempt>>>,
    ) -> impl Fn(AttemptLog) + Send + Sync + 'static {
        let tally = self.tally.clone();
        let tx = self.attempts.clone();
        let task_id = self.task.id.clone();
        let agent = agent.to_string();
        let metrics = self.engine.metrics.clone();
        move |log: AttemptLog| {
            metrics.usage(
                &agent,
                &log.provider,
                &log.model,
                log.usage.input_tokens,
                log.usage.output_tokens,
                log.cost_usd,
            );
            let seq = tally.seq.fetch_add(1, Ordering::Relaxed) + 1;
            if !log.skipped {
                tally.calls.fetch_add(1, Ordering::Relaxed);
            }
            tally
                .input_tokens
                .fetch_add(log.usage.input_tokens, Ordering::Relaxed);
            tally
                .output_tokens
                .fetch_add(log.usage.output_tokens, Ordering::Relaxed);
            tally.cost_micros.fetch_add(
                (log.cost_usd.max(0.0) * 1e6).round() as u64,
                Ordering::Relaxed,
            );
            let mut attempt = attempt_of(log, task_id.clone(), seq, kind, agent.clone());
            attempt.revision_message = revision.clone();
            if attempt.ok {
                *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(attempt);
            } else {
                let _ = tx.send(attempt, None);
            }
        }
    }

    /// Store an answer or a verdict and wait until it is durable: the loop
    /// acts on it next, and a crash must find it (resume depends on it).
    pub(super) async fn commit(&self, attempt: Attempt) {
        let (ack, done) = oneshot::channel();
        if self.attempts.send(attempt, Some(ack)) {
            let _ = done.await;
        }
    }

    /// Keep an answer for the commit of the final state: for the last
    /// answer of a run nothing acts on it but the driver. (A crash before
    /// that commit re-runs the task, as it would have before the answer
    /// came; only this call's accounting is lost with it.)
    pub(super) fn record(&self, attempt: Attempt) {
        self.attempts.hold(attempt);
    }

    /// Streamed deltas become throttled `Streaming` events.
    pub(super) fn progress(&self) -> ProgressFn {
        let events = self.live.events.clone();
        let chars = Arc::new(Mutex::new((0u64, 0u64)));
        Arc::new(move |delta: &str| {
            let mut c = chars.lock().unwrap_or_else(|p| p.into_inner());
            c.0 += delta.chars().count() as u64;
            // One event per ~200 characters keeps notifications useful, not noisy.
            if c.0 >= c.1 + 200 {
                c.1 = c.0;
                let _ = events.send(TaskEvent::Streaming { chars: c.0 });
            }
        })
    }

    pub(super) fn say(&self, model: &ModelRef, what: impl Into<String>) {
        let _ = self.live.events.send(TaskEvent::Calling {
            model: model.to_string(),
            what: what.into(),
        });
    }

    /// Call a model chain; the successful attempt comes back uncommitted.
    pub(super) async fn call(
        &self,
        kind: AttemptKind,
        agent: &Agent,
        chain: &[ModelRef],
        req: &ChatRequest,
        revision: Option<String>,
    ) -> Result<Answer, CallError> {
        let reserved = self.reserve(kind, chain, req).await?;
        let pending = Arc::new(Mutex::new(None));
        let record = self.recorder(kind, &agent.name, revision, pending.clone());
        let progress = req.stream.then(|| self.progress());
        let called = self
            .engine
            .providers
            .call_chain(
                chain,
                req,
                timeout_of(self.engine, agent),
                progress,
                &record,
            )
            .await;
        let spent = match &called {
            Ok(s) => usd_to_micros(s.cost_usd),
            Err(_) => 0,
        };
        self.settle(reserved, spent).await;
        let success = called.map_err(CallError::Chain)?;
        let attempt = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut attempt = attempt.unwrap_or_else(|| Attempt {
            // The provider layer reports every call; this is a safety net.
            task_id: self.task.id.clone(),
            seq: self.tally.seq.fetch_add(1, Ordering::Relaxed) + 1,
            kind,
            agent: agent.name.clone(),
            provider: success.model.provider.clone(),
            model: success.model.model.clone(),
            started_at: now_millis(),
            latency_ms: 0,
            ok: true,
            http_status: None,
            error: None,
            input_tokens: success.response.usage.input_tokens,
            output_tokens: success.response.usage.output_tokens,
            cost_usd: success.cost_usd,
            cost_source: success.cost_source,
            verdict: None,
            revision_message: None,
            output: None,
        });
        attempt.output = Some(success.response.text.clone());
        Ok(Answer {
            text: success.response.text,
            model: success.model,
            attempt,
            tool_calls: success.response.tool_calls,
        })
    }

    /// Take what a call may cost from the tree before it is sent: a turn
    /// (for the agent's own calls) and money for the request's input and its
    /// `max_tokens` at the dearest model of the chain. Refused whole when it
    /// does not fit; nothing is sent then.
    async fn reserve(
        &self,
        kind: AttemptKind,
        chain: &[ModelRef],
        req: &ChatRequest,
    ) -> Result<i64, CallError> {
        let Some(tree) = &self.tree else {
            return Ok(0);
        };
        if let Some(over) = tree_time_over(tree) {
            return Err(CallError::Tree(over));
        }
        let input = estimate_request_tokens(req);
        let prices = self.engine.providers.prices();
        let micros = chain
            .iter()
            .map(|m| {
                let out = self
                    .engine
                    .providers
                    .max_tokens_sent(m, req.max_tokens)
                    .unwrap_or(RESERVED_OUTPUT_TOKENS);
                usd_to_micros(prices.estimate_cost(m, input, u64::from(out)).usd)
            })
            .max()
            .unwrap_or(0);
        let turns = u32::from(matches!(
            kind,
            AttemptKind::Primary | AttemptKind::Escalation | AttemptKind::Turn
        ));
        let charge = TreeCharge {
            turns,
            reserve_micros: if tree.limits.budget_micros.is_some() {
                micros
            } else {
                0
            },
            ..TreeCharge::default()
        };
        match self.engine.store.charge_tree(&tree.root_id, charge).await {
            Ok(()) => Ok(charge.reserve_micros),
            Err(StoreError::TreeLimit { limit, max, used }) => {
                Err(CallError::Tree(refusal(limit, max, used, micros)))
            }
            Err(e) => Err(CallError::Tree(format!(
                "the delegation tree's limits could not be checked ({e}); nothing was sent"
            ))),
        }
    }

    /// Replace a reservation with what the call really cost.
    async fn settle(&self, reserved: i64, spent: i64) {
        let Some(tree) = &self.tree else { return };
        let charge = TreeCharge {
            release_micros: reserved,
            spend_micros: spent,
            ..TreeCharge::default()
        };
        if charge == TreeCharge::default() {
            return;
        }
        if let Err(e) = self.engine.store.charge_tree(&tree.root_id, charge).await {
            tracing::warn!(task = %self.task.id, error = %e, "cannot settle a call's cost with its tree");
        }
    }

    /// The tools this run offers `agent`'s model, if it may call any.
    pub(super) async fn toolbox(&self, agent: &Agent) -> Option<Toolbox> {
        let policy = Policy::of(agent);
        if policy.is_empty() {
            return None;
        }
        let acting = &self.engine.cfg.acting;
        let subject = self.task.subject.as_deref();
        let writer = subject.is_some_and(|s| acting.context_writers.iter().any(|w| w == s));
        let access = if writer {
            SharedAccess::ReadWrite
        } else {
            SharedAccess::ReadOnly
        };
        let kb = match self.engine.kb.view(subject, access) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(task = %self.task.id, error = %e, "the KB tools are not available");
                None
            }
        };
        let mut tools = Toolbox::new(agent, kb, self.engine.project_files(), acting.tool_timeout);
        if let Some(external) = self.engine.external.get() {
            tools.attach_servers(external.clone()).await;
        }
        Some(tools)
    }

    /// Store a turn and wait until it is durable: the loop acts on it next.
    pub(super) async fn add_turn(&self, answer: u32, event: TurnEvent) {
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            let seq = turns.last().map_or(0, |t| t.seq) + 1;
            let turn = Turn {
                task_id: self.task.id.clone(),
                seq,
                answer,
                at: now_millis(),
                event,
            };
            turns.push(turn.clone());
            turn
        };
        match self.engine.store.add_turn(&turn, self.task.epoch).await {
            Ok(()) => {}
            Err(e) if self.engine.lost_claim(&e) => {
                tracing::warn!(task = %turn.task_id, error = %e, "stopping work on a task another process took over");
                self.live.cancel.cancel();
            }
            Err(e) => {
                tracing::error!(task = %turn.task_id, seq = turn.seq, error = %e, "cannot record a turn")
            }
        }
        let _ = self.live.events.send(TaskEvent::Turn {
            turn: Box::new(turn),
        });
    }

    /// Tell subscribers what the tool loop is doing.
    pub(super) fn acting(&self, what: String) {
        let _ = self.live.events.send(TaskEvent::Acting { what });
    }

    /// Record the audit trail on the task now, so a crash cannot lose a decision.
    pub(super) async fn save_trail(&self, trail: &AuditTrail) {
        *self.trail.lock().unwrap_or_else(|p| p.into_inner()) = Some(trail.clone());
        let mut t = self.task.clone();
        t.audit = serde_json::to_value(trail).ok();
        match self.engine.store.update_task(&t, TaskState::Running).await {
            Ok(()) => {}
            Err(e) if self.engine.lost_claim(&e) => {
                tracing::warn!(task = %t.id, error = %e, "stopping work on a task another process took over");
                self.live.cancel.cancel();
            }
            Err(e) => tracing::warn!(task = %t.id, error = %e, "cannot record the audit trail yet"),
        }
    }
}

/// A provider call as a task's attempt (no verdict, revision or output yet).
pub(in crate::engine) fn attempt_of(
    log: AttemptLog,
    task_id: String,
    seq: u32,
    kind: AttemptKind,
    agent: String,
) -> Attempt {
    Attempt {
        task_id,
        seq,
        kind,
        agent,
        provider: log.provider,
        model: log.model,
        started_at: log.started_at,
        latency_ms: log.latency_ms,
        ok: log.ok,
        http_status: log.http_status,
        error: log.error,
        input_tokens: log.usage.input_tokens,
        output_tokens: log.usage.output_tokens,
        cost_usd: log.cost_usd,
        cost_source: log.cost_source,
        verdict: None,
        revision_message: None,
        output: None,
    }
}

/// An agent file's name without its folder: errors reach remote clients,
/// which must not learn where the project lives.
pub(super) fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn timeout_of(engine: &Engine, agent: &Agent) -> Duration {
    agent.timeout.unwrap_or(engine.cfg.default_timeout)
}

/// The request an agent sends for `input`.
pub(crate) fn request_for(agent: &Agent, input: &serde_json::Value) -> ChatRequest {
    ChatRequest {
        system: agent.system_prompt.clone(),
        messages: vec![Message::user(input::render_input(input))],
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        stream: true,
        tools: Vec::new(),
    }
}

pub(super) fn chain_failure(e: &crate::provider::ChainError) -> FailReason {
    match e.kind {
        ChainErrorKind::Rejected => FailReason::Rejected,
        ChainErrorKind::Timeout => FailReason::Timeout,
        ChainErrorKind::Exhausted => FailReason::ProviderError,
    }
}
