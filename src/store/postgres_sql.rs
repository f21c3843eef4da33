//! The statements of the PostgreSQL store, and what their failures mean.
//!
//! Placeholders are `$N`; the columns are bound from the rows of
//! [`super::rows`], as on SQLite.

use std::fmt;

use sqlx::error::ErrorKind;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, QueryBuilder};

use super::rows::{
    AttemptRow, TaskRow, attempt_columns, client_task_columns, run_columns, step_columns,
    task_columns, tree_columns, turn_columns,
};
use super::{StoreError, database_error};

/// A statement with its arguments bound.
pub(super) type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

pub(super) const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24, $25)"
);

/// Sets every column that can change after a task is created ($2 to $17,
/// bound by [`bind_changes`]). What a task is (agent, input, parent, depth,
/// subject, creation time) stays as created.
macro_rules! set_task {
    () => {
        "UPDATE tasks SET state = $2, started_at = $3, finished_at = $4, model = $5, \
         attempts = $6, input_tokens = $7, output_tokens = $8, cost_usd = $9, output = $10, \
         reason = $11, error = $12, kb_path = $13, routing = $14, requeues = $15, owner = $16, \
         audit = $17"
    };
}

/// The compare-and-set update of [`super::Store::update_task`]: if the
/// stored state is still $18 and the epoch $19.
pub(super) const UPDATE_TASK: &str = concat!(
    set_task!(),
    " WHERE id = $1 AND state = $18 AND epoch = $19"
);

/// [`UPDATE_TASK`] that also moves the epoch on: a claim.
pub(super) const CLAIM_TASK: &str = concat!(
    set_task!(),
    ", epoch = epoch + 1 WHERE id = $1 AND state = $18 AND epoch = $19"
);

/// Now, in milliseconds since the Unix epoch, on the database server's
/// clock: leases are compared on one clock whatever the instances' clocks say.
macro_rules! now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

/// Claims for $1 up to $2 queued or running tasks whose owner holds no live
/// lease, oldest first. `SKIP LOCKED`: a row another instance is claiming
/// (or writing) right now is left to it, so claims never wait on each other.
pub(super) const CLAIM_ORPHANS: &str = concat!(
    "UPDATE tasks SET owner = $1, epoch = epoch + 1 WHERE id IN (\
     SELECT t.id FROM tasks t WHERE t.state IN ('queued', 'running') \
     AND t.owner IS DISTINCT FROM $1 \
     AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.holder = t.owner AND i.lease_until > ",
    now_ms!(),
    ") ORDER BY t.created_at, t.id LIMIT $2 FOR UPDATE OF t SKIP LOCKED) RETURNING ",
    task_columns!()
);

/// Starts or extends the lease of $1 for $2 milliseconds.
pub(super) const RENEW_LEASE: &str = concat!(
    "INSERT INTO instances (holder, started_at, lease_until) VALUES ($1, ",
    now_ms!(),
    ", ",
    now_ms!(),
    " + $2) ON CONFLICT (holder) DO UPDATE SET lease_until = EXCLUDED.lease_until"
);

/// Ends the lease of $1: an ended lease and none are the same to a claim.
pub(super) const END_LEASE: &str = "DELETE FROM instances WHERE holder = $1";

/// Every lease, and whether it is live now.
pub(super) const LEASES: &str = concat!(
    "SELECT holder, started_at, lease_until, lease_until > ",
    now_ms!(),
    " AS live FROM instances ORDER BY holder"
);

/// Makes slots 0 to $2 - 1 of scope $1 exist (free unless taken).
pub(super) const SEED_SLOTS: &str = "INSERT INTO slots (scope, n) \
     SELECT $1, g FROM generate_series(0, $2 - 1) AS g ON CONFLICT (scope, n) DO NOTHING";

/// Takes for $3 the lowest free slot of scope $1 below $2. `SKIP LOCKED`: a
/// slot another instance is taking is left to it.
pub(super) const TAKE_SLOT: &str = concat!(
    "UPDATE slots SET holder = $3, taken_at = ",
    now_ms!(),
    " WHERE (scope, n) = (SELECT s.scope, s.n FROM slots s WHERE s.scope = $1 AND s.n < $2 \
     AND (s.holder IS NULL OR NOT EXISTS (SELECT 1 FROM instances i \
     WHERE i.holder = s.holder AND i.lease_until > ",
    now_ms!(),
    ")) ORDER BY s.n LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING n"
);

