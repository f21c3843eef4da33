//! Driving one task: admission, running the agent, the outbox, the final state.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::{Engine, EngineError, Live, TaskEvent, input, outbox};
use crate::agent::Agent;
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
        output: Option<String>,
    },
    Cancelled,
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

/// The driver of one task, from `queued` to a terminal state.
pub(super) async fn drive(engine: Arc<Engine>, mut task: Task, live: Arc<Live>) {
    let cancel = live.cancel.clone();
    let publish = |live: &Live, state: TaskState| {
        let _ = live.events.send(TaskEvent::State { state });
        live.state.send_replace(state);
    };

    // 1. Admission.
    let permits = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        p = engine.admit(&task.agent) => Some(p),
    };
    engine.waiting.fetch_sub(1, Ordering::Relaxed);
    let Some(_permits) = permits else {
        finish(&engine, &live, task, TaskState::Queued, Outcome::Cancelled).await;
        return;
    };

    // 2. queued -> running, persisted before any provider is called.
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
    publish(&live, TaskState::Running);

    // 3. Run the agent, unless cancelled.
    let prior = engine
        .store
        .attempts(&task.id)
        .await
        .map(|a| a.len() as u32)
        .unwrap_or(0);
    let tally = Arc::new(Tally::starting_at(prior));
    let (tx, rx) = mpsc::unbounded_channel::<Attempt>();
    let writer = tokio::spawn(write_attempts(engine.clone(), rx, live.clone()));
    let outcome = {
        let ctx = RunCtx {
            engine: &engine,
            task: &task,
            live: &live,
            tally: tally.clone(),
            attempts: tx,
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Outcome::Cancelled,
            o = run_agent(&ctx) => o,
        }
    };
    // Every attempt sender is gone now; let the writer finish so the counts
    // and the stored attempts agree before the final state is written.
    let _ = writer.await;
    tally.apply(&mut task);
    finish(&engine, &live, task, TaskState::Running, outcome).await;
}

/// Persist the final state (after writing the outbox file) and publish it.
async fn finish(
    engine: &Arc<Engine>,
    live: &Live,
    mut task: Task,
    from: TaskState,
    outcome: Outcome,
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
        } => {
            task.state = TaskState::Failed;
            task.reason = Some(reason);
            task.error = Some(error);
            if output.is_some() {
                task.output = output;
            }
        }
        Outcome::Cancelled => {
            task.state = TaskState::Cancelled;
            task.reason = Some(FailReason::Cancelled);
            task.error = Some("cancelled by the client".into());
        }
    }
    if task.output.is_some() {
        match outbox::write(engine, &task).await {
            Ok(path) => task.kb_path = Some(path),
            Err(e) => tracing::warn!(task = %task.id, error = %e, "cannot write the outbox file"),
        }
    }
    if let Err(e) = engine.store.update_task(&task, from).await {
        tracing::error!(task = %task.id, error = %e, "cannot persist the final state");
        // Try once more from whatever the store holds, so nothing stays running.
        engine
            .fail_orphan(&task.id, &format!("could not record the outcome: {e}"))
            .await;
    }
    let _ = live.events.send(TaskEvent::State { state: task.state });
    live.state.send_replace(task.state);
    tracing::info!(
        task = %task.id,
        agent = %task.agent,
        state = %task.state,
        attempts = task.attempts,
        cost_usd = task.cost_usd,
        "task finished"
    );
}

/// Persist attempts in order as they arrive, and tell subscribers.
async fn write_attempts(
    engine: Arc<Engine>,
    mut rx: mpsc::UnboundedReceiver<Attempt>,
    live: Arc<Live>,
) {
    while let Some(a) = rx.recv().await {
        if let Err(e) = engine.store.add_attempt(&a).await {
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
    pub attempts: mpsc::UnboundedSender<Attempt>,
}

impl RunCtx<'_> {
    /// The callback that turns the provider layer's attempt logs into stored attempts.
    fn recorder(
        &self,
        kind: AttemptKind,
        agent: &str,
    ) -> impl Fn(AttemptLog) + Send + Sync + 'static {
        let tally = self.tally.clone();
        let tx = self.attempts.clone();
        let task_id = self.task.id.clone();
        let agent = agent.to_string();
        move |log: AttemptLog| {
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
            let _ = tx.send(Attempt {
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
                revision_message: None,
            });
        }
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

async fn run_agent(ctx: &RunCtx<'_>) -> Outcome {
    let agent = match ctx.engine.agent(&ctx.task.agent) {
        Ok(a) => a,
        Err(e) => {
            return Outcome::Failed {
                reason: FailReason::Invalid,
                error: e.to_string(),
                output: None,
            };
        }
    };
    if agent.is_workflow() {
        return Outcome::Failed {
            reason: FailReason::Invalid,
            error: format!(
                "`{}` is a workflow agent (it has `dag:`); workflows are not supported by this version yet",
                agent.name
            ),
            output: None,
        };
    }
    if agent.models.is_empty() {
        return Outcome::Failed {
            reason: FailReason::Invalid,
            error: format!(
                "agent `{}` has no model dispatch can call: add `model: provider/model-id` to {}",
                agent.name,
                agent.source.display()
            ),
            output: None,
        };
    }
    let req = request_for(&agent, &ctx.task.input);
    let _ = ctx.live.events.send(TaskEvent::Calling {
        model: agent.models[0].to_string(),
        what: "answering".into(),
    });
    let record = ctx.recorder(AttemptKind::Primary, &agent.name);
    let result = ctx
        .engine
        .providers
        .call_chain(
            &agent.models,
            &req,
            timeout_of(ctx.engine, &agent),
            Some(ctx.progress()),
            &record,
        )
        .await;
    match result {
        Ok(success) => Outcome::Succeeded {
            output: success.response.text,
            model: success.model.to_string(),
        },
        Err(e) => Outcome::Failed {
            reason: match e.kind {
                ChainErrorKind::Rejected => FailReason::Rejected,
                ChainErrorKind::Timeout => FailReason::Timeout,
                ChainErrorKind::Exhausted => FailReason::ProviderError,
            },
            error: e.message,
            output: None,
        },
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
    /// Output tokens assumed for the estimate (`max_tokens` or 1000).
    pub output_tokens: u64,
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
    let output_tokens = u64::from(agent.max_tokens.unwrap_or(1000));
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
    })
}
