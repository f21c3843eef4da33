//! Driving one task: admission, running the agent, the outbox, the final state.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::audit::{
    AuditTrail, Report, Round, Verdict, audit_message, parse_report, repair_message,
    revision_message,
};
use super::{Engine, EngineError, Live, Permits, Start, TaskEvent, input, outbox};
use crate::agent::{Agent, ModelRef};
use crate::provider::{
    AttemptLog, ChainErrorKind, ChatRequest, Message, ProgressFn, estimate_request_tokens,
};
use crate::task::{Attempt, AttemptKind, FailReason, Task, TaskState, now_millis};

/// How a run ended, before it is persisted.
enum Outcome {
    Succeeded {
        output: String,
        model: String,
    },
    Failed {
        reason: FailReason,
        error: String,
        /// The last answer, kept (marked as not accepted) when an audit rejected it.
        output: Option<String>,
        model: Option<String>,
    },
    Cancelled,
    /// The process stopped while the task ran: stored back as `queued`.
    Requeued,
}

impl Outcome {
    fn failed(reason: FailReason, error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            reason,
            error: error.into(),
            output: None,
            model: None,
        }
    }
}

/// Counters a run accumulates from its attempts (shared with the attempt
/// writer, because a cancelled run's future is dropped mid-way).
#[derive(Default)]
pub(super) struct Tally {
    seq: AtomicU32,
    calls: AtomicU32,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    /// Cost in micro-dollars, so it can be summed atomically.
    cost_micros: AtomicU64,
}

impl Tally {
    fn starting_at(seq: u32) -> Tally {
        let t = Tally::default();
        t.seq.store(seq, Ordering::Relaxed);
        t
    }

    fn apply(&self, task: &mut Task) {
        task.attempts += self.calls.swap(0, Ordering::Relaxed);
        task.input_tokens += self.input_tokens.swap(0, Ordering::Relaxed);
        task.output_tokens += self.output_tokens.swap(0, Ordering::Relaxed);
        task.cost_usd += self.cost_micros.swap(0, Ordering::Relaxed) as f64 / 1e6;
    }
}

/// The driver of one task, from `queued` (or `running`, when `submit`
/// admitted it at once) to a terminal state.
pub(super) async fn drive(engine: Arc<Engine>, task: Task, live: Arc<Live>, start: Start) {
    // 1. Admission.
    let permits = match start.permits {
        Some(p) => Some(p),
        None => {
            let cancel = live.cancel.clone();
            let stopping = engine.stopping.clone();
            let permits = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                // The process is stopping: a queued task stays queued in the
                // store, for the next start, without a call made.
                _ = stopping.cancelled() => {
                    engine.waiting.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                p = engine.admit(&task.agent) => Some(p),
            };
            engine.waiting.fetch_sub(1, Ordering::Relaxed);
            permits
        }
    };
    // Everything after admission lives in its own allocation, made when the
    // task gets its slot: a queued task's future stays a few hundred bytes
    // instead of the size of the whole run (thousands may be queued).
    Box::pin(run_admitted(
        engine,
        task,
        live,
        permits,
        start.prior,
        start.unstored,
    ))
    .await;
}

