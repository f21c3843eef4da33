//! What the columns hold, coming out: rows read back into crate values, the
//! same way on every backend (`rows` is the way in).
//!
//! A row read by column name ([`Columns`]) becomes the crate value again;
//! anything a column cannot mean (an unknown state, bad JSON, a negative
//! counter) is [`StoreError::Corrupt`], never a panic. What a write that
//! changed nothing found is explained here too ([`why_unchanged`],
//! [`TreeUse`]), and the listing queries, the same SQL on every backend but
//! for their placeholders, are built here ([`select_tasks`]).

use std::fmt::Display;
use std::str::FromStr;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use super::rows::{client_task_columns, task_columns};
use super::{Lease, StoreError, TaskFilter, TreeLimitKind, UsageRow, cursor};
use crate::task::{
    Attempt, ClientTask, Millis, Run, StepRecord, Task, TaskState, Tree, TreeCharge, TreeLimits,
    Turn,
};

/// A row read by column name, whatever the backend: the four kinds of
/// value the schema stores. `Ok(None)` is SQL NULL; `Err` says why the
/// column cannot be read as that kind.
pub(super) trait Columns {
    /// A TEXT column.
    fn text(&self, col: &str) -> Result<Option<String>, String>;
    /// An integer column (SQLite INTEGER, PostgreSQL BIGINT).
    fn int(&self, col: &str) -> Result<Option<i64>, String>;
    /// A floating-point column (SQLite REAL, PostgreSQL DOUBLE PRECISION).
    fn real(&self, col: &str) -> Result<Option<f64>, String>;
    /// A flag (SQLite: INTEGER 0 or 1, PostgreSQL: BOOLEAN).
    fn flag(&self, col: &str) -> Result<Option<bool>, String>;
}

/// One column of a sqlx row, decoded as `T`.
fn decode<'r, R, T>(row: &'r R, col: &str) -> Result<T, String>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get::<T, _>(col).map_err(|e| e.to_string())
}

impl Columns for SqliteRow {
    fn text(&self, col: &str) -> Result<Option<String>, String> {
        decode(self, col)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, String> {
        decode(self, col)
    }
    fn real(&self, col: &str) -> Result<Option<f64>, String> {
        decode(self, col)
    }
    fn flag(&self, col: &str) -> Result<Option<bool>, String> {
        match decode::<_, Option<i64>>(self, col)? {
            None => Ok(None),
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            Some(other) => Err(format!("{other} is not 0 or 1")),
        }
    }
}

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<Option<String>, String> {
        decode(self, col)
    }
    fn int(&self, col: &str) -> Result<Option<i64>, String> {
        decode(self, col)
    }
    fn real(&self, col: &str) -> Result<Option<f64>, String> {
        decode(self, col)
    }
    fn flag(&self, col: &str) -> Result<Option<bool>, String> {
        decode(self, col)
    }
}

/// A row being read, and what it is, for the messages about what is wrong
/// with it (built only then).
struct Fields<'a> {
    row: &'a dyn Columns,
    what: &'a dyn Fn() -> String,
}

impl Fields<'_> {
    fn corrupt(&self, col: &str, why: impl Display) -> StoreError {
        corrupt(format!("{}, column {col}: {why}", (self.what)()))
    }

    fn required<T>(&self, col: &str, v: Result<Option<T>, String>) -> Result<T, StoreError> {
        v.map_err(|e| self.corrupt(col, e))?
            .ok_or_else(|| self.corrupt(col, "is NULL"))
    }

    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.required(col, self.row.text(col))
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.row.text(col).map_err(|e| self.corrupt(col, e))
    }

    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.required(col, self.row.int(col))
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.row.int(col).map_err(|e| self.corrupt(col, e))
    }

    fn real(&self, col: &str) -> Result<f64, StoreError> {
        self.required(col, self.row.real(col))
    }

    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        self.required(col, self.row.flag(col))
    }

    /// An integer column stored from an unsigned Rust field.
    fn unsigned<T: TryFrom<i64>>(&self, col: &str) -> Result<T, StoreError> {
        let v = self.int(col)?;
        T::try_from(v).map_err(|_| self.corrupt(col, format_args!("{v} is out of range")))
    }

    fn opt_unsigned<T: TryFrom<i64>>(&self, col: &str) -> Result<Option<T>, StoreError> {
        self.opt_int(col)?
            .map(|v| {
                T::try_from(v).map_err(|_| self.corrupt(col, format_args!("{v} is out of range")))
            })
            .transpose()
    }

    fn json_of(&self, col: &str, s: &str) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(s).map_err(|e| self.corrupt(col, format_args!("invalid JSON: {e}")))
    }

    fn json(&self, col: &str) -> Result<serde_json::Value, StoreError> {
        self.json_of(col, &self.text(col)?)
    }

    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.opt_text(col)?
            .map(|s| self.json_of(col, &s))
            .transpose()
    }

    /// A stored enum name.
    fn parse<T: FromStr>(&self, col: &str) -> Result<T, StoreError>
    where
        T::Err: Display,
    {
        self.text(col)?.parse().map_err(|e| self.corrupt(col, e))
    }

    fn opt_parse<T: FromStr>(&self, col: &str) -> Result<Option<T>, StoreError>
    where
        T::Err: Display,
    {
        self.opt_text(col)?
            .map(|s| s.parse().map_err(|e| self.corrupt(col, e)))
            .transpose()
    }
}

