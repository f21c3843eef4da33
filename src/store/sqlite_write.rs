//! The SQLite store's write path: one task that owns the write connection and
//! commits queued writes in groups.
//!
//! SQLite has one writer at a time, and what a commit costs is mostly fixed:
//! lock calls, and appending every page it touched to the WAL. The newest
//! pages of each index are the same for every task written together, so a
//! group of 50 writes appends barely more than a single one. Callers queue
//! their writes on a channel; the writer takes everything queued (up to
//! [`MAX_GROUP`]), runs it in one transaction and answers each caller only
//! after the commit, so success still means "committed". A write that fails
//! on its own (a lost compare-and-set, a duplicate) is rolled back alone and
//! the group goes on; any other failure rolls the group back, and its writes
//! are then retried one at a time so that only the culprit fails.
//!
//! Once queued, a write is carried out even if its caller stops waiting.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool};
use sqlx::{Connection, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::sqlite::{parse_column, reason};
use super::{StoreError, database_error};
use crate::task::{Attempt, Run, StepRecord, Task, TaskId, TaskState};

/// The most writes committed together. Bounds how long one transaction runs.
const MAX_GROUP: usize = 256;

/// Writes queued beyond this make callers wait (backpressure).
const QUEUE: usize = 4096;

const INSERT_TASK: &str = "INSERT INTO tasks (id, agent, state, input, parent_id, depth, subject, \
     created_at, started_at, finished_at, model, attempts, input_tokens, output_tokens, cost_usd, \
     output, reason, error, kb_path, routing, requeues, owner, audit) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
     ?20, ?21, ?22, ?23)";

/// Sets every column that can change after a task is created. What a task
/// is (agent, input, parent, depth, subject, creation time: ?2, ?4 to ?8)
/// is bound but not set: SQLite rewrites every index on a column named in
/// SET, so naming them would rewrite the agent, creation and subject
/// indexes on each state change for nothing.
const UPDATE_TASK: &str = "UPDATE tasks SET state = ?3, started_at = ?9, finished_at = ?10, \
     model = ?11, attempts = ?12, input_tokens = ?13, output_tokens = ?14, cost_usd = ?15, \
     output = ?16, reason = ?17, error = ?18, kb_path = ?19, routing = ?20, requeues = ?21, \
     owner = ?22, audit = ?23 WHERE id = ?1 AND state = ?24";

const INSERT_ATTEMPT: &str = "INSERT INTO attempts (task_id, seq, kind, agent, provider, model, \
     started_at, latency_ms, ok, http_status, error, input_tokens, output_tokens, cost_usd, \
     cost_source, verdict, revision_message, output) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// The queue of writes; cloned into every handle of one store.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Msg>,
    /// Groups committed so far (the checkpointer's cue that there is work).
    commits: Arc<AtomicU64>,
}

/// Watches a [`Writer`] from the side (for the checkpointer).
pub(super) struct WriterWatch {
    queue: mpsc::WeakSender<Msg>,
    commits: Arc<AtomicU64>,
}

impl WriterWatch {
    /// Groups committed since the writer started, or `None` once every
    /// handle of the store is gone.
    pub(super) fn commits(&self) -> Option<u64> {
        let queue = self.queue.upgrade()?;
        if queue.is_closed() {
            return None;
        }
        Some(self.commits.load(Ordering::Relaxed))
    }
}

/// Where a write's outcome goes.
type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Msg {
    /// Boxed: a task row is a few hundred bytes, and the queue holds thousands.
    Write(Box<Write>, Reply),
    /// Finish what is queued before it, close the connection, stop.
    Close(oneshot::Sender<()>),
}

/// One write, its values already converted to what the columns hold so that
/// a value the database cannot take is refused before anything is queued.
pub(super) enum Write {
    CreateTask(TaskRow),
    UpdateTask(TaskRow, TaskState),
    AddAttempt(AttemptRow),
    /// Attempts, then the task's update (together when in a group).
    FinishTask(Vec<AttemptRow>, TaskRow, TaskState),
    PutRun(RunRow),
    PutStep(StepRow),
}

const PUT_RUN: &str = "INSERT INTO runs (id, name, agent, state, input, definition, subject, owner, \
     created_at, finished_at, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (id) DO UPDATE SET name = ?2, agent = ?3, state = ?4, input = ?5, definition = ?6, \
     subject = ?7, owner = ?8, created_at = ?9, finished_at = ?10, error = ?11";