/// The driver once a slot is held (or the wait for one was cancelled).
async fn run_admitted(
    engine: Arc<Engine>,
    mut task: Task,
    live: Arc<Live>,
    permits: Option<Permits>,
    prior: Option<Vec<Attempt>>,
    unstored: Vec<Attempt>,
) {
    let cancel = live.cancel.clone();
    let publish = |live: &Live, state: TaskState| {
        let _ = live.events.send(TaskEvent::State { state });
        live.state.send_replace(state);
    };
    let Some(_permits) = permits else {
        let prior = prior.unwrap_or_default();
        let closed = Closed {
            all: prior,
            held: unstored,
            writer: None,
        };
        finish(
            &engine,
            &live,
            task,
            TaskState::Queued,
            Outcome::Cancelled,
            closed,
        )
        .await;
        return;
    };

    // 2. queued -> running, persisted before any provider is called (a task
    // admitted by `submit` was created `running`).
    if task.state == TaskState::Queued {
        task.state = TaskState::Running;
        task.started_at = Some(now_millis());
        if let Err(e) = engine.store.update_task(&task, TaskState::Queued).await {
            // Someone else moved it (e.g. cancelled from another process).
            tracing::warn!(task = %task.id, error = %e, "task changed before it could start");
            if let Ok(Some(t)) = engine.store.get_task(&task.id).await {
                publish(&live, t.state);
            }
            return;
        }
    }
    publish(&live, TaskState::Running);
    // Dropped before the final state is published, so a waiter that sees the
    // task finished never sees it still counted as running.
    let running = engine.metrics.task_running();

    // 3. Run the agent, unless cancelled. Attempts recorded before a crash
    // stay; the audit loop resumes from them.
    let prior = match prior {
        Some(p) => p,
        None => match engine.store.attempts(&task.id).await {
            Ok(p) => p,
            Err(e) => {
                let outcome = Outcome::failed(
                    FailReason::Internal,
                    format!("cannot read earlier attempts: {e}"),
                );
                drop(running);
                finish(
                    &engine,
                    &live,
                    task,
                    TaskState::Running,
                    outcome,
                    Closed::of(Vec::new()),
                )
                .await;
                return;
            }
        },
    };
    let tally = Arc::new(Tally::starting_at(
        prior.iter().map(|a| a.seq).max().unwrap_or(0),
    ));
    let trail = Arc::new(Mutex::new(
        task.audit
            .clone()
            .and_then(|v| serde_json::from_value::<AuditTrail>(v).ok()),
    ));
    let attempts = Arc::new(Attempts::new(&engine, &live, prior.clone()));
    attempts.keep_for_finish(unstored);
    let outcome = {
        let ctx = RunCtx {
            engine: &engine,
            task: &task,
            live: &live,
            tally: tally.clone(),
            attempts: attempts.clone(),
            prior,
            trail: trail.clone(),
        };
        let requeue = engine.requeue_now.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Outcome::Cancelled,
            _ = requeue.cancelled() => Outcome::Requeued,
            o = run_agent(&ctx) => o,
        }
    };
    tally.apply(&mut task);
    if let Some(t) = trail.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        task.audit = serde_json::to_value(t).ok();
    }
    drop(running);
    let attempts = attempts.close();
    if let Outcome::Requeued = outcome {
        requeue(&engine, &live, task, attempts).await;
        return;
    }
    finish(&engine, &live, task, TaskState::Running, outcome, attempts).await;
}

/// Store a task the stopping process could not finish as `queued`, with the
/// calls made so far, so the next start resumes it (not counted as a crash:
/// `requeues` stays, and no owner holds it).
async fn requeue(engine: &Arc<Engine>, live: &Live, mut task: Task, attempts: Closed) {
    let Closed { held, writer, .. } = attempts;
    if let Some(w) = writer {
        let _ = w.await;
    }
    task.state = TaskState::Queued;
    task.started_at = None;
    task.owner = None;
    match engine
        .store
        .finish_task(&task, TaskState::Running, &held)
        .await
    {
        Ok(()) => tracing::info!(task = %task.id, "stored as queued for the next start"),
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "cannot store a task as queued; the next start recovers it")
        }
    }
    live.state.send_replace(TaskState::Queued);
}

