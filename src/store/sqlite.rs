//! [`Store`] on SQLite: migrations and reads through sqlx, writes through
//! rusqlite on a thread of their own.
//!
//! Writes go to one writer thread that owns the only write connection and
//! commits queued writes in groups (see [`super::sqlite_write`]); reads use a
//! small sqlx pool of their own. SQLite allows one writer at a time anyway:
//! queueing writers in-process instead of letting several connections fight
//! over the file lock avoids `SQLITE_BUSY` sleeps and "database is locked"
//! errors under load, and WAL lets readers run alongside the writer.

use std::fmt::Display;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tempfile::TempDir;

use super::sqlite_write::{
    AttemptRow, ClientTaskRow, RunRow, StepRow, TaskRow, TreeRow, TurnRow, Write, Writer,
    WriterOptions, WriterWatch,
};
use super::{
    MAX_PAGE, Store, StoreError, StoreFuture, TaskFilter, TaskPage, UsageQuery, UsageRow, cursor,
    database_error,
};
use crate::task::{
    Attempt, ClientTask, ClientTaskPage, Millis, Run, RunState, StepRecord, Task, TaskState, Tree,
    TreeCharge, TreeLimits, Turn,
};

/// How long a statement waits for a lock held by another process before
/// failing with "database is locked".
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections. Reads are short; two cores gain nothing from more.
const READERS: u32 = 4;

/// How often the WAL is checkpointed into the database file, when anything
/// was written since the last time.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// What to tell a user whose database cannot be opened for lack of access.
const WRITABLE_HINT: &str = "set DISPATCH_DATABASE_URL or --root to a writable folder";

/// Every column of `tasks` ([`task_from_row`] reads them by name).
macro_rules! task_columns {
    () => {
        "id, agent, state, input, parent_id, depth, subject, created_at, started_at, \
         finished_at, model, attempts, input_tokens, output_tokens, cost_usd, output, reason, \
         error, kb_path, routing, requeues, owner, audit, root_id"
    };
}

const SELECT_TASK: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

const TASKS_IN_STATE: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE state = ?1 ORDER BY created_at, id"
);

const SELECT_ATTEMPTS: &str = "SELECT task_id, seq, kind, agent, provider, model, started_at, \
     latency_ms, ok, http_status, error, input_tokens, output_tokens, cost_usd, cost_source, \
     verdict, revision_message, output FROM attempts WHERE task_id = ?1 ORDER BY seq";

/// A [`Store`] in one SQLite file (or in a scratch file deleted with the
/// store, for tests and `sqlite::memory:`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The queue of the thread that owns the write connection.
    writer: Writer,
    /// Connections for reads.
    reader: SqlitePool,
    /// The folder of a scratch database, removed when the last handle goes.
    _scratch: Option<Arc<TempDir>>,
}

