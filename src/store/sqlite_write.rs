//! The SQLite store's write path: one thread that owns the write connection
//! and commits queued writes in groups.
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
//! The writer is a plain thread with a rusqlite connection, not a tokio task
//! driving sqlx: sqlx runs each statement on a thread of its own and sends
//! the result back, a round trip between threads per statement (`BEGIN`,
//! every insert and update, `COMMIT`). A group of 50 finishing tasks made
//! about 100 such trips, each one slower when the host is busy, and every
//! task in the group waited for all of them. Here a write costs one trip in
//! (the queue) and one back (the reply); the statements run where the
//! connection lives. Reads and migrations stay on sqlx ([`super::sqlite`]):
//! both link the same SQLite library.
//!
//! Once queued, a write is carried out even if its caller stops waiting.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, ffi};
use tokio::sync::{mpsc, oneshot};

use super::read::{self, Cas, Found, TreeUse, why_unchanged};
use super::rows::{AttemptRow, ClientTaskRow, RunRow, StepRow, TaskRow, TreeRow, TurnRow};
use super::sqlite::BUSY_TIMEOUT;
use super::{StoreError, database_error};
use crate::task::{TaskState, TreeCharge};

/// The most writes committed together. Bounds how long one transaction runs.
const MAX_GROUP: usize = 256;

/// Writes queued beyond this make callers wait (backpressure).
const QUEUE: usize = 4096;

const INSERT_TASK: &str = "INSERT INTO tasks (id, agent, state, input, parent_id, depth, subject, \
     created_at, started_at, finished_at, model, attempts, input_tokens, output_tokens, cost_usd, \
     output, reason, error, kb_path, routing, requeues, owner, audit, root_id, epoch) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
     ?20, ?21, ?22, ?23, ?24, ?25)";

/// A turn, stored only while its task is held under epoch `?7` (fenced).
const INSERT_TURN: &str = "INSERT INTO turns (task_id, seq, answer, kind, at, data) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND epoch = ?7)";