/// Persist the final state (after writing the outbox file) and publish it.
///
/// The outbox file is written while the attempt writer (if any) stores the
/// last attempts queued to it; the final state is committed after both,
/// together with the attempts held for it, so a task is never recorded
/// finished before its attempts are.
async fn finish(
    engine: &Arc<Engine>,
    live: &Live,
    mut task: Task,
    from: TaskState,
    outcome: Outcome,
    attempts: Closed,
) {
    task.finished_at = Some(now_millis());
    match outcome {
        Outcome::Succeeded { output, model } => {
            task.state = TaskState::Succeeded;
            task.model = Some(model);
            task.output = Some(output);
        }
        Outcome::Failed {
            reason,
            error,
            output,
            model,
        } => {
            task.state = TaskState::Failed;
            task.reason = Some(reason);
            task.error = Some(error);
            if output.is_some() {
                task.output = output;
                task.model = model;
            }
        }
        Outcome::Cancelled => {
            task.state = TaskState::Cancelled;
            task.reason = Some(FailReason::Cancelled);
            task.error = Some("cancelled by the client".into());
        }
        Outcome::Requeued => {
            // `run_admitted` stores these with `requeue`; never a final state.
            task.state = TaskState::Failed;
            task.reason = Some(FailReason::Internal);
            task.error = Some("a stopped task reached the final commit".into());
        }
    }
    let Closed { all, held, writer } = attempts;
    // The outbox file has the whole answer; the task (and every tool result)
    // at most `max_answer_bytes` of it, with a note saying where the rest is.
    let full = cut_answer(&mut task, engine.cfg.max_answer_bytes);
    let outbox = async {
        if task.output.is_some() {
            return Some(outbox::write(engine, &task, full.as_deref(), &all).await);
        }
        None
    };
    let writer = async {
        if let Some(w) = writer {
            let _ = w.await;
        }
    };
    let (written, ()) = tokio::join!(outbox, writer);
    match written {
        Some(Ok(path)) => task.kb_path = Some(path),
        Some(Err(e)) => {
            tracing::warn!(task = %task.id, error = %e, "cannot write the outbox file")
        }
        None => {}
    }
    match engine.store.finish_task(&task, from, &held).await {
        Ok(()) => {
            engine.record_finished(&task);
            let _ = live.finished.set(task.clone());
        }
        Err(e) => {
            tracing::error!(task = %task.id, error = %e, "cannot persist the final state");
            // Try once more from whatever the store holds, so nothing stays running.
            engine
                .fail_orphan(&task.id, &format!("could not record the outcome: {e}"))
                .await;
        }
    }
    let _ = live.events.send(TaskEvent::State { state: task.state });
    live.state.send_replace(task.state);
    tracing::debug!(
        task = %task.id,
        agent = %task.agent,
        state = %task.state,
        attempts = task.attempts,
        cost_usd = task.cost_usd,
        "task finished"
    );
}

/// Cut `task.output` to `limit` bytes (at a character boundary) with a note
/// naming the outbox file; returns the whole answer when it was cut.
fn cut_answer(task: &mut Task, limit: usize) -> Option<String> {
    let path = outbox::path_for(task);
    let out = task.output.as_mut()?;
    if out.len() <= limit {
        return None;
    }
    let mut end = limit;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    let whole = out.clone();
    out.truncate(end);
    out.push_str(&format!(
        "\n\n[dispatch: the answer is {} bytes; this is its first {end} ([limits] max_answer_bytes). \
         The whole answer is in the knowledge base at {}: read it with kb_read, page by page with `offset`.]",
        whole.len(),
        path
    ));
    Some(whole)
}

/// An attempt on its way to the store, with an acknowledgement for the
/// callers that must not go on before it is durable.
type Record = (Attempt, Option<oneshot::Sender<()>>);

/// Where a run's attempts go. Each is kept in memory for the outbox file
/// (which then needs no read of the store) and is either queued for the
/// store at once, or held for the final commit.
pub(super) struct Attempts {
    engine: Arc<Engine>,
    live: Arc<Live>,
    /// Every attempt of the task so far, in order, earlier runs' included.
    all: Mutex<Vec<Attempt>>,
    /// Attempts left for the commit of the final state.
    held: Mutex<Vec<Attempt>>,
    /// The writer task and its queue, started by the first attempt queued:
    /// a run whose only attempt is its answer never needs one.
    writer: Mutex<Option<(mpsc::UnboundedSender<Record>, JoinHandle<()>)>>,
}