pub(super) fn corrupt(what: String) -> StoreError {
    tracing::error!("corrupt row: {what}");
    StoreError::Corrupt { what }
}

/// Parses a stored enum name.
pub(super) fn parse_column<T: FromStr>(s: &str, what: impl Fn() -> String) -> Result<T, StoreError>
where
    T::Err: Display,
{
    s.parse::<T>()
        .map_err(|e| corrupt(format!("{}: {e}", what())))
}

/// Reads a row's key first, to name the row in what is said about the rest.
fn key(row: &dyn Columns, col: &str, kind: &str) -> Result<String, StoreError> {
    let what = || kind.to_string();
    Fields { row, what: &what }.text(col)
}

pub(super) fn task_from_row(row: &dyn Columns) -> Result<Task, StoreError> {
    let id = key(row, "id", "task")?;
    let what = || format!("task {id}");
    let f = Fields { row, what: &what };
    Ok(Task {
        agent: f.text("agent")?,
        state: f.parse("state")?,
        input: f.json("input")?,
        parent_id: f.opt_text("parent_id")?,
        root_id: f.opt_text("root_id")?,
        depth: f.unsigned("depth")?,
        subject: f.opt_text("subject")?,
        created_at: f.int("created_at")?,
        started_at: f.opt_int("started_at")?,
        finished_at: f.opt_int("finished_at")?,
        model: f.opt_text("model")?,
        attempts: f.unsigned("attempts")?,
        input_tokens: f.unsigned("input_tokens")?,
        output_tokens: f.unsigned("output_tokens")?,
        cost_usd: f.real("cost_usd")?,
        output: f.opt_text("output")?,
        reason: f.opt_parse("reason")?,
        error: f.opt_text("error")?,
        kb_path: f.opt_text("kb_path")?,
        routing: f.opt_json("routing")?,
        requeues: f.unsigned("requeues")?,
        owner: f.opt_text("owner")?,
        audit: f.opt_json("audit")?,
        epoch: f.unsigned("epoch")?,
        id,
    })
}

pub(super) fn lease_from_row(row: &dyn Columns) -> Result<Lease, StoreError> {
    let holder = key(row, "holder", "lease")?;
    let what = || format!("lease of {holder}");
    let f = Fields { row, what: &what };
    Ok(Lease {
        started_at: f.int("started_at")?,
        lease_until: f.int("lease_until")?,
        live: f.flag("live")?,
        holder,
    })
}

pub(super) fn attempt_from_row(row: &dyn Columns) -> Result<Attempt, StoreError> {
    let task_id = key(row, "task_id", "attempt")?;
    let seq_what = || format!("attempt of task {task_id}");
    let seq = Fields {
        row,
        what: &seq_what,
    }
    .int("seq")?;
    let what = || format!("attempt {seq} of task {task_id}");
    let f = Fields { row, what: &what };
    Ok(Attempt {
        seq: f.unsigned("seq")?,
        kind: f.parse("kind")?,
        agent: f.text("agent")?,
        provider: f.text("provider")?,
        model: f.text("model")?,
        started_at: f.int("started_at")?,
        latency_ms: f.unsigned("latency_ms")?,
        ok: f.flag("ok")?,
        http_status: f.opt_unsigned("http_status")?,
        error: f.opt_text("error")?,
        input_tokens: f.unsigned("input_tokens")?,
        output_tokens: f.unsigned("output_tokens")?,
        cost_usd: f.real("cost_usd")?,
        cost_source: f.parse("cost_source")?,
        verdict: f.opt_json("verdict")?,
        revision_message: f.opt_text("revision_message")?,
        output: f.opt_text("output")?,
        task_id,
    })
}