const INSERT_CLIENT_TASK: &str = "INSERT INTO mcp_tasks (id, tool, subject, created_at, ttl_ms, \
     poll_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const OPEN_TREE: &str = "INSERT INTO trees (root_id, tasks, turns, spent_micros, reserved_micros, \
     max_depth, max_tasks, max_turns, max_secs, budget_micros, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (root_id) DO NOTHING";

/// A charge against a tree: the WHERE clause is the limit, so it is taken
/// whole or not at all, in the statement that takes it.
const CHARGE_TREE: &str = "UPDATE trees SET tasks = tasks + ?2, turns = turns + ?3, \
     reserved_micros = MAX(reserved_micros + ?4 - ?5, 0), spent_micros = spent_micros + ?6 \
     WHERE root_id = ?1 \
     AND (?2 = 0 OR tasks + ?2 <= max_tasks) \
     AND (?3 = 0 OR turns + ?3 <= max_turns) \
     AND (?4 = 0 OR budget_micros IS NULL OR spent_micros + reserved_micros + ?4 <= budget_micros)";

/// Sets every column that can change after a task is created, if its state
/// is still `?24` and its epoch `?25`. What a task is (agent, input, parent,
/// depth, subject, creation time: ?2, ?4 to ?8) is bound but not set:
/// SQLite rewrites every index on a column named in SET, so naming them
/// would rewrite the agent, creation and subject indexes on each state
/// change for nothing.
const UPDATE_TASK: &str = "UPDATE tasks SET state = ?3, started_at = ?9, finished_at = ?10, \
     model = ?11, attempts = ?12, input_tokens = ?13, output_tokens = ?14, cost_usd = ?15, \
     output = ?16, reason = ?17, error = ?18, kb_path = ?19, routing = ?20, requeues = ?21, \
     owner = ?22, audit = ?23 WHERE id = ?1 AND state = ?24 AND epoch = ?25";

/// [`UPDATE_TASK`] that also moves the epoch on: a claim.
const CLAIM_TASK: &str = "UPDATE tasks SET state = ?3, started_at = ?9, finished_at = ?10, \
     model = ?11, attempts = ?12, input_tokens = ?13, output_tokens = ?14, cost_usd = ?15, \
     output = ?16, reason = ?17, error = ?18, kb_path = ?19, routing = ?20, requeues = ?21, \
     owner = ?22, audit = ?23, epoch = epoch + 1 WHERE id = ?1 AND state = ?24 AND epoch = ?25";

/// Starts or extends a lease (`?3`: until when).
const RENEW_LEASE: &str = "INSERT INTO instances (holder, started_at, lease_until) \
     VALUES (?1, ?2, ?3) ON CONFLICT (holder) DO UPDATE SET lease_until = ?3";

/// Makes slots 0 to `?2` - 1 of scope `?1` exist.
const SEED_SLOTS: &str = "INSERT OR IGNORE INTO slots (scope, n) \
     WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x + 1 < ?2) \
     SELECT ?1, x FROM g";

/// Takes slot `?2` of scope `?1` for `?4` if its holder is still `?3`.
const TAKE_SLOT: &str =
    "UPDATE slots SET holder = ?4, taken_at = ?5 WHERE scope = ?1 AND n = ?2 AND holder IS ?3";

/// Gives slot `?2` of scope `?1` back if `?3` holds it.
const GIVE_SLOT: &str =
    "UPDATE slots SET holder = NULL, taken_at = NULL WHERE scope = ?1 AND n = ?2 AND holder = ?3";

/// Admits a request of key `?1` at `?2` (see the PostgreSQL store's
/// `TAKE_RATE`): interval `?3`, tolerance `?4`.
const TAKE_RATE: &str = "INSERT INTO rates AS r (key, tat) VALUES (?1, ?2 + ?3) \
     ON CONFLICT (key) DO UPDATE SET tat = MAX(r.tat, ?2) + ?3 \
     WHERE MAX(r.tat, ?2) + ?3 - ?2 <= ?4";

/// Ends a lease: an ended lease and none are the same to a claim.
const END_LEASE: &str = "DELETE FROM instances WHERE holder = ?1";

const INSERT_ATTEMPT: &str = "INSERT INTO attempts (task_id, seq, kind, agent, provider, model, \
     started_at, latency_ms, ok, http_status, error, input_tokens, output_tokens, cost_usd, \
     cost_source, verdict, revision_message, output) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18 \
     WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND epoch = ?19)";

/// How the writer's connection is set up: per connection, what the read
/// pool gets from its `SqliteConnectOptions` (the WAL journal mode is a
/// property of the file, set when the read pool first opened it).
pub(super) struct WriterOptions {
    /// `PRAGMA synchronous`: `NORMAL` for a real database, `OFF` for a
    /// scratch one that is deleted with the store.
    pub(super) synchronous: &'static str,
}

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
    /// Say so on the first sender, then wait until the second one is
    /// dropped (for tests that need writes to pile up into a group).
    #[cfg(test)]
    Pause(oneshot::Sender<()>, oneshot::Receiver<()>),
}

/// One write, its values already converted to what the columns hold so that
/// a value the database cannot take is refused before anything is queued.
pub(super) enum Write {
    CreateTask(TaskRow),
    UpdateTask(TaskRow, TaskState),
    /// An update that also moves the epoch on (a claim).
    ClaimTask(TaskRow, TaskState),
    /// An attempt, under the task's claim epoch.
    AddAttempt(AttemptRow, i64),
    /// Attempts, then the task's update (together when in a group), both
    /// under the task row's epoch.
    FinishTask(Vec<AttemptRow>, TaskRow, TaskState),
    PutRun(RunRow),
    /// A run taken over: id, holder read, new holder.
    ClaimRun(String, Option<String>, String),
    /// A step, and who writes it (its run's holder).
    PutStep(StepRow, String),
    /// A turn, under the task's claim epoch.
    AddTurn(TurnRow, i64),
    /// A lease: holder, when it started, until when.
    RenewLease(String, i64, i64),
    /// The end of a lease: holder.
    EndLease(String),
    /// The slots of a scope: scope, limit.
    SeedSlots(String, i64),
    /// A slot taken if its holder is still the one read: scope, number,
    /// holder read, new holder, now.
    TakeSlot(String, i64, Option<String>, String, i64),
    /// A slot given back: scope, number, holder.
    GiveSlot(String, i64, String),
    /// A request admitted under a rate: key, now, interval, tolerance (ms).
    TakeRate(String, i64, i64, i64),
    OpenTree(TreeRow),
    ChargeTree(String, TreeCharge),
    PutClientTask(ClientTaskRow),
}

