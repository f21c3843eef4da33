//! The durable store: tasks and the provider calls (attempts) made for them.
//!
//! [`Store`] is the only place in the crate that knows SQL. The engine holds it
//! as `Arc<dyn Store>` and persists every state change before acting on it, so
//! after a crash [`Store::tasks_in_state`] says exactly what was in flight.
//!
//! The trait speaks only in crate types: timestamps are [`Millis`], JSON goes
//! in and out as `serde_json::Value`, paging cursors are opaque strings, so
//! that backends are interchangeable. There are two: [`SqliteStore`], one
//! file beside the project (the default), and [`PostgresStore`], a database
//! on a server. [`open`] picks one from the URL. Both convert values to
//! columns and rows back to values through the same code (`rows`, `read`), so they
//! store and return the same things, and one test suite runs against each.
//!
//! Updates are compare-and-set on the task's state ([`Store::update_task`]):
//! two writers racing on one task cannot both win, and the loser learns what
//! the state is now instead of silently overwriting it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::task::{
    Attempt, AttemptKind, ClientTask, ClientTaskPage, Millis, Run, RunState, StepRecord, Task,
    TaskId, TaskState, Tree, TreeCharge, Turn,
};

#[cfg(test)]
mod pg_test;
mod postgres;
mod postgres_listen;
mod postgres_open;
mod postgres_sql;
mod read;
mod rows;
mod schema;
mod sqlite;
mod sqlite_write;
#[cfg(test)]
mod tests;

pub use postgres::PostgresStore;
pub use postgres_open::PostgresOptions;
pub use schema::{Backend, SchemaReport, SchemaState, check};
pub use sqlite::SqliteStore;

/// Opens the store that `url` names, bringing its schema up to date:
/// `postgres://…` or `postgresql://…` on PostgreSQL ([`PostgresStore::open`]),
/// `sqlite:…` or a plain file path on SQLite ([`SqliteStore::open`]).
///
/// Any other `scheme://` is refused ([`StoreError::Open`]) rather than taken
/// for a file name.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &PostgresOptions::default()).await
}

/// Like [`open`], with the pool settings a PostgreSQL store uses
/// (`[store] pool_size`, `connect_timeout_secs`).
pub async fn open_with(url: &str, pg: &PostgresOptions) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(sqlite) = sqlite_url(url) {
        return Ok(Arc::new(SqliteStore::open(&sqlite).await?));
    }
    match scheme(url) {
        Some(s) if is_postgres(s) => Ok(Arc::new(PostgresStore::open_with(url, pg).await?)),
        None => Ok(Arc::new(SqliteStore::open(url).await?)),
        Some(other) => Err(unsupported_scheme(url, other)),
    }
}

/// The error for a URL of a kind of database dispatch does not store in.
fn unsupported_scheme(url: &str, scheme: &str) -> StoreError {
    StoreError::Open {
        path: postgres_open::redact(url),
        message: format!(
            "dispatch cannot store tasks in `{scheme}://`: give \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE for PostgreSQL, or sqlite://PATH \
             (or a plain file path) for SQLite"
        ),
    }
}

/// Whether a URL scheme names PostgreSQL (`postgres`, `postgresql`, any case).
fn is_postgres(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

/// `url` with its `sqlite:` scheme in lower case (the only case sqlx reads;
/// schemes have no case), when it has that scheme.
fn sqlite_url(url: &str) -> Option<String> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("sqlite:"))
        .and_then(|_| url.get(7..))?;
    Some(format!("sqlite:{rest}"))
}

/// The scheme of `url` when it starts with one followed by `://` (RFC 3986:
/// a letter, then letters, digits, `+`, `-` or `.`).
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// The cell rate algorithm's emission interval and tolerance (ms) for one
/// request per `interval`, `burst` at once: admitted while the theoretical
/// arrival time, pushed on by the interval, is at most the tolerance ahead.
fn gcra(interval: Duration, burst: u32) -> (i64, i64) {
    let t = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX / 4)
        .max(1);
    (t, t.saturating_mul(i64::from(burst.max(1))))
}