const PUT_STEP: &str = "INSERT INTO run_steps (run_id, step_id, idx, state, task_id, tries, \
     started_at, finished_at, error, output_path) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
     ON CONFLICT (run_id, step_id) DO UPDATE SET idx = ?3, state = ?4, task_id = ?5, tries = ?6, \
     started_at = ?7, finished_at = ?8, error = ?9, output_path = ?10";

/// A run as the columns of `runs` hold it.
pub(super) struct RunRow {
    id: String,
    name: Option<String>,
    agent: Option<String>,
    state: &'static str,
    input: String,
    definition: String,
    subject: Option<String>,
    owner: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
    error: Option<String>,
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
    run_id: String,
    step_id: String,
    idx: i64,
    state: &'static str,
    task_id: Option<String>,
    tries: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    error: Option<String>,
    output_path: Option<String>,
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

impl Write {
    /// What the write does, for error messages: "update task 01h…".
    fn describe(&self) -> String {
        match self {
            Write::CreateTask(t) => format!("create task {}", t.id),
            Write::UpdateTask(t, _) => format!("update task {}", t.id),
            Write::FinishTask(_, t, _) => format!("finish task {}", t.id),
            Write::AddAttempt(a) => format!("record attempt {} of task {}", a.seq, a.task_id),
            Write::PutRun(r) => format!("record run {}", r.id),
            Write::PutStep(s) => format!("record step {} of run {}", s.step_id, s.run_id),
        }
    }
}

impl Writer {
    /// Starts the writer task on the current tokio runtime. `pool` must hold
    /// one connection: the writer acquires it for each group (for a file
    /// database nobody else does; an in-memory one shares it with reads).
    pub(super) fn spawn(pool: SqlitePool) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(pool, rx, commits.clone()));
        Writer { queue, commits }
    }

    /// A handle that counts commits without keeping the writer alive.
    pub(super) fn watch(&self) -> WriterWatch {
        WriterWatch {
            queue: self.queue.downgrade(),
            commits: self.commits.clone(),
        }
    }

    /// Queues a write and waits until it is committed or has failed.
    pub(super) async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let what = write.describe();
        let closed = || database_error(format_args!("{what}"), "the store is closed");
        if self
            .queue
            .send(Msg::Write(Box::new(write), tx))
            .await
            .is_err()
        {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Waits for the queued writes, then stops the writer. Idempotent.
    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Msg>, commits: Arc<AtomicU64>) {
    let mut msgs = Vec::with_capacity(MAX_GROUP);
    let mut group: Vec<(Box<Write>, Reply)> = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut msgs, MAX_GROUP).await > 0 {
        let mut close = None;
        for msg in msgs.drain(..) {
            match msg {
                Msg::Write(w, tx) if close.is_none() => group.push((w, tx)),
                // Writes queued after a close are refused (their sender drops).
                Msg::Write(..) => {}
                Msg::Close(tx) => close = close.or(Some(tx)),
            }
        }
        if !group.is_empty() {
            commit_group(&pool, &mut group).await;
            commits.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = close {
            rx.close();
            pool.close().await;
            let _ = tx.send(());
            return;
        }
    }
    // Every store handle is gone.
    pool.close().await;
}

/// Why one write failed.
enum Failure {
    /// This write alone failed; SQLite rolled back only its statement.
    Own(StoreError),
    /// The database failed, or the statement failed in a way that may have
    /// ended the transaction (disk full, I/O error, a trigger...).
    Database(String),
}

/// Commits a group of writes and answers their callers.
async fn commit_group(pool: &SqlitePool, group: &mut Vec<(Box<Write>, Reply)>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let why = reason(&e);
            tracing::warn!(
                writes = group.len(),
                "cannot get the write connection: {why}"
            );
            for (w, reply) in group.drain(..) {
                let _ = reply.send(Err(database_error(format_args!("{}", w.describe()), &why)));
            }
            return;
        }
    };
    if group.len() > 1 {
        match try_group(&mut conn, group).await {
            Ok(results) => {
                for ((_, reply), result) in group.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
                return;
            }
            // The group was rolled back; one by one, only the culprit fails.
            Err(why) => tracing::warn!(
                writes = group.len(),
                "a group of writes failed ({why}); retrying them one at a time"
            ),
        }
    }
    // A lone write needs no transaction of its own: autocommit saves two
    // round trips to the connection's thread. That holds for a task's
    // finish too: its attempts are facts whatever happens to the update
    // after them (a task found `running` with its answer stored resumes
    // from that answer).
    for (w, reply) in group.drain(..) {
        let result = apply(&mut conn, &w).await.map_err(|f| match f {
            Failure::Own(e) => e,
            Failure::Database(why) => database_error(format_args!("{}", w.describe()), why),
        });
        let _ = reply.send(result);
    }
}