/// What [`Attempts::close`] leaves to [`finish`].
struct Closed {
    all: Vec<Attempt>,
    held: Vec<Attempt>,
    /// Still storing the attempts queued to it.
    writer: Option<JoinHandle<()>>,
}

impl Closed {
    /// Nothing in flight: `all` are the attempts already stored.
    fn of(all: Vec<Attempt>) -> Closed {
        Closed {
            all,
            held: Vec::new(),
            writer: None,
        }
    }
}

impl Attempts {
    fn new(engine: &Arc<Engine>, live: &Arc<Live>, prior: Vec<Attempt>) -> Attempts {
        Attempts {
            engine: engine.clone(),
            live: live.clone(),
            all: Mutex::new(prior),
            held: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
        }
    }

    /// Queue an attempt for the store, in order; `ack` answers once it is
    /// stored. False if the writer is gone.
    fn send(&self, attempt: Attempt, ack: Option<oneshot::Sender<()>>) -> bool {
        lock(&self.all).push(attempt.clone());
        let mut writer = lock(&self.writer);
        let (tx, _) = writer.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(write_attempts(self.engine.clone(), rx, self.live.clone()));
            (tx, task)
        });
        tx.send((attempt, ack)).is_ok()
    }

    /// Attempts already in `all` that the final commit must store.
    fn keep_for_finish(&self, attempts: Vec<Attempt>) {
        lock(&self.held).extend(attempts);
    }

    /// Keep an attempt for the commit of the final state.
    fn hold(&self, attempt: Attempt) {
        lock(&self.all).push(attempt.clone());
        let _ = self.live.events.send(TaskEvent::Attempt {
            attempt: Box::new(attempt.clone()),
        });
        lock(&self.held).push(attempt);
    }

    /// No more attempts: what there is, and the writer still storing the
    /// queued ones (it stops once its queue is drained).
    fn close(&self) -> Closed {
        let writer = lock(&self.writer).take().map(|(_, task)| task);
        Closed {
            all: std::mem::take(&mut *lock(&self.all)),
            held: std::mem::take(&mut *lock(&self.held)),
            writer,
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Persist attempts in order as they arrive, and tell subscribers.
async fn write_attempts(
    engine: Arc<Engine>,
    mut rx: mpsc::UnboundedReceiver<Record>,
    live: Arc<Live>,
) {
    while let Some((a, ack)) = rx.recv().await {
        let stored = engine.store.add_attempt(&a).await;
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
        if let Err(e) = stored {
            tracing::error!(task = %a.task_id, seq = a.seq, error = %e, "cannot record an attempt");
        }
        let _ = live.events.send(TaskEvent::Attempt {
            attempt: Box::new(a),
        });
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
}

/// A provider chain call that answered, with its attempt held back until the
/// caller has added what only it knows (the verdict).
struct Answer {
    text: String,
    model: ModelRef,
    attempt: Attempt,
}

/// One answer of the primary (or escalation) model.
#[derive(Clone)]
struct Draft {
    text: String,
    model: String,
    escalation: bool,
}

impl RunCtx<'_> {
    /// The callback that turns the provider layer's attempt logs into stored
    /// attempts. Failed calls are stored at once; the successful one is kept
    /// in `pending` for the caller to complete.
    fn recorder(
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
            let attempt = Attempt {
                task_id: task_id.clone(),
                seq,
                kind,
                agent: agent.clone(),
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
                revision_message: revision.clone(),
                output: None,
            };
            if attempt.ok {
                *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(attempt);
            } else {
                let _ = tx.send(attempt, None);
            }
        }
    }

    /// Store an answer or a verdict and wait until it is durable: the loop
    /// acts on it next, and a crash must find it (resume depends on it).
    async fn commit(&self, attempt: Attempt) {
        let (ack, done) = oneshot::channel();
        if self.attempts.send(attempt, Some(ack)) {
            let _ = done.await;
        }
    }

    /// Keep an answer for the commit of the final state: for the last
    /// answer of a run nothing acts on it but the driver. (A crash before
    /// that commit re-runs the task, as it would have before the answer
    /// came; only this call's accounting is lost with it.)
    fn record(&self, attempt: Attempt) {
        self.attempts.hold(attempt);
    }

    /// Streamed deltas become throttled `Streaming` events.
    fn progress(&self) -> ProgressFn {
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

    fn say(&self, model: &ModelRef, what: impl Into<String>) {
        let _ = self.live.events.send(TaskEvent::Calling {
            model: model.to_string(),
            what: what.into(),
        });
    }

    /// Call a model chain; the successful attempt comes back uncommitted.
    async fn call(
        &self,
        kind: AttemptKind,
        agent: &Agent,
        chain: &[ModelRef],
        req: &ChatRequest,
        revision: Option<String>,
    ) -> Result<Answer, crate::provider::ChainError> {
        let pending = Arc::new(Mutex::new(None));
        let record = self.recorder(kind, &agent.name, revision, pending.clone());
        let progress = req.stream.then(|| self.progress());
        let success = self
            .engine
            .providers
            .call_chain(
                chain,
                req,
                timeout_of(self.engine, agent),
                progress,
                &record,
            )
            .await?;
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
        })
    }

    /// Record the audit trail on the task now, so a crash cannot lose a decision.
    async fn save_trail(&self, trail: &AuditTrail) {
        *self.trail.lock().unwrap_or_else(|p| p.into_inner()) = Some(trail.clone());
        let mut t = self.task.clone();
        t.audit = serde_json::to_value(trail).ok();
        if let Err(e) = self.engine.store.update_task(&t, TaskState::Running).await {
            tracing::warn!(task = %t.id, error = %e, "cannot record the audit trail yet");
        }
    }
}

