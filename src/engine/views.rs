//! How runs look to clients (MCP tools and the CLI alike): each step with its
//! task's accounting, the totals, and the final output.

use schemars::JsonSchema;
use serde::Serialize;

use super::Engine;
use crate::task::{Run, RunState, StepRecord, StepState};
use crate::workflow::WorkflowDef;

/// One step as the tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StepView {
    /// The step id.
    pub id: String,
    /// Its agent.
    pub agent: String,
    /// pending, running, succeeded, failed, skipped or cancelled.
    pub state: StepState,
    /// Its dependencies.
    pub depends_on: Vec<String>,
    /// The task that ran it (see task_status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Tasks started for it (more than 1 when the step's `retry` was used).
    pub tries: u32,
    /// Its output file in the KB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    /// Input tokens of its task.
    pub input_tokens: u64,
    /// Output tokens of its task.
    pub output_tokens: u64,
    /// Cost of its task, USD.
    pub cost_usd: f64,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run as the tools show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunView {
    /// The run id (`run-...`): pass it to workflow_status or task_cancel.
    pub run_id: String,
    /// The workflow's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// running, succeeded, failed (a failure skipped steps), partial (failures were
    /// tolerated with continue_on_error) or cancelled.
    pub state: RunState,
    /// True once the run will not change again.
    pub done: bool,
    /// What failed, for failed, partial or cancelled runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every step, in definition order.
    pub steps: Vec<StepView>,
    /// The output of the final step(s) (those nothing depends on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Input tokens over all steps.
    pub input_tokens: u64,
    /// Output tokens over all steps.
    pub output_tokens: u64,
    /// Cost over all steps, USD.
    pub cost_usd: f64,
    /// Time from start to finish (or until now), milliseconds.
    pub elapsed_ms: i64,
    /// The run's summary in the KB (with a Mermaid graph).
    pub session: String,
    /// What to do next, when not done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Build the view of a run (reads each step's task for its accounting).
pub async fn run_view(engine: &Engine, run: &Run, steps: &[StepRecord]) -> RunView {
    let def = WorkflowDef::from_json(&run.definition).ok();
    let step_def = |id: &str| {
        def.as_ref()
            .and_then(|d| d.steps.iter().find(|s| s.id == id))
    };
    let mut views = Vec::with_capacity(steps.len());
    let (mut tin, mut tout, mut cost) = (0, 0, 0.0);
    let mut outputs = Vec::new();
    let sinks: Vec<&str> = def
        .as_ref()
        .map(|d| {
            d.steps
                .iter()
                .filter(|s| !d.steps.iter().any(|o| o.depends_on.contains(&s.id)))
                .map(|s| s.id.as_str())
                .collect()
        })
        .unwrap_or_default();
    for s in steps {
        let task = match &s.task_id {
            Some(t) => engine.store().get_task(t).await.ok().flatten(),
            None => None,
        };
        let (i, o, c) = task.as_ref().map_or((0, 0, 0.0), |t| {
            (t.input_tokens, t.output_tokens, t.cost_usd)
        });
        tin += i;
        tout += o;
        cost += c;
        if sinks.contains(&s.step_id.as_str())
            && s.state == StepState::Succeeded
            && let Some(out) = task.as_ref().and_then(|t| t.output.clone())
        {
            outputs.push((s.step_id.clone(), out));
        }
        let d = step_def(&s.step_id);
        views.push(StepView {
            id: s.step_id.clone(),
            agent: d.map(|d| d.agent.clone()).unwrap_or_default(),
            state: s.state,
            depends_on: d.map(|d| d.depends_on.clone()).unwrap_or_default(),
            task_id: s.task_id.clone(),
            tries: s.tries,
            output_path: s.output_path.clone(),
            input_tokens: i,
            output_tokens: o,
            cost_usd: (c * 1e6).round() / 1e6,
            error: s.error.clone(),
        });
    }
    let output = match outputs.len() {
        0 => None,
        1 => outputs.pop().map(|(_, o)| o),
        _ => Some(
            outputs
                .iter()
                .map(|(id, o)| format!("## {id}\n\n{o}"))
                .collect::<Vec<_>>()
                .join("\n\n"),
        ),
    };
    let done = run.state.is_terminal();
    RunView {
        run_id: run.id.clone(),
        name: run.name.clone(),
        state: run.state,
        done,
        error: run.error.clone(),
        steps: views,
        output,
        input_tokens: tin,
        output_tokens: tout,
        cost_usd: (cost * 1e6).round() / 1e6,
        elapsed_ms: run.finished_at.unwrap_or_else(crate::task::now_millis) - run.created_at,
        session: format!("sessions/{}/README.md", run.id),
        hint: (!done).then(|| {
            format!(
                "still running: call workflow_status with run_id \"{}\" to follow it, or task_cancel with that id to stop it",
                run.id
            )
        }),
    }
}
