//! The workflow tools: `workflow_run`, `workflow_status`, and workflows run
//! through `agent_run` (a workflow agent, or an inline `dag`).

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::ProgressNotificationParam;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::tasks::{CallCtx, DEFAULT_WAIT_SECS, MAX_WAIT_SECS};
use super::tools::{ToolError, ToolReply};
use crate::engine::{Engine, RunRequest};
pub use crate::engine::{RunView, StepView, run_view as view};
use crate::workflow::WorkflowDef;

/// Arguments of `workflow_run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunArgs {
    /// An inline workflow: `{"name": "...", "steps": [{"id", "agent", "input", "depends_on",
    /// "continue_on_error", "retry"}]}`. Step inputs may use `{{input}}`, `{{input.field}}`,
    /// `{{step.output}}` and `{{step.output.a.b}}` (when that output is JSON).
    pub workflow: Option<Value>,
    /// Or the name of a workflow agent (an agent file with `dag:`), e.g. `review-and-document`.
    pub agent: Option<String>,
    /// The run's input, available to steps as `{{input}}`.
    #[serde(default)]
    pub input: Value,
    /// Seconds to wait for the run to finish (default 45, 0 returns at once, at most 3600).
    pub wait_seconds: Option<f64>,
    /// Most USD the whole run (every step and every task they start) may spend;
    /// never above `[limits] max_tree_cost_usd`.
    pub budget_usd: Option<f64>,
    /// Deepest delegation below a step; never above `[limits] max_depth`.
    pub max_depth: Option<u32>,
}

/// Arguments of `workflow_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunIdArgs {
    /// The run id (`run-...`) returned by workflow_run.
    pub run_id: String,
}

fn engine_error(e: crate::engine::EngineError) -> ToolError {
    ToolError::Engine(e.to_string())
}

/// The definition a request names: inline, or a workflow agent's `dag`.
pub fn definition(
    engine: &Engine,
    workflow: Option<&Value>,
    agent: Option<&str>,
) -> Result<(WorkflowDef, Option<String>), ToolError> {
    match (workflow, agent) {
        (Some(w), _) => {
            let mut def = WorkflowDef::from_json(w)
                .map_err(|e| ToolError::Engine(format!("`workflow`: {e}")))?;
            if def.name.is_none() {
                def.name = agent.map(str::to_string);
            }
            Ok((def, agent.map(str::to_string)))
        }
        (None, Some(name)) => {
            let a = engine.agent(name).map_err(engine_error)?;
            let Some(dag) = &a.dag else {
                return Err(ToolError::Engine(format!(
                    "`{name}` is not a workflow agent (it has no `dag:`): run it with agent_run"
                )));
            };
            let mut def = WorkflowDef::from_json(dag).map_err(|e| {
                ToolError::Engine(format!(
                    "the `dag` of `{name}` ({}): {e}",
                    a.source
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ))
            })?;
            def.name.get_or_insert_with(|| name.to_string());
            Ok((def, Some(name.to_string())))
        }
        (None, None) => Err(ToolError::Engine(
            "give `workflow` (an inline definition) or `agent` (a workflow agent)".into(),
        )),
    }
}

/// Start a run and wait for it (with per-step progress), as `workflow_run` and
/// `agent_run` on a workflow do.
pub async fn start_and_wait(
    engine: &Arc<Engine>,
    def: WorkflowDef,
    agent: Option<String>,
    input: Value,
    wait: Option<f64>,
    limits: crate::engine::CallLimits,
    ctx: &CallCtx,
) -> Result<RunView, ToolError> {
    let wait = wait_of(wait)?;
    let run = start(engine, def, agent, input, limits, ctx).await?;
    wait_and_view(engine, &run.id, wait, ctx).await
}