/// An agent file's name without its folder: errors reach remote clients,
/// which must not learn where the project lives.
fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn timeout_of(engine: &Engine, agent: &Agent) -> Duration {
    agent.timeout.unwrap_or(engine.cfg.default_timeout)
}

/// The request an agent sends for `input`.
pub(super) fn request_for(agent: &Agent, input: &serde_json::Value) -> ChatRequest {
    ChatRequest {
        system: agent.system_prompt.clone(),
        messages: vec![Message::user(input::render_input(input))],
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        stream: true,
    }
}

fn chain_failure(e: &crate::provider::ChainError) -> FailReason {
    match e.kind {
        ChainErrorKind::Rejected => FailReason::Rejected,
        ChainErrorKind::Timeout => FailReason::Timeout,
        ChainErrorKind::Exhausted => FailReason::ProviderError,
    }
}

/// Rebuild the loop's progress from attempts an earlier run recorded.
fn resume(prior: &[Attempt]) -> (Vec<Draft>, Vec<Round>) {
    let mut drafts = Vec::new();
    let mut rounds = Vec::new();
    for a in prior.iter().filter(|a| a.ok) {
        match a.kind {
            AttemptKind::Primary | AttemptKind::Escalation => {
                if let Some(text) = &a.output {
                    drafts.push(Draft {
                        text: text.clone(),
                        model: format!("{}/{}", a.provider, a.model),
                        escalation: a.kind == AttemptKind::Escalation,
                    });
                }
            }
            AttemptKind::Audit | AttemptKind::AuditRepair => {
                if let Some(r) = a
                    .verdict
                    .as_ref()
                    .and_then(|v| serde_json::from_value::<Round>(v.clone()).ok())
                {
                    rounds.push(r);
                }
            }
            AttemptKind::Routing => {}
        }
    }
    (drafts, rounds)
}