/// Runs the group in one transaction: each write's own result, or why the
/// group could not commit (then nothing of it is written).
async fn try_group(
    conn: &mut SqliteConnection,
    group: &[(Box<Write>, Reply)],
) -> Result<Vec<Result<(), StoreError>>, String> {
    // IMMEDIATE takes the write lock up front, so another process holding it
    // makes us wait (busy_timeout) here rather than fail mid-group.
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| reason(&e))?;
    let mut results = Vec::with_capacity(group.len());
    for (w, _) in group {
        match apply(&mut tx, w).await {
            Ok(()) => results.push(Ok(())),
            Err(Failure::Own(e)) => results.push(Err(e)),
            // Dropping `tx` rolls the group back.
            Err(Failure::Database(why)) => return Err(why),
        }
    }
    tx.commit().await.map_err(|e| reason(&e))?;
    Ok(results)
}

/// Runs one write on the writer connection.
async fn apply(conn: &mut SqliteConnection, w: &Write) -> Result<(), Failure> {
    match w {
        Write::PutRun(r) => {
            sqlx::query(PUT_RUN)
                .bind(r.id.as_str())
                .bind(r.name.as_deref())
                .bind(r.agent.as_deref())
                .bind(r.state)
                .bind(r.input.as_str())
                .bind(r.definition.as_str())
                .bind(r.subject.as_deref())
                .bind(r.owner.as_deref())
                .bind(r.created_at)
                .bind(r.finished_at)
                .bind(r.error.as_deref())
                .execute(&mut *conn)
                .await
                .map_err(|e| Failure::Database(reason(&e)))?;
            Ok(())
        }
        Write::PutStep(s) => {
            sqlx::query(PUT_STEP)
                .bind(s.run_id.as_str())
                .bind(s.step_id.as_str())
                .bind(s.idx)
                .bind(s.state)
                .bind(s.task_id.as_deref())
                .bind(s.tries)
                .bind(s.started_at)
                .bind(s.finished_at)
                .bind(s.error.as_deref())
                .bind(s.output_path.as_deref())
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    if is_foreign_key_violation(&e) {
                        Failure::Own(StoreError::NotFound {
                            id: s.run_id.clone(),
                        })
                    } else {
                        Failure::Database(reason(&e))
                    }
                })?;
            Ok(())
        }
        Write::CreateTask(t) => {
            bind_task(sqlx::query(INSERT_TASK), t)
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        Failure::Own(StoreError::Duplicate {
                            what: format!("task {}", t.id),
                        })
                    } else {
                        Failure::Database(reason(&e))
                    }
                })?;
            Ok(())
        }
        Write::UpdateTask(t, expected) => update_task(conn, t, *expected).await,
        Write::AddAttempt(a) => insert_attempt(conn, a).await,
        Write::FinishTask(attempts, t, expected) => {
            for a in attempts {
                match insert_attempt(conn, a).await {
                    // Already recorded (e.g. by an earlier try): a fact is a fact.
                    Ok(()) | Err(Failure::Own(StoreError::Duplicate { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
            update_task(conn, t, *expected).await
        }
    }
}

/// The compare-and-set update of a task.
async fn update_task(
    conn: &mut SqliteConnection,
    t: &TaskRow,
    expected: TaskState,
) -> Result<(), Failure> {
    let done = bind_task(sqlx::query(UPDATE_TASK), t)
        .bind(expected.as_str())
        .execute(&mut *conn)
        .await
        .map_err(|e| Failure::Database(reason(&e)))?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    // Nothing matched: tell a missing task from a lost race. Read on
    // this connection, inside the group, so `found` is the state the
    // update actually met.
    let found: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE id = ?1")
        .bind(t.id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| Failure::Database(reason(&e)))?;
    Err(Failure::Own(match found {
        None => StoreError::NotFound { id: t.id.clone() },
        Some(found) => match parse_column(&found, || format!("task {}, column state", t.id)) {
            Ok(found) => StoreError::Conflict {
                id: t.id.clone(),
                expected,
                found,
            },
            Err(corrupt) => corrupt,
        },
    }))
}

/// The insert of one attempt.
async fn insert_attempt(conn: &mut SqliteConnection, a: &AttemptRow) -> Result<(), Failure> {
    sqlx::query(INSERT_ATTEMPT)
        .bind(a.task_id.as_str())
        .bind(a.seq)
        .bind(a.kind)
        .bind(a.agent.as_str())
        .bind(a.provider.as_str())
        .bind(a.model.as_str())
        .bind(a.started_at)
        .bind(a.latency_ms)
        .bind(a.ok)
        .bind(a.http_status)
        .bind(a.error.as_deref())
        .bind(a.input_tokens)
        .bind(a.output_tokens)
        .bind(a.cost_usd)
        .bind(a.cost_source)
        .bind(a.verdict.as_deref())
        .bind(a.revision_message.as_deref())
        .bind(a.output.as_deref())
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Failure::Own(StoreError::Duplicate {
                    what: format!("attempt {} of task {}", a.seq, a.task_id),
                })
            } else if is_foreign_key_violation(&e) {
                Failure::Own(StoreError::NotFound {
                    id: a.task_id.clone(),
                })
            } else {
                Failure::Database(reason(&e))
            }
        })?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// A task as the columns of `tasks` hold it.
pub(super) struct TaskRow {
    id: TaskId,
    agent: String,
    state: &'static str,
    input: String,
    parent_id: Option<String>,
    depth: i64,
    subject: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    model: Option<String>,
    attempts: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    output: Option<String>,
    reason: Option<&'static str>,
    error: Option<String>,
    kb_path: Option<String>,
    routing: Option<String>,
    requeues: i64,
    owner: Option<String>,
    audit: Option<String>,
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
        })
    }
}

