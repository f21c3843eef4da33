//! What the columns hold, going in: shared by every backend, so that each
//! stores exactly the same values (`read` is the way back out).
//!
//! A crate value becomes the values of its columns ([`TaskRow`] and the
//! like), checked before any database sees them: a counter past 2^63-1 or a
//! cost that is not a number is [`StoreError::Invalid`], and nothing is
//! written. The column lists, the same on every backend, are here too
//! ([`task_columns`] and the like).

use std::fmt::{self, Display};

use super::StoreError;
use crate::task::{Attempt, ClientTask, Run, StepRecord, Task, TaskId, Tree, Turn};

/// Every column of `tasks` (`read::task_from_row` reads them by name).
macro_rules! task_columns {
    () => {
        "id, agent, state, input, parent_id, depth, subject, created_at, started_at, \
         finished_at, model, attempts, input_tokens, output_tokens, cost_usd, output, reason, \
         error, kb_path, routing, requeues, owner, audit, root_id, epoch"
    };
}
pub(super) use task_columns;

/// Every column of `attempts` (`read::attempt_from_row` reads them by name).
macro_rules! attempt_columns {
    () => {
        "task_id, seq, kind, agent, provider, model, started_at, latency_ms, ok, http_status, \
         error, input_tokens, output_tokens, cost_usd, cost_source, verdict, revision_message, \
         output"
    };
}
pub(super) use attempt_columns;

/// Every column of `runs` (`read::run_from_row` reads them by name).
macro_rules! run_columns {
    () => {
        "id, name, agent, state, input, definition, subject, owner, created_at, finished_at, error"
    };
}
pub(super) use run_columns;

/// Every column of `run_steps` (`read::step_from_row` reads them by name).
macro_rules! step_columns {
    () => {
        "run_id, step_id, idx, state, task_id, tries, started_at, finished_at, error, output_path"
    };
}
pub(super) use step_columns;

/// The columns of `turns` that `read::turn_from_row` reads.
macro_rules! turn_columns {
    () => {
        "task_id, seq, answer, at, data"
    };
}
pub(super) use turn_columns;

/// Every column of `trees` (`read::tree_from_row` reads them by name).
macro_rules! tree_columns {
    () => {
        "root_id, tasks, turns, spent_micros, reserved_micros, max_depth, max_tasks, max_turns, \
         max_secs, budget_micros, created_at"
    };
}
pub(super) use tree_columns;

/// Every column of `mcp_tasks` (`read::client_task_from_row` reads them by name).
macro_rules! client_task_columns {
    () => {
        "id, tool, subject, created_at, ttl_ms, poll_ms"
    };
}
pub(super) use client_task_columns;

/// A task as the columns of `tasks` hold it.
pub(super) struct TaskRow {
    pub(super) id: TaskId,
    pub(super) agent: String,
    pub(super) state: &'static str,
    pub(super) input: String,
    pub(super) parent_id: Option<String>,
    pub(super) depth: i64,
    pub(super) subject: Option<String>,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
    pub(super) model: Option<String>,
    pub(super) attempts: i64,
    pub(super) input_tokens: i64,
    pub(super) output_tokens: i64,
    pub(super) cost_usd: f64,
    pub(super) output: Option<String>,
    pub(super) reason: Option<&'static str>,
    pub(super) error: Option<String>,
    pub(super) kb_path: Option<String>,
    pub(super) routing: Option<String>,
    pub(super) requeues: i64,
    pub(super) owner: Option<String>,
    pub(super) audit: Option<String>,
    pub(super) root_id: Option<String>,
    pub(super) epoch: i64,
}

