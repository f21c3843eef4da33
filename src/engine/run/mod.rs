//! Driving one task. The pieces, each with one job:
//!
//! - this module, the driver: admission, `queued -> running`, the final
//!   commit (after the outbox file), and the re-queue of a stopped task;
//! - [`attempts`]: where a run's provider calls go (kept for the outbox
//!   file, queued for the store or held for the final commit);
//! - [`ctx`]: one run's context and its provider calls (recorded, charged
//!   to the delegation tree, streamed as progress);
//! - [`answers`]: the audit loop: answer, audit, revise / escalate / reject;
//! - [`turns`]: one answer of an agent with tools: the tool loop;
//! - [`dry`]: what `--dry-run` shows.

mod answers;
mod attempts;
mod child;
mod ctx;
mod dry;
mod turns;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::audit::AuditTrail;
use super::{Engine, Live, Permits, Start, TaskEvent, outbox};
use crate::store::StoreError;
use crate::task::{Attempt, FailReason, Task, TaskState, Tree, Turn, now_millis};

pub use dry::DryRun;
pub(crate) use dry::dry_run;

use answers::run_agent;
use attempts::{Attempts, Closed, Tally};
use ctx::RunCtx;
pub(super) use ctx::attempt_of;

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
    let Some(permits) = permits else {
        let prior = prior.unwrap_or_default();
        let closed = Closed {
            all: prior,
            held: unstored,
            writer: None,
            turns: Vec::new(),
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
    if !start_running(&engine, &live, &mut task).await {
        return;
    }
    publish(&live, TaskState::Running);
    // Dropped before the final state is published, so a waiter that sees the
    // task finished never sees it still counted as running.
    let running = engine.metrics.task_running();

    // 3. Run the agent, unless cancelled. Attempts and turns recorded before
    // a crash stay; the audit and tool loops resume from them.
    let Earlier { prior, tree, turns } = match load_earlier(&engine, &task, prior).await {
        Ok(x) => x,
        Err(e) => {
            drop(running);
            let outcome = Outcome::failed(FailReason::Internal, e);
            let closed = Closed::of(Vec::new());
            finish(&engine, &live, task, TaskState::Running, outcome, closed).await;
            return;
        }
    };
    let tally = Arc::new(Tally::starting_at(
        prior.iter().map(|a| a.seq).max().unwrap_or(0),
    ));
    let trail = Arc::new(Mutex::new(
        task.audit
            .clone()
            .and_then(|v| serde_json::from_value::<AuditTrail>(v).ok()),
    ));
    let attempts = Arc::new(Attempts::new(&engine, &live, task.epoch, prior.clone()));
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
            tree,
            turns: turns.clone(),
            slots: ctx::Slots::new(permits),
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
    let mut attempts = attempts.close();
    attempts.turns = std::mem::take(&mut *turns.lock().unwrap_or_else(|p| p.into_inner()));
    if let Outcome::Requeued = outcome {
        requeue(&engine, &live, task, attempts).await;
        return;
    }
    finish(&engine, &live, task, TaskState::Running, outcome, attempts).await;
}

/// Persist `queued -> running` (unless `submit` created the task running);
/// false when the task changed meanwhile (cancelled from another process).
async fn start_running(engine: &Arc<Engine>, live: &Live, task: &mut Task) -> bool {
    if task.state != TaskState::Queued {
        return true;
    }
    task.state = TaskState::Running;
    task.started_at = Some(now_millis());
    let Err(e) = engine.store.update_task(task, TaskState::Queued).await else {
        return true;
    };
    tracing::warn!(task = %task.id, error = %e, "task changed before it could start");
    if let Ok(Some(t)) = engine.store.get_task(&task.id).await {
        let _ = live.events.send(TaskEvent::State { state: t.state });
        live.state.send_replace(t.state);
    }
    false
}

/// What a run starts from: the attempts and turns an earlier run stored
/// (none for a fresh task, whose `prior` the submit passed), and its tree.
struct Earlier {
    prior: Vec<Attempt>,
    tree: Option<Tree>,
    turns: Arc<Mutex<Vec<Turn>>>,
}

async fn load_earlier(
    engine: &Arc<Engine>,
    task: &Task,
    prior: Option<Vec<Attempt>>,
) -> Result<Earlier, String> {
    let tree = match &task.root_id {
        None => None,
        Some(root) => engine
            .store
            .get_tree(root)
            .await
            .map_err(|e| format!("cannot read the task's delegation tree: {e}"))?,
    };
    let (prior, turns) = match prior {
        Some(p) => (p, Vec::new()),
        None => {
            let p = engine
                .store
                .attempts(&task.id)
                .await
                .map_err(|e| format!("cannot read earlier attempts: {e}"))?;
            let t = engine
                .store
                .turns(&task.id)
                .await
                .map_err(|e| format!("cannot read earlier turns: {e}"))?;
            (p, t)
        }
    };
    Ok(Earlier {
        prior,
        tree,
        turns: Arc::new(Mutex::new(turns)),
    })
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
    let Closed {
        all,
        held,
        writer,
        turns,
    } = attempts;
    // The store fences the commit, but not the outbox file: a process whose
    // lease ran out while it worked asks first whether the task is still its.
    if engine.lost_meanwhile(&task).await {
        tracing::warn!(task = %task.id, "another process took this task over while this one was away; its outcome is that process's");
        return;
    }
    // The outbox file has the whole answer; the task (and every tool result)
    // at most `max_answer_bytes` of it, with a note saying where the rest is.
    let full = cut_answer(&mut task, engine.cfg.max_answer_bytes);
    let outbox = async {
        if task.output.is_some() {
            return Some(outbox::write(engine, &task, full.as_deref(), &all, &turns).await);
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
        Err(e) if engine.lost_claim(&e) => {
            // The process that holds it now finishes it; waiters here read
            // its outcome from the store.
            tracing::warn!(task = %task.id, error = %e, "another process took this task over; its outcome is that process's");
            return;
        }
        Err(StoreError::Conflict { found, .. }) if found.is_terminal() => {
            // Ended elsewhere meanwhile (cancelled through another instance).
            tracing::info!(task = %task.id, state = %found, "the task ended elsewhere while it ran here");
            let _ = live.events.send(TaskEvent::State { state: found });
            live.state.send_replace(found);
            return;
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
