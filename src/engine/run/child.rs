//! `agent_run` called by a model: a child task in the same delegation tree.
//!
//! The tree's limits are checked where the child is admitted: the agent is
//! not already on the path from the root (a cycle), the depth, the tree's
//! wall time, and one more task charged against the tree in the store's
//! statement that checks the limit. Every refusal is a result the calling
//! model reads. The child's id is stored (`ChildStarted`) before it is
//! submitted, so a parent resumed after a crash waits on that child instead
//! of creating another. While it waits, the parent gives up its concurrency
//! slots (a tree as deep as the limits would otherwise deadlock them).

use std::sync::Arc;
use std::time::Duration;

use super::super::tools::{AgentRunArgs, ToolOutput};
use super::super::{Engine, Submit};
use super::ctx::{RunCtx, refusal, tree_time_over};
use crate::store::StoreError;
use crate::task::{TaskId, TaskState, TreeCharge, TurnEvent, new_task_id};

/// Run (or re-attach to) the child for one call; its result and id.
pub(super) async fn run(
    ctx: &RunCtx<'_>,
    number: u32,
    call_id: &str,
    args: AgentRunArgs,
    known: Option<TaskId>,
) -> (ToolOutput, Option<TaskId>) {
    let id = match known {
        Some(id) => id,
        None => match admit(ctx, number, call_id, &args).await {
            Ok(id) => id,
            Err(refused) => return (refused, None),
        },
    };
    let out = attach(ctx, &id, args).await;
    (out, Some(id))
}

/// Check the tree's limits, charge one task, and store the child's id.
async fn admit(
    ctx: &RunCtx<'_>,
    number: u32,
    call_id: &str,
    args: &AgentRunArgs,
) -> Result<TaskId, ToolOutput> {
    let engine = ctx.engine;
    let Some(tree) = &ctx.tree else {
        return Err(ToolOutput::error(
            "agent_run is not available here: this task has no delegation tree",
        ));
    };
    let agent = engine
        .agent(&args.agent)
        .map_err(|e| ToolOutput::error(e.to_string()))?;
    let max_depth = tree.limits.max_depth.min(engine.cfg.max_depth);
    if ctx.task.depth + 1 > max_depth {
        return Err(ToolOutput::error(format!(
            "depth limit {max_depth} reached: answer from what you have"
        )));
    }
    let path = ancestry(engine, ctx).await;
    if path.iter().any(|a| *a == agent.name) {
        return Err(ToolOutput::error(format!(
            "agent `{}` is already on the delegation path ({} → {}): a cycle is refused; answer from what you have",
            agent.name,
            path.join(" → "),
            agent.name
        )));
    }
    if let Some(over) = tree_time_over(tree) {
        return Err(ToolOutput::error(over));
    }
    let charge = TreeCharge {
        tasks: 1,
        ..TreeCharge::default()
    };
    match engine.store.charge_tree(&tree.root_id, charge).await {
        Ok(()) => {}
        Err(StoreError::TreeLimit { limit, max, used }) => {
            return Err(ToolOutput::error(refusal(limit, max, used, 0)));
        }
        Err(e) => {
            return Err(ToolOutput::error(format!(
                "the child task could not be admitted: {e}"
            )));
        }
    }
    let id = new_task_id();
    ctx.add_turn(
        number,
        TurnEvent::ChildStarted {
            call_id: call_id.to_string(),
            child_task_id: id.clone(),
            agent: agent.name.clone(),
        },
    )
    .await;
    Ok(id)
}

/// The agents from the root down to this task.
async fn ancestry(engine: &Arc<Engine>, ctx: &RunCtx<'_>) -> Vec<String> {
    let mut path = vec![ctx.task.agent.clone()];
    let mut parent = ctx.task.parent_id.clone();
    // Bounded by the depth limit; a missing parent ends the walk.
    while let Some(p) = parent.take() {
        if path.len() > 64 {
            break;
        }
        if let Ok(Some(t)) = engine.store.get_task(&p).await {
            path.push(t.agent.clone());
            parent = t.parent_id;
        }
    }
    path.reverse();
    path
}

/// Submit the child unless a resumed parent finds it stored, then wait for
/// it with the parent's slots given up.
async fn attach(ctx: &RunCtx<'_>, id: &TaskId, args: AgentRunArgs) -> ToolOutput {
    let engine = ctx.engine;
    let subject = ctx.task.subject.clone();
    let stored = matches!(engine.store.get_task(id).await, Ok(Some(_)));
    if !stored {
        let submit = Submit {
            agent: args.agent.clone(),
            input: args.input,
            parent_id: Some(ctx.task.id.clone()),
            subject: subject.clone(),
            id: Some(id.clone()),
            ..Submit::default()
        };
        if let Err(e) = engine.submit(submit).await {
            return ToolOutput::error(format!(
                "the child task could not be started: {e}; answer from what you have"
            ));
        }
    }
    ctx.acting(format!("waiting on child {} ({id})", args.agent));
    let guard = CancelChild {
        engine: engine.clone(),
        id: id.clone(),
        subject: subject.clone(),
        armed: true,
    };
    ctx.slots.release();
    let waited = engine
        .wait(id, subject.as_deref(), Duration::from_secs(365 * 86_400))
        .await;
    ctx.slots.regain(engine, &ctx.task.agent).await;
    let mut guard = guard;
    guard.armed = false;
    match waited {
        Ok(t) => match t.state {
            TaskState::Succeeded => ToolOutput::ok(t.output.unwrap_or_default()),
            TaskState::Cancelled => {
                ToolOutput::error(format!("the child task {id} ({}) was cancelled", t.agent))
            }
            TaskState::Failed => {
                let reason = t.reason.map(|r| r.as_str()).unwrap_or("failed");
                let mut msg = format!(
                    "the child task {id} ({}) failed ({reason}): {}",
                    t.agent,
                    t.error.unwrap_or_default()
                );
                if let Some(out) = t.output {
                    msg.push_str("\nIts last answer (not accepted):\n");
                    msg.push_str(&out);
                }
                ToolOutput::error(msg)
            }
            other => ToolOutput::error(format!(
                "the child task {id} is still {other}; answer from what you have"
            )),
        },
        Err(e) => ToolOutput::error(format!("the child task {id} could not be followed: {e}")),
    }
}

/// Cancels the child when the parent stops waiting because it was cancelled
/// itself (not when the process is stopping: then the child is re-queued
/// with its parent, for the next start).
struct CancelChild {
    engine: Arc<Engine>,
    id: TaskId,
    subject: Option<String>,
    armed: bool,
}

impl Drop for CancelChild {
    fn drop(&mut self) {
        if !self.armed || self.engine.is_stopping() {
            return;
        }
        let (engine, id, subject) = (self.engine.clone(), self.id.clone(), self.subject.clone());
        tokio::spawn(async move {
            let _ = engine.cancel(&id, subject.as_deref()).await;
        });
    }
}