const PUT_RUN: &str = "INSERT INTO runs (id, name, agent, state, input, definition, subject, owner, \
     created_at, finished_at, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (id) DO UPDATE SET name = ?2, agent = ?3, state = ?4, input = ?5, definition = ?6, \
     subject = ?7, owner = ?8, created_at = ?9, finished_at = ?10, error = ?11 \
     WHERE runs.owner IS ?8";

/// Gives run `?1` to `?3` if it is running and `?2` still holds it.
const CLAIM_RUN: &str =
    "UPDATE runs SET owner = ?3 WHERE id = ?1 AND state = 'running' AND owner IS ?2";

/// A step, written only while `?11` holds its run (fenced).
const PUT_STEP: &str = "INSERT INTO run_steps (run_id, step_id, idx, state, task_id, tries, \
     started_at, finished_at, error, output_path) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 \
     WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND owner IS ?11) \
     ON CONFLICT (run_id, step_id) DO UPDATE SET idx = ?3, state = ?4, task_id = ?5, tries = ?6, \
     started_at = ?7, finished_at = ?8, error = ?9, output_path = ?10";

impl Write {
    /// What the write does, for error messages: "update task 01h…".
    fn describe(&self) -> String {
        match self {
            Write::CreateTask(t) => format!("create task {}", t.id),
            Write::UpdateTask(t, _) => format!("update task {}", t.id),
            Write::ClaimTask(t, _) => format!("claim task {}", t.id),
            Write::FinishTask(_, t, _) => format!("finish task {}", t.id),
            Write::AddAttempt(a, _) => format!("record attempt {} of task {}", a.seq, a.task_id),
            Write::PutRun(r) => format!("record run {}", r.id),
            Write::ClaimRun(id, ..) => format!("claim run {id}"),
            Write::PutStep(s, _) => format!("record step {} of run {}", s.step_id, s.run_id),
            Write::AddTurn(t, _) => format!("record turn {} of task {}", t.seq, t.task_id),
            Write::RenewLease(h, _, _) => format!("renew the lease of {h}"),
            Write::EndLease(h) => format!("end the lease of {h}"),
            Write::SeedSlots(s, _) => format!("make the slots of {s}"),
            Write::TakeSlot(s, n, ..) => format!("take slot {n} of {s}"),
            Write::GiveSlot(s, n, _) => format!("give back slot {n} of {s}"),
            Write::TakeRate(k, ..) => format!("check the request rate of {k}"),
            Write::OpenTree(t) => format!("open the tree of task {}", t.root_id),
            Write::ChargeTree(root, _) => format!("charge the tree of task {root}"),
            Write::PutClientTask(t) => format!("record MCP task {}", t.id),
        }
    }
}

impl Writer {
    /// Opens the write connection to the database file at `path` (which must
    /// exist and have its schema) on a thread of its own, and starts taking
    /// writes there. Fails with SQLite's own words if the file cannot be
    /// opened for writing.
    pub(super) async fn spawn(path: &Path, options: WriterOptions) -> Result<Writer, String> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        let (opened_tx, opened) = oneshot::channel();
        let path = path.to_path_buf();
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("dispatch-store-writer".into())
            .spawn(move || match open(&path, &options) {
                Ok(conn) => {
                    let _ = opened_tx.send(Ok(()));
                    run(conn, rx, &counter);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(reason(&e)));
                }
            })
            .map_err(|e| format!("cannot start the database writer thread: {e}"))?;
        opened
            .await
            .unwrap_or_else(|_| Err("the database writer thread stopped while opening".into()))?;
        Ok(Writer { queue, commits })
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

    /// Holds the writer until the returned sender is dropped; writes queued
    /// meanwhile are committed together afterwards.
    #[cfg(test)]
    pub(super) async fn pause(&self) -> oneshot::Sender<()> {
        let (paused_tx, paused) = oneshot::channel();
        let (resume, resumed) = oneshot::channel();
        let _ = self.queue.send(Msg::Pause(paused_tx, resumed)).await;
        let _ = paused.await;
        resume
    }

    /// Writes queued and not yet taken by the writer.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// Opens and sets up the write connection.