/// How long a refused request waits, from how far ahead the arrival time is.
fn gcra_wait(ahead: i64, t: i64, tolerance: i64) -> Duration {
    let wait = ahead.saturating_add(t).saturating_sub(tolerance).max(1);
    Duration::from_millis(u64::try_from(wait).unwrap_or(1))
}

/// The (scope, limit) pairs whose slot rows a store handle has made exist,
/// so that each is made once per handle, not before every take.
#[derive(Debug, Default)]
struct Seeded(std::sync::Mutex<std::collections::HashSet<(String, u32)>>);

impl Seeded {
    /// Whether the slots of `scope` below `limit` may not exist yet.
    fn needed(&self, scope: &str, limit: u32) -> bool {
        let made = self.0.lock().unwrap_or_else(|p| p.into_inner());
        !made.contains(&(scope.to_string(), limit))
    }

    /// They exist now.
    fn made(&self, scope: &str, limit: u32) {
        let mut made = self.0.lock().unwrap_or_else(|p| p.into_inner());
        made.insert((scope.to_string(), limit));
    }
}

/// A run another process holds now (its old coordinator's writes are refused).
fn run_taken(id: &str) -> StoreError {
    StoreError::Claimed {
        id: id.to_string(),
        owner: "another process".to_string(),
    }
}

/// A claim's epoch as the column holds it (a BIGINT).
fn epoch_column(epoch: u64) -> Result<i64, StoreError> {
    i64::try_from(epoch).map_err(|_| StoreError::Invalid {
        what: format!("claim epoch {epoch}: past 2^63-1"),
    })
}

/// The future a [`Store`] method returns.
///
/// Boxed so that `dyn Store` works; one allocation per call is noise next to
/// a database round trip.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The most tasks one [`Store::list_tasks`] page returns; larger limits are cut to it.
pub const MAX_PAGE: u32 = 1000;