pub(super) fn run_from_row(row: &dyn Columns) -> Result<Run, StoreError> {
    let id = key(row, "id", "run")?;
    let what = || format!("run {id}");
    let f = Fields { row, what: &what };
    Ok(Run {
        name: f.opt_text("name")?,
        agent: f.opt_text("agent")?,
        state: f.parse("state")?,
        input: f.json("input")?,
        definition: f.json("definition")?,
        subject: f.opt_text("subject")?,
        owner: f.opt_text("owner")?,
        created_at: f.int("created_at")?,
        finished_at: f.opt_int("finished_at")?,
        error: f.opt_text("error")?,
        id,
    })
}

pub(super) fn step_from_row(row: &dyn Columns) -> Result<StepRecord, StoreError> {
    let run_id = key(row, "run_id", "run step")?;
    let step_id = key(row, "step_id", &format!("a step of run {run_id}"))?;
    let what = || format!("step {step_id} of run {run_id}");
    let f = Fields { row, what: &what };
    Ok(StepRecord {
        idx: f.unsigned("idx")?,
        state: f.parse("state")?,
        task_id: f.opt_text("task_id")?,
        tries: f.unsigned("tries")?,
        started_at: f.opt_int("started_at")?,
        finished_at: f.opt_int("finished_at")?,
        error: f.opt_text("error")?,
        output_path: f.opt_text("output_path")?,
        run_id,
        step_id,
    })
}

pub(super) fn turn_from_row(row: &dyn Columns) -> Result<Turn, StoreError> {
    let task_id = key(row, "task_id", "turn")?;
    let seq_what = || format!("turn of task {task_id}");
    let seq = Fields {
        row,
        what: &seq_what,
    }
    .int("seq")?;
    let what = || format!("turn {seq} of task {task_id}");
    let f = Fields { row, what: &what };
    let data = f.text("data")?;
    let event = serde_json::from_str(&data).map_err(|e| f.corrupt("data", e))?;
    Ok(Turn {
        seq: f.unsigned("seq")?,
        answer: f.unsigned("answer")?,
        at: f.int("at")?,
        event,
        task_id,
    })
}

pub(super) fn tree_from_row(row: &dyn Columns) -> Result<Tree, StoreError> {
    let root_id = key(row, "root_id", "tree")?;
    let what = || format!("tree of task {root_id}");
    let f = Fields { row, what: &what };
    Ok(Tree {
        tasks: f.unsigned("tasks")?,
        turns: f.unsigned("turns")?,
        spent_micros: f.int("spent_micros")?,
        reserved_micros: f.int("reserved_micros")?,
        limits: TreeLimits {
            max_depth: f.unsigned("max_depth")?,
            max_tasks: f.unsigned("max_tasks")?,
            max_turns: f.unsigned("max_turns")?,
            max_secs: f.opt_int("max_secs")?.map(|s| s.max(0) as u64),
            budget_micros: f.opt_int("budget_micros")?,
        },
        created_at: f.int("created_at")?,
        root_id,
    })
}

pub(super) fn client_task_from_row(row: &dyn Columns) -> Result<ClientTask, StoreError> {
    let id = key(row, "id", "MCP task")?;
    let what = || format!("MCP task {id}");
    let f = Fields { row, what: &what };
    Ok(ClientTask {
        tool: f.text("tool")?,
        subject: f.opt_text("subject")?,
        created_at: f.int("created_at")?,
        ttl_ms: f.opt_int("ttl_ms")?.map(|v| u64::try_from(v).unwrap_or(0)),
        poll_ms: u64::try_from(f.int("poll_ms")?).unwrap_or(0),
        id,
    })
}

