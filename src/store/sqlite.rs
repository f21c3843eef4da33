//! [`Store`] on SQLite: migrations and reads through sqlx, writes through
//! rusqlite on a thread of their own.
//!
//! Writes go to one writer thread that owns the only write connection and
//! commits queued writes in groups (see [`super::sqlite_write`]); reads use a
//! small sqlx pool of their own. SQLite allows one writer at a time anyway:
//! queueing writers in-process instead of letting several connections fight
//! over the file lock avoids `SQLITE_BUSY` sleeps and "database is locked"
//! errors under load, and WAL lets readers run alongside the writer.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite};
use tempfile::TempDir;

use super::read;
use super::rows::{
    AttemptRow, ClientTaskRow, RunRow, StepRow, TaskRow, TreeRow, TurnRow, attempt_columns,
    client_task_columns, run_columns, step_columns, task_columns, tree_columns, turn_columns,
};
use super::sqlite_write::{Write, Writer, WriterOptions, WriterWatch};
use super::{
    Lease, MAX_PAGE, Store, StoreError, StoreFuture, TaskFilter, TaskPage, UsageQuery, UsageRow,
    check_transition, cursor, database_error, epoch_column,
};
use crate::task::{
    Attempt, ClientTask, ClientTaskPage, Run, RunState, StepRecord, Task, TaskState, Tree,
    TreeCharge, Turn, now_millis,
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

const SELECT_TASK: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

const TASKS_IN_STATE: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE state = ?1 ORDER BY created_at, id"
);

/// Queued or running tasks whose owner is not `?1` and holds no lease live
/// at `?2`, oldest first, at most `?3` (see [`Store::claim_orphans`]).
const ORPHANS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks t WHERE state IN ('queued', 'running') AND owner IS NOT ?1 \
     AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.holder = t.owner AND i.lease_until > ?2) \
     ORDER BY created_at, id LIMIT ?3"
);

/// Up to 8 free slots of scope `?1` below `?2` at `?3`, lowest first, with
/// their holders as read.
const FREE_SLOTS: &str = "SELECT n, holder FROM slots s WHERE scope = ?1 AND n < ?2 \
     AND (holder IS NULL OR NOT EXISTS (SELECT 1 FROM instances i \
     WHERE i.holder = s.holder AND i.lease_until > ?3)) ORDER BY n LIMIT 8";

/// Every lease, and whether it is live at `?1`.
const LEASES: &str = "SELECT holder, started_at, lease_until, lease_until > ?1 AS live \
     FROM instances ORDER BY holder";

const SELECT_ATTEMPTS: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM attempts WHERE task_id = ?1 ORDER BY seq"
);