async fn run_agent(ctx: &RunCtx<'_>) -> Outcome {
    let agent = match ctx.engine.agent(&ctx.task.agent) {
        Ok(a) => a,
        Err(e) => return Outcome::failed(FailReason::Invalid, e.to_string()),
    };
    if agent.is_workflow() {
        return Outcome::failed(
            FailReason::Invalid,
            format!(
                "`{}` is a workflow agent (it has `dag:`); workflows are not supported by this version yet",
                agent.name
            ),
        );
    }
    if agent.models.is_empty() {
        return Outcome::failed(
            FailReason::Invalid,
            format!(
                "agent `{}` has no model dispatch can call: add `model: provider/model-id` to its agent file ({})",
                agent.name,
                file_name(&agent.source)
            ),
        );
    }
    let auditor = match &agent.mirror {
        None => None,
        Some(m) => match ctx.engine.agent(m) {
            Ok(a) if !a.models.is_empty() => Some(a),
            Ok(_) => {
                return Outcome::failed(
                    FailReason::Invalid,
                    format!(
                        "the auditor `{m}` of `{}` has no model dispatch can call",
                        agent.name
                    ),
                );
            }
            Err(_) => {
                return Outcome::failed(
                    FailReason::Invalid,
                    format!(
                        "the auditor `{m}` of `{}` is not loaded: see agent_list",
                        agent.name
                    ),
                );
            }
        },
    };

    // Whether this task is audited is decided once and recorded before any
    // call, so a resumed task keeps its decision.
    let mut trail = ctx.trail.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let (Some(auditor), None) = (&auditor, &trail) {
        let decision = ctx.engine.sampler.decide(&agent.name, agent.audit.as_ref());
        let t = AuditTrail {
            mirror: auditor.name.clone(),
            decision,
            rounds: Vec::new(),
            final_verdict: None,
        };
        ctx.save_trail(&t).await;
        trail = Some(t);
    }
    let audited = trail.as_ref().is_some_and(|t| t.decision.audited);

    let input_text = input::render_input(&ctx.task.input);
    let (mut drafts, mut rounds) = resume(&ctx.prior);
    let max_revisions = agent.max_retries;
    let max_answers = 1 + max_revisions + u32::from(agent.escalate.is_some());
    let rejected = |drafts: &[Draft], reason: FailReason, error: String| {
        let last = drafts.last();
        Outcome::Failed {
            reason,
            error,
            output: last.map(|d| d.text.clone()),
            model: last.map(|d| d.model.clone()),
        }
    };

    loop {
        // An answer waiting for judgement.
        if drafts.len() > rounds.len() {
            let Some(draft) = drafts.last().cloned() else {
                return Outcome::failed(FailReason::Internal, "audit loop lost its answer");
            };
            let (Some(auditor), true) = (&auditor, audited) else {
                return Outcome::Succeeded {
                    output: draft.text,
                    model: draft.model,
                };
            };
            let n = drafts.len() as u32;
            ctx.say(&auditor.models[0], "auditing");
            let round = match audit(
                ctx,
                &agent,
                auditor,
                &input_text,
                &draft,
                n,
                max_answers,
                &rounds,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    return rejected(
                        &drafts,
                        FailReason::AuditError,
                        format!("the auditor `{}` could not be reached: {e}", auditor.name),
                    );
                }
            };
            ctx.engine.sampler.observe(&agent.name, round.verdict);
            ctx.engine
                .metrics
                .audit_verdict(&agent.name, round.verdict.as_str());
            rounds.push(round.clone());
            if let Some(t) = trail.as_mut() {
                t.rounds = rounds.clone();
                t.final_verdict = match round.verdict {
                    Verdict::NeedsRevision => None,
                    v => Some(v),
                };
                ctx.save_trail(t).await;
            }
            match round.verdict {
                Verdict::Pass => {
                    return Outcome::Succeeded {
                        output: draft.text,
                        model: draft.model,
                    };
                }
                Verdict::Fail => {
                    return rejected(
                        &drafts,
                        FailReason::AuditFailed,
                        format!(
                            "the auditor `{}` failed the answer: {}",
                            auditor.name, round.feedback
                        ),
                    );
                }
                Verdict::Error => {
                    return rejected(&drafts, FailReason::AuditError, round.feedback.clone());
                }
                Verdict::NeedsRevision => {}
            }
        }

        // Every answer so far is judged (or there is none yet): write the next one.
        let base = request_for(&agent, &ctx.task.input);
        let (kind, chain, req, revision) = match (drafts.last(), rounds.last()) {
            (None, _) => {
                ctx.say(&agent.models[0], "answering");
                (AttemptKind::Primary, agent.models.clone(), base, None)
            }
            (Some(last), Some(round)) => {
                let revisions_done = drafts.iter().filter(|d| !d.escalation).count() as u32 - 1;
                let escalated = drafts.iter().any(|d| d.escalation);
                let (kind, chain, message) = if escalated {
                    return rejected(
                        &drafts,
                        FailReason::AuditRejected,
                        format!(
                            "the escalation model's answer was also rejected: {}",
                            round.feedback
                        ),
                    );
                } else if revisions_done < max_revisions {
                    let k = revisions_done + 1;
                    ctx.say(&agent.models[0], format!("revising {k}/{max_revisions}"));
                    (
                        AttemptKind::Primary,
                        agent.models.clone(),
                        revision_message(round, k, max_revisions),
                    )
                } else if let Some(esc) = &agent.escalate {
                    ctx.say(esc, "escalating");
                    let mut m = revision_message(round, max_revisions + 1, max_revisions + 1);
                    m.push_str("\n\n(This is the last attempt, on a stronger model.)");
                    (AttemptKind::Escalation, vec![esc.clone()], m)
                } else {
                    return rejected(
                        &drafts,
                        FailReason::AuditRejected,
                        format!(
                            "the auditor still asked for changes after {max_revisions} revision(s): {}",
                            round.feedback
                        ),
                    );
                };
                let mut req = base;
                req.messages.push(Message::assistant(last.text.clone()));
                req.messages.push(Message::user(message.clone()));
                (kind, chain, req, Some(message))
            }
            (Some(_), None) => {
                // Unreachable by the loop's invariant (answers > rounds is handled above).
                return Outcome::failed(
                    FailReason::Internal,
                    "audit loop lost track of its rounds",
                );
            }
        };
        match ctx.call(kind, &agent, &chain, &req, revision).await {
            Ok(answer) => {
                if audited {
                    // The auditor judges it next; a crash must find it.
                    ctx.commit(answer.attempt).await;
                } else {
                    ctx.record(answer.attempt);
                }
                drafts.push(Draft {
                    text: answer.text,
                    model: answer.model.to_string(),
                    escalation: kind == AttemptKind::Escalation,
                });
            }
            Err(e) if drafts.is_empty() => return Outcome::failed(chain_failure(&e), e.message),
            Err(e) => {
                return rejected(
                    &drafts,
                    chain_failure(&e),
                    format!("the revision could not be written: {}", e.message),
                );
            }
        }
    }
}