/// Durable storage for tasks and attempts.
///
/// Every method is one short database operation; none holds a lock across
/// calls. Implementations must be safe to call from many tasks at once.
pub trait Store: Send + Sync + 'static {
    /// Stores a new task. [`StoreError::Duplicate`] if its id is taken.
    fn create_task<'a>(&'a self, task: &'a Task) -> StoreFuture<'a, ()>;

    /// Overwrites every field of the stored task that can change (all but
    /// its identity: id, agent, input, parent, depth, subject, creation
    /// time and epoch, which stay as created), but only if its stored state
    /// is still `expected` ([`StoreError::Conflict`] otherwise, with the
    /// state found) and its epoch still `task.epoch` ([`StoreError::Fenced`]
    /// otherwise: another instance took the task over).
    ///
    /// Refuses ([`StoreError::IllegalTransition`]) a move the state machine does
    /// not allow; an update that keeps the state (token counters while running)
    /// is always allowed.
    fn update_task<'a>(&'a self, task: &'a Task, expected: TaskState) -> StoreFuture<'a, ()>;

    /// [`Store::update_task`] that takes the task over: it also adds one to
    /// the stored epoch, and requires it to be `task.epoch` still (the
    /// epoch read), so that of two instances claiming the task at once only
    /// one wins ([`StoreError::Claimed`] for the other). The winner holds
    /// the task at `task.epoch + 1` from then on.
    fn claim_task<'a>(&'a self, task: &'a Task, expected: TaskState) -> StoreFuture<'a, ()>;

    /// Claims for `holder` up to `limit` tasks, oldest first, that are
    /// `queued` or `running` and whose owner is not `holder` and holds no
    /// live lease ([`Store::renew_lease`]; no owner at all counts as none):
    /// owner set to `holder`, epoch plus one, and returned as claimed.
    ///
    /// Instances claiming at once never get the same task: on PostgreSQL
    /// the rows are taken `FOR UPDATE SKIP LOCKED` (no one waits on another's
    /// claim), on SQLite each is a compare-and-set on its epoch.
    fn claim_orphans<'a>(&'a self, holder: &'a str, limit: u32) -> StoreFuture<'a, Vec<Task>>;

    /// Starts or extends `holder`'s lease: live until `lease` from now on
    /// the store's clock (the database server's on PostgreSQL, so instances
    /// whose clocks differ agree).
    fn renew_lease<'a>(&'a self, holder: &'a str, lease: Duration) -> StoreFuture<'a, ()>;

    /// Ends `holder`'s lease now (a clean stop, a process found dead, or a
    /// lease long run out), so that its tasks can be claimed at once: its
    /// row goes. A holder that renews afterwards starts a new lease.
    fn end_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()>;

    /// Every lease the store knows, live or not, by holder.
    fn leases(&self) -> StoreFuture<'_, Vec<Lease>>;

    /// Takes for `holder` a free slot of `scope`: one numbered below `limit`
    /// that has no holder, or whose holder holds no live lease. Its number,
    /// or `None` when all `limit` are taken. Instances taking at once never
    /// get the same slot (the same claims as [`Store::claim_orphans`]).
    fn take_slot<'a>(
        &'a self,
        scope: &'a str,
        limit: u32,
        holder: &'a str,
    ) -> StoreFuture<'a, Option<u32>>;

    /// Gives slot `n` of `scope` back, if `holder` still holds it (and
    /// announces it, where the backend announces).
    fn give_slot<'a>(&'a self, scope: &'a str, n: u32, holder: &'a str) -> StoreFuture<'a, ()>;

    /// Admits one request of `key` under a rate shared by every process on
    /// the store: one per `interval` on average, `burst` at once. `None`
    /// when admitted, else how long until one would be. The check and the
    /// charge are one statement (the generic cell rate algorithm).
    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        burst: u32,
    ) -> StoreFuture<'a, Option<Duration>>;

    /// Announcements of task changes made by any process, when the backend
    /// makes them (PostgreSQL's `LISTEN`; `None` on SQLite). They only
    /// wake: a missed one ([`Change::Missed`]) means anything may have changed.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// The task with this id, if there is one.
    fn get_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>>;

    /// One page of tasks matching `filter`, newest first.
    ///
    /// Pass `None` for the first page and the previous page's
    /// [`TaskPage::next_cursor`] for the next ones. Paging is by position, not
    /// offset: tasks created while a client pages do not shift or repeat the
    /// pages. `limit` is clamped to `1..=`[`MAX_PAGE`].
    fn list_tasks<'a>(
        &'a self,
        filter: &'a TaskFilter,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, TaskPage>;

    /// Records a task's last attempts, then its update (normally its final
    /// state), in one trip to the store: [`Store::update_task`]'s rules and
    /// errors, with `attempts` stored first (fenced as the update is). An attempt already stored under
    /// its `seq` is kept as it is; the attempts stay stored even if the
    /// update is refused or never made (a crash), so an implementation may
    /// commit them apart from it.
    fn finish_task<'a>(
        &'a self,
        task: &'a Task,
        expected: TaskState,
        attempts: &'a [Attempt],
    ) -> StoreFuture<'a, ()>;

    /// Records one provider call, made under the task's claim `epoch`.
    /// [`StoreError::NotFound`] if the task does not exist,
    /// [`StoreError::Duplicate`] if its `seq` is taken, [`StoreError::Fenced`]
    /// if the task is held under another epoch now.
    fn add_attempt<'a>(&'a self, attempt: &'a Attempt, epoch: u64) -> StoreFuture<'a, ()>;

    /// A task's attempts in `seq` order (empty for an unknown task).
    fn attempts<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Attempt>>;

    /// Every task in `state`, oldest first: at startup, the `running` ones to
    /// recover and the `queued` ones to resume.
    fn tasks_in_state(&self, state: TaskState) -> StoreFuture<'_, Vec<Task>>;

    /// Calls, tokens and cost, summed per (task agent, called agent, kind,
    /// provider, model), sorted by those keys.
    fn usage<'a>(&'a self, query: &'a UsageQuery) -> StoreFuture<'a, Vec<UsageRow>>;

    /// How many tasks are in each state: every state of [`TaskState::ALL`], in
    /// that order, zeros included.
    fn counts_by_state(&self) -> StoreFuture<'_, Vec<(TaskState, u64)>>;

    /// Inserts or replaces a workflow run (the run's coordinator is its only
    /// writer): a stored run is replaced only while `run.owner` holds it
    /// ([`StoreError::Claimed`] once another process took it over).
    fn put_run<'a>(&'a self, run: &'a Run) -> StoreFuture<'a, ()>;

    /// Takes a running run over for `to`, if `from` still holds it: of two
    /// processes resuming it at once, one wins ([`StoreError::Claimed`]).
    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> StoreFuture<'a, ()>;

    /// The run with this id, if there is one.
    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Run>>;

    /// Every run in `state`, oldest first (to resume `running` ones at startup).
    fn runs_in_state(&self, state: RunState) -> StoreFuture<'_, Vec<Run>>;

    /// Inserts or replaces one step's state, written by its run's coordinator
    /// `holder`: only while that process holds the run ([`StoreError::Claimed`]
    /// once another took it over; [`StoreError::NotFound`] without the run).
    fn put_step<'a>(&'a self, step: &'a StepRecord, holder: &'a str) -> StoreFuture<'a, ()>;

    /// A run's steps in definition order.
    fn steps<'a>(&'a self, run_id: &'a str) -> StoreFuture<'a, Vec<StepRecord>>;

    /// Records one turn of a tool loop, taken under the task's claim `epoch`.
    /// [`StoreError::NotFound`] if the task does not exist,
    /// [`StoreError::Duplicate`] if its `seq` is taken, [`StoreError::Fenced`]
    /// if the task is held under another epoch now.
    fn add_turn<'a>(&'a self, turn: &'a Turn, epoch: u64) -> StoreFuture<'a, ()>;

    /// A task's turns in `seq` order (empty for an unknown task).
    fn turns<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Turn>>;

    /// Stores a new delegation tree; one already stored under its root is
    /// kept as it is (a resumed root opens its tree again).
    fn open_tree<'a>(&'a self, tree: &'a Tree) -> StoreFuture<'a, ()>;

    /// The tree whose root is `root_id`, if one was opened.
    fn get_tree<'a>(&'a self, root_id: &'a str) -> StoreFuture<'a, Option<Tree>>;

    /// Takes `charge` from the tree in one step: all of it when it fits every
    /// limit, else none of it and [`StoreError::TreeLimit`] naming the limit.
    /// Releases and spending always fit. [`StoreError::NotFound`] if no tree
    /// has that root.
    fn charge_tree<'a>(&'a self, root_id: &'a str, charge: TreeCharge) -> StoreFuture<'a, ()>;

    /// Records that a client started this task or run as an MCP task.
    /// [`StoreError::Duplicate`] if its id is taken.
    fn put_client_task<'a>(&'a self, task: &'a ClientTask) -> StoreFuture<'a, ()>;

    /// The client task with this id, if there is one.
    fn get_client_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ClientTask>>;

    /// One page of the client tasks of `subject` (every one when `None`),
    /// newest first; `cursor` is a page's `next_cursor`.
    fn list_client_tasks<'a>(
        &'a self,
        subject: Option<&'a str>,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, ClientTaskPage>;

    /// Which kind of database this is (`sqlite`, `postgres`), for health reports.
    fn backend(&self) -> Backend;

    /// One trivial round trip to the database: `Ok` while it answers.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Finishes pending work and closes the database. Calls made afterwards fail.
    fn close(&self) -> StoreFuture<'_, ()>;
}