/// Gives slot $2 of scope $1 back if $3 holds it, and says so on [`SLOT_CHANNEL`].
pub(super) const GIVE_SLOT: &str = "WITH given AS (UPDATE slots SET holder = NULL, taken_at = NULL \
     WHERE scope = $1 AND n = $2 AND holder = $3 RETURNING scope) \
     SELECT pg_notify('dispatch_slots', scope) FROM given";

/// Admits a request of key $1 when its theoretical arrival time, pushed on
/// by the interval $2, stays within the tolerance $3 of now; returns the
/// new time. No row: refused (nothing changed).
pub(super) const TAKE_RATE: &str = concat!(
    "INSERT INTO rates AS r (key, tat) VALUES ($1, ",
    now_ms!(),
    " + $2) ON CONFLICT (key) DO UPDATE SET tat = GREATEST(r.tat, ",
    now_ms!(),
    ") + $2 WHERE GREATEST(r.tat, ",
    now_ms!(),
    ") + $2 - ",
    now_ms!(),
    " <= $3 RETURNING tat"
);

/// How far ahead of now the theoretical arrival time of key $1 is.
pub(super) const RATE_AHEAD: &str =
    concat!("SELECT tat - ", now_ms!(), " FROM rates WHERE key = $1");

/// The channel slots given back are announced on.
pub(super) const SLOT_CHANNEL: &str = "dispatch_slots";

/// The channel the tasks' trigger (`migrations/postgres/0002_leases.sql`)
/// announces changes on.
pub(super) const CHANNEL: &str = "dispatch_tasks";

const INSERT_ATTEMPTS: &str = concat!(
    "INSERT INTO attempts (",
    attempt_columns!(),
    ") SELECT * FROM ("
);

pub(super) const SELECT_TASK: &str =
    concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");

pub(super) const TASKS_IN_STATE: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE state = $1 ORDER BY created_at, id"
);

pub(super) const SELECT_ATTEMPTS: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM attempts WHERE task_id = $1 ORDER BY seq"
);

/// Sums in BIGINT (PostgreSQL sums BIGINTs into NUMERIC; a sum past 2^63-1
/// fails the query, as SQLite's integer overflow does).
pub(super) const USAGE: &str = "SELECT t.agent AS task_agent, a.agent AS agent, a.kind AS kind, \
     a.provider AS provider, a.model AS model, COUNT(*) AS calls, \
     COUNT(*) FILTER (WHERE NOT a.ok) AS failed_calls, \
     SUM(a.input_tokens)::BIGINT AS input_tokens, SUM(a.output_tokens)::BIGINT AS output_tokens, \
     SUM(a.cost_usd) AS cost_usd \
     FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE TRUE";

pub(super) const SELECT_RUN: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

pub(super) const RUNS_IN_STATE: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE state = $1 ORDER BY created_at, id"
);

pub(super) const SELECT_STEPS: &str = concat!(
    "SELECT ",
    step_columns!(),
    " FROM run_steps WHERE run_id = $1 ORDER BY idx"
);

pub(super) const SELECT_TURNS: &str = concat!(
    "SELECT ",
    turn_columns!(),
    " FROM turns WHERE task_id = $1 ORDER BY seq"
);

pub(super) const SELECT_TREE: &str =
    concat!("SELECT ", tree_columns!(), " FROM trees WHERE root_id = $1");

pub(super) const SELECT_CLIENT_TASK: &str = concat!(
    "SELECT ",
    client_task_columns!(),
    " FROM mcp_tasks WHERE id = $1"
);

/// What a compare-and-set that matched no row met.
pub(super) const TASK_STATE_AND_OWNER: &str = "SELECT state, owner, epoch FROM tasks WHERE id = $1";

pub(super) const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) FROM tasks GROUP BY state";

pub(super) const PUT_RUN: &str = concat!(
    "INSERT INTO runs (",
    run_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (id) DO UPDATE SET name = $2, agent = $3, state = $4, input = $5, \
     definition = $6, subject = $7, owner = $8, created_at = $9, finished_at = $10, error = $11 \
     WHERE runs.owner IS NOT DISTINCT FROM $8"
);

/// Gives run $1 to $3 if it is running and $2 still holds it.
pub(super) const CLAIM_RUN: &str = "UPDATE runs SET owner = $3 \
     WHERE id = $1 AND state = 'running' AND owner IS NOT DISTINCT FROM $2";

pub(super) const PUT_STEP: &str = concat!(
    "INSERT INTO run_steps (",
    step_columns!(),
    ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
     WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND owner IS NOT DISTINCT FROM $11) \
     ON CONFLICT (run_id, step_id) DO UPDATE SET idx = $3, state = $4, task_id = $5, \
     tries = $6, started_at = $7, finished_at = $8, error = $9, output_path = $10"
);