/// A row of the usage query, whose sums are named as [`UsageRow`]'s fields.
pub(super) fn usage_from_row(row: &dyn Columns) -> Result<UsageRow, StoreError> {
    let what = || "usage row".to_string();
    let f = Fields { row, what: &what };
    Ok(UsageRow {
        task_agent: f.text("task_agent")?,
        agent: f.text("agent")?,
        kind: f.parse("kind")?,
        provider: f.text("provider")?,
        model: f.text("model")?,
        calls: f.unsigned("calls")?,
        failed_calls: f.unsigned("failed_calls")?,
        input_tokens: f.unsigned("input_tokens")?,
        output_tokens: f.unsigned("output_tokens")?,
        cost_usd: f.real("cost_usd")?,
    })
}

/// Every state of [`TaskState::ALL`] with its count, from `(state, count)`
/// rows that name only the states some task is in.
pub(super) fn counts_by_state(
    rows: Vec<(String, i64)>,
) -> Result<Vec<(TaskState, u64)>, StoreError> {
    let mut counts: Vec<(TaskState, u64)> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in rows {
        let state: TaskState = parse_column(&state, || "tasks, column state".to_string())?;
        let n = u64::try_from(n).unwrap_or(0);
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = n;
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------
// Why a write changed nothing.

/// What a compare-and-set update of a task required beyond its id and epoch.
#[derive(Debug, Clone, Copy)]
pub(super) enum Cas {
    /// A write-back by the task's holder ([`super::Store::update_task`]): a
    /// moved epoch means another instance took the task over.
    State,
    /// A claim ([`super::Store::claim_task`]): a moved epoch means another
    /// instance claimed it first.
    Claim,
}

/// What an update that matched no row found stored: state, owner, epoch.
pub(super) type Found = (String, Option<String>, i64);

/// Why an update of task `id` expecting `expected` under claim `epoch`
/// matched no row, from what is stored now (`None`: there is no such task).
pub(super) fn why_unchanged(
    id: &str,
    found: Option<Found>,
    expected: TaskState,
    epoch: i64,
    cas: Cas,
) -> StoreError {
    let Some((state, stored_owner, stored_epoch)) = found else {
        return StoreError::NotFound { id: id.to_string() };
    };
    let found = match parse_column(&state, || format!("task {id}, column state")) {
        Ok(found) => found,
        Err(corrupt) => return corrupt,
    };
    let owner = stored_owner.unwrap_or_default();
    if stored_epoch != epoch {
        let epoch = u64::try_from(stored_epoch).unwrap_or(0);
        return match cas {
            Cas::Claim => StoreError::Claimed {
                id: id.to_string(),
                owner,
            },
            Cas::State => StoreError::Fenced {
                id: id.to_string(),
                owner,
                epoch,
            },
        };
    }
    // The state moved on, or (same state and epoch, yet no match) a
    // concurrent change came and went: either way the writer lost.
    StoreError::Conflict {
        id: id.to_string(),
        expected,
        found,
    }
}

/// Why a fenced insert for task `id` stored nothing, from what is stored
/// now: there is no such task, or it is held under another epoch.
pub(super) fn not_held(id: &str, found: Option<Found>) -> StoreError {
    match found {
        None => StoreError::NotFound { id: id.to_string() },
        Some((_, owner, epoch)) => StoreError::Fenced {
            id: id.to_string(),
            owner: owner.unwrap_or_default(),
            epoch: u64::try_from(epoch).unwrap_or(0),
        },
    }
}

/// Why a fenced write of a step of run `run_id` stored nothing: there is no
/// such run, or another process holds it.
pub(super) fn step_refused(run_id: &str, run_exists: bool) -> StoreError {
    if run_exists {
        super::run_taken(run_id)
    } else {
        StoreError::NotFound {
            id: run_id.to_string(),
        }
    }
}

/// What a tree has used, read to say which limit a charge did not fit.
pub(super) struct TreeUse {
    pub(super) tasks: i64,
    pub(super) max_tasks: i64,
    pub(super) turns: i64,
    pub(super) max_turns: i64,
    /// Spent plus reserved, micro-USD.
    pub(super) held: i64,
    pub(super) budget: Option<i64>,
}

impl TreeUse {
    /// What the tree of task `root` has used, from a row of its `tasks`,
    /// `max_tasks`, `turns`, `max_turns`, `spent_micros`, `reserved_micros`
    /// and `budget_micros`.
    pub(super) fn from_row(row: &dyn Columns, root: &str) -> Result<TreeUse, StoreError> {
        let what = || format!("tree of task {root}");
        let f = Fields { row, what: &what };
        Ok(TreeUse {
            tasks: f.int("tasks")?,
            max_tasks: f.int("max_tasks")?,
            turns: f.int("turns")?,
            max_turns: f.int("max_turns")?,
            held: f
                .int("spent_micros")?
                .saturating_add(f.int("reserved_micros")?),
            budget: f.opt_int("budget_micros")?,
        })
    }

    /// The limit `charge` did not fit, as the error that names it.
    pub(super) fn refusal(&self, charge: &TreeCharge) -> StoreError {
        let (tasks, turns) = (i64::from(charge.tasks), i64::from(charge.turns));
        let (limit, max, used) = if tasks > 0 && self.tasks + tasks > self.max_tasks {
            (TreeLimitKind::Tasks, self.max_tasks, self.tasks)
        } else if turns > 0 && self.turns + turns > self.max_turns {
            (TreeLimitKind::Turns, self.max_turns, self.turns)
        } else {
            (TreeLimitKind::Money, self.budget.unwrap_or(0), self.held)
        };
        StoreError::TreeLimit { limit, max, used }
    }
}

// ---------------------------------------------------------------------------
// The listings, built alike on every backend.

/// The query of one page of [`super::Store::list_tasks`]: newest first,
/// after the cursor's position, one row more than `limit` (which says
/// whether there is a next page).
pub(super) fn select_tasks<DB>(
    filter: &TaskFilter,
    after: Option<&(Millis, String)>,
    limit: u32,
) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(concat!("SELECT ", task_columns!(), " FROM tasks"));
    let mut glue = " WHERE ";
    let mut and = |q: &mut QueryBuilder<DB>| {
        q.push(glue);
        glue = " AND ";
    };
    if !filter.states.is_empty() {
        and(&mut q);
        q.push("state IN (");
        let mut list = q.separated(", ");
        for state in &filter.states {
            list.push_bind(state.as_str());
        }
        q.push(")");
    }
    for (col, value) in [
        ("agent", &filter.agent),
        ("parent_id", &filter.parent_id),
        ("root_id", &filter.root_id),
        ("subject", &filter.subject),
    ] {
        if let Some(value) = value {
            and(&mut q);
            q.push(col).push(" = ").push_bind(value.as_str());
        }
    }
    if let Some(since) = filter.since {
        and(&mut q);
        q.push("created_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        and(&mut q);
        q.push("created_at < ").push_bind(until);
    }
    if let Some((created_at, id)) = after {
        and(&mut q);
        push_after(&mut q, *created_at, id);
    }
    push_newest_first(&mut q, limit);
    q
}

/// The query of one page of [`super::Store::list_client_tasks`], as
/// [`select_tasks`] builds it.
pub(super) fn select_client_tasks<DB>(
    subject: Option<&str>,
    after: Option<&(Millis, String)>,
    limit: u32,
) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(concat!(
        "SELECT ",
        client_task_columns!(),
        " FROM mcp_tasks WHERE 1 = 1"
    ));
    if let Some(subject) = subject {
        q.push(" AND subject = ").push_bind(subject);
    }
    if let Some((created_at, id)) = after {
        q.push(" AND ");
        push_after(&mut q, *created_at, id);
    }
    push_newest_first(&mut q, limit);
    q
}

/// Keyset paging: the rows after `(created_at, id)` in newest-first order.
fn push_after<DB>(q: &mut QueryBuilder<DB>, created_at: Millis, id: &str)
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    q.push("(created_at, id) < (")
        .push_bind(created_at)
        .push(", ")
        .push_bind(id)
        .push(")");
}

fn push_newest_first<DB>(q: &mut QueryBuilder<DB>, limit: u32)
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    // One row more than asked says whether there is a next page.
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
}

/// One page out of the rows a listing query returned (`limit` + 1 at most):
/// the first `limit` read, and the cursor after the last of them when
/// there were more.
pub(super) fn page<R, T>(
    rows: &[R],
    limit: u32,
    read: impl Fn(&R) -> Result<T, StoreError>,
    position: impl Fn(&T) -> (Millis, &str),
) -> Result<(Vec<T>, Option<String>), StoreError> {
    let more = rows.len() > limit as usize;
    let items = rows
        .iter()
        .take(limit as usize)
        .map(read)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match items.last() {
        Some(last) if more => {
            let (created_at, id) = position(last);
            Some(cursor::encode(created_at, id))
        }
        _ => None,
    };
    Ok((items, next_cursor))
}