/// A process's lease on the tasks it drives ([`Store::renew_lease`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Lease {
    /// The process (`host:pid:start-ms`, as a task's owner).
    pub holder: String,
    /// When it first took its lease.
    pub started_at: Millis,
    /// Until when it holds it, on the store's clock.
    pub lease_until: Millis,
    /// Whether that is still ahead, on the store's clock.
    pub live: bool,
}

/// What [`Store::changes`] announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A task ended, or was queued with no one driving it.
    Task {
        /// The task.
        id: TaskId,
        /// Its state now.
        state: TaskState,
    },
    /// A slot of this scope was given back ([`Store::give_slot`]).
    Slot {
        /// The scope.
        scope: String,
    },
    /// Announcements may have been lost (the listening connection dropped,
    /// or a receiver fell behind): anything may have changed.
    Missed,
}

/// Which limit of a tree a charge did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeLimitKind {
    /// Tasks in the tree.
    Tasks,
    /// Model turns in the tree.
    Turns,
    /// Money, in micro-USD.
    Money,
}

impl std::fmt::Display for TreeLimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TreeLimitKind::Tasks => "task",
            TreeLimitKind::Turns => "turn",
            TreeLimitKind::Money => "budget",
        })
    }
}

/// Which tasks [`Store::list_tasks`] returns. The default matches every task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TaskFilter {
    /// Only tasks in one of these states; empty for every state.
    pub states: Vec<TaskState>,
    /// Only this agent's tasks.
    pub agent: Option<String>,
    /// Only tasks delegated by this task.
    pub parent_id: Option<TaskId>,
    /// Only the tasks of the delegation tree with this root (the root included).
    #[serde(default)]
    pub root_id: Option<TaskId>,
    /// Only this subject's tasks (an authenticated client sees only its own).
    pub subject: Option<String>,
    /// Only tasks created at or after this time.
    pub since: Option<Millis>,
    /// Only tasks created before this time.
    pub until: Option<Millis>,
}