impl SqliteStore {
    /// Opens the database at `url_or_path` (`sqlite://path`, `sqlite:path` or a
    /// plain file path), creating the file and its folder if missing, and
    /// brings its schema up to date.
    ///
    /// `sqlite::memory:` (or any URL with `mode=memory`) gives a fresh,
    /// empty database that is gone when the store is dropped, as
    /// [`SqliteStore::open_in_memory`] does.
    ///
    /// Call it inside the tokio runtime that will use the store: the
    /// checkpointer task is spawned there.
    pub async fn open(url_or_path: &str) -> Result<SqliteStore, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: url_or_path.to_string(),
            message,
        };
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(|e| {
                open_err(format!(
                    "{e}; use sqlite://PATH, sqlite:PATH or a plain file path"
                ))
            })?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        if in_memory {
            return Self::open_scratch().await.map_err(open_err);
        }
        let path = options.get_filename().to_path_buf();
        prepare_file(&path).map_err(open_err)?;
        Self::open_file(options, &path, SqliteSynchronous::Normal, None)
            .await
            .map_err(open_err)
    }

    /// A fresh, empty database, gone when the store is dropped (for tests).
    /// Like [`SqliteStore::open`], needs a tokio runtime.
    ///
    /// It lives in a file in a private temporary folder, not in SQLite's
    /// memory: the writer and the readers are separate connections, and
    /// connections to one in-memory database share a cache with table locks
    /// instead of WAL. The file is not synced (nothing in it is meant to last).
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        Self::open_scratch()
            .await
            .map_err(|m| database_error(format_args!("open an in-memory database"), m))
    }

    async fn open_scratch() -> Result<SqliteStore, String> {
        let dir = tempfile::Builder::new()
            .prefix("dispatch-store-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary folder for the database: {e}"))?;
        let path = dir.path().join("dispatch.db");
        let options = SqliteConnectOptions::new().filename(&path);
        Self::open_file(options, &path, SqliteSynchronous::Off, Some(dir)).await
    }

    /// Brings the file's schema up to date on a first connection, then opens
    /// the read pool and the writer's connection on its own thread.
    async fn open_file(
        options: SqliteConnectOptions,
        path: &Path,
        synchronous: SqliteSynchronous,
        scratch: Option<TempDir>,
    ) -> Result<SqliteStore, String> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses no data on a process crash, only the
            // last commits on power loss, and saves an fsync per commit.
            .synchronous(synchronous)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            // Keeps the WAL file from staying at its high-water mark after a burst.
            .pragma("journal_size_limit", "67108864")
            // No checkpoint inside a commit (see the writer's own settings).
            // `checkpoints` below runs them on a read connection instead.
            .pragma("wal_autocheckpoint", "0")
            .pragma("mmap_size", "268435456")
            // Statistics for the planner (which index serves a filtered
            // listing), refreshed cheaply as connections close.
            .optimize_on_close(true, 400);

        // One connection first, alone: it switches a new file to WAL and
        // brings the schema up to date. Only then do the readers and the
        // writer connect. A new file starts in rollback-journal mode, where
        // two connections both setting WAL at once each hold a shared lock
        // and want the exclusive one: SQLite sees the deadlock and fails one
        // with "database is locked" at once, without waiting. (Seen once in
        // CI, most likely so, while the read pool was the first to open the
        // file and opened two connections together.)
        let mut first = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| explain_open_error(&reason(&e)))?;
        migrate(&mut first).await?;
        if let Err(e) = first.close().await {
            // The schema is in place; the readers and the writer need only that.
            tracing::debug!("closing the migration connection: {}", reason(&e));
        }
        let reader = pool_options(READERS)
            .connect_with(options)
            .await
            .map_err(|e| explain_open_error(&reason(&e)))?;
        let synchronous = match synchronous {
            SqliteSynchronous::Off => "OFF",
            _ => "NORMAL",
        };
        let writer = Writer::spawn(path, WriterOptions { synchronous })
            .await
            .map_err(|why| explain_open_error(&why))?;
        tracing::debug!(path = %path.display(), "database open");
        tokio::spawn(checkpoints(writer.watch(), reader.clone()));
        Ok(SqliteStore {
            writer,
            reader,
            _scratch: scratch.map(Arc::new),
        })
    }

    /// The read pool, for tests that plant rows the store would refuse.
    #[cfg(test)]
    pub(super) fn raw_pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// The folder of a scratch database (see [`SqliteStore::open_in_memory`]).
    #[cfg(test)]
    pub(super) fn scratch_dir(&self) -> Option<&Path> {
        self._scratch.as_deref().map(TempDir::path)
    }

    /// The writer's queue, for tests that need writes to pile up.
    #[cfg(test)]
    pub(super) fn raw_writer(&self) -> &Writer {
        &self.writer
    }

    async fn create_task_impl(&self, task: &Task) -> Result<(), StoreError> {
        let row = TaskRow::new(task)?;
        self.writer.write(Write::CreateTask(row)).await
    }

    async fn update_task_impl(&self, task: &Task, expected: TaskState) -> Result<(), StoreError> {
        check_transition(task, expected)?;
        let row = TaskRow::new(task)?;
        self.writer.write(Write::UpdateTask(row, expected)).await
    }

    async fn claim_task_impl(
        &self,
        task: &Task,
        expected: TaskState,
        owner: Option<&str>,
    ) -> Result<(), StoreError> {
        check_transition(task, expected)?;
        let row = TaskRow::new(task)?;
        self.writer
            .write(Write::ClaimTask(row, expected, owner.map(str::to_string)))
            .await
    }

    async fn get_task_impl(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(SELECT_TASK)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read task {id}"), e))?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks_impl(
        &self,
        filter: &TaskFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<TaskPage, StoreError> {
        let after = cursor.map(cursor::decode).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);

        let mut q = QueryBuilder::<Sqlite>::new(concat!("SELECT ", task_columns!(), " FROM tasks"));
        let mut glue = " WHERE ";
        let mut and = |q: &mut QueryBuilder<Sqlite>| {
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
        if let Some(agent) = &filter.agent {
            and(&mut q);
            q.push("agent = ").push_bind(agent.as_str());
        }
        if let Some(parent) = &filter.parent_id {
            and(&mut q);
            q.push("parent_id = ").push_bind(parent.as_str());
        }
        if let Some(root) = &filter.root_id {
            and(&mut q);
            q.push("root_id = ").push_bind(root.as_str());
        }
        if let Some(subject) = &filter.subject {
            and(&mut q);
            q.push("subject = ").push_bind(subject.as_str());
        }
        if let Some(since) = filter.since {
            and(&mut q);
            q.push("created_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            and(&mut q);
            q.push("created_at < ").push_bind(until);
        }
        if let Some((created_at, id)) = &after {
            and(&mut q);
            q.push("(created_at, id) < (")
                .push_bind(*created_at)
                .push(", ")
                .push_bind(id.as_str())
                .push(")");
        }
        // One row more than asked says whether there is a next page.
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);

        let rows = q
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("list tasks"), e))?;
        let more = rows.len() > limit as usize;
        let tasks = rows
            .iter()
            .take(limit as usize)
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = match tasks.last() {
            Some(last) if more => Some(cursor::encode(last.created_at, &last.id)),
            _ => None,
        };
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn finish_task_impl(
        &self,
        task: &Task,
        expected: TaskState,
        attempts: &[Attempt],
    ) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return self.update_task_impl(task, expected).await;
        }
        check_transition(task, expected)?;
        let rows = attempts
            .iter()
            .map(AttemptRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        let row = TaskRow::new(task)?;
        self.writer
            .write(Write::FinishTask(rows, row, expected))
            .await
    }

    async fn add_attempt_impl(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let row = AttemptRow::new(attempt)?;
        self.writer.write(Write::AddAttempt(row)).await
    }

    async fn attempts_impl(&self, task_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(SELECT_ATTEMPTS)
            .bind(task_id)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the attempts of task {task_id}"), e))?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn tasks_in_state_impl(&self, state: TaskState) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(TASKS_IN_STATE)
            .bind(state.as_str())
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("list {state} tasks"), e))?;
        rows.iter().map(task_from_row).collect()
    }

    async fn usage_impl(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT t.agent, a.agent, a.kind, a.provider, a.model, COUNT(*), \
             SUM(1 - a.ok), SUM(a.input_tokens), SUM(a.output_tokens), SUM(a.cost_usd) \
             FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE 1 = 1",
        );
        if let Some(since) = query.since {
            q.push(" AND a.started_at >= ").push_bind(since);
        }
        if let Some(until) = query.until {
            q.push(" AND a.started_at < ").push_bind(until);
        }
        if let Some(subject) = &query.subject {
            q.push(" AND t.subject = ").push_bind(subject.as_str());
        }
        if let Some(root) = &query.root_id {
            q.push(" AND t.root_id = ").push_bind(root.as_str());
        }
        q.push(" GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5");
        let rows = q
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("sum usage"), e))?;
        rows.iter()
            .map(|row| {
                let what = || "usage row".to_string();
                Ok(UsageRow {
                    task_agent: get(row, 0, &what)?,
                    agent: get(row, 1, &what)?,
                    kind: parse_column(&get::<String>(row, 2, &what)?, || {
                        "attempts, column kind".to_string()
                    })?,
                    provider: get(row, 3, &what)?,
                    model: get(row, 4, &what)?,
                    calls: unsigned(get(row, 5, &what)?, 5, &what)?,
                    failed_calls: unsigned(get(row, 6, &what)?, 6, &what)?,
                    input_tokens: unsigned(get(row, 7, &what)?, 7, &what)?,
                    output_tokens: unsigned(get(row, 8, &what)?, 8, &what)?,
                    cost_usd: get(row, 9, &what)?,
                })
            })
            .collect()
    }

    async fn counts_by_state_impl(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
                .fetch_all(&self.reader)
                .await
                .map_err(|e| db_err(format_args!("count tasks"), e))?;
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

    async fn close_impl(&self) {
        // Writes first: queued ones still commit.
        self.writer.close().await;
        self.reader.close().await;
    }
}