/// A [`Store`] in one SQLite file (or in a scratch file deleted with the
/// store, for tests and `sqlite::memory:`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The queue of the thread that owns the write connection.
    writer: Writer,
    /// Connections for reads.
    reader: SqlitePool,
    /// The (scope, limit) pairs whose slots this handle has made exist.
    seeded: Arc<super::Seeded>,
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
            seeded: Arc::default(),
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

    async fn claim_task_impl(&self, task: &Task, expected: TaskState) -> Result<(), StoreError> {
        check_transition(task, expected)?;
        let row = TaskRow::new(task)?;
        self.writer.write(Write::ClaimTask(row, expected)).await
    }

    /// The orphans are read, then each claimed by a compare-and-set on its
    /// epoch: one writer commits at a time, so of two processes claiming
    /// one task the second finds the epoch moved on and skips it.
    async fn claim_orphans_impl(&self, holder: &str, limit: u32) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(ORPHANS)
            .bind(holder)
            .bind(now_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("find tasks to claim"), e))?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut task = read::task_from_row(row)?;
            task.owner = Some(holder.to_string());
            match self.claim_task_impl(&task, task.state).await {
                Ok(()) => {
                    task.epoch += 1;
                    claimed.push(task);
                }
                Err(StoreError::Claimed { .. } | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(claimed)
    }

    /// Free slots are read, then each taken by a compare-and-set on its
    /// holder, as orphans are claimed.
    async fn take_slot_impl(
        &self,
        scope: &str,
        limit: u32,
        holder: &str,
    ) -> Result<Option<u32>, StoreError> {
        if self.seeded.needed(scope, limit) {
            self.writer
                .write(Write::SeedSlots(scope.to_string(), i64::from(limit)))
                .await?;
            self.seeded.made(scope, limit);
        }
        let free: Vec<(i64, Option<String>)> = sqlx::query_as(FREE_SLOTS)
            .bind(scope)
            .bind(i64::from(limit))
            .bind(now_millis())
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("find a free slot of {scope}"), e))?;
        for (n, read) in free {
            let take =
                Write::TakeSlot(scope.to_string(), n, read, holder.to_string(), now_millis());
            match self.writer.write(take).await {
                Ok(()) => return Ok(u32::try_from(n).ok()),
                Err(StoreError::Claimed { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn leases_impl(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(LEASES)
            .bind(now_millis())
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the leases"), e))?;
        rows.iter().map(|r| read::lease_from_row(r)).collect()
    }

    async fn get_task_impl(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(SELECT_TASK)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read task {id}"), e))?;
        row.as_ref().map(|r| read::task_from_row(r)).transpose()
    }

    async fn list_tasks_impl(
        &self,
        filter: &TaskFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<TaskPage, StoreError> {
        let after = cursor.map(cursor::decode).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);

        let rows = read::select_tasks::<Sqlite>(filter, after.as_ref(), limit)
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("list tasks"), e))?;
        let (tasks, next_cursor) = read::page(
            &rows,
            limit,
            |r| read::task_from_row(r),
            |t| (t.created_at, &t.id),
        )?;
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

    async fn add_attempt_impl(&self, attempt: &Attempt, epoch: u64) -> Result<(), StoreError> {
        let row = AttemptRow::new(attempt)?;
        let epoch = epoch_column(epoch)?;
        self.writer.write(Write::AddAttempt(row, epoch)).await
    }

    async fn attempts_impl(&self, task_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(SELECT_ATTEMPTS)
            .bind(task_id)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the attempts of task {task_id}"), e))?;
        rows.iter().map(|r| read::attempt_from_row(r)).collect()
    }

    async fn tasks_in_state_impl(&self, state: TaskState) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(TASKS_IN_STATE)
            .bind(state.as_str())
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("list {state} tasks"), e))?;
        rows.iter().map(|r| read::task_from_row(r)).collect()
    }

    async fn usage_impl(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT t.agent AS task_agent, a.agent AS agent, a.kind AS kind, \
             a.provider AS provider, a.model AS model, COUNT(*) AS calls, \
             SUM(1 - a.ok) AS failed_calls, SUM(a.input_tokens) AS input_tokens, \
             SUM(a.output_tokens) AS output_tokens, SUM(a.cost_usd) AS cost_usd \
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
        rows.iter().map(|r| read::usage_from_row(r)).collect()
    }

    async fn counts_by_state_impl(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state")
                .fetch_all(&self.reader)
                .await
                .map_err(|e| db_err(format_args!("count tasks"), e))?;
        read::counts_by_state(rows)
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

    fn claim_task<'a>(&'a self, task: &'a Task, expected: TaskState) -> StoreFuture<'a, ()> {
        Box::pin(self.claim_task_impl(task, expected))
    }

    fn claim_orphans<'a>(&'a self, holder: &'a str, limit: u32) -> StoreFuture<'a, Vec<Task>> {
        Box::pin(self.claim_orphans_impl(holder, limit))
    }

    fn renew_lease<'a>(&'a self, holder: &'a str, lease: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = now_millis();
            let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
            self.writer
                .write(Write::RenewLease(holder.to_string(), now, until))
                .await
        })
    }

    fn end_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.writer.write(Write::EndLease(holder.to_string())).await })
    }

    fn leases(&self) -> StoreFuture<'_, Vec<Lease>> {
        Box::pin(self.leases_impl())
    }

    fn take_slot<'a>(
        &'a self,
        scope: &'a str,
        limit: u32,
        holder: &'a str,
    ) -> StoreFuture<'a, Option<u32>> {
        Box::pin(self.take_slot_impl(scope, limit, holder))
    }

    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        burst: u32,
    ) -> StoreFuture<'a, Option<Duration>> {
        Box::pin(async move {
            let (t, tolerance) = super::gcra(interval, burst);
            let take = Write::TakeRate(key.to_string(), now_millis(), t, tolerance);
            match self.writer.write(take).await {
                Ok(()) => Ok(None),
                Err(StoreError::RateLimited { wait, .. }) => Ok(Some(wait)),
                Err(e) => Err(e),
            }
        })
    }

    fn give_slot<'a>(&'a self, scope: &'a str, n: u32, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let give = Write::GiveSlot(scope.to_string(), i64::from(n), holder.to_string());
            self.writer.write(give).await
        })
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

    fn add_attempt<'a>(&'a self, attempt: &'a Attempt, epoch: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.add_attempt_impl(attempt, epoch))
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

    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let claim = Write::ClaimRun(id.to_string(), from.map(str::to_string), to.to_string());
            self.writer.write(claim).await
        })
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
            row.as_ref().map(|r| read::run_from_row(r)).transpose()
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
            rows.iter().map(|r| read::run_from_row(r)).collect()
        })
    }

    fn put_step<'a>(&'a self, step: &'a StepRecord, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let put = Write::PutStep(StepRow::new(step), holder.to_string());
            self.writer.write(put).await
        })
    }

    fn steps<'a>(&'a self, run_id: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                step_columns!(),
                " FROM run_steps WHERE run_id = ?1 ORDER BY idx"
            ))
            .bind(run_id)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the steps of run {run_id}"), e))?;
            rows.iter().map(|r| read::step_from_row(r)).collect()
        })
    }

    fn add_turn<'a>(&'a self, turn: &'a Turn, epoch: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let row = TurnRow::new(turn)?;
            let epoch = epoch_column(epoch)?;
            self.writer.write(Write::AddTurn(row, epoch)).await
        })
    }

    fn turns<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Turn>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                turn_columns!(),
                " FROM turns WHERE task_id = ?1 ORDER BY seq"
            ))
            .bind(task_id)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read the turns of task {task_id}"), e))?;
            rows.iter().map(|r| read::turn_from_row(r)).collect()
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
            row.as_ref().map(|r| read::tree_from_row(r)).transpose()
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
            let row = sqlx::query(concat!(
                "SELECT ",
                client_task_columns!(),
                " FROM mcp_tasks WHERE id = ?1"
            ))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(|e| db_err(format_args!("read MCP task {id}"), e))?;
            row.as_ref()
                .map(|r| read::client_task_from_row(r))
                .transpose()
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
            let rows = read::select_client_tasks::<Sqlite>(subject, after.as_ref(), limit)
                .build()
                .fetch_all(&self.reader)
                .await
                .map_err(|e| db_err(format_args!("list MCP tasks"), e))?;
            let (tasks, next_cursor) = read::page(
                &rows,
                limit,
                |r| read::client_task_from_row(r),
                |t| (t.created_at, &t.id),
            )?;
            Ok(ClientTaskPage { tasks, next_cursor })
        })
    }

    fn backend(&self) -> super::Backend {
        super::Backend::Sqlite
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.reader)
                .await
                .map(|_| ())
                .map_err(|e| database_error(format_args!("reach the database"), e))
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.close_impl().await;
            Ok(())
        })
    }
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
    (
        8,
        "leases",
        include_str!("../../migrations/0008_leases.sql"),
    ),
];

/// The schema's migrations (checksums as sqlx computes them from the SQL).
pub(super) fn migrator() -> sqlx::migrate::Migrator {
    super::migrator_of(MIGRATIONS)
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