/// One audit of one answer: the call, the strict parse, one repair request,
/// and the verdict `error` if that fails too. Never a pass by default.
#[allow(clippy::too_many_arguments)]
async fn audit(
    ctx: &RunCtx<'_>,
    agent: &Agent,
    auditor: &Agent,
    input: &str,
    draft: &Draft,
    n: u32,
    max_answers: u32,
    earlier: &[Round],
) -> Result<Round, crate::provider::ChainError> {
    let message = audit_message(&agent.name, input, &draft.text, n, max_answers, earlier);
    let mut req = ChatRequest {
        system: auditor.system_prompt.clone(),
        messages: vec![Message::user(message)],
        temperature: auditor.temperature,
        max_tokens: auditor.max_tokens,
        stream: false,
    };
    let round_of = |report: Result<Report, String>| match report {
        Ok(r) => Round {
            attempt: n,
            model: draft.model.clone(),
            escalation: draft.escalation,
            verdict: r.verdict,
            feedback: r.feedback,
            issues: r.issues,
            confidence: r.confidence,
        },
        Err(e) => Round {
            attempt: n,
            model: draft.model.clone(),
            escalation: draft.escalation,
            verdict: Verdict::Error,
            feedback: format!("the auditor's answer could not be parsed twice: {e}"),
            issues: Vec::new(),
            confidence: None,
        },
    };
    let first = ctx
        .call(AttemptKind::Audit, auditor, &auditor.models, &req, None)
        .await?;
    match parse_report(&first.text) {
        Ok(report) => {
            let round = round_of(Ok(report));
            let mut a = first.attempt;
            a.verdict = serde_json::to_value(&round).ok();
            ctx.commit(a).await;
            Ok(round)
        }
        Err(error) => {
            let mut a = first.attempt;
            a.verdict = Some(serde_json::json!({"unparseable": error}));
            ctx.commit(a).await;
            ctx.say(
                &auditor.models[0],
                "asking the auditor to repair its verdict",
            );
            req.messages.push(Message::assistant(first.text));
            req.messages.push(Message::user(repair_message(&error)));
            let second = ctx
                .call(
                    AttemptKind::AuditRepair,
                    auditor,
                    &auditor.models,
                    &req,
                    None,
                )
                .await?;
            let round = round_of(parse_report(&second.text));
            let mut a = second.attempt;
            a.verdict = serde_json::to_value(&round).ok();
            ctx.commit(a).await;
            Ok(round)
        }
    }
}