impl Store for SqliteStore {
    fn create_task<'a>(&'a self, task: &'a Task) -> StoreFuture<'a, ()> {
        Box::pin(self.create_task_impl(task))
    }

    fn update_task<'a>(&'a self, task: &'a Task, expected: TaskState) -> StoreFuture<'a, ()> {
        Box::pin(self.update_task_impl(task, expected))
    }

    fn claim_task<'a>(
        &'a self,
        task: &'a Task,
        expected: TaskState,
        owner: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.claim_task_impl(task, expected, owner))
    }

    fn get_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>> {
        Box::pin(self.get_task_impl(id))
    }

    fn list_tasks<'a>(
        &'a self,
        filter: &'a TaskFilter,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, TaskPage> {
        Box::pin(self.list_tasks_impl(filter, cursor, limit))
    }

    fn finish_task<'a>(
        &'a self,
        task: &'a Task,
        expected: TaskState,
        attempts: &'a [Attempt],
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.finish_task_impl(task, expected, attempts))
    }

    fn add_attempt<'a>(&'a self, attempt: &'a Attempt) -> StoreFuture<'a, ()> {
        Box::pin(self.add_attempt_impl(attempt))
    }

    fn attempts<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Attempt>> {
        Box::pin(self.attempts_impl(task_id))
    }

    fn tasks_in_state(&self, state: TaskState) -> StoreFuture<'_, Vec<Task>> {
        Box::pin(self.tasks_in_state_impl(state))
    }

    fn usage<'a>(&'a self, query: &'a UsageQuery) -> StoreFuture<'a, Vec<UsageRow>> {
        Box::pin(self.usage_impl(query))
    }

    fn counts_by_state(&self) -> StoreFuture<'_, Vec<(TaskState, u64)>> {
        Box::pin(self.counts_by_state_impl())
    }

    fn put_run<'a>(&'a self, run: &'a Run) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let row = RunRow::new(run)?;
            self.writer.write(Write::PutRun(row)).await
        })
    }

    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Run>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE id = ?1"
            ))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read run {id}"), e))?;
            row.as_ref().map(run_from_row).transpose()
        })
    }

    fn runs_in_state(&self, state: RunState) -> StoreFuture<'_, Vec<Run>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE state = ?1 ORDER BY created_at, id"
            ))
            .bind(state.as_str())
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("list {} runs", state.as_str()), e))?;
            rows.iter().map(run_from_row).collect()
        })
    }

    fn put_step<'a>(&'a self, step: &'a StepRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.writer.write(Write::PutStep(StepRow::new(step))).await })
    }

    fn steps<'a>(&'a self, run_id: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT run_id, step_id, idx, state, task_id, tries, started_at, finished_at, \
                 error, output_path FROM run_steps WHERE run_id = ?1 ORDER BY idx",
            )
            .bind(run_id)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the steps of run {run_id}"), e))?;
            rows.iter().map(step_from_row).collect()
        })
    }

    fn add_turn<'a>(&'a self, turn: &'a Turn) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.writer.write(Write::AddTurn(TurnRow::new(turn)?)).await })
    }

    fn turns<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Turn>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT task_id, seq, answer, at, data FROM turns WHERE task_id = ?1 ORDER BY seq",
            )
            .bind(task_id)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the turns of task {task_id}"), e))?;
            rows.iter().map(turn_from_row).collect()
        })
    }

    fn open_tree<'a>(&'a self, tree: &'a Tree) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.writer.write(Write::OpenTree(TreeRow::new(tree))).await })
    }

    fn get_tree<'a>(&'a self, root_id: &'a str) -> StoreFuture<'a, Option<Tree>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                tree_columns!(),
                " FROM trees WHERE root_id = ?1"
            ))
            .bind(root_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the tree of task {root_id}"), e))?;
            row.as_ref().map(tree_from_row).transpose()
        })
    }

    fn charge_tree<'a>(&'a self, root_id: &'a str, charge: TreeCharge) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.writer
                .write(Write::ChargeTree(root_id.to_string(), charge))
                .await
        })
    }

    fn put_client_task<'a>(&'a self, task: &'a ClientTask) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.writer
                .write(Write::PutClientTask(ClientTaskRow::new(task)))
                .await
        })
    }

    fn get_client_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ClientTask>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, tool, subject, created_at, ttl_ms, poll_ms FROM mcp_tasks WHERE id = ?1",
            )
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read MCP task {id}"), e))?;
            row.as_ref().map(client_task_from_row).transpose()
        })
    }

    fn list_client_tasks<'a>(
        &'a self,
        subject: Option<&'a str>,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, ClientTaskPage> {
        Box::pin(async move {
            let after = cursor.map(cursor::decode).transpose()?;
            let limit = limit.clamp(1, MAX_PAGE);
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT id, tool, subject, created_at, ttl_ms, poll_ms FROM mcp_tasks WHERE 1 = 1",
            );
            if let Some(subject) = subject {
                q.push(" AND subject = ").push_bind(subject);
            }
            if let Some((created_at, id)) = &after {
                q.push(" AND (created_at, id) < (")
                    .push_bind(*created_at)
                    .push(", ")
                    .push_bind(id.as_str())
                    .push(")");
            }
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(i64::from(limit) + 1);
            let rows = q
                .build()
                .fetch_all(&self.reader)
                .await
                .map_err(|e| db_err(format_args!("list MCP tasks"), e))?;
            let more = rows.len() > limit as usize;
            let tasks = rows
                .iter()
                .take(limit as usize)
                .map(client_task_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = match tasks.last() {
                Some(last) if more => Some(cursor::encode(last.created_at, &last.id)),
                _ => None,
            };
            Ok(ClientTaskPage { tasks, next_cursor })
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.close_impl().await;
            Ok(())
        })
    }
}