/// One page of [`Store::list_tasks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskPage {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// Pass this to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Which attempts [`Store::usage`] sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct UsageQuery {
    /// Only attempts started at or after this time.
    pub since: Option<Millis>,
    /// Only attempts started before this time.
    pub until: Option<Millis>,
    /// Only attempts of this subject's tasks.
    pub subject: Option<String>,
    /// Only attempts of the tasks of the delegation tree with this root.
    pub root_id: Option<String>,
}

/// Usage summed over the attempts sharing one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRow {
    /// The agent of the task the calls were made for.
    pub task_agent: String,
    /// The agent whose model was called (differs from `task_agent` for audits
    /// and routing).
    pub agent: String,
    /// What the calls were for.
    pub kind: AttemptKind,
    /// Provider name.
    pub provider: String,
    /// Model id.
    pub model: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that returned no answer.
    pub failed_calls: u64,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed.
    pub output_tokens: u64,
    /// Cost in USD.
    pub cost_usd: f64,
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-set update lost: someone else changed the task first.
    #[error("task {id} is {found}, not {expected}: it changed meanwhile")]
    Conflict {
        /// The task.
        id: TaskId,
        /// The state the writer expected.
        expected: TaskState,
        /// The state stored.
        found: TaskState,
    },
    /// A claim lost: another process took the task first.
    #[error("task {id} was taken over by {owner} meanwhile")]
    Claimed {
        /// The task.
        id: TaskId,
        /// Its owner now.
        owner: String,
    },
    /// A write-back under a claim that is no longer current: another
    /// instance took the task over (its epoch moved on) after this one's
    /// lease ran out. The writer must drop the task; nothing was written.
    #[error(
        "task {id} is now driven by {owner} (claim {epoch}): this process's lease on it ran out"
    )]
    Fenced {
        /// The task.
        id: TaskId,
        /// Its holder now.
        owner: String,
        /// The epoch of the claim that holds it now.
        epoch: u64,
    },
    /// A request over its rate ([`Store::take_rate`] says so as its `Ok`
    /// answer; only the SQLite writer uses this to carry it).
    #[error("{key} is over its request rate: retry in {wait:?}")]
    RateLimited {
        /// The key.
        key: String,
        /// How long until a request would be admitted.
        wait: Duration,
    },
    /// An update asked for a move the state machine forbids.
    #[error("task {id} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The task.
        id: TaskId,
        /// Its state before.
        from: TaskState,
        /// The state asked for.
        to: TaskState,
    },
    /// The task does not exist.
    #[error("no task {id}")]
    NotFound {
        /// The id looked for.
        id: TaskId,
    },
    /// A charge did not fit a tree's limit.
    #[error("{limit} limit of {max} reached ({used} used)")]
    TreeLimit {
        /// Which limit: `tasks`, `turns` or `money` (money in micro-USD).
        limit: TreeLimitKind,
        /// The limit.
        max: i64,
        /// What was used (for money: spent + reserved) before the charge.
        used: i64,
    },
    /// A row with the same key already exists.
    #[error("{what} already exists")]
    Duplicate {
        /// The row, e.g. `task 01h…` or `attempt 3 of task 01h…`.
        what: String,
    },
    /// A paging cursor that this store did not hand out.
    #[error(
        "invalid cursor `{cursor}`: pass the `next_cursor` of the previous page unchanged, or no cursor for the first page"
    )]
    BadCursor {
        /// The cursor given.
        cursor: String,
    },
    /// A value the database cannot hold (a counter past 2^63, a cost that is
    /// not a finite number).
    #[error("cannot store {what}")]
    Invalid {
        /// The value and why.
        what: String,
    },
    /// A stored row that cannot be read back (unknown state, bad JSON, ...).
    #[error(
        "corrupt data in the database: {what} (was it written by a newer version of dispatch?)"
    )]
    Corrupt {
        /// The row and column, and what is wrong with it.
        what: String,
    },
    /// The database failed an operation; the text says which and why.
    #[error("{0}")]
    Database(String),
    /// The database could not be opened or migrated.
    #[error("cannot open database at {path}: {message}")]
    Open {
        /// The path or URL given.
        path: String,
        /// Why, and what to do about it.
        message: String,
    },
}