fn wait_of(wait: Option<f64>) -> Result<Duration, ToolError> {
    let secs = wait.unwrap_or(DEFAULT_WAIT_SECS);
    if !secs.is_finite() || secs < 0.0 {
        return Err(ToolError::Engine(format!(
            "wait_seconds must be a number from 0 to {MAX_WAIT_SECS}"
        )));
    }
    Ok(Duration::from_secs_f64(secs.min(MAX_WAIT_SECS)))
}

/// Start a run (the first half of [`start_and_wait`], and all an MCP task does
/// at once).
pub async fn start(
    engine: &Arc<Engine>,
    def: WorkflowDef,
    agent: Option<String>,
    input: Value,
    limits: crate::engine::CallLimits,
    ctx: &CallCtx,
) -> Result<crate::task::Run, ToolError> {
    engine
        .start_run(RunRequest {
            def,
            input,
            agent,
            subject: ctx.subject.clone(),
            limits,
            approver: ctx.approver.clone(),
        })
        .await
        .map_err(engine_error)
}

/// Wait up to `wait` for a run, with per-step progress; a client that gives
/// up on the request stops the run (unless the server is stopping).
pub async fn wait_and_view(
    engine: &Arc<Engine>,
    run_id: &str,
    wait: Duration,
    ctx: &CallCtx,
) -> Result<RunView, ToolError> {
    let progress = match (
        ctx.peer.clone(),
        ctx.progress_token.clone(),
        engine.subscribe_run(run_id),
    ) {
        (Some(peer), Some(token), Some(mut rx)) => Some(tokio::spawn(async move {
            let mut n = 0.0;
            while let Ok(ev) = rx.recv().await {
                n += 1.0;
                let msg = format!("step {}: {}", ev.step, ev.state.as_str());
                if peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), n).with_message(msg),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })),
        _ => None,
    };
    let waited = tokio::select! {
        r = engine.wait_run(run_id, ctx.subject.as_deref(), wait) => Some(r),
        _ = ctx.cancelled.cancelled() => None,
    };
    if let Some(p) = progress {
        p.abort();
    }
    let run = match waited {
        Some(r) => r.map_err(engine_error)?,
        // The client gave up: stop the run, unless the server is stopping
        // (then it resumes at the next start).
        None if engine.is_stopping() => engine
            .visible_run(run_id, ctx.subject.as_deref())
            .await
            .map_err(engine_error)?,
        None => engine
            .cancel_run(run_id, ctx.subject.as_deref())
            .await
            .map_err(engine_error)?,
    };
    let (run, steps) = engine
        .run_status(&run.id, ctx.subject.as_deref())
        .await
        .map_err(engine_error)?;
    Ok(view(engine, &run, &steps).await)
}

/// `workflow_run`.
pub async fn workflow_run(
    engine: &Arc<Engine>,
    args: WorkflowRunArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let (def, agent) = definition(engine, args.workflow.as_ref(), args.agent.as_deref())?;
    let limits = super::tasks::call_limits(args.budget_usd, args.max_depth)?;
    let v = start_and_wait(
        engine,
        def,
        agent,
        args.input,
        args.wait_seconds,
        limits,
        ctx,
    )
    .await?;
    reply(&v)
}

/// `workflow_status`.
pub async fn workflow_status(
    engine: &Arc<Engine>,
    args: RunIdArgs,
    ctx: &CallCtx,
) -> Result<ToolReply, ToolError> {
    let (run, steps) = engine
        .run_status(&args.run_id, ctx.subject.as_deref())
        .await
        .map_err(|_| {
            ToolError::Engine(format!(
                "no workflow run `{}`: check the run id",
                args.run_id
            ))
        })?;
    reply(&view(engine, &run, &steps).await)
}

/// `workflow_run`'s result for a run view.
pub fn reply(v: &RunView) -> Result<ToolReply, ToolError> {
    let structured = serde_json::to_value(v).map_err(|e| ToolError::Internal(e.to_string()))?;
    Ok(ToolReply::json(structured))
}

/// True for ids of workflow runs.
pub fn is_run_id(id: &str) -> bool {
    id.starts_with("run-")
}