/// Refuses a move the state machine does not allow (keeping the state is allowed).
fn check_transition(task: &Task, expected: TaskState) -> Result<(), StoreError> {
    if expected != task.state && !expected.can_become(task.state) {
        return Err(StoreError::IllegalTransition {
            id: task.id.clone(),
            from: expected,
            to: task.state,
        });
    }
    Ok(())
}

/// Copies committed WAL frames into the database file every
/// [`CHECKPOINT_EVERY`] while anything is written, until the store closes.
///
/// PASSIVE never waits for readers or the writer: it copies what it can, so
/// commits go on while it syncs. The WAL starts over from its beginning once
/// a checkpoint has caught up and no reader still uses the old frames, and
/// `journal_size_limit` trims it after a burst.
async fn checkpoints(writer: WriterWatch, reader: SqlitePool) {
    // From zero, not from the count now: commits made before this task first
    // runs are still in the WAL.
    let mut done = 0;
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let Some(now) = writer.commits() else { return };
        if reader.is_closed() {
            return;
        }
        if now == done {
            continue;
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&reader)
            .await
        {
            Ok(_) => done = now,
            Err(e) if reader.is_closed() => {
                tracing::debug!("checkpoints stop: {}", reason(&e));
                return;
            }
            Err(e) => tracing::warn!("WAL checkpoint failed (retried later): {}", reason(&e)),
        }
    }
}