/// What `--dry-run` shows.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DryRun {
    /// The agent.
    pub agent: String,
    /// Model chain, primary first.
    pub models: Vec<String>,
    /// The system prompt.
    pub system: String,
    /// The user message.
    pub user: String,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens assumed for the estimate: the `max_tokens` the request
    /// sends, or 1000 when it sends none.
    pub output_tokens: u64,
    /// The `max_tokens` the request sends (the agent's, else the provider's
    /// default); absent when it sends none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Variables that should hold keys for this run's models and do not.
    pub missing_keys: Vec<String>,
    /// Why the run would fail at once (`missing_key`), if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Estimated cost on the primary model, USD.
    pub estimated_cost_usd: f64,
    /// Whether the primary model's price is known.
    pub price_known: bool,
    /// The mirror auditor, whose calls would add to the cost.
    pub mirror: Option<String>,
}

pub(super) fn dry_run(
    engine: &Engine,
    agent: &str,
    input: &serde_json::Value,
) -> Result<DryRun, EngineError> {
    let agent = engine.agent(agent)?;
    input::validate(input)?;
    let req = request_for(&agent, input);
    let input_tokens = estimate_request_tokens(&req);
    let max_tokens = agent
        .models
        .first()
        .and_then(|m| engine.providers.max_tokens_sent(m, agent.max_tokens));
    let output_tokens = u64::from(max_tokens.unwrap_or(1000));
    let keys = engine.key_check(&agent);
    let (cost, known) = match agent.models.first() {
        Some(m) => {
            let c = engine
                .providers
                .prices()
                .estimate_cost(m, input_tokens, output_tokens);
            (c.usd, c.source != crate::task::CostSource::Unknown)
        }
        None => (0.0, false),
    };
    Ok(DryRun {
        agent: agent.name.clone(),
        models: agent.models.iter().map(ToString::to_string).collect(),
        system: req.system.clone(),
        user: req
            .messages
            .first()
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        input_tokens,
        output_tokens,
        estimated_cost_usd: cost,
        price_known: known,
        mirror: agent.mirror.clone(),
        max_tokens,
        missing_keys: keys.missing_vars(),
        blocked: keys.blocking(),
    })
}