fn open(path: &Path, options: &WriterOptions) -> Result<Connection, rusqlite::Error> {
    // No mutex: only this thread ever uses the connection.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!(
        // In WAL mode NORMAL loses no data on a process crash, only the last
        // commits on power loss, and saves an fsync per commit.
        "PRAGMA synchronous = {};
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA mmap_size = 268435456;
         -- No checkpoint inside a commit: it would sync the database file on
         -- this thread and stall every write queued behind it. The store's
         -- checkpointer runs them on a read connection instead.
         PRAGMA wal_autocheckpoint = 0;",
        options.synchronous
    ))?;
    Ok(conn)
}

/// The writer thread: takes what is queued, commits it, answers, repeats.
fn run(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, commits: &AtomicU64) {
    let mut msgs = Vec::with_capacity(MAX_GROUP);
    let mut group: Vec<(Box<Write>, Reply)> = Vec::with_capacity(MAX_GROUP);
    while rx.blocking_recv_many(&mut msgs, MAX_GROUP) > 0 {
        let mut close = None;
        for msg in msgs.drain(..) {
            match msg {
                Msg::Write(w, tx) if close.is_none() => group.push((w, tx)),
                // Writes queued after a close are refused (their sender drops).
                Msg::Write(..) => {}
                Msg::Close(tx) => close = close.or(Some(tx)),
                #[cfg(test)]
                Msg::Pause(paused, resume) => {
                    let _ = paused.send(());
                    let _ = resume.blocking_recv();
                }
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, &mut group);
            commits.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = close {
            rx.close();
            shut(conn);
            let _ = tx.send(());
            return;
        }
    }
    // Every store handle is gone.
    shut(conn);
}

/// Closes the write connection, first refreshing the planner's statistics
/// cheaply (what sqlx's `optimize_on_close` does for the read pool).
fn shut(conn: Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA analysis_limit = 400; PRAGMA optimize;") {
        tracing::debug!("PRAGMA optimize on close failed: {}", reason(&e));
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(
            "closing the database's write connection failed: {}",
            reason(&e)
        );
    }
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
fn commit_group(conn: &mut Connection, group: &mut Vec<(Box<Write>, Reply)>) {
    if group.len() > 1 {
        match try_group(conn, group) {
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
    // A lone write needs no transaction of its own. That holds for a task's
    // finish too: its attempts are facts whatever happens to the update
    // after them (a task found `running` with its answer stored resumes
    // from that answer).
    for (w, reply) in group.drain(..) {
        let result = apply(conn, &w).map_err(|f| match f {
            Failure::Own(e) => e,
            Failure::Database(why) => database_error(format_args!("{}", w.describe()), why),
        });
        let _ = reply.send(result);
    }
}

/// Runs the group in one transaction: each write's own result, or why the
/// group could not commit (then nothing of it is written).
fn try_group(
    conn: &mut Connection,
    group: &[(Box<Write>, Reply)],
) -> Result<Vec<Result<(), StoreError>>, String> {
    // IMMEDIATE takes the write lock up front, so another process holding it
    // makes us wait (busy_timeout) here rather than fail mid-group.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| reason(&e))?;
    let mut results = Vec::with_capacity(group.len());
    for (w, _) in group {
        match apply(&tx, w) {
            Ok(()) => results.push(Ok(())),
            Err(Failure::Own(e)) => results.push(Err(e)),
            // Dropping `tx` rolls the group back.
            Err(Failure::Database(why)) => return Err(why),
        }
    }
    tx.commit().map_err(|e| reason(&e))?;
    Ok(results)
}

/// Runs one write on the writer connection.
fn apply(conn: &Connection, w: &Write) -> Result<(), Failure> {
    match w {
        Write::PutRun(r) => {
            let values: [&dyn ToSql; 11] = [
                &r.id,
                &r.name,
                &r.agent,
                &r.state,
                &r.input,
                &r.definition,
                &r.subject,
                &r.owner,
                &r.created_at,
                &r.finished_at,
                &r.error,
            ];
            let written =
                execute(conn, PUT_RUN, &values).map_err(|e| Failure::Database(reason(&e)))?;
            if written == 0 {
                return Err(Failure::Own(super::run_taken(&r.id)));
            }
            Ok(())
        }
        Write::ClaimRun(id, from, to) => {
            let values: [&dyn ToSql; 3] = [id, from, to];
            let claimed =
                execute(conn, CLAIM_RUN, &values).map_err(|e| Failure::Database(reason(&e)))?;
            if claimed == 0 {
                return Err(Failure::Own(super::run_taken(id)));
            }
            Ok(())
        }
        Write::PutStep(s, holder) => {
            let values: [&dyn ToSql; 11] = [
                &s.run_id,
                &s.step_id,
                &s.idx,
                &s.state,
                &s.task_id,
                &s.tries,
                &s.started_at,
                &s.finished_at,
                &s.error,
                &s.output_path,
                holder,
            ];
            let written =
                execute(conn, PUT_STEP, &values).map_err(|e| Failure::Database(reason(&e)))?;
            if written == 0 {
                let run: Option<i64> = conn
                    .query_row("SELECT 1 FROM runs WHERE id = ?1", [&s.run_id], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(|e| Failure::Database(reason(&e)))?;
                return Err(Failure::Own(read::step_refused(&s.run_id, run.is_some())));
            }
            Ok(())
        }
        Write::AddTurn(t, epoch) => {
            let values: [&dyn ToSql; 7] = [
                &t.task_id, &t.seq, &t.answer, &t.kind, &t.at, &t.data, epoch,
            ];
            let inserted = execute(conn, INSERT_TURN, &values).map_err(|e| {
                if is_unique_violation(&e) {
                    Failure::Own(StoreError::Duplicate {
                        what: format!("turn {} of task {}", t.seq, t.task_id),
                    })
                } else {
                    Failure::Database(reason(&e))
                }
            })?;
            if inserted == 0 {
                return Err(not_held(conn, &t.task_id));
            }
            Ok(())
        }
        Write::RenewLease(holder, started, until) => {
            let values: [&dyn ToSql; 3] = [holder, started, until];
            execute(conn, RENEW_LEASE, &values).map_err(|e| Failure::Database(reason(&e)))?;
            Ok(())
        }
        Write::EndLease(holder) => {
            let values: [&dyn ToSql; 1] = [holder];
            execute(conn, END_LEASE, &values).map_err(|e| Failure::Database(reason(&e)))?;
            Ok(())
        }
        Write::SeedSlots(scope, limit) => {
            let values: [&dyn ToSql; 2] = [scope, limit];
            execute(conn, SEED_SLOTS, &values).map_err(|e| Failure::Database(reason(&e)))?;
            Ok(())
        }
        Write::TakeSlot(scope, n, read, holder, now) => {
            let values: [&dyn ToSql; 5] = [scope, n, read, holder, now];
            let taken =
                execute(conn, TAKE_SLOT, &values).map_err(|e| Failure::Database(reason(&e)))?;
            if taken == 0 {
                return Err(Failure::Own(StoreError::Claimed {
                    id: format!("slot {n} of {scope}"),
                    owner: String::new(),
                }));
            }
            Ok(())
        }
        Write::TakeRate(key, now, t, tolerance) => {
            let values: [&dyn ToSql; 4] = [key, now, t, tolerance];
            let admitted =
                execute(conn, TAKE_RATE, &values).map_err(|e| Failure::Database(reason(&e)))?;
            if admitted == 1 {
                return Ok(());
            }
            let tat: i64 = conn
                .query_row("SELECT tat FROM rates WHERE key = ?1", [key], |r| r.get(0))
                .map_err(|e| Failure::Database(reason(&e)))?;
            Err(Failure::Own(StoreError::RateLimited {
                key: key.clone(),
                wait: super::gcra_wait(tat.saturating_sub(*now), *t, *tolerance),
            }))
        }
        Write::GiveSlot(scope, n, holder) => {
            let values: [&dyn ToSql; 3] = [scope, n, holder];
            execute(conn, GIVE_SLOT, &values).map_err(|e| Failure::Database(reason(&e)))?;
            Ok(())
        }
        Write::OpenTree(t) => {
            let values: [&dyn ToSql; 11] = [
                &t.root_id,
                &t.tasks,
                &t.turns,
                &t.spent_micros,
                &t.reserved_micros,
                &t.max_depth,
                &t.max_tasks,
                &t.max_turns,
                &t.max_secs,
                &t.budget_micros,
                &t.created_at,
            ];
            execute(conn, OPEN_TREE, &values).map_err(|e| Failure::Database(reason(&e)))?;
            Ok(())
        }
        Write::ChargeTree(root, c) => charge_tree(conn, root, c),
        Write::PutClientTask(t) => {
            let values: [&dyn ToSql; 6] = [
                &t.id,
                &t.tool,
                &t.subject,
                &t.created_at,
                &t.ttl_ms,
                &t.poll_ms,
            ];
            execute(conn, INSERT_CLIENT_TASK, &values).map_err(|e| {
                if is_unique_violation(&e) {
                    Failure::Own(StoreError::Duplicate {
                        what: format!("MCP task {}", t.id),
                    })
                } else {
                    Failure::Database(reason(&e))
                }
            })?;
            Ok(())
        }
        Write::CreateTask(t) => {
            let mut values = Vec::with_capacity(25);
            values.extend_from_slice(&task_values(t));
            values.push(&t.root_id as &dyn ToSql);
            values.push(&t.epoch as &dyn ToSql);
            execute(conn, INSERT_TASK, &values).map_err(|e| {
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
        Write::UpdateTask(t, expected) => update_task(conn, t, *expected, UPDATE_TASK, Cas::State),
        Write::ClaimTask(t, expected) => update_task(conn, t, *expected, CLAIM_TASK, Cas::Claim),
        Write::AddAttempt(a, epoch) => insert_attempt(conn, a, *epoch),
        Write::FinishTask(attempts, t, expected) => {
            for a in attempts {
                match insert_attempt(conn, a, t.epoch) {
                    // Already recorded (e.g. by an earlier try): a fact is a fact.
                    Ok(()) | Err(Failure::Own(StoreError::Duplicate { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
            update_task(conn, t, *expected, UPDATE_TASK, Cas::State)
        }
    }
}

/// Runs one statement (prepared once per connection and cached); the rows
/// it changed.
fn execute(conn: &Connection, sql: &str, values: &[&dyn ToSql]) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached(sql)?.execute(values)
}

/// A charge against a tree, or which limit it did not fit.
fn charge_tree(conn: &Connection, root: &str, c: &TreeCharge) -> Result<(), Failure> {
    let (tasks, turns) = (i64::from(c.tasks), i64::from(c.turns));
    let values: [&dyn ToSql; 6] = [
        &root,
        &tasks,
        &turns,
        &c.reserve_micros,
        &c.release_micros,
        &c.spend_micros,
    ];
    let changed = execute(conn, CHARGE_TREE, &values).map_err(|e| Failure::Database(reason(&e)))?;
    if changed == 1 {
        return Ok(());
    }
    let found: Option<TreeUse> = conn
        .query_row(
            "SELECT tasks, max_tasks, turns, max_turns, spent_micros, reserved_micros, \
             budget_micros FROM trees WHERE root_id = ?1",
            [root],
            |r| {
                Ok(TreeUse {
                    tasks: r.get(0)?,
                    max_tasks: r.get(1)?,
                    turns: r.get(2)?,
                    max_turns: r.get(3)?,
                    held: r.get::<_, i64>(4)? + r.get::<_, i64>(5)?,
                    budget: r.get(6)?,
                })
            },
        )
        .optional()
        .map_err(|e| Failure::Database(reason(&e)))?;
    Err(Failure::Own(match found {
        Some(u) => u.refusal(c),
        None => StoreError::NotFound {
            id: root.to_string(),
        },
    }))
}

/// The compare-and-set update of a task (`sql`: [`UPDATE_TASK`] or
/// [`CLAIM_TASK`]), on its state and epoch.
fn update_task(
    conn: &Connection,
    t: &TaskRow,
    expected: TaskState,
    sql: &str,
    cas: Cas,
) -> Result<(), Failure> {
    let expected_name = expected.as_str();
    let mut values = Vec::with_capacity(25);
    values.extend_from_slice(&task_values(t));
    values.push(&expected_name as &dyn ToSql);
    values.push(&t.epoch as &dyn ToSql);
    let changed = execute(conn, sql, &values).map_err(|e| Failure::Database(reason(&e)))?;
    if changed == 1 {
        return Ok(());
    }
    Err(unchanged(conn, &t.id, expected, t.epoch, cas))
}

/// Why an update matched nothing: the task is missing, its state moved on,
/// or another process holds it now. Read on this connection, inside the
/// group, so what is found is what the update met.
fn unchanged(conn: &Connection, id: &str, expected: TaskState, epoch: i64, cas: Cas) -> Failure {
    match stored(conn, id) {
        Ok(found) => Failure::Own(why_unchanged(id, found, expected, epoch, cas)),
        Err(e) => Failure::Database(reason(&e)),
    }
}

/// The stored state, owner and epoch of task `id`.
fn stored(conn: &Connection, id: &str) -> Result<Option<Found>, rusqlite::Error> {
    conn.prepare_cached("SELECT state, owner, epoch FROM tasks WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()
        })
}

/// Why a fenced insert for task `id` stored nothing: there is no such task,
/// or it is held under another epoch.
fn not_held(conn: &Connection, id: &str) -> Failure {
    match stored(conn, id) {
        Ok(found) => Failure::Own(read::not_held(id, found)),
        Err(e) => Failure::Database(reason(&e)),
    }
}

/// The insert of one attempt, made under claim `epoch`.
fn insert_attempt(conn: &Connection, a: &AttemptRow, epoch: i64) -> Result<(), Failure> {
    let values: [&dyn ToSql; 19] = [
        &a.task_id,
        &a.seq,
        &a.kind,
        &a.agent,
        &a.provider,
        &a.model,
        &a.started_at,
        &a.latency_ms,
        &a.ok,
        &a.http_status,
        &a.error,
        &a.input_tokens,
        &a.output_tokens,
        &a.cost_usd,
        &a.cost_source,
        &a.verdict,
        &a.revision_message,
        &a.output,
        &epoch,
    ];
    let inserted = execute(conn, INSERT_ATTEMPT, &values).map_err(|e| {
        if is_unique_violation(&e) {
            Failure::Own(StoreError::Duplicate {
                what: format!("attempt {} of task {}", a.seq, a.task_id),
            })
        } else {
            Failure::Database(reason(&e))
        }
    })?;
    if inserted == 0 {
        return Err(not_held(conn, &a.task_id));
    }
    Ok(())
}

/// SQLite's extended result code, if `e` is an error SQLite returned.
fn extended_code(e: &rusqlite::Error) -> Option<i32> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        extended_code(e),
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

/// The database's own words when there are some, without rusqlite's preamble.
fn reason(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        other => other.to_string(),
    }
}

/// The values of `?1..?23` in [`INSERT_TASK`] and [`UPDATE_TASK`].
fn task_values(t: &TaskRow) -> [&dyn ToSql; 23] {
    [
        &t.id,
        &t.agent,
        &t.state,
        &t.input,
        &t.parent_id,
        &t.depth,
        &t.subject,
        &t.created_at,
        &t.started_at,
        &t.finished_at,
        &t.model,
        &t.attempts,
        &t.input_tokens,
        &t.output_tokens,
        &t.cost_usd,
        &t.output,
        &t.reason,
        &t.error,
        &t.kb_path,
        &t.routing,
        &t.requeues,
        &t.owner,
        &t.audit,
    ]
}