/// Pool settings shared by the writer and reader pools.
fn pool_options(max: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        // A local file needs no liveness ping; the ping would be a round trip
        // to the connection's thread on every query.
        .test_before_acquire(false)
        // Connections to a local file do not go stale; keeping them keeps the
        // prepared statements (and an in-memory database) alive.
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(30))
}

/// The files under `migrations/`, embedded: version, description (the file
/// name's words) and SQL, as `sqlx::migrate!` would embed them. Listing them
/// here instead of using that macro spares every build its proc-macro and a
/// second, host-side build of SQLite; a test checks the list against the folder.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tasks and attempts",
        include_str!("../../migrations/0001_tasks_and_attempts.sql"),
    ),
    (
        2,
        "task owner",
        include_str!("../../migrations/0002_task_owner.sql"),
    ),
    (3, "audit", include_str!("../../migrations/0003_audit.sql")),
    (
        4,
        "workflow runs",
        include_str!("../../migrations/0004_workflow_runs.sql"),
    ),
    (
        5,
        "drop owner index",
        include_str!("../../migrations/0005_drop_owner_index.sql"),
    ),
    (
        6,
        "tool loop",
        include_str!("../../migrations/0006_tool_loop.sql"),
    ),
    (
        7,
        "mcp tasks",
        include_str!("../../migrations/0007_mcp_tasks.sql"),
    ),
];

