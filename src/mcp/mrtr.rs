//! `agent_run` for a 2026-07-28 client without the Tasks extension that
//! can elicit: a question of its tree (a tool marked `ask`) ends the call
//! with the `input_required` result (multi round-trip requests, SEP-2322);
//! the client asks its user and retries the same call with
//! `inputResponses` and the `requestState` it got, which names the work
//! already under way: the retry answers the question and waits on, it
//! never starts the work again.

use std::sync::Arc;

use rmcp::model::{CallToolRequestParams, CallToolResponse, InputRequiredResult};

use super::tasks::{self, AgentRunArgs, CallCtx, DEFAULT_WAIT_SECS, Started, TaskView, wait_of};
use super::tools::ToolError;
use super::workflows::is_run_id;
use crate::engine::Engine;

/// What `requestState` starts with (the rest is the task or run id).
const STATE_PREFIX: &str = "dispatch-work:";

/// `agent_run` as a multi round-trip request.
pub async fn agent_run(
    engine: &Arc<Engine>,
    request: &CallToolRequestParams,
    ctx: &CallCtx,
) -> Result<CallToolResponse, ToolError> {
    let args: AgentRunArgs = super::tools::parse("agent_run", request.arguments.clone())?;
    let wait = wait_of(args.wait_seconds, DEFAULT_WAIT_SECS)?;
    let id = match &request.request_state {
        Some(state) => resume(engine, state, request, ctx).await?,
        None => match tasks::start_agent_run(engine, args, ctx).await? {
            Started::Task(t, _) => t.id,
            Started::Run(r) => r.id,
        },
    };
    let reply = async {
        if is_run_id(&id) {
            let v = super::workflows::wait_and_view(engine, &id, wait, ctx).await?;
            tasks::reply_task(tasks::run_task_view(engine, v, ctx).await?)
        } else {
            let t = tasks::wait_or_cancel(engine, &id, wait, ctx).await?;
            tasks::reply_task(TaskView::of(&t, true))
        }
    };
    // A question open when the wait ends is still the client's to answer.
    let reply = tokio::select! {
        biased;
        () = asked(engine, &id) => {
            return Ok(CallToolResponse::InputRequired(InputRequiredResult::new(
                Some(super::approvals::input_requests(engine, &id)),
                Some(format!("{STATE_PREFIX}{id}")),
            )));
        }
        r = reply => r,
    };
    // The client has its answer and will not retry: whatever the work asks
    // from now on has no one to reach, and is refused rather than left to
    // wait out the approval timeout.
    engine.stop_asking(
        &id,
        "the agent_run that started this task has answered (its wait ended), so no question can reach the client's user",
    );
    Ok(super::call_result("agent_run", reply).into())
}

/// The work a retry names, after its answers are delivered.
async fn resume(
    engine: &Arc<Engine>,
    state: &str,
    request: &CallToolRequestParams,
    ctx: &CallCtx,
) -> Result<String, ToolError> {
    let bad = || {
        ToolError::Engine(
            "requestState is not one this server gave: send back exactly the requestState of the input_required result, or call again without it to start new work".into(),
        )
    };
    let id = state.strip_prefix(STATE_PREFIX).ok_or_else(bad)?;
    let subject = ctx.subject.as_deref();
    // Another subject's work is as unknown as work that never was.
    let known = if is_run_id(id) {
        engine.visible_run(id, subject).await.is_ok()
    } else {
        engine.visible_task(id, subject).await.is_ok()
    };
    if !known {
        return Err(bad());
    }
    if let Some(responses) = &request.input_responses {
        // Answers to questions that are gone (answered, timed out) are
        // ignored: the retry waits on, and shows what is open now.
        let by = subject.unwrap_or("the client's user");
        super::approvals::answer(engine, id, responses, by, "input_required")
            .map_err(|e| ToolError::Engine(e.to_string()))?;
    }
    Ok(id.to_string())
}

/// Resolves once a question of the tree rooted at `root` waits.
async fn asked(engine: &Engine, root: &str) {
    let mut opened = engine.inbox().watch();
    loop {
        if !engine.inbox().questions(root).is_empty() {
            return;
        }
        if opened.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
