//! [`Store`] on PostgreSQL, through a sqlx pool.
//!
//! PostgreSQL takes writes from many connections at once, so unlike SQLite
//! there is no writer thread: each method is one statement on a pooled
//! connection (a second one only when a compare-and-set or a charge misses
//! and the store reads why). The guarantees are in the statements: an
//! update's `WHERE` names the state (and owner) it expects, a tree charge's
//! `WHERE` is the limit. Under READ COMMITTED an `UPDATE` that waited for
//! another's row lock checks its `WHERE` again against the row that one
//! left, so of two racing updates only one matches, and concurrent charges
//! cannot overspend.
//!
//! The schema is `migrations/postgres/` (one file: what SQLite's add up
//! to), the statements are in `postgres_sql`; values go in and come out
//! through `rows` and `read`, as on SQLite, so both backends store and
//! return the same things.

use std::sync::Arc;
use std::time::Duration;

use sqlx::error::ErrorKind;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, QueryBuilder};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::postgres_listen;
use super::postgres_open::{self, PostgresOptions};
use super::postgres_sql::{
    ATTEMPTS_PER_INSERT, CHARGE_TREE, CLAIM_ORPHANS, CLAIM_RUN, CLAIM_TASK, COUNT_BY_STATE,
    END_LEASE, GIVE_SLOT, INSERT_CLIENT_TASK, INSERT_TASK, INSERT_TURN, LEASES, OPEN_TREE, PUT_RUN,
    PUT_STEP, PgQuery, RATE_AHEAD, RENEW_LEASE, RUNS_IN_STATE, SEED_SLOTS, SELECT_ATTEMPTS,
    SELECT_CLIENT_TASK, SELECT_RUN, SELECT_STEPS, SELECT_TASK, SELECT_TREE, SELECT_TURNS,
    TAKE_RATE, TAKE_SLOT, TASK_STATE_AND_OWNER, TASKS_IN_STATE, TREE_USE, UPDATE_TASK, USAGE,
    bind_changes, db_err, insert_attempts, violation,
};
use super::read::{self, Cas, Found, TreeUse};
use super::rows::{AttemptRow, ClientTaskRow, RunRow, StepRow, TaskRow, TreeRow, TurnRow};
use super::{
    Change, Lease, MAX_PAGE, Store, StoreError, StoreFuture, TaskFilter, TaskPage, UsageQuery,
    UsageRow, check_transition, cursor, epoch_column,
};
use crate::task::{
    Attempt, ClientTask, ClientTaskPage, Run, RunState, StepRecord, Task, TaskState, Tree,
    TreeCharge, Turn,
};

/// A [`Store`] in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// What the listener hears ([`Store::changes`]).
    changes: broadcast::Sender<Change>,
    /// The (scope, limit) pairs whose slots this handle has made exist.
    seeded: Arc<super::Seeded>,
    /// Stops the listener at close.
    stop: CancellationToken,
    /// Stops it when the last handle goes.
    _listening: Arc<DropGuard>,
}