/// The schema's migrations (checksums as sqlx computes them from the SQL).
pub(super) fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

async fn migrate(conn: &mut SqliteConnection) -> Result<(), String> {
    migrator().run(conn).await.map_err(|e| {
        format!(
            "cannot bring the schema up to date: {e}; if another version of dispatch created \
             this database, run that version or point DISPATCH_DATABASE_URL at a new file"
        )
    })
}

/// Creates the folder and file ahead of SQLite, whose own error for either
/// ("unable to open database file") does not say what is wrong.
fn prepare_file(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("the path is empty; give a file path or sqlite://PATH".to_string());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create folder {}: {}", dir.display(), io_reason(&e)))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(|e| io_reason(&e))
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            format!("permission denied; {WRITABLE_HINT}")
        }
        std::io::ErrorKind::IsADirectory => {
            "it is a folder; give the path of a file inside it".to_string()
        }
        _ => format!("{e}; {WRITABLE_HINT}"),
    }
}

fn explain_open_error(reason: &str) -> String {
    if reason.contains("not a database") || reason.contains("malformed") {
        format!(
            "{reason}; the file is not a dispatch database or is damaged: move it away or point \
             DISPATCH_DATABASE_URL at another file"
        )
    } else if reason.contains("locked") || reason.contains("busy") {
        format!("{reason}; another program holds the database: stop it or use another file")
    } else {
        format!("{reason}; {WRITABLE_HINT}")
    }
}

/// The database's own words when there are some, without sqlx's preamble.
pub(super) fn reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

fn db_err(op: std::fmt::Arguments<'_>, e: sqlx::Error) -> StoreError {
    tracing::warn!(error = %e, "database operation failed: {op}");
    database_error(op, reason(&e))
}

fn corrupt(what: String) -> StoreError {
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

/// Reads one column, reporting a missing column or a wrong type as corruption.
fn get<'r, T>(
    row: &'r SqliteRow,
    col: impl sqlx::ColumnIndex<SqliteRow> + Display + Copy,
    what: &dyn Fn() -> String,
) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get::<T, _>(col)
        .map_err(|e| corrupt(format!("{}, column {col}: {e}", what())))
}

/// Reads a column stored from an unsigned Rust field.
fn unsigned<T: TryFrom<i64>>(
    v: i64,
    col: impl Display,
    what: &dyn Fn() -> String,
) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| corrupt(format!("{}, column {col}: {v} is out of range", what())))
}

fn opt_unsigned<T: TryFrom<i64>>(
    v: Option<i64>,
    col: &str,
    what: &dyn Fn() -> String,
) -> Result<Option<T>, StoreError> {
    v.map(|v| unsigned(v, col, what)).transpose()
}

fn json(s: &str, col: &str, what: &dyn Fn() -> String) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| corrupt(format!("{}, column {col}: invalid JSON: {e}", what())))
}

macro_rules! run_columns {
    () => {
        "id, name, agent, state, input, definition, subject, owner, created_at, finished_at, error"
    };
}
use run_columns;