impl TaskRow {
    pub(super) fn new(t: &Task) -> Result<TaskRow, StoreError> {
        let what = Describe(|f| write!(f, "task {}", t.id));
        Ok(TaskRow {
            id: t.id.clone(),
            agent: t.agent.clone(),
            state: t.state.as_str(),
            input: to_json(&t.input, "input", &what)?,
            parent_id: t.parent_id.clone(),
            depth: i64::from(t.depth),
            subject: t.subject.clone(),
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            model: t.model.clone(),
            attempts: i64::from(t.attempts),
            input_tokens: counter(t.input_tokens, "input_tokens", &what)?,
            output_tokens: counter(t.output_tokens, "output_tokens", &what)?,
            cost_usd: cost(t.cost_usd, &what)?,
            output: t.output.clone(),
            reason: t.reason.map(|r| r.as_str()),
            error: t.error.clone(),
            kb_path: t.kb_path.clone(),
            routing: t
                .routing
                .as_ref()
                .map(|r| to_json(r, "routing", &what))
                .transpose()?,
            requeues: i64::from(t.requeues),
            owner: t.owner.clone(),
            audit: t
                .audit
                .as_ref()
                .map(|a| to_json(a, "audit", &what))
                .transpose()?,
            root_id: t.root_id.clone(),
            epoch: counter(t.epoch, "epoch", &what)?,
        })
    }
}

/// An attempt as the columns of `attempts` hold it.
pub(super) struct AttemptRow {
    pub(super) task_id: TaskId,
    pub(super) seq: i64,
    pub(super) kind: &'static str,
    pub(super) agent: String,
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) started_at: i64,
    pub(super) latency_ms: i64,
    pub(super) ok: bool,
    pub(super) http_status: Option<i64>,
    pub(super) error: Option<String>,
    pub(super) input_tokens: i64,
    pub(super) output_tokens: i64,
    pub(super) cost_usd: f64,
    pub(super) cost_source: &'static str,
    pub(super) verdict: Option<String>,
    pub(super) revision_message: Option<String>,
    pub(super) output: Option<String>,
}

impl AttemptRow {
    pub(super) fn new(a: &Attempt) -> Result<AttemptRow, StoreError> {
        let what = Describe(|f| write!(f, "attempt {} of task {}", a.seq, a.task_id));
        Ok(AttemptRow {
            task_id: a.task_id.clone(),
            seq: i64::from(a.seq),
            kind: a.kind.as_str(),
            agent: a.agent.clone(),
            provider: a.provider.clone(),
            model: a.model.clone(),
            started_at: a.started_at,
            latency_ms: counter(a.latency_ms, "latency_ms", &what)?,
            ok: a.ok,
            http_status: a.http_status.map(i64::from),
            error: a.error.clone(),
            input_tokens: counter(a.input_tokens, "input_tokens", &what)?,
            output_tokens: counter(a.output_tokens, "output_tokens", &what)?,
            cost_usd: cost(a.cost_usd, &what)?,
            cost_source: a.cost_source.as_str(),
            verdict: a
                .verdict
                .as_ref()
                .map(|v| to_json(v, "verdict", &what))
                .transpose()?,
            revision_message: a.revision_message.clone(),
            output: a.output.clone(),
        })
    }
}

/// A run as the columns of `runs` hold it.
pub(super) struct RunRow {
    pub(super) id: String,
    pub(super) name: Option<String>,
    pub(super) agent: Option<String>,
    pub(super) state: &'static str,
    pub(super) input: String,
    pub(super) definition: String,
    pub(super) subject: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) created_at: i64,
    pub(super) finished_at: Option<i64>,
    pub(super) error: Option<String>,
}

impl RunRow {
    pub(super) fn new(r: &Run) -> Result<RunRow, StoreError> {
        let what = Describe(|f| write!(f, "run {}", r.id));
        Ok(RunRow {
            id: r.id.clone(),
            name: r.name.clone(),
            agent: r.agent.clone(),
            state: r.state.as_str(),
            input: to_json(&r.input, "input", &what)?,
            definition: to_json(&r.definition, "definition", &what)?,
            subject: r.subject.clone(),
            owner: r.owner.clone(),
            created_at: r.created_at,
            finished_at: r.finished_at,
            error: r.error.clone(),
        })
    }
}

/// A step as the columns of `run_steps` hold it.
pub(super) struct StepRow {
    pub(super) run_id: String,
    pub(super) step_id: String,
    pub(super) idx: i64,
    pub(super) state: &'static str,
    pub(super) task_id: Option<String>,
    pub(super) tries: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
    pub(super) error: Option<String>,
    pub(super) output_path: Option<String>,
}