impl PostgresStore {
    /// Opens the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`
    /// or `postgresql://…`, with libpq's parameters and environment) with
    /// [`PostgresOptions::default`], and brings its schema up to date.
    ///
    /// The database must exist. A server that cannot be reached, refused
    /// credentials and a schema newer than this build are
    /// [`StoreError::Open`], naming the URL without its password.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        Self::open_with(url, &PostgresOptions::default()).await
    }

    /// [`PostgresStore::open`] with other pool settings.
    pub async fn open_with(
        url: &str,
        options: &PostgresOptions,
    ) -> Result<PostgresStore, StoreError> {
        let (pool, ear) = postgres_open::connect(url, options).await?;
        let (changes, _) = broadcast::channel(postgres_listen::BUFFER);
        let stop = CancellationToken::new();
        postgres_listen::spawn(ear, changes.clone(), stop.clone());
        Ok(PostgresStore {
            pool,
            changes,
            seeded: Arc::default(),
            stop: stop.clone(),
            _listening: Arc::new(stop.drop_guard()),
        })
    }

    /// The pool, for tests that plant rows the store would refuse.
    #[cfg(test)]
    pub(super) fn raw_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn create_task_impl(&self, task: &Task) -> Result<(), StoreError> {
        let t = TaskRow::new(task)?;
        sqlx::query(INSERT_TASK)
            .bind(&t.id)
            .bind(&t.agent)
            .bind(t.state)
            .bind(&t.input)
            .bind(&t.parent_id)
            .bind(t.depth)
            .bind(&t.subject)
            .bind(t.created_at)
            .bind(t.started_at)
            .bind(t.finished_at)
            .bind(&t.model)
            .bind(t.attempts)
            .bind(t.input_tokens)
            .bind(t.output_tokens)
            .bind(t.cost_usd)
            .bind(&t.output)
            .bind(t.reason)
            .bind(&t.error)
            .bind(&t.kb_path)
            .bind(&t.routing)
            .bind(t.requeues)
            .bind(&t.owner)
            .bind(&t.audit)
            .bind(&t.root_id)
            .bind(t.epoch)
            .execute(&self.pool)
            .await
            .map_err(|e| match violation(&e) {
                Some(ErrorKind::UniqueViolation) => StoreError::Duplicate {
                    what: format!("task {}", t.id),
                },
                _ => db_err(format_args!("create task {}", t.id), e),
            })?;
        Ok(())
    }

    async fn update_task_impl(&self, task: &Task, expected: TaskState) -> Result<(), StoreError> {
        check_transition(task, expected)?;
        let t = TaskRow::new(task)?;
        let q = bind_changes(sqlx::query(UPDATE_TASK), &t)
            .bind(expected.as_str())
            .bind(t.epoch);
        self.compare_and_set(q, &t, expected, Cas::State, "update")
            .await
    }

    async fn claim_task_impl(&self, task: &Task, expected: TaskState) -> Result<(), StoreError> {
        check_transition(task, expected)?;
        let t = TaskRow::new(task)?;
        let q = bind_changes(sqlx::query(CLAIM_TASK), &t)
            .bind(expected.as_str())
            .bind(t.epoch);
        self.compare_and_set(q, &t, expected, Cas::Claim, "claim")
            .await
    }

    async fn claim_orphans_impl(&self, holder: &str, limit: u32) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(CLAIM_ORPHANS)
            .bind(holder)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("claim tasks"), e))?;
        let mut tasks = rows
            .iter()
            .map(|r| read::task_from_row(r))
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING gives no order; claims are handled oldest first.
        tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tasks)
    }

    async fn renew_lease_impl(&self, holder: &str, lease: Duration) -> Result<(), StoreError> {
        sqlx::query(RENEW_LEASE)
            .bind(holder)
            .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2))
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("renew the lease of {holder}"), e))?;
        Ok(())
    }

    async fn end_lease_impl(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query(END_LEASE)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("end the lease of {holder}"), e))?;
        Ok(())
    }

    async fn take_slot_impl(
        &self,
        scope: &str,
        limit: u32,
        holder: &str,
    ) -> Result<Option<u32>, StoreError> {
        if self.seeded.needed(scope, limit) {
            sqlx::query(SEED_SLOTS)
                .bind(scope)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await
                .map_err(|e| db_err(format_args!("make the slots of {scope}"), e))?;
            self.seeded.made(scope, limit);
        }
        let n: Option<i64> = sqlx::query_scalar(TAKE_SLOT)
            .bind(scope)
            .bind(i64::from(limit))
            .bind(holder)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("take a slot of {scope}"), e))?;
        Ok(n.and_then(|n| u32::try_from(n).ok()))
    }

    async fn give_slot_impl(&self, scope: &str, n: u32, holder: &str) -> Result<(), StoreError> {
        sqlx::query(GIVE_SLOT)
            .bind(scope)
            .bind(i64::from(n))
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("give back slot {n} of {scope}"), e))?;
        Ok(())
    }

    async fn take_rate_impl(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let (t, tolerance) = super::gcra(interval, burst);
        let op = |e| db_err(format_args!("check the request rate of {key}"), e);
        let admitted: Option<i64> = sqlx::query_scalar(TAKE_RATE)
            .bind(key)
            .bind(t)
            .bind(tolerance)
            .fetch_optional(&self.pool)
            .await
            .map_err(op)?;
        if admitted.is_some() {
            return Ok(None);
        }
        let ahead: Option<i64> = sqlx::query_scalar(RATE_AHEAD)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(op)?;
        Ok(Some(super::gcra_wait(ahead.unwrap_or(0), t, tolerance)))
    }

    async fn leases_impl(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(LEASES)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read the leases"), e))?;
        rows.iter().map(|r| read::lease_from_row(r)).collect()
    }

    /// Why a fenced insert for task `id` stored nothing: no such task, or
    /// it is held under another epoch.
    async fn not_held(&self, id: &str) -> StoreError {
        let found: Result<Option<Found>, _> = sqlx::query_as(TASK_STATE_AND_OWNER)
            .bind(id)
            .fetch_optional(&self.pool)
            .await;
        match found {
            Ok(found) => read::not_held(id, found),
            Err(e) => db_err(format_args!("read task {id}"), e),
        }
    }

    /// Runs an update of task `t` that changes one row if what it expects
    /// holds, or says why it changed none. `op` names it in errors.
    async fn compare_and_set(
        &self,
        q: PgQuery<'_>,
        t: &TaskRow,
        expected: TaskState,
        cas: Cas,
        op: &str,
    ) -> Result<(), StoreError> {
        let op = |e: sqlx::Error| db_err(format_args!("{op} task {}", t.id), e);
        let changed = q.execute(&self.pool).await.map_err(op)?.rows_affected();
        if changed == 1 {
            return Ok(());
        }
        let found: Option<Found> = sqlx::query_as(TASK_STATE_AND_OWNER)
            .bind(&t.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(op)?;
        Err(read::why_unchanged(&t.id, found, expected, t.epoch, cas))
    }

    async fn get_task_impl(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(SELECT_TASK)
            .bind(id)
            .fetch_optional(&self.pool)
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
        let rows = read::select_tasks::<Postgres>(filter, after.as_ref(), limit)
            .build()
            .fetch_all(&self.pool)
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
        let t = TaskRow::new(task)?;
        // Committed apart from the update: the attempts are facts whatever
        // becomes of it (a task found `running` with its answer stored
        // resumes from that answer).
        // Fenced as the update is: under another epoch, no row goes in
        // (and the update then says why).
        for chunk in rows.chunks(ATTEMPTS_PER_INSERT) {
            self.insert_attempts(chunk, &t.id, t.epoch).await?;
        }
        let q = bind_changes(sqlx::query(UPDATE_TASK), &t)
            .bind(expected.as_str())
            .bind(t.epoch);
        self.compare_and_set(q, &t, expected, Cas::State, "finish")
            .await
    }

    /// Inserts the attempts of task `task_id` in one statement, keeping any
    /// already stored under its `seq` as it is.
    async fn insert_attempts(
        &self,
        rows: &[AttemptRow],
        task_id: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let mut q = insert_attempts(rows, task_id, epoch);
        q.push(" ON CONFLICT (task_id, seq) DO NOTHING");
        q.build()
            .execute(&self.pool)
            .await
            .map_err(|e| match violation(&e) {
                Some(ErrorKind::ForeignKeyViolation) => StoreError::NotFound {
                    id: task_id.to_string(),
                },
                _ => db_err(format_args!("finish task {task_id}"), e),
            })?;
        Ok(())
    }

    async fn add_attempt_impl(&self, attempt: &Attempt, epoch: u64) -> Result<(), StoreError> {
        let a = AttemptRow::new(attempt)?;
        let inserted = insert_attempts(std::slice::from_ref(&a), &a.task_id, epoch_column(epoch)?)
            .build()
            .execute(&self.pool)
            .await
            .map_err(|e| match violation(&e) {
                Some(ErrorKind::UniqueViolation) => StoreError::Duplicate {
                    what: format!("attempt {} of task {}", a.seq, a.task_id),
                },
                Some(ErrorKind::ForeignKeyViolation) => StoreError::NotFound {
                    id: a.task_id.clone(),
                },
                _ => db_err(
                    format_args!("record attempt {} of task {}", a.seq, a.task_id),
                    e,
                ),
            })?
            .rows_affected();
        if inserted == 0 {
            return Err(self.not_held(&a.task_id).await);
        }
        Ok(())
    }

    async fn attempts_impl(&self, task_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(SELECT_ATTEMPTS)
            .bind(task_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read the attempts of task {task_id}"), e))?;
        rows.iter().map(|r| read::attempt_from_row(r)).collect()
    }

    async fn tasks_in_state_impl(&self, state: TaskState) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(TASKS_IN_STATE)
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("list {state} tasks"), e))?;
        rows.iter().map(|r| read::task_from_row(r)).collect()
    }

    async fn usage_impl(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(USAGE);
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
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("sum usage"), e))?;
        rows.iter().map(|r| read::usage_from_row(r)).collect()
    }

    async fn counts_by_state_impl(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNT_BY_STATE)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("count tasks"), e))?;
        read::counts_by_state(rows)
    }

    async fn put_run_impl(&self, run: &Run) -> Result<(), StoreError> {
        let r = RunRow::new(run)?;
        let written = sqlx::query(PUT_RUN)
            .bind(&r.id)
            .bind(&r.name)
            .bind(&r.agent)
            .bind(r.state)
            .bind(&r.input)
            .bind(&r.definition)
            .bind(&r.subject)
            .bind(&r.owner)
            .bind(r.created_at)
            .bind(r.finished_at)
            .bind(&r.error)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("record run {}", r.id), e))?
            .rows_affected();
        if written == 0 {
            return Err(super::run_taken(&r.id));
        }
        Ok(())
    }

    async fn claim_run_impl(
        &self,
        id: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<(), StoreError> {
        let claimed = sqlx::query(CLAIM_RUN)
            .bind(id)
            .bind(from)
            .bind(to)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("claim run {id}"), e))?
            .rows_affected();
        if claimed == 0 {
            return Err(super::run_taken(id));
        }
        Ok(())
    }

    async fn get_run_impl(&self, id: &str) -> Result<Option<Run>, StoreError> {
        let row = sqlx::query(SELECT_RUN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read run {id}"), e))?;
        row.as_ref().map(|r| read::run_from_row(r)).transpose()
    }

    async fn runs_in_state_impl(&self, state: RunState) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(RUNS_IN_STATE)
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("list {} runs", state.as_str()), e))?;
        rows.iter().map(|r| read::run_from_row(r)).collect()
    }

    async fn put_step_impl(&self, step: &StepRecord, holder: &str) -> Result<(), StoreError> {
        let s = StepRow::new(step);
        let written = sqlx::query(PUT_STEP)
            .bind(&s.run_id)
            .bind(&s.step_id)
            .bind(s.idx)
            .bind(s.state)
            .bind(&s.task_id)
            .bind(s.tries)
            .bind(s.started_at)
            .bind(s.finished_at)
            .bind(&s.error)
            .bind(&s.output_path)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                db_err(
                    format_args!("record step {} of run {}", s.step_id, s.run_id),
                    e,
                )
            })?
            .rows_affected();
        if written == 0 {
            let run: Option<i32> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = $1")
                .bind(&s.run_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_err(format_args!("read run {}", s.run_id), e))?;
            return Err(read::step_refused(&s.run_id, run.is_some()));
        }
        Ok(())
    }

    async fn steps_impl(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query(SELECT_STEPS)
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read the steps of run {run_id}"), e))?;
        rows.iter().map(|r| read::step_from_row(r)).collect()
    }

    async fn add_turn_impl(&self, turn: &Turn, epoch: u64) -> Result<(), StoreError> {
        let t = TurnRow::new(turn)?;
        let inserted = sqlx::query(INSERT_TURN)
            .bind(&t.task_id)
            .bind(t.seq)
            .bind(t.answer)
            .bind(t.kind)
            .bind(t.at)
            .bind(&t.data)
            .bind(epoch_column(epoch)?)
            .execute(&self.pool)
            .await
            .map_err(|e| match violation(&e) {
                Some(ErrorKind::UniqueViolation) => StoreError::Duplicate {
                    what: format!("turn {} of task {}", t.seq, t.task_id),
                },
                Some(ErrorKind::ForeignKeyViolation) => StoreError::NotFound {
                    id: t.task_id.clone(),
                },
                _ => db_err(
                    format_args!("record turn {} of task {}", t.seq, t.task_id),
                    e,
                ),
            })?
            .rows_affected();
        if inserted == 0 {
            return Err(self.not_held(&t.task_id).await);
        }
        Ok(())
    }

    async fn turns_impl(&self, task_id: &str) -> Result<Vec<Turn>, StoreError> {
        let rows = sqlx::query(SELECT_TURNS)
            .bind(task_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read the turns of task {task_id}"), e))?;
        rows.iter().map(|r| read::turn_from_row(r)).collect()
    }

    async fn open_tree_impl(&self, tree: &Tree) -> Result<(), StoreError> {
        let t = TreeRow::new(tree);
        sqlx::query(OPEN_TREE)
            .bind(&t.root_id)
            .bind(t.tasks)
            .bind(t.turns)
            .bind(t.spent_micros)
            .bind(t.reserved_micros)
            .bind(t.max_depth)
            .bind(t.max_tasks)
            .bind(t.max_turns)
            .bind(t.max_secs)
            .bind(t.budget_micros)
            .bind(t.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("open the tree of task {}", t.root_id), e))?;
        Ok(())
    }

    async fn get_tree_impl(&self, root_id: &str) -> Result<Option<Tree>, StoreError> {
        let row = sqlx::query(SELECT_TREE)
            .bind(root_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read the tree of task {root_id}"), e))?;
        row.as_ref().map(|r| read::tree_from_row(r)).transpose()
    }

    /// A charge against a tree, or which limit it did not fit.
    async fn charge_tree_impl(&self, root: &str, c: TreeCharge) -> Result<(), StoreError> {
        let op = |e: sqlx::Error| db_err(format_args!("charge the tree of task {root}"), e);
        let changed = sqlx::query(CHARGE_TREE)
            .bind(root)
            .bind(i64::from(c.tasks))
            .bind(i64::from(c.turns))
            .bind(c.reserve_micros)
            .bind(c.release_micros)
            .bind(c.spend_micros)
            .execute(&self.pool)
            .await
            .map_err(op)?
            .rows_affected();
        if changed == 1 {
            return Ok(());
        }
        let found = sqlx::query(TREE_USE)
            .bind(root)
            .fetch_optional(&self.pool)
            .await
            .map_err(op)?;
        Err(match found {
            Some(row) => match TreeUse::from_row(&row, root) {
                Ok(used) => used.refusal(&c),
                Err(corrupt) => corrupt,
            },
            None => StoreError::NotFound {
                id: root.to_string(),
            },
        })
    }

    async fn put_client_task_impl(&self, task: &ClientTask) -> Result<(), StoreError> {
        let t = ClientTaskRow::new(task);
        sqlx::query(INSERT_CLIENT_TASK)
            .bind(&t.id)
            .bind(&t.tool)
            .bind(&t.subject)
            .bind(t.created_at)
            .bind(t.ttl_ms)
            .bind(t.poll_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| match violation(&e) {
                Some(ErrorKind::UniqueViolation) => StoreError::Duplicate {
                    what: format!("MCP task {}", t.id),
                },
                _ => db_err(format_args!("record MCP task {}", t.id), e),
            })?;
        Ok(())
    }

    async fn get_client_task_impl(&self, id: &str) -> Result<Option<ClientTask>, StoreError> {
        let row = sqlx::query(SELECT_CLIENT_TASK)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("read MCP task {id}"), e))?;
        row.as_ref()
            .map(|r| read::client_task_from_row(r))
            .transpose()
    }

    async fn list_client_tasks_impl(
        &self,
        subject: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<ClientTaskPage, StoreError> {
        let after = cursor.map(cursor::decode).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let rows = read::select_client_tasks::<Postgres>(subject, after.as_ref(), limit)
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(format_args!("list MCP tasks"), e))?;
        let (tasks, next_cursor) = read::page(
            &rows,
            limit,
            |r| read::client_task_from_row(r),
            |t| (t.created_at, &t.id),
        )?;
        Ok(ClientTaskPage { tasks, next_cursor })
    }
}