fn run_from_row(row: &SqliteRow) -> Result<Run, StoreError> {
    let id: String = get(row, "id", &|| "run".to_string())?;
    let what = || format!("run {id}");
    let w = &what;
    let state: String = get(row, "state", w)?;
    let input: String = get(row, "input", w)?;
    let definition: String = get(row, "definition", w)?;
    Ok(Run {
        name: get(row, "name", w)?,
        agent: get(row, "agent", w)?,
        state: parse_column(&state, || format!("{}, column state", what()))?,
        input: json(&input, "input", w)?,
        definition: json(&definition, "definition", w)?,
        subject: get(row, "subject", w)?,
        owner: get(row, "owner", w)?,
        created_at: get(row, "created_at", w)?,
        finished_at: get(row, "finished_at", w)?,
        error: get(row, "error", w)?,
        id,
    })
}

fn step_from_row(row: &SqliteRow) -> Result<StepRecord, StoreError> {
    let run_id: String = get(row, "run_id", &|| "run step".to_string())?;
    let step_id: String = get(row, "step_id", &|| format!("a step of run {run_id}"))?;
    let what = || format!("step {step_id} of run {run_id}");
    let w = &what;
    let state: String = get(row, "state", w)?;
    Ok(StepRecord {
        idx: unsigned(get(row, "idx", w)?, "idx", w)?,
        state: parse_column(&state, || format!("{}, column state", what()))?,
        task_id: get(row, "task_id", w)?,
        tries: unsigned(get(row, "tries", w)?, "tries", w)?,
        started_at: get(row, "started_at", w)?,
        finished_at: get(row, "finished_at", w)?,
        error: get(row, "error", w)?,
        output_path: get(row, "output_path", w)?,
        run_id,
        step_id,
    })
}

/// Every column of `trees` ([`tree_from_row`] reads them by name).
macro_rules! tree_columns {
    () => {
        "root_id, tasks, turns, spent_micros, reserved_micros, max_depth, max_tasks, max_turns, \
         max_secs, budget_micros, created_at"
    };
}
pub(super) use tree_columns;

pub(super) fn tree_from_row(row: &SqliteRow) -> Result<Tree, StoreError> {
    let root_id: String = get(row, "root_id", &|| "tree".to_string())?;
    let what = || format!("tree of task {root_id}");
    let w: &dyn Fn() -> String = &what;
    let max_secs: Option<i64> = get(row, "max_secs", w)?;
    Ok(Tree {
        tasks: unsigned(get(row, "tasks", w)?, "tasks", w)?,
        turns: unsigned(get(row, "turns", w)?, "turns", w)?,
        spent_micros: get(row, "spent_micros", w)?,
        reserved_micros: get(row, "reserved_micros", w)?,
        limits: TreeLimits {
            max_depth: unsigned(get(row, "max_depth", w)?, "max_depth", w)?,
            max_tasks: unsigned(get(row, "max_tasks", w)?, "max_tasks", w)?,
            max_turns: unsigned(get(row, "max_turns", w)?, "max_turns", w)?,
            max_secs: max_secs.map(|s| s.max(0) as u64),
            budget_micros: get(row, "budget_micros", w)?,
        },
        created_at: get(row, "created_at", w)?,
        root_id,
    })
}

fn client_task_from_row(row: &SqliteRow) -> Result<ClientTask, StoreError> {
    let id: String = get(row, "id", &|| "MCP task".to_string())?;
    let what = || format!("MCP task {id}");
    let w: &dyn Fn() -> String = &what;
    let ttl: Option<i64> = get(row, "ttl_ms", w)?;
    let poll: i64 = get(row, "poll_ms", w)?;
    Ok(ClientTask {
        tool: get(row, "tool", w)?,
        subject: get(row, "subject", w)?,
        created_at: get(row, "created_at", w)?,
        ttl_ms: ttl.map(|v| u64::try_from(v).unwrap_or(0)),
        poll_ms: u64::try_from(poll).unwrap_or(0),
        id,
    })
}

fn turn_from_row(row: &SqliteRow) -> Result<Turn, StoreError> {
    let task_id: String = get(row, "task_id", &|| "turn".to_string())?;
    let seq: i64 = get(row, "seq", &|| format!("turn of task {task_id}"))?;
    let what = || format!("turn {seq} of task {task_id}");
    let w: &dyn Fn() -> String = &what;
    let data: String = get(row, "data", w)?;
    let event = serde_json::from_str(&data)
        .map_err(|e| corrupt(format!("{}, column data: {e}", what())))?;
    Ok(Turn {
        seq: unsigned(seq, "seq", w)?,
        answer: unsigned(get(row, "answer", w)?, "answer", w)?,
        at: get(row, "at", w)?,
        event,
        task_id,
    })
}