/// Builds and reads the opaque paging cursor: the (created_at, id) of the last
/// task of a page, hex-encoded so that clients treat it as a token rather than
/// something to edit. Shared by every backend so cursors stay compatible.
pub(crate) mod cursor {
    use super::StoreError;
    use crate::task::Millis;
    use std::fmt::Write;

    /// The cursor after the task with this creation time and id.
    pub(crate) fn encode(created_at: Millis, id: &str) -> String {
        let plain = format!("{created_at}:{id}");
        let mut out = String::with_capacity(plain.len() * 2);
        for b in plain.bytes() {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// The position a cursor stands for.
    pub(crate) fn decode(cursor: &str) -> Result<(Millis, String), StoreError> {
        let bad = || StoreError::BadCursor {
            cursor: cursor.chars().take(80).collect(),
        };
        if cursor.is_empty()
            || !cursor.len().is_multiple_of(2)
            || cursor.len() > 512
            || !cursor.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        let bytes = (0..cursor.len())
            .step_by(2)
            .map(|i| {
                cursor
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        let plain = String::from_utf8(bytes).map_err(|_| bad())?;
        let (millis, id) = plain.split_once(':').ok_or_else(bad)?;
        let millis = millis.parse::<Millis>().map_err(|_| bad())?;
        if id.is_empty() {
            return Err(bad());
        }
        Ok((millis, id.to_string()))
    }
}

/// Formats a backend error as "cannot OPERATION: REASON".
pub(crate) fn database_error(op: fmt::Arguments<'_>, reason: impl fmt::Display) -> StoreError {
    StoreError::Database(format!("cannot {op}: {reason}"))
}

/// A backend's embedded migrations (version, description, SQL) as sqlx's
/// `Migrator`, checksums as sqlx computes them from the SQL.
fn migrator_of(list: &'static [(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        list.iter()
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