impl Store for PostgresStore {
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
        Box::pin(self.renew_lease_impl(holder, lease))
    }

    fn end_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.end_lease_impl(holder))
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

    fn give_slot<'a>(&'a self, scope: &'a str, n: u32, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.give_slot_impl(scope, n, holder))
    }

    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        burst: u32,
    ) -> StoreFuture<'a, Option<Duration>> {
        Box::pin(self.take_rate_impl(key, interval, burst))
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
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

    fn put_run<'a>(&'a self, run: &'a Run) -> StoreFuture<'a, ()> {
        Box::pin(self.put_run_impl(run))
    }

    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.claim_run_impl(id, from, to))
    }

    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Run>> {
        Box::pin(self.get_run_impl(id))
    }

    fn runs_in_state(&self, state: RunState) -> StoreFuture<'_, Vec<Run>> {
        Box::pin(self.runs_in_state_impl(state))
    }

    fn put_step<'a>(&'a self, step: &'a StepRecord, holder: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.put_step_impl(step, holder))
    }

    fn steps<'a>(&'a self, run_id: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        Box::pin(self.steps_impl(run_id))
    }

    fn add_turn<'a>(&'a self, turn: &'a Turn, epoch: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.add_turn_impl(turn, epoch))
    }

    fn turns<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Turn>> {
        Box::pin(self.turns_impl(task_id))
    }

    fn open_tree<'a>(&'a self, tree: &'a Tree) -> StoreFuture<'a, ()> {
        Box::pin(self.open_tree_impl(tree))
    }

    fn get_tree<'a>(&'a self, root_id: &'a str) -> StoreFuture<'a, Option<Tree>> {
        Box::pin(self.get_tree_impl(root_id))
    }

    fn charge_tree<'a>(&'a self, root_id: &'a str, charge: TreeCharge) -> StoreFuture<'a, ()> {
        Box::pin(self.charge_tree_impl(root_id, charge))
    }

    fn put_client_task<'a>(&'a self, task: &'a ClientTask) -> StoreFuture<'a, ()> {
        Box::pin(self.put_client_task_impl(task))
    }

    fn get_client_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ClientTask>> {
        Box::pin(self.get_client_task_impl(id))
    }

    fn list_client_tasks<'a>(
        &'a self,
        subject: Option<&'a str>,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, ClientTaskPage> {
        Box::pin(self.list_client_tasks_impl(subject, cursor, limit))
    }

    fn backend(&self) -> super::Backend {
        super::Backend::Postgres
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| super::database_error(format_args!("reach the database"), e))
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // The listener's pool is its own.
            self.stop.cancel();
            self.pool.close().await;
            Ok(())
        })
    }
}