fn task_from_row(row: &SqliteRow) -> Result<Task, StoreError> {
    let id: String = get(row, "id", &|| "task".to_string())?;
    let what = || format!("task {id}");
    let w: &dyn Fn() -> String = &what;
    let state: String = get(row, "state", w)?;
    let input: String = get(row, "input", w)?;
    let reason: Option<String> = get(row, "reason", w)?;
    let routing: Option<String> = get(row, "routing", w)?;
    let audit: Option<String> = get(row, "audit", w)?;
    Ok(Task {
        agent: get(row, "agent", w)?,
        state: parse_column(&state, || format!("{}, column state", what()))?,
        input: json(&input, "input", w)?,
        parent_id: get(row, "parent_id", w)?,
        root_id: get(row, "root_id", w)?,
        depth: unsigned(get(row, "depth", w)?, "depth", w)?,
        subject: get(row, "subject", w)?,
        created_at: get::<Millis>(row, "created_at", w)?,
        started_at: get(row, "started_at", w)?,
        finished_at: get(row, "finished_at", w)?,
        model: get(row, "model", w)?,
        attempts: unsigned(get(row, "attempts", w)?, "attempts", w)?,
        input_tokens: unsigned(get(row, "input_tokens", w)?, "input_tokens", w)?,
        output_tokens: unsigned(get(row, "output_tokens", w)?, "output_tokens", w)?,
        cost_usd: get(row, "cost_usd", w)?,
        output: get(row, "output", w)?,
        reason: reason
            .map(|r| parse_column(&r, || format!("{}, column reason", what())))
            .transpose()?,
        error: get(row, "error", w)?,
        kb_path: get(row, "kb_path", w)?,
        routing: routing.map(|r| json(&r, "routing", w)).transpose()?,
        requeues: unsigned(get(row, "requeues", w)?, "requeues", w)?,
        owner: get(row, "owner", w)?,
        audit: audit.map(|a| json(&a, "audit", w)).transpose()?,
        id,
    })
}

fn attempt_from_row(row: &SqliteRow) -> Result<Attempt, StoreError> {
    let task_id: String = get(row, "task_id", &|| "attempt".to_string())?;
    let seq: i64 = get(row, "seq", &|| format!("attempt of task {task_id}"))?;
    let what = || format!("attempt {seq} of task {task_id}");
    let w: &dyn Fn() -> String = &what;
    let kind: String = get(row, "kind", w)?;
    let cost_source: String = get(row, "cost_source", w)?;
    let verdict: Option<String> = get(row, "verdict", w)?;
    let ok: i64 = get(row, "ok", w)?;
    Ok(Attempt {
        seq: unsigned(seq, "seq", w)?,
        kind: parse_column(&kind, || format!("{}, column kind", what()))?,
        agent: get(row, "agent", w)?,
        provider: get(row, "provider", w)?,
        model: get(row, "model", w)?,
        started_at: get::<Millis>(row, "started_at", w)?,
        latency_ms: unsigned(get(row, "latency_ms", w)?, "latency_ms", w)?,
        ok: match ok {
            0 => false,
            1 => true,
            other => {
                return Err(corrupt(format!(
                    "{}, column ok: {other} is not 0 or 1",
                    what()
                )));
            }
        },
        http_status: opt_unsigned(get(row, "http_status", w)?, "http_status", w)?,
        error: get(row, "error", w)?,
        input_tokens: unsigned(get(row, "input_tokens", w)?, "input_tokens", w)?,
        output_tokens: unsigned(get(row, "output_tokens", w)?, "output_tokens", w)?,
        cost_usd: get(row, "cost_usd", w)?,
        cost_source: parse_column(&cost_source, || format!("{}, column cost_source", what()))?,
        verdict: verdict.map(|v| json(&v, "verdict", w)).transpose()?,
        revision_message: get(row, "revision_message", w)?,
        output: get(row, "output", w)?,
        task_id,
    })
}