/// A turn, stored only while its task is held under epoch $7 (fenced).
pub(super) const INSERT_TURN: &str = "INSERT INTO turns (task_id, seq, answer, kind, at, data) \
     SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND epoch = $7)";

pub(super) const OPEN_TREE: &str = concat!(
    "INSERT INTO trees (",
    tree_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (root_id) DO NOTHING"
);

/// A charge against a tree: the WHERE clause is the limit, so it is taken
/// whole or not at all, in the statement that takes it.
pub(super) const CHARGE_TREE: &str = "UPDATE trees SET tasks = tasks + $2, turns = turns + $3, \
     reserved_micros = GREATEST(reserved_micros + $4 - $5, 0), spent_micros = spent_micros + $6 \
     WHERE root_id = $1 \
     AND ($2 = 0 OR tasks + $2 <= max_tasks) \
     AND ($3 = 0 OR turns + $3 <= max_turns) \
     AND ($4 = 0 OR budget_micros IS NULL OR spent_micros + reserved_micros + $4 <= budget_micros)";

pub(super) const TREE_USE: &str = "SELECT tasks, max_tasks, turns, max_turns, spent_micros, \
     reserved_micros, budget_micros FROM trees WHERE root_id = $1";

pub(super) const INSERT_CLIENT_TASK: &str = concat!(
    "INSERT INTO mcp_tasks (",
    client_task_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6)"
);

/// Attempts per `INSERT` of [`super::Store::finish_task`]: 18 parameters each,
/// well below PostgreSQL's 65535.
pub(super) const ATTEMPTS_PER_INSERT: usize = 1000;

/// The `INSERT` of these attempts of task `task_id`, one row each, made
/// only while the task is held under `epoch` (fenced).
pub(super) fn insert_attempts(
    rows: &[AttemptRow],
    task_id: &str,
    epoch: i64,
) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::<Postgres>::new(INSERT_ATTEMPTS);
    q.push_values(rows, |mut b, a| {
        b.push_bind(&a.task_id)
            .push_bind(a.seq)
            .push_bind(a.kind)
            .push_bind(&a.agent)
            .push_bind(&a.provider)
            .push_bind(&a.model)
            .push_bind(a.started_at)
            .push_bind(a.latency_ms)
            .push_bind(a.ok)
            .push_bind(a.http_status)
            .push_bind(&a.error)
            .push_bind(a.input_tokens)
            .push_bind(a.output_tokens)
            .push_bind(a.cost_usd)
            .push_bind(a.cost_source)
            .push_bind(&a.verdict)
            .push_bind(&a.revision_message)
            .push_bind(&a.output);
    });
    q.push(") AS v WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ")
        .push_bind(task_id)
        .push(" AND epoch = ")
        .push_bind(epoch)
        .push(")");
    q
}

/// Binds `$1` to `$17` of [`UPDATE_TASK`] and [`CLAIM_TASK`]: the id, then
/// every column that can change.
pub(super) fn bind_changes<'q>(q: PgQuery<'q>, t: &TaskRow) -> PgQuery<'q> {
    q.bind(&t.id)
        .bind(t.state)
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
}

/// Which constraint a statement broke, if that is why it failed.
pub(super) fn violation(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        sqlx::Error::Database(db) => Some(db.kind()),
        _ => None,
    }
}

/// The database's own words when there are some, without sqlx's preamble.
pub(super) fn reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::PoolClosed => "the store is closed".to_string(),
        sqlx::Error::PoolTimedOut => "no database connection came free in time: the server is \
                                      slow or unreachable, or the pool is too small for the load"
            .to_string(),
        other => other.to_string(),
    }
}

/// A failed operation `op` as the store's error. Text with a NUL character
/// is the one value PostgreSQL refuses that SQLite takes: it is
/// [`StoreError::Invalid`] (nothing was written), not a database failure.
pub(super) fn db_err(op: fmt::Arguments<'_>, e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        // character_not_in_repertoire: "invalid byte sequence for encoding \"UTF8\": 0x00"
        && db.code().as_deref() == Some("22021")
    {
        return StoreError::Invalid {
            what: format!(
                "{op}: a text holds a NUL character (U+0000), which PostgreSQL cannot store"
            ),
        };
    }
    tracing::warn!(error = %e, "database operation failed: {op}");
    database_error(op, reason(&e))
}