impl StepRow {
    pub(super) fn new(s: &StepRecord) -> StepRow {
        StepRow {
            run_id: s.run_id.clone(),
            step_id: s.step_id.clone(),
            idx: i64::from(s.idx),
            state: s.state.as_str(),
            task_id: s.task_id.clone(),
            tries: i64::from(s.tries),
            started_at: s.started_at,
            finished_at: s.finished_at,
            error: s.error.clone(),
            output_path: s.output_path.clone(),
        }
    }
}

/// A turn as the columns of `turns` hold it.
pub(super) struct TurnRow {
    pub(super) task_id: String,
    pub(super) seq: i64,
    pub(super) answer: i64,
    pub(super) kind: &'static str,
    pub(super) at: i64,
    pub(super) data: String,
}

impl TurnRow {
    pub(super) fn new(t: &Turn) -> Result<TurnRow, StoreError> {
        let data = serde_json::to_string(&t.event).map_err(|e| StoreError::Invalid {
            what: format!("turn {} of task {}: {e}", t.seq, t.task_id),
        })?;
        Ok(TurnRow {
            task_id: t.task_id.clone(),
            seq: i64::from(t.seq),
            answer: i64::from(t.answer),
            kind: t.event.kind(),
            at: t.at,
            data,
        })
    }
}

/// A tree as the columns of `trees` hold it.
pub(super) struct TreeRow {
    pub(super) root_id: String,
    pub(super) tasks: i64,
    pub(super) turns: i64,
    pub(super) spent_micros: i64,
    pub(super) reserved_micros: i64,
    pub(super) max_depth: i64,
    pub(super) max_tasks: i64,
    pub(super) max_turns: i64,
    pub(super) max_secs: Option<i64>,
    pub(super) budget_micros: Option<i64>,
    pub(super) created_at: i64,
}

impl TreeRow {
    pub(super) fn new(t: &Tree) -> TreeRow {
        TreeRow {
            root_id: t.root_id.clone(),
            tasks: i64::from(t.tasks),
            turns: i64::from(t.turns),
            spent_micros: t.spent_micros,
            reserved_micros: t.reserved_micros,
            max_depth: i64::from(t.limits.max_depth),
            max_tasks: i64::from(t.limits.max_tasks),
            max_turns: i64::from(t.limits.max_turns),
            // A time limit past 2^63 s is no limit either way.
            max_secs: t
                .limits
                .max_secs
                .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            budget_micros: t.limits.budget_micros,
            created_at: t.created_at,
        }
    }
}

/// A client task as the columns of `mcp_tasks` hold it.
pub(super) struct ClientTaskRow {
    pub(super) id: String,
    pub(super) tool: String,
    pub(super) subject: Option<String>,
    pub(super) created_at: i64,
    pub(super) ttl_ms: Option<i64>,
    pub(super) poll_ms: i64,
}

impl ClientTaskRow {
    pub(super) fn new(t: &ClientTask) -> ClientTaskRow {
        ClientTaskRow {
            id: t.id.clone(),
            tool: t.tool.clone(),
            subject: t.subject.clone(),
            created_at: t.created_at,
            // Durations past 2^63 ms are "for ever" either way.
            ttl_ms: t.ttl_ms.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            poll_ms: i64::try_from(t.poll_ms).unwrap_or(i64::MAX),
        }
    }
}

/// Formats lazily: messages are built only when something is refused.
struct Describe<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> Display for Describe<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

fn to_json(v: &serde_json::Value, col: &str, what: &dyn Display) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid {
        what: format!("{what}: {col}: {e}"),
    })
}

/// A u64 counter as the signed 64-bit integer SQL stores.
fn counter(v: u64, col: &str, what: &dyn Display) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        what: format!("{what}: {col} = {v} is past the database's limit of 2^63-1"),
    })
}

/// A cost, which must be a number: SQLite would store NaN as NULL.
fn cost(v: f64, what: &dyn Display) -> Result<f64, StoreError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(StoreError::Invalid {
            what: format!("{what}: cost_usd = {v} is not a finite number"),
        })
    }
}