/// An attempt as the columns of `attempts` hold it.
pub(super) struct AttemptRow {
    task_id: TaskId,
    seq: i64,
    kind: &'static str,
    agent: String,
    provider: String,
    model: String,
    started_at: i64,
    latency_ms: i64,
    ok: i64,
    http_status: Option<i64>,
    error: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    cost_source: &'static str,
    verdict: Option<String>,
    revision_message: Option<String>,
    output: Option<String>,
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
            ok: i64::from(a.ok),
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

/// Binds `?1..?23` of [`INSERT_TASK`] and [`UPDATE_TASK`].
fn bind_task<'q>(
    q: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    t: &TaskRow,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
    q.bind(t.id.as_str())
        .bind(t.agent.as_str())
        .bind(t.state)
        .bind(t.input.as_str())
        .bind(t.parent_id.as_deref())
        .bind(t.depth)
        .bind(t.subject.as_deref())
        .bind(t.created_at)
        .bind(t.started_at)
        .bind(t.finished_at)
        .bind(t.model.as_deref())
        .bind(t.attempts)
        .bind(t.input_tokens)
        .bind(t.output_tokens)
        .bind(t.cost_usd)
        .bind(t.output.as_deref())
        .bind(t.reason)
        .bind(t.error.as_deref())
        .bind(t.kb_path.as_deref())
        .bind(t.routing.as_deref())
        .bind(t.requeues)
        .bind(t.owner.as_deref())
        .bind(t.audit.as_deref())
}

/// Formats lazily: messages are built only when something is refused.
struct Describe<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Describe<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

fn to_json(
    v: &serde_json::Value,
    col: &str,
    what: &dyn fmt::Display,
) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid {
        what: format!("{what}: {col}: {e}"),
    })
}

/// A u64 counter as the signed 64-bit integer SQL stores.
fn counter(v: u64, col: &str, what: &dyn fmt::Display) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        what: format!("{what}: {col} = {v} is past the database's limit of 2^63-1"),
    })
}

/// A cost, which must be a number: SQLite would store NaN as NULL.
fn cost(v: f64, what: &dyn fmt::Display) -> Result<f64, StoreError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(StoreError::Invalid {
            what: format!("{what}: cost_usd = {v} is not a finite number"),
        })
    }
}
