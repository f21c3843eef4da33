//! Tests of the stores through the [`Store`] trait, as the engine uses it.
//!
//! Every test that does not depend on the backend is written once, as an
//! `async fn(Backend)`, and runs on each backend: `sqlite::NAME` and
//! `postgres::NAME` (see [`on_every_backend`]). A PostgreSQL test without a
//! server to run on says so on stderr and passes, or fails when
//! `DISPATCH_REQUIRE_POSTGRES=1` (see `pg_test`). The tests of one backend's
//! own behaviour (SQLite files and URLs, PostgreSQL's open errors) follow
//! the shared ones.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::task::{AttemptKind, CostSource, FailReason, new_task_id};

/// Where a test's stores live.
#[derive(Debug, Clone)]
enum Backend {
    /// A scratch SQLite database per store.
    Sqlite,
    /// A fresh database per store on the test server.
    Postgres(pg_test::Databases),
}

/// A way into a store's database around the store, for tests that plant
/// rows the store would refuse.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    async fn execute(&self, sql: &'static str) {
        match self {
            Raw::Sqlite(pool) => drop(sqlx::query(sql).execute(pool).await.unwrap()),
            Raw::Postgres(pool) => drop(sqlx::query(sql).execute(pool).await.unwrap()),
        }
    }
}

impl Backend {
    /// A new, empty store.
    async fn store(&self) -> Arc<dyn Store> {
        self.open().await.0
    }

    /// A new, empty store, and a way around it into its database.
    async fn open(&self) -> (Arc<dyn Store>, Raw) {
        match self {
            Backend::Sqlite => {
                let store = SqliteStore::open_in_memory().await.unwrap();
                let raw = Raw::Sqlite(store.raw_pool().clone());
                (Arc::new(store), raw)
            }
            Backend::Postgres(dbs) => {
                let url = dbs.fresh().await.unwrap();
                let store = PostgresStore::open(&url).await.unwrap();
                let raw = Raw::Postgres(store.raw_pool().clone());
                (Arc::new(store), raw)
            }
        }
    }
}

/// Runs a shared test on SQLite.
async fn on_sqlite<F: Future<Output = ()>>(_name: &str, test: impl FnOnce(Backend) -> F) {
    test(Backend::Sqlite).await;
}

/// Runs a shared test on PostgreSQL.
async fn on_postgres<F: Future<Output = ()>>(name: &str, test: impl FnOnce(Backend) -> F) {
    on_postgres_server(name, |dbs| test(Backend::Postgres(dbs))).await;
}

/// Runs a test with the test server's databases, if there is a server to
/// run it on, and drops the databases it made after it, failed or not.
async fn on_postgres_server<F: Future<Output = ()>>(
    name: &str,
    test: impl FnOnce(pg_test::Databases) -> F,
) {
    use futures_util::FutureExt;
    let Some(dbs) = pg_test::databases_or_skip(name) else {
        return;
    };
    let outcome = std::panic::AssertUnwindSafe(test(dbs.clone()))
        .catch_unwind()
        .await;
    dbs.drop_all().await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Makes `sqlite::NAME` and `postgres::NAME` tests of each `async fn
/// NAME(Backend)` listed (`NAME(threads)` on a multi-threaded runtime).
macro_rules! on_every_backend {
    ($($name:ident $(($threads:literal))?),* $(,)?) => {
        mod sqlite {
            $(on_every_backend!(@test on_sqlite $name $($threads)?);)*
        }
        mod postgres {
            $(on_every_backend!(@test on_postgres $name $($threads)?);)*
        }
    };
    (@test $run:ident $name:ident) => {
        #[tokio::test]
        async fn $name() {
            super::$run(stringify!($name), super::$name).await;
        }
    };
    (@test $run:ident $name:ident $threads:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
        async fn $name() {
            super::$run(stringify!($name), super::$name).await;
        }
    };
}

on_every_backend! {
    every_task_field_round_trips,
    every_attempt_field_round_trips,
    values_the_database_cannot_hold_are_refused,
    duplicates_and_orphans_are_refused,
    update_is_compare_and_set,
    illegal_transitions_are_refused_before_writing,
    paging_yields_every_task_once_for_every_filter,
    tasks_created_while_paging_do_not_shift_pages,
    a_bad_cursor_is_refused_with_advice,
    attempts_come_back_in_seq_order,
    usage_sums_by_agent_kind_and_model,
    tasks_in_state_are_oldest_first,
    corrupt_rows_are_errors_not_panics,
    concurrent_writers_do_not_meet_locked_errors(4),
    racing_updates_on_one_task_have_one_winner(4),
    racing_claims_have_one_winner(4),
    a_closed_store_refuses_writes,
    runs_and_steps_round_trip_and_upsert,
    finish_stores_attempts_then_the_update,
    a_claim_needs_the_state_and_the_epoch,
    racing_sweeps_share_the_orphans(4),
    writes_under_an_old_claim_are_fenced,
    leases_decide_what_is_claimed,
    slots_are_taken_below_the_limit_and_come_back,
    a_run_is_claimed_once_and_its_old_coordinator_fenced,
    racing_takers_never_pass_the_limit(4),
    a_rate_admits_its_burst_then_says_how_long_to_wait,
    turns_round_trip_in_order_and_a_seq_is_taken_once,
    a_tree_charge_fits_every_limit_or_takes_nothing,
    concurrent_reservations_never_overspend(4),
    client_tasks_round_trip_page_newest_first_and_keep_to_their_subject,
}

/// A task with every optional field set, odd text and large numbers.
fn full_task() -> Task {
    Task {
        id: new_task_id(),
        agent: "rédacteur-🦀".to_string(),
        state: TaskState::Failed,
        input: json!({"prompt": "日本語 \u{0000} \"quotes\" \\", "n": [1, 2.5, null, true]}),
        parent_id: Some(new_task_id()),
        root_id: Some(new_task_id()),
        depth: u32::MAX,
        subject: Some("user@example.com|ß".to_string()),
        created_at: 1_700_000_000_123,
        started_at: Some(-1),
        finished_at: Some(i64::MAX),
        model: Some("openrouter/anthropic/claude-sonnet".to_string()),
        attempts: u32::MAX,
        input_tokens: i64::MAX as u64,
        output_tokens: 12_345_678_901,
        cost_usd: 1_234.567_890_123_456_7,
        output: Some("line 1\nline 2 — ✓\r\n\t".to_string()),
        reason: Some(FailReason::AuditRejected),
        error: Some("HTTP 429: too many requests".to_string()),
        kb_path: Some("outbox/2024/ünïcode.md".to_string()),
        routing: Some(json!({"chosen": "writer", "scores": {"writer": 0.9}})),
        requeues: 7,
        owner: Some("host:1:2".into()),
        epoch: 0,
        audit: Some(serde_json::json!({"mirror": "m", "rounds": ["é"]})),
    }
}

fn attempt(task_id: &str, seq: u32) -> Attempt {
    Attempt {
        task_id: task_id.to_string(),
        seq,
        kind: AttemptKind::Primary,
        agent: "writer".to_string(),
        provider: "openrouter".to_string(),
        model: "some/model".to_string(),
        started_at: 1_000 + i64::from(seq),
        latency_ms: 250,
        ok: true,
        http_status: None,
        error: None,
        input_tokens: 100,
        output_tokens: 50,
        cost_usd: 0.001,
        cost_source: CostSource::Reported,
        verdict: None,
        revision_message: None,
        output: None,
    }
}

async fn every_task_field_round_trips(b: Backend) {
    let store = b.store().await;
    let full = full_task();
    store.create_task(&full).await.unwrap();
    assert_eq!(store.get_task(&full.id).await.unwrap(), Some(full.clone()));

    // The minimal task: every Option None, a plain string input.
    let bare = Task::new("a", json!("just a string"));
    store.create_task(&bare).await.unwrap();
    assert_eq!(store.get_task(&bare.id).await.unwrap(), Some(bare.clone()));

    // JSON null is a value, not an absent one.
    let mut null_routing = Task::new("a", serde_json::Value::Null);
    null_routing.routing = Some(serde_json::Value::Null);
    store.create_task(&null_routing).await.unwrap();
    let back = store.get_task(&null_routing.id).await.unwrap().unwrap();
    assert_eq!(back.routing, Some(serde_json::Value::Null));
    assert_eq!(back.input, serde_json::Value::Null);

    // Every fail reason survives.
    for (i, reason) in [
        FailReason::ProviderError,
        FailReason::Rejected,
        FailReason::Timeout,
        FailReason::Interrupted,
        FailReason::AuditRejected,
        FailReason::AuditFailed,
        FailReason::AuditError,
        FailReason::Cancelled,
        FailReason::Invalid,
        FailReason::Internal,
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = Task::new("r", json!(i));
        t.reason = Some(reason);
        store.create_task(&t).await.unwrap();
        assert_eq!(
            store.get_task(&t.id).await.unwrap().unwrap().reason,
            Some(reason)
        );
    }

    assert_eq!(store.get_task("no-such-task").await.unwrap(), None);
}

async fn every_attempt_field_round_trips(b: Backend) {
    let store = b.store().await;
    let task = Task::new("writer", json!("x"));
    store.create_task(&task).await.unwrap();

    let full = Attempt {
        task_id: task.id.clone(),
        seq: u32::MAX,
        kind: AttemptKind::AuditRepair,
        agent: "auditeur-✓".to_string(),
        provider: "prövider".to_string(),
        model: "vendor/model:free".to_string(),
        started_at: i64::MIN,
        latency_ms: i64::MAX as u64,
        ok: false,
        http_status: Some(u16::MAX),
        error: Some("timeout after 30 s — 超时".to_string()),
        input_tokens: i64::MAX as u64,
        output_tokens: 0,
        cost_usd: -0.5,
        cost_source: CostSource::PriceTable,
        verdict: Some(json!({"verdict": "revise", "notes": ["a", "b"]})),
        revision_message: Some("please fix ¶2".to_string()),
        output: Some("the answer ✓".to_string()),
    };
    store.add_attempt(&full, 0).await.unwrap();
    let mut bare = attempt(&task.id, 1);
    bare.kind = AttemptKind::Escalation;
    bare.cost_source = CostSource::Unknown;
    store.add_attempt(&bare, 0).await.unwrap();
    let mut routing = attempt(&task.id, 2);
    routing.kind = AttemptKind::Routing;
    routing.verdict = Some(serde_json::Value::Null);
    store.add_attempt(&routing, 0).await.unwrap();

    assert_eq!(
        store.attempts(&task.id).await.unwrap(),
        vec![bare, routing, full]
    );
    assert!(store.attempts("unknown").await.unwrap().is_empty());
}

async fn values_the_database_cannot_hold_are_refused(b: Backend) {
    let store = b.store().await;
    let mut t = Task::new("a", json!(1));
    t.input_tokens = u64::MAX;
    let err = store.create_task(&t).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("input_tokens"), "{err}");

    t.input_tokens = 0;
    t.cost_usd = f64::NAN;
    let err = store.create_task(&t).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");

    t.cost_usd = 0.0;
    store.create_task(&t).await.unwrap();
    let mut a = attempt(&t.id, 1);
    a.output_tokens = u64::MAX;
    let err = store.add_attempt(&a, 0).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(store.attempts(&t.id).await.unwrap().is_empty());
}

async fn duplicates_and_orphans_are_refused(b: Backend) {
    let store = b.store().await;
    let t = Task::new("a", json!(1));
    store.create_task(&t).await.unwrap();
    let err = store.create_task(&t).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");

    store.add_attempt(&attempt(&t.id, 1), 0).await.unwrap();
    let err = store.add_attempt(&attempt(&t.id, 1), 0).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");

    let err = store
        .add_attempt(&attempt("ghost", 1), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { id } if id == "ghost"),
        "{err}"
    );
}

async fn update_is_compare_and_set(b: Backend) {
    let store = b.store().await;
    let mut t = Task::new("a", json!("in"));
    store.create_task(&t).await.unwrap();

    t.state = TaskState::Running;
    t.started_at = Some(5);
    store.update_task(&t, TaskState::Queued).await.unwrap();

    // A second writer that still believes the task is queued loses.
    let mut stale = t.clone();
    stale.state = TaskState::Cancelled;
    stale.reason = Some(FailReason::Cancelled);
    let err = store
        .update_task(&stale, TaskState::Queued)
        .await
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            id,
            expected,
            found,
        } => {
            assert_eq!(id, &t.id);
            assert_eq!(*expected, TaskState::Queued);
            assert_eq!(*found, TaskState::Running);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.to_string().contains("running"), "{err}");
    assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t.clone()));

    // Same-state updates are how counters move while running.
    t.input_tokens = 10;
    t.attempts = 1;
    store.update_task(&t, TaskState::Running).await.unwrap();

    t.state = TaskState::Succeeded;
    t.output = Some("done".into());
    t.finished_at = Some(9);
    store.update_task(&t, TaskState::Running).await.unwrap();
    assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t.clone()));

    let ghost = Task::new("a", json!(1));
    let err = store
        .update_task(&ghost, TaskState::Queued)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

async fn illegal_transitions_are_refused_before_writing(b: Backend) {
    let store = b.store().await;
    let mut t = Task::new("a", json!(1));
    t.state = TaskState::Succeeded;
    store.create_task(&t).await.unwrap();

    let mut back = t.clone();
    back.state = TaskState::Running;
    let err = store
        .update_task(&back, TaskState::Succeeded)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::IllegalTransition {
                from: TaskState::Succeeded,
                to: TaskState::Running,
                ..
            }
        ),
        "{err}"
    );

    let q = Task::new("a", json!(1));
    store.create_task(&q).await.unwrap();
    let mut skip = q.clone();
    skip.state = TaskState::Succeeded;
    let err = store
        .update_task(&skip, TaskState::Queued)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    assert_eq!(store.get_task(&q.id).await.unwrap(), Some(q));

    // Every transition the state machine allows goes through.
    for from in TaskState::ALL {
        for to in TaskState::ALL.into_iter().filter(|to| from.can_become(*to)) {
            let mut t = Task::new("a", json!(1));
            t.state = from;
            store.create_task(&t).await.unwrap();
            t.state = to;
            store.update_task(&t, from).await.unwrap();
        }
    }
}

/// 250 tasks spread over agents, parents, subjects, states and times, with
/// some creation times shared so that the id has to break ties.
async fn seeded(b: &Backend) -> (Arc<dyn Store>, Vec<Task>) {
    let store = b.store().await;
    let parents = [new_task_id(), new_task_id()];
    let mut all = Vec::new();
    for i in 0..250u32 {
        let mut t = Task::new(
            ["alpha", "beta", "gamma"][i as usize % 3],
            json!({ "i": i }),
        );
        t.created_at = 1_000_000 + i64::from(i / 4) * 1000;
        t.state = TaskState::ALL[i as usize % 5];
        t.parent_id = (i % 7 < 2).then(|| parents[i as usize % 2].clone());
        t.subject = match i % 4 {
            0 => None,
            1 => Some("alice".into()),
            _ => Some("bob".into()),
        };
        store.create_task(&t).await.unwrap();
        all.push(t);
    }
    (store, all)
}

/// Pages through `filter` with limit 100 and checks the result is exactly the
/// matching tasks, newest first, each once.
async fn check_paging(
    store: &dyn Store,
    all: &[Task],
    filter: &TaskFilter,
    keep: impl Fn(&Task) -> bool,
) {
    let mut want: Vec<&Task> = all.iter().filter(|t| keep(t)).collect();
    want.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_tasks(filter, cursor.as_deref(), 100)
            .await
            .unwrap();
        pages += 1;
        assert!(page.tasks.len() <= 100);
        got.extend(page.tasks);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    let got_ids: Vec<&str> = got.iter().map(|t| t.id.as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got_ids, want_ids, "filter {filter:?}");
    assert_eq!(
        got_ids.iter().collect::<HashSet<_>>().len(),
        got_ids.len(),
        "a task repeated"
    );
    assert_eq!(pages, want.len().div_ceil(100).max(1), "filter {filter:?}");
}

async fn paging_yields_every_task_once_for_every_filter(b: Backend) {
    let (store, all) = seeded(&b).await;
    let store = &*store;
    let parent = all.iter().find_map(|t| t.parent_id.clone()).unwrap();

    check_paging(store, &all, &TaskFilter::default(), |_| true).await;
    let f = TaskFilter {
        states: vec![TaskState::Queued, TaskState::Failed],
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| {
        matches!(t.state, TaskState::Queued | TaskState::Failed)
    })
    .await;
    let f = TaskFilter {
        agent: Some("beta".into()),
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| t.agent == "beta").await;
    let f = TaskFilter {
        parent_id: Some(parent.clone()),
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| t.parent_id.as_ref() == Some(&parent)).await;
    let f = TaskFilter {
        subject: Some("bob".into()),
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| t.subject.as_deref() == Some("bob")).await;
    let (since, until) = (1_010_000, 1_050_000);
    let f = TaskFilter {
        since: Some(since),
        until: Some(until),
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| {
        t.created_at >= since && t.created_at < until
    })
    .await;
    let f = TaskFilter {
        since: Some(since),
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| t.created_at >= since).await;

    // Everything at once.
    let f = TaskFilter {
        states: vec![
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Cancelled,
        ],
        agent: Some("alpha".into()),
        subject: Some("bob".into()),
        until: Some(1_060_000),
        ..Default::default()
    };
    check_paging(store, &all, &f, |t| {
        !matches!(t.state, TaskState::Queued | TaskState::Failed)
            && t.agent == "alpha"
            && t.subject.as_deref() == Some("bob")
            && t.created_at < 1_060_000
    })
    .await;

    // Nothing matches: one empty page.
    let f = TaskFilter {
        agent: Some("nobody".into()),
        ..Default::default()
    };
    let page = store.list_tasks(&f, None, 100).await.unwrap();
    assert!(page.tasks.is_empty() && page.next_cursor.is_none());

    // Limits are clamped rather than refused.
    let page = store
        .list_tasks(&TaskFilter::default(), None, 0)
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 1);
    let page = store
        .list_tasks(&TaskFilter::default(), None, u32::MAX)
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 250);
    assert!(page.next_cursor.is_none());
}

async fn tasks_created_while_paging_do_not_shift_pages(b: Backend) {
    let (store, all) = seeded(&b).await;
    let first = store
        .list_tasks(&TaskFilter::default(), None, 100)
        .await
        .unwrap();
    let newer = Task::new("alpha", json!("late"));
    store.create_task(&newer).await.unwrap();
    let second = store
        .list_tasks(&TaskFilter::default(), first.next_cursor.as_deref(), 100)
        .await
        .unwrap();
    let seen: HashSet<_> = first
        .tasks
        .iter()
        .chain(&second.tasks)
        .map(|t| &t.id)
        .collect();
    assert_eq!(seen.len(), 200);
    assert!(!seen.contains(&newer.id));
    assert!(all.len() == 250);
}

async fn a_bad_cursor_is_refused_with_advice(b: Backend) {
    let store = b.store().await;
    let f = TaskFilter::default();
    for bad in [
        "",
        "garbage",
        "zz",
        "+f+f",
        "abc",
        &cursor::encode(5, "x")[2..],
        // Well-formed hex, wrong content.
        "41",
        "3a6964",
        "31323a",
        "ff",
    ] {
        let err = store.list_tasks(&f, Some(bad), 10).await.unwrap_err();
        assert!(matches!(err, StoreError::BadCursor { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("next_cursor"), "{err}");
    }
    let (millis, id) = cursor::decode(&cursor::encode(-42, "01h:x")).unwrap();
    assert_eq!((millis, id.as_str()), (-42, "01h:x"));
}

async fn attempts_come_back_in_seq_order(b: Backend) {
    let store = b.store().await;
    let t = Task::new("a", json!(1));
    store.create_task(&t).await.unwrap();
    for seq in [3, 1, 10, 2] {
        store.add_attempt(&attempt(&t.id, seq), 0).await.unwrap();
    }
    let seqs: Vec<u32> = store
        .attempts(&t.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 10]);
}

async fn usage_sums_by_agent_kind_and_model(b: Backend) {
    let store = b.store().await;
    let mut writer = Task::new("writer", json!(1));
    writer.subject = Some("alice".into());
    let mut coder = Task::new("coder", json!(2));
    coder.subject = Some("bob".into());
    store.create_task(&writer).await.unwrap();
    store.create_task(&coder).await.unwrap();

    let call = |task: &Task, seq, kind, agent: &str, model: &str, at, ok, cost| Attempt {
        task_id: task.id.clone(),
        seq,
        kind,
        agent: agent.to_string(),
        provider: "or".to_string(),
        model: model.to_string(),
        started_at: at,
        latency_ms: 1,
        ok,
        http_status: (!ok).then_some(500),
        error: None,
        input_tokens: 10 * u64::from(seq),
        output_tokens: u64::from(seq),
        cost_usd: cost,
        cost_source: CostSource::Reported,
        verdict: None,
        revision_message: None,
        output: None,
    };
    use AttemptKind::*;
    for a in [
        call(&writer, 1, Primary, "writer", "m1", 100, false, 0.0),
        call(&writer, 2, Primary, "writer", "m1", 200, true, 0.25),
        call(&writer, 3, Audit, "auditor", "m2", 300, true, 0.5),
        call(&writer, 4, Primary, "writer", "m3", 400, true, 1.0),
        call(&coder, 1, Routing, "router", "m2", 150, true, 0.125),
        call(&coder, 2, Primary, "coder", "m1", 250, true, 2.0),
        call(&coder, 3, Escalation, "coder", "m4", 350, false, 0.0),
    ] {
        store.add_attempt(&a, 0).await.unwrap();
    }

    let row = |task_agent: &str, agent: &str, kind, model: &str, calls, failed, inp, out, cost| {
        UsageRow {
            task_agent: task_agent.to_string(),
            agent: agent.to_string(),
            kind,
            provider: "or".to_string(),
            model: model.to_string(),
            calls,
            failed_calls: failed,
            input_tokens: inp,
            output_tokens: out,
            cost_usd: cost,
        }
    };

    // Sorted by the key columns; kinds sort by their stable names.
    let all = store.usage(&UsageQuery::default()).await.unwrap();
    assert_eq!(
        all,
        vec![
            row("coder", "coder", Escalation, "m4", 1, 1, 30, 3, 0.0),
            row("coder", "coder", Primary, "m1", 1, 0, 20, 2, 2.0),
            row("coder", "router", Routing, "m2", 1, 0, 10, 1, 0.125),
            row("writer", "auditor", Audit, "m2", 1, 0, 30, 3, 0.5),
            row("writer", "writer", Primary, "m1", 2, 1, 30, 3, 0.25),
            row("writer", "writer", Primary, "m3", 1, 0, 40, 4, 1.0),
        ]
    );

    // A window on the attempt's start: [200, 350).
    let window = store
        .usage(&UsageQuery {
            root_id: None,
            since: Some(200),
            until: Some(350),
            subject: None,
        })
        .await
        .unwrap();
    assert_eq!(
        window,
        vec![
            row("coder", "coder", Primary, "m1", 1, 0, 20, 2, 2.0),
            row("writer", "auditor", Audit, "m2", 1, 0, 30, 3, 0.5),
            row("writer", "writer", Primary, "m1", 1, 0, 20, 2, 0.25),
        ]
    );

    let alice = store
        .usage(&UsageQuery {
            root_id: None,
            since: None,
            until: Some(301),
            subject: Some("alice".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        alice,
        vec![
            row("writer", "auditor", Audit, "m2", 1, 0, 30, 3, 0.5),
            row("writer", "writer", Primary, "m1", 2, 1, 30, 3, 0.25),
        ]
    );

    let nobody = store
        .usage(&UsageQuery {
            root_id: None,
            subject: Some("carol".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(nobody.is_empty());
}

async fn tasks_in_state_are_oldest_first(b: Backend) {
    let (store, all) = seeded(&b).await;
    for state in TaskState::ALL {
        let mut want: Vec<&Task> = all.iter().filter(|t| t.state == state).collect();
        want.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let got = store.tasks_in_state(state).await.unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{state}");
    }
    let counts = store.counts_by_state().await.unwrap();
    assert_eq!(
        counts,
        TaskState::ALL.iter().map(|s| (*s, 50)).collect::<Vec<_>>()
    );
    let empty = b.store().await;
    assert!(
        empty
            .tasks_in_state(TaskState::Running)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        empty
            .counts_by_state()
            .await
            .unwrap()
            .iter()
            .all(|(_, n)| *n == 0)
    );
}

#[tokio::test]
async fn a_file_database_keeps_its_data_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    // The folder does not exist yet: open creates it.
    let path = dir.path().join("nested/deeper/dispatch.db");
    let path = path.to_str().unwrap();

    let mut t = full_task();
    t.state = TaskState::Running;
    t.reason = None;
    {
        let store = SqliteStore::open(path).await.unwrap();
        store.create_task(&t).await.unwrap();
        store.add_attempt(&attempt(&t.id, 1), 0).await.unwrap();
        store.close().await.unwrap();
    }
    {
        // A URL to the same file; migrations already applied are skipped.
        let store = SqliteStore::open(&format!("sqlite://{path}"))
            .await
            .unwrap();
        assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t.clone()));
        assert_eq!(
            store.tasks_in_state(TaskState::Running).await.unwrap(),
            vec![t.clone()]
        );
        t.state = TaskState::Queued;
        t.requeues += 1;
        store.update_task(&t, TaskState::Running).await.unwrap();
        // Dropped without close, as in a crash: committed writes are in the WAL.
    }
    let store = SqliteStore::open(&format!("sqlite:{path}")).await.unwrap();
    assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t.clone()));
    assert_eq!(
        store.attempts(&t.id).await.unwrap(),
        vec![attempt(&t.id, 1)]
    );
    store.close().await.unwrap();
    let err = store.get_task(&t.id).await.unwrap_err();
    assert!(err.to_string().starts_with("cannot read task"), "{err}");
}

#[tokio::test]
async fn open_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a folder").unwrap();

    // A folder path that runs through a file.
    let under_file = file.join("db.sqlite");
    let err = SqliteStore::open(under_file.to_str().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(
        err.to_string().starts_with("cannot open database at"),
        "{err}"
    );

    // A file that is not a database.
    let err = SqliteStore::open(file.to_str().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("not a dispatch database"), "{err}");

    // A folder.
    let err = SqliteStore::open(dir.path().to_str().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("folder"), "{err}");

    let err = SqliteStore::open("sqlite://x.db?mode=bogus")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

async fn corrupt_rows_are_errors_not_panics(b: Backend) {
    let (store, raw) = b.open().await;
    let good = Task::new("a", json!(1));
    store.create_task(&good).await.unwrap();

    let raw = |sql: &'static str| raw.execute(sql);
    raw("INSERT INTO tasks (id, agent, state, input, depth, created_at, attempts, input_tokens, \
         output_tokens, cost_usd, requeues) VALUES ('bad-state', 'a', 'done', '1', 0, 5, 0, 0, 0, 0, 0)")
    .await;
    let err = store.get_task("bad-state").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("done"), "{err}");
    assert!(err.to_string().contains("bad-state"), "{err}");
    let err = store
        .list_tasks(&TaskFilter::default(), None, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let err = store.counts_by_state().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // A CAS against a corrupt row says so rather than claiming a conflict.
    let mut bad = good.clone();
    bad.id = "bad-state".into();
    let err = store
        .update_task(&bad, TaskState::Queued)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    raw(
        "INSERT INTO tasks (id, agent, state, input, depth, created_at, attempts, input_tokens, \
         output_tokens, cost_usd, requeues, reason, routing) VALUES \
         ('bad-json', 'a', 'queued', '{nope', 0, 5, 0, 0, 0, 0, 0, NULL, NULL), \
         ('bad-reason', 'a', 'queued', '1', 0, 5, 0, 0, 0, 0, 0, 'gremlins', NULL), \
         ('bad-depth', 'a', 'queued', '1', -3, 5, 0, 0, 0, 0, 0, NULL, NULL), \
         ('bad-routing', 'a', 'queued', '1', 0, 5, 0, 0, 0, 0, 0, NULL, '[')",
    )
    .await;
    for id in ["bad-json", "bad-reason", "bad-depth", "bad-routing"] {
        let err = store.get_task(id).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{id}: {err}");
    }
    let err = store.tasks_in_state(TaskState::Queued).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    raw("INSERT INTO attempts (task_id, seq, kind, agent, provider, model, started_at, latency_ms, \
         ok, input_tokens, output_tokens, cost_usd, cost_source) VALUES \
         ((SELECT id FROM tasks WHERE agent = 'a' AND state = 'queued' AND input = '1' AND depth = 0 \
         AND id NOT LIKE 'bad-%'), 1, 'vibes', 'a', 'p', 'm', 1, 1, TRUE, 0, 0, 0, 'reported')")
    .await;
    let err = store.attempts(&good.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let err = store.usage(&UsageQuery::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    // The good row is still readable.
    assert_eq!(store.get_task(&good.id).await.unwrap(), Some(good));
}

async fn concurrent_writers_do_not_meet_locked_errors(b: Backend) {
    let store = b.store().await;
    let per_writer = 25;
    let mut handles = Vec::new();
    for w in 0..32 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let mut t = Task::new(&format!("agent{}", w % 3), json!({ "w": w, "i": i }));
                store.create_task(&t).await?;
                t.state = TaskState::Running;
                store.update_task(&t, TaskState::Queued).await?;
                store.add_attempt(&attempt(&t.id, 1), 0).await?;
                // Readers run alongside the writers.
                store.get_task(&t.id).await?;
                store.list_tasks(&TaskFilter::default(), None, 20).await?;
                t.state = TaskState::Succeeded;
                store.update_task(&t, TaskState::Running).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let counts = store.counts_by_state().await.unwrap();
    assert!(
        counts.contains(&(TaskState::Succeeded, 32 * per_writer)),
        "{counts:?}"
    );
}

async fn racing_updates_on_one_task_have_one_winner(b: Backend) {
    let store = b.store().await;
    let t = Task::new("a", json!(1));
    store.create_task(&t).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let mut t = t.clone();
        handles.push(tokio::spawn(async move {
            t.state = if i % 2 == 0 {
                TaskState::Running
            } else {
                TaskState::Cancelled
            };
            store.update_task(&t, TaskState::Queued).await
        }));
    }
    let mut wins = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(wins, 1);
}

async fn racing_claims_have_one_winner(b: Backend) {
    let store = b.store().await;
    let mut t = Task::new("a", json!(1));
    t.owner = Some("gone".into());
    store.create_task(&t).await.unwrap();
    let claims: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let mut mine = t.clone();
            mine.owner = Some(format!("claimant-{i}"));
            tokio::spawn(async move {
                let result = store.claim_task(&mine, TaskState::Queued).await;
                (mine.owner, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for c in claims {
        match c.await.unwrap() {
            (owner, Ok(())) => winners.push(owner),
            (_, Err(StoreError::Claimed { .. })) => {}
            (_, Err(other)) => panic!("{other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.owner, winners[0]);
    assert_eq!(stored.epoch, 1, "one claim, one epoch");
}

/// Racing sweeps of instances whose leases are live never claim one task
/// twice, and together claim every orphan.
async fn racing_sweeps_share_the_orphans(b: Backend) {
    let store = b.store().await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..40 {
        let mut t = Task::new("a", json!(i));
        t.owner = Some("dead:1:1".into());
        if i % 2 == 1 {
            t.state = TaskState::Running;
        }
        store.create_task(&t).await.unwrap();
        ids.insert(t.id);
    }
    let sweeps: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let me = format!("instance-{i}");
                store
                    .renew_lease(&me, Duration::from_secs(60))
                    .await
                    .unwrap();
                let mut mine = Vec::new();
                loop {
                    let got = store.claim_orphans(&me, 7).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    for t in got {
                        assert_eq!(t.owner.as_deref(), Some(me.as_str()));
                        assert_eq!(t.epoch, 1);
                        mine.push(t.id);
                    }
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for s in sweeps {
        claimed.extend(s.await.unwrap());
    }
    let unique: std::collections::BTreeSet<_> = claimed.iter().cloned().collect();
    assert_eq!(unique.len(), claimed.len(), "a task was claimed twice");
    assert_eq!(unique, ids);
    // All held by live leases now: nothing left to claim.
    assert!(store.claim_orphans("late", 100).await.unwrap().is_empty());
}

async fn a_claim_needs_the_state_and_the_epoch(b: Backend) {
    let store = b.store().await;
    let mut t = Task::new("a", json!("x"));
    t.owner = Some("gone".into());
    store.create_task(&t).await.unwrap();
    let mut mine = t.clone();
    mine.owner = Some("me".into());
    let e = store
        .claim_task(&mine, TaskState::Running)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    store.claim_task(&mine, TaskState::Queued).await.unwrap();
    let stored = store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.owner.as_deref(), Some("me"));
    assert_eq!(stored.epoch, 1);
    // A second claimant that read the same epoch loses, naming the winner.
    let mut late = t.clone();
    late.owner = Some("late".into());
    let e = store
        .claim_task(&late, TaskState::Queued)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Claimed { ref owner, .. } if owner == "me"),
        "{e}"
    );
}

/// Every write-back carries the claim's epoch: once another holder has
/// claimed the task, the old one's updates, attempts and turns are refused
/// and nothing of them is stored.
async fn writes_under_an_old_claim_are_fenced(b: Backend) {
    let store = b.store().await;
    let mut old = Task::new("a", json!("x"));
    old.owner = Some("paused".into());
    old.state = TaskState::Running;
    store.create_task(&old).await.unwrap();
    store.add_attempt(&attempt(&old.id, 1), 0).await.unwrap();
    // Another instance takes it over (epoch 0 -> 1) and re-queues it.
    let mut new = old.clone();
    new.owner = Some("taker".into());
    store.claim_task(&new, TaskState::Running).await.unwrap();
    new.epoch = 1;
    new.state = TaskState::Queued;
    store.update_task(&new, TaskState::Running).await.unwrap();

    let fenced = |e: StoreError| match e {
        StoreError::Fenced { owner, epoch, .. } => {
            assert_eq!((owner.as_str(), epoch), ("taker", 1))
        }
        other => panic!("not fenced: {other}"),
    };
    let mut stale = old.clone();
    stale.state = TaskState::Succeeded;
    stale.output = Some("the paused one's answer".into());
    stale.finished_at = Some(1);
    // Its state is queued now, and the epoch moved on: fenced, not a conflict.
    fenced(
        store
            .update_task(&stale, TaskState::Running)
            .await
            .unwrap_err(),
    );
    fenced(
        store
            .add_attempt(&attempt(&old.id, 2), 0)
            .await
            .unwrap_err(),
    );
    fenced(
        store
            .finish_task(&stale, TaskState::Running, &[attempt(&old.id, 3)])
            .await
            .unwrap_err(),
    );
    let turn = Turn {
        task_id: old.id.clone(),
        seq: 1,
        answer: 1,
        at: 5,
        event: crate::task::TurnEvent::Model {
            model: "m/x".into(),
            text: String::new(),
            calls: Vec::new(),
        },
    };
    fenced(store.add_turn(&turn, 0).await.unwrap_err());

    let stored = store.get_task(&old.id).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Queued);
    assert_eq!(stored.output, None);
    let seqs: Vec<u32> = store
        .attempts(&old.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.seq)
        .collect();
    assert_eq!(seqs, vec![1], "only the attempt made before the take-over");
    assert!(store.turns(&old.id).await.unwrap().is_empty());
    // The new holder writes under its epoch.
    store.add_attempt(&attempt(&old.id, 2), 1).await.unwrap();
    store.add_turn(&turn, 1).await.unwrap();
}

/// A run resumed by two processes at once has one coordinator; the
/// process that held it before can no longer write it.
async fn a_run_is_claimed_once_and_its_old_coordinator_fenced(b: Backend) {
    let s = b.store().await;
    let mut run = Run {
        id: "run-9".into(),
        name: None,
        agent: None,
        state: RunState::Running,
        input: json!("x"),
        definition: json!({"steps": []}),
        subject: None,
        owner: Some("paused".into()),
        created_at: 1,
        finished_at: None,
        error: None,
    };
    s.put_run(&run).await.unwrap();
    s.claim_run("run-9", Some("paused"), "taker").await.unwrap();
    let e = s
        .claim_run("run-9", Some("paused"), "late")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Claimed { .. }), "{e}");
    // The old coordinator's write is refused; the new one's goes in.
    run.state = RunState::Succeeded;
    let e = s.put_run(&run).await.unwrap_err();
    assert!(matches!(e, StoreError::Claimed { .. }), "{e}");
    assert_eq!(
        s.get_run("run-9").await.unwrap().unwrap().state,
        RunState::Running
    );
    run.owner = Some("taker".into());
    s.put_run(&run).await.unwrap();
    let stored = s.get_run("run-9").await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.owner.as_deref()),
        (RunState::Succeeded, Some("taker"))
    );
    // Its steps are the new holder's to write.
    let step = StepRecord {
        run_id: "run-9".into(),
        step_id: "a".into(),
        idx: 0,
        state: crate::task::StepState::Pending,
        task_id: None,
        tries: 0,
        started_at: None,
        finished_at: None,
        error: None,
        output_path: None,
    };
    let e = s.put_step(&step, "paused").await.unwrap_err();
    assert!(matches!(e, StoreError::Claimed { .. }), "{e}");
    s.put_step(&step, "taker").await.unwrap();
    assert_eq!(s.steps("run-9").await.unwrap().len(), 1);
    // Only a running run is claimed.
    let e = s
        .claim_run("run-9", Some("taker"), "late")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Claimed { .. }), "{e}");
}

/// Slots of a scope are taken below its limit, given back, and free again
/// when their holder's lease is gone.
async fn slots_are_taken_below_the_limit_and_come_back(b: Backend) {
    let store = b.store().await;
    store
        .renew_lease("a", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .renew_lease("b", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.take_slot("provider:x", 2, "a").await.unwrap(),
        Some(0)
    );
    assert_eq!(
        store.take_slot("provider:x", 2, "b").await.unwrap(),
        Some(1)
    );
    assert_eq!(store.take_slot("provider:x", 2, "a").await.unwrap(), None);
    // Another scope has its own.
    assert_eq!(store.take_slot("global", 1, "a").await.unwrap(), Some(0));
    // A lower limit (another instance's config) counts the same slots.
    assert_eq!(store.take_slot("provider:x", 1, "b").await.unwrap(), None);
    // Given back by someone else: nothing happens.
    store.give_slot("provider:x", 0, "b").await.unwrap();
    assert_eq!(store.take_slot("provider:x", 2, "b").await.unwrap(), None);
    store.give_slot("provider:x", 0, "a").await.unwrap();
    assert_eq!(
        store.take_slot("provider:x", 2, "b").await.unwrap(),
        Some(0)
    );
    // b's lease ends: its slots are anyone's.
    store.end_lease("b").await.unwrap();
    assert_eq!(
        store.take_slot("provider:x", 2, "a").await.unwrap(),
        Some(0)
    );
    assert_eq!(
        store.take_slot("provider:x", 2, "a").await.unwrap(),
        Some(1)
    );
    assert_eq!(store.take_slot("provider:x", 2, "a").await.unwrap(), None);
    // A higher limit adds slots.
    assert_eq!(
        store.take_slot("provider:x", 3, "a").await.unwrap(),
        Some(2)
    );
}

/// Many takers on several threads: never more slots held than the limit,
/// and every slot given back is taken again.
async fn racing_takers_never_pass_the_limit(b: Backend) {
    let store = b.store().await;
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let (store, held, peak) = (store.clone(), held.clone(), peak.clone());
            tokio::spawn(async move {
                let me = format!("taker-{i}");
                store
                    .renew_lease(&me, Duration::from_secs(60))
                    .await
                    .unwrap();
                let mut took = 0;
                while took < 5 {
                    let Some(n) = store.take_slot("scope", 3, &me).await.unwrap() else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let now = held.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    store.give_slot("scope", n, &me).await.unwrap();
                    took += 1;
                }
            })
        })
        .collect();
    for t in takers {
        t.await.unwrap();
    }
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=3).contains(&peak), "{peak} slots held at once");
}

/// The shared rate: `burst` requests at once, then one per interval, each
/// key on its own.
async fn a_rate_admits_its_burst_then_says_how_long_to_wait(b: Backend) {
    let store = b.store().await;
    let minute = Duration::from_secs(60);
    for _ in 0..3 {
        assert_eq!(store.take_rate("sub:alice", minute, 3).await.unwrap(), None);
    }
    let wait = store
        .take_rate("sub:alice", minute, 3)
        .await
        .unwrap()
        .unwrap();
    assert!(wait > Duration::from_secs(58) && wait <= minute, "{wait:?}");
    // A refusal charges nothing: the wait does not grow.
    let again = store
        .take_rate("sub:alice", minute, 3)
        .await
        .unwrap()
        .unwrap();
    assert!(again <= wait, "{again:?} after {wait:?}");
    assert_eq!(store.take_rate("sub:bob", minute, 3).await.unwrap(), None);
    // A short interval is over at once.
    let ms = Duration::from_millis(1);
    assert_eq!(store.take_rate("ip:1", ms, 1).await.unwrap(), None);
}

/// A lease is live until it runs out or ends; a task whose owner holds a
/// live lease is not claimed, one whose lease ran out (or ended) is.
async fn leases_decide_what_is_claimed(b: Backend) {
    let store = b.store().await;
    store
        .renew_lease("alive", Duration::from_secs(60))
        .await
        .unwrap();
    // Runs out as soon as it is taken.
    store.renew_lease("brief", Duration::ZERO).await.unwrap();
    store
        .renew_lease("ending", Duration::from_secs(60))
        .await
        .unwrap();
    let mut by_owner = std::collections::BTreeMap::new();
    for owner in ["alive", "brief", "ending", "never-leased"] {
        let mut t = Task::new("a", json!(owner));
        t.owner = Some(owner.into());
        store.create_task(&t).await.unwrap();
        by_owner.insert(t.id.clone(), owner);
    }
    let mut unowned = Task::new("a", json!("none"));
    unowned.owner = None;
    store.create_task(&unowned).await.unwrap();
    by_owner.insert(unowned.id.clone(), "none");
    let mut done = Task::new("a", json!("done"));
    done.owner = Some("never-leased".into());
    done.state = TaskState::Succeeded;
    store.create_task(&done).await.unwrap();
    store.end_lease("ending").await.unwrap();
    let leases = store.leases().await.unwrap();
    let live: Vec<_> = leases.iter().map(|l| (l.holder.as_str(), l.live)).collect();
    assert_eq!(
        live,
        vec![("alive", true), ("brief", false)],
        "an ended lease is gone"
    );

    let claimed = store.claim_orphans("sweeper", 100).await.unwrap();
    let mut owners: Vec<_> = claimed.iter().map(|t| by_owner[&t.id]).collect();
    owners.sort();
    assert_eq!(owners, vec!["brief", "ending", "never-leased", "none"]);
    // A renewal extends a lease and keeps when it started.
    let first = leases
        .iter()
        .find(|l| l.holder == "alive")
        .unwrap()
        .started_at;
    store
        .renew_lease("alive", Duration::from_secs(120))
        .await
        .unwrap();
    let again = store.leases().await.unwrap();
    let alive = again.iter().find(|l| l.holder == "alive").unwrap();
    assert_eq!(alive.started_at, first);
    assert!(alive.lease_until > leases[0].lease_until);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_write_does_not_sink_its_group() {
    let sqlite = SqliteStore::open_in_memory().await.unwrap();
    // A failure that is neither a duplicate nor an orphan, so the writer
    // cannot tell whether the transaction survived it.
    sqlx::query(
        "CREATE TRIGGER explode BEFORE INSERT ON tasks WHEN NEW.agent = 'explode' \
         BEGIN SELECT RAISE(ABORT, 'boom'); END",
    )
    .execute(sqlite.raw_pool())
    .await
    .unwrap();
    // A paused writer makes the writes pile up into one group.
    let resume = sqlite.raw_writer().pause().await;
    let writer = sqlite.raw_writer().clone();
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let mut handles = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let t = Task::new(if i % 10 == 3 { "explode" } else { "fine" }, json!(i));
            let result = store.create_task(&t).await;
            (t, result)
        }));
    }
    while writer.queued() < 40 {
        tokio::task::yield_now().await;
    }
    drop(resume);
    for h in handles {
        let (t, result) = h.await.unwrap();
        if t.agent == "explode" {
            let err = result.unwrap_err();
            assert!(matches!(err, StoreError::Database(_)), "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("cannot create task {}", t.id)),
                "{text}"
            );
            assert!(text.contains("boom"), "{text}");
            assert_eq!(store.get_task(&t.id).await.unwrap(), None);
        } else {
            result.unwrap();
            assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t));
        }
    }
}

async fn a_closed_store_refuses_writes(b: Backend) {
    let store = b.store().await;
    let t = Task::new("a", json!(1));
    store.create_task(&t).await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    let err = store
        .create_task(&Task::new("a", json!(2)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    let err = store.add_attempt(&attempt(&t.id, 1), 0).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot record attempt 1 of task {}", t.id)),
        "{err}"
    );
}

#[tokio::test]
async fn an_in_memory_store_leaves_nothing_behind() {
    for open in ["memory", "url"] {
        let sqlite = match open {
            "memory" => SqliteStore::open_in_memory().await.unwrap(),
            _ => SqliteStore::open("sqlite::memory:").await.unwrap(),
        };
        let dir = sqlite
            .scratch_dir()
            .expect("a scratch folder")
            .to_path_buf();
        let store: Arc<dyn Store> = Arc::new(sqlite.clone());
        let t = Task::new("a", json!(1));
        store.create_task(&t).await.unwrap();
        assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t));
        assert!(dir.join("dispatch.db").is_file(), "{}", dir.display());
        // Every handle must go, not only the first.
        drop(sqlite);
        assert!(dir.is_dir(), "{}", dir.display());
        drop(store);
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}

async fn runs_and_steps_round_trip_and_upsert(b: Backend) {
    use crate::task::{Run, RunState, StepRecord, StepState};
    let s = b.store().await;
    let mut run = Run {
        id: "run-1".into(),
        name: Some("review-and-document".into()),
        agent: Some("review-and-document".into()),
        state: RunState::Running,
        input: serde_json::json!({"diff": "+ a"}),
        definition: serde_json::json!({"steps": [{"id": "a", "agent": "x"}]}),
        subject: Some("alice".into()),
        owner: Some("h:1:2".into()),
        created_at: 10,
        finished_at: None,
        error: None,
    };
    s.put_run(&run).await.unwrap();
    assert_eq!(s.get_run("run-1").await.unwrap().as_ref(), Some(&run));
    assert_eq!(s.runs_in_state(RunState::Running).await.unwrap().len(), 1);
    let mut step = StepRecord {
        run_id: "run-1".into(),
        step_id: "a".into(),
        idx: 0,
        state: StepState::Running,
        task_id: Some("t1".into()),
        tries: 1,
        started_at: Some(11),
        finished_at: None,
        error: None,
        output_path: None,
    };
    s.put_step(&step, "h:1:2").await.unwrap();
    step.state = StepState::Succeeded;
    step.output_path = Some("sessions/run-1/a.md".into());
    s.put_step(&step, "h:1:2").await.unwrap();
    let b = StepRecord {
        step_id: "b".into(),
        idx: 1,
        state: StepState::Skipped,
        ..step.clone()
    };
    s.put_step(&b, "h:1:2").await.unwrap();
    assert_eq!(s.steps("run-1").await.unwrap(), vec![step, b]);
    run.state = RunState::Partial;
    run.finished_at = Some(20);
    s.put_run(&run).await.unwrap();
    assert!(s.runs_in_state(RunState::Running).await.unwrap().is_empty());
    assert_eq!(
        s.get_run("run-1").await.unwrap().unwrap().state,
        RunState::Partial
    );
    assert!(s.get_run("nope").await.unwrap().is_none());
    // A step of an unknown run is refused.
    let orphan = StepRecord {
        run_id: "run-x".into(),
        ..s.steps("run-1").await.unwrap()[0].clone()
    };
    assert!(matches!(
        s.put_step(&orphan, "h:1:2").await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn finish_stores_attempts_then_the_update(b: Backend) {
    let store = b.store().await;
    let mut t = Task::new("a", json!("in"));
    t.state = TaskState::Running;
    store.create_task(&t).await.unwrap();
    store.add_attempt(&attempt(&t.id, 1), 0).await.unwrap();

    // Seq 1 is already stored (kept as it is); seq 2 is new.
    let mut again = attempt(&t.id, 1);
    again.model = "other".into();
    let last = attempt(&t.id, 2);
    t.state = TaskState::Succeeded;
    t.output = Some("done".into());
    store
        .finish_task(&t, TaskState::Running, &[again, last.clone()])
        .await
        .unwrap();
    assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t.clone()));
    let stored = store.attempts(&t.id).await.unwrap();
    assert_eq!(stored, vec![attempt(&t.id, 1), last]);

    // A lost compare-and-set refuses the update; the attempts stay.
    let mut stale = t.clone();
    stale.state = TaskState::Cancelled;
    let err = store
        .finish_task(&stale, TaskState::Running, &[attempt(&t.id, 3)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.attempts(&t.id).await.unwrap().len(), 3);
    assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t.clone()));

    // The state machine is checked before anything is written.
    let mut back = t.clone();
    back.state = TaskState::Running;
    let err = store
        .finish_task(&back, TaskState::Succeeded, &[attempt(&t.id, 4)])
        .await;
    assert!(matches!(err, Err(StoreError::IllegalTransition { .. })));
    assert_eq!(store.attempts(&t.id).await.unwrap().len(), 3);
}

#[tokio::test]
async fn the_wal_is_checkpointed_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let t = Task::new("a", json!(1));
    store.create_task(&t).await.unwrap();
    // SQLite's own checkpoints are off; the checkpointer copies the commit
    // into the database file. Poll its effect (no fixed sleep): the main
    // file holds the task once a checkpoint ran.
    let main_file_has_it = || {
        std::fs::read(&path)
            .map(|b| b.windows(t.id.len()).any(|w| w == t.id.as_bytes()))
            .unwrap_or(false)
    };
    assert!(!main_file_has_it(), "autocheckpoint should be off");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !main_file_has_it() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    store.close().await.unwrap();
}

/// The `.sql` files of one migrations folder (subfolders, another
/// backend's, skipped), in version order, as (version, description, SQL):
/// each named `NNNN_words.sql` with its words as description.
fn migration_files(folder: &str) -> Vec<(i64, String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
        .expect("migrations folder")
        .map(|e| e.expect("entry"))
        .filter(|e| !e.file_type().expect("file type").is_dir())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".sql").expect("only .sql files");
            let (version, words) = stem.split_once('_').expect("NNNN_words.sql");
            let sql = std::fs::read_to_string(e.path()).expect("read");
            (
                version.parse().expect("numeric version"),
                words.replace('_', " "),
                sql,
            )
        })
        .collect();
    files.sort();
    files
}

fn embedded(list: &[(i64, &str, &str)]) -> Vec<(i64, String, String)> {
    list.iter()
        .map(|&(v, d, s)| (v, d.to_string(), s.to_string()))
        .collect()
}

/// The embedded migrations are exactly the files of their folder.
#[test]
fn embedded_migrations_match_the_folders() {
    assert_eq!(
        embedded(super::sqlite::MIGRATIONS),
        migration_files("migrations")
    );
    assert_eq!(
        embedded(super::postgres_open::MIGRATIONS),
        migration_files("migrations/postgres")
    );
}

fn tree(root: &str, limits: crate::task::TreeLimits) -> Tree {
    Tree {
        root_id: root.to_string(),
        tasks: 1,
        turns: 0,
        spent_micros: 0,
        reserved_micros: 0,
        limits,
        created_at: 1,
    }
}

fn limits(max_tasks: u32, max_turns: u32, budget: Option<i64>) -> crate::task::TreeLimits {
    crate::task::TreeLimits {
        max_depth: 3,
        max_tasks,
        max_turns,
        max_secs: Some(60),
        budget_micros: budget,
    }
}

async fn turns_round_trip_in_order_and_a_seq_is_taken_once(b: Backend) {
    let store = b.store().await;
    let task = Task::new("a", json!("x"));
    store.create_task(&task).await.unwrap();
    let model = Turn {
        task_id: task.id.clone(),
        seq: 1,
        answer: 1,
        at: 5,
        event: crate::task::TurnEvent::Model {
            model: "openai/m".into(),
            text: "é".into(),
            calls: vec![crate::task::ToolCallRecord {
                id: "c".into(),
                name: "kb_read".into(),
                arguments: "{not json".into(),
            }],
        },
    };
    let result = Turn {
        seq: 2,
        event: crate::task::TurnEvent::ToolResult {
            call_id: "c".into(),
            name: "kb_read".into(),
            content: "err".into(),
            is_error: true,
            bytes: 3,
            latency_ms: 7,
            child_task_id: None,
            approval: Some(crate::task::Approval {
                question: "write — ✓?".into(),
                decision: crate::task::Decision::Declined,
                by: Some("alice|ß".into()),
                via: "elicitation".into(),
                note: None,
            }),
        },
        ..model.clone()
    };
    store.add_turn(&result, 0).await.unwrap();
    store.add_turn(&model, 0).await.unwrap();
    assert_eq!(
        store.turns(&task.id).await.unwrap(),
        [model.clone(), result]
    );
    assert!(matches!(
        store.add_turn(&model, 0).await,
        Err(StoreError::Duplicate { .. })
    ));
    let orphan = Turn {
        task_id: new_task_id(),
        ..model
    };
    assert!(matches!(
        store.add_turn(&orphan, 0).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn a_tree_charge_fits_every_limit_or_takes_nothing(b: Backend) {
    let store = b.store().await;
    let t = tree("root-1", limits(2, 3, Some(1000)));
    store.open_tree(&t).await.unwrap();
    // Opening again keeps what is stored.
    store
        .open_tree(&Tree {
            tasks: 9,
            ..t.clone()
        })
        .await
        .unwrap();
    let charge = |tasks, turns, reserve| TreeCharge {
        tasks,
        turns,
        reserve_micros: reserve,
        ..TreeCharge::default()
    };
    store
        .charge_tree("root-1", charge(1, 1, 600))
        .await
        .unwrap();
    let e = store
        .charge_tree("root-1", charge(1, 0, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TreeLimit {
                limit: TreeLimitKind::Tasks,
                max: 2,
                used: 2
            }
        ),
        "{e:?}"
    );
    let e = store
        .charge_tree("root-1", charge(0, 1, 500))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TreeLimit {
                limit: TreeLimitKind::Money,
                max: 1000,
                used: 600
            }
        ),
        "{e:?}"
    );
    // The refused charge took nothing: its turn is still free.
    let got = store.get_tree("root-1").await.unwrap().unwrap();
    assert_eq!((got.tasks, got.turns, got.reserved_micros), (2, 1, 600));
    // Settling releases the reservation and books the real cost.
    store
        .charge_tree(
            "root-1",
            TreeCharge {
                release_micros: 600,
                spend_micros: 40,
                ..TreeCharge::default()
            },
        )
        .await
        .unwrap();
    store
        .charge_tree("root-1", charge(0, 2, 900))
        .await
        .unwrap();
    let e = store
        .charge_tree("root-1", charge(0, 1, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TreeLimit {
                limit: TreeLimitKind::Turns,
                max: 3,
                used: 3
            }
        ),
        "{e:?}"
    );
    let got = store.get_tree("root-1").await.unwrap().unwrap();
    assert_eq!((got.spent_micros, got.reserved_micros), (40, 900));
    assert_eq!(got.limits, t.limits);
    assert!(matches!(
        store.charge_tree("nope", charge(1, 0, 0)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.get_tree("nope").await.unwrap().is_none());
}

async fn concurrent_reservations_never_overspend(b: Backend) {
    let store = b.store().await;
    store
        .open_tree(&tree("root-2", limits(100, 1000, Some(10_000))))
        .await
        .unwrap();
    let tries: Vec<_> = (0..64)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .charge_tree(
                        "root-2",
                        TreeCharge {
                            reserve_micros: 300,
                            ..TreeCharge::default()
                        },
                    )
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut granted = 0;
    for t in tries {
        granted += usize::from(t.await.unwrap());
    }
    assert_eq!(granted, 33, "10000 / 300 reservations fit");
    let got = store.get_tree("root-2").await.unwrap().unwrap();
    assert_eq!(got.reserved_micros, 9_900);
}

fn client_task(id: &str, subject: Option<&str>, created_at: Millis) -> ClientTask {
    ClientTask {
        id: id.to_string(),
        tool: "agent_run".to_string(),
        subject: subject.map(str::to_string),
        created_at,
        ttl_ms: Some(60_000),
        poll_ms: 1_000,
    }
}

async fn client_tasks_round_trip_page_newest_first_and_keep_to_their_subject(b: Backend) {
    let store = b.store().await;
    let mut odd = client_task("run-ü", Some("alice|ß"), 5);
    odd.ttl_ms = None;
    odd.poll_ms = u64::MAX >> 1;
    store.put_client_task(&odd).await.unwrap();
    assert_eq!(store.get_client_task("run-ü").await.unwrap(), Some(odd));
    assert_eq!(store.get_client_task("nope").await.unwrap(), None);
    assert!(matches!(
        store.put_client_task(&client_task("run-ü", None, 6)).await,
        Err(StoreError::Duplicate { .. })
    ));
    for i in 0..5 {
        store
            .put_client_task(&client_task(&format!("b{i}"), Some("bob"), 10 + i))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_client_tasks(Some("bob"), cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.iter().map(|t| t.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["b4", "b3", "b2", "b1", "b0"]);
    let all = store.list_client_tasks(None, None, 100).await.unwrap();
    assert_eq!(all.tasks.len(), 6);
    assert!(matches!(
        store.list_client_tasks(None, Some("zz"), 10).await,
        Err(StoreError::BadCursor { .. })
    ));
}

// ---------------------------------------------------------------------------
// Opening by URL, and PostgreSQL's own behaviour.

#[test]
fn a_url_is_shown_without_its_password() {
    use super::postgres_open::redact;
    for (url, shown) in [
        (
            "postgres://user:secret@host/db",
            "postgres://user:***@host/db",
        ),
        (
            "postgresql://user:s%40cr%2Fet@host:5432/db?sslmode=disable",
            "postgresql://user:***@host:5432/db?sslmode=disable",
        ),
        // Not percent-encoded, as people write them: still hidden whole.
        (
            "postgres://user:p@ss/w?rd@host/db",
            "postgres://user:***@host/db",
        ),
        (
            "postgres://host/db?user=u&password=secret&sslmode=prefer",
            "postgres://host/db?user=u&password=***&sslmode=prefer",
        ),
        (
            "postgres://user:a@host/db?password=b#frag",
            "postgres://user:***@host/db?password=***#frag",
        ),
        // A misspelt name may hold a secret too.
        (
            "postgres://h/db?passwd=secret&port=5433",
            "postgres://h/db?passwd=***&port=5433",
        ),
        // Nothing to hide.
        (
            "postgres://user@host:5432/db",
            "postgres://user@host:5432/db",
        ),
        ("postgres:///db?host=/run/pg", "postgres:///db?host=/run/pg"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("/srv/dispatch.db", "/srv/dispatch.db"),
    ] {
        assert_eq!(redact(url), shown, "{url}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_the_password() {
    // Nothing listens on port 1 of the loopback: refused at once.
    let url = "postgres://dispatch:hunter2-secret@127.0.0.1:1/tasks";
    let err = PostgresStore::open(url).await.unwrap_err();
    let StoreError::Open { path, message } = &err else {
        panic!("expected an open error, got {err}");
    };
    assert_eq!(path, "postgres://dispatch:***@127.0.0.1:1/tasks");
    assert!(
        message.contains("cannot reach PostgreSQL at 127.0.0.1:1"),
        "{message}"
    );
    assert!(
        message.contains("check that the server is running"),
        "{message}"
    );
    assert!(message.contains("host and port"), "{message}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    // Through `open`: the same error, and no SQLite file named after the URL.
    let Err(err) = open(url).await else {
        panic!("{url} opened");
    };
    assert!(err.to_string().contains("cannot reach PostgreSQL"), "{err}");
    assert!(!std::path::Path::new("postgres:").exists());
}

#[tokio::test]
async fn a_bad_postgres_url_is_refused_without_showing_secrets() {
    // A misspelt parameter: sqlx would log its value, which may be a secret.
    let err = PostgresStore::open("postgres://u@127.0.0.1:1/db?sslmode=disable&passwrod=hunter2")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("unknown parameter `passwrod`"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let err = PostgresStore::open("postgres://u:hunter2@host:port/db")
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("postgres://u:***@host:port/db"), "{text}");
    assert!(
        text.contains("use postgres://USER:PASSWORD@HOST:PORT/DATABASE"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn open_picks_the_backend_by_scheme() {
    for url in [
        "mysql://x",
        "redis://localhost:6379/0",
        "MySQL://u:hunter2@h/db",
    ] {
        let Err(err) = open(url).await else {
            panic!("{url} opened");
        };
        let StoreError::Open { message, .. } = &err else {
            panic!("{url}: expected an open error, got {err}");
        };
        assert!(
            message.contains("postgres://USER:PASSWORD@HOST:PORT/DATABASE"),
            "{message}"
        );
        assert!(message.contains("sqlite://PATH"), "{message}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    // A plain path and `sqlite:` URLs in any case: one SQLite file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let path = path.to_str().unwrap();
    let t = Task::new("a", json!(1));
    let store = open(path).await.unwrap();
    store.create_task(&t).await.unwrap();
    store.close().await.unwrap();
    assert!(std::path::Path::new(path).is_file());
    for url in [
        format!("sqlite://{path}"),
        format!("sqlite:{path}"),
        format!("SQLite://{path}"),
        format!("SQLITE:{path}"),
    ] {
        let store = open(&url).await.unwrap();
        assert_eq!(
            store.get_task(&t.id).await.unwrap(),
            Some(t.clone()),
            "{url}"
        );
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn postgres_urls_open_postgres() {
    on_postgres_server("postgres_urls_open_postgres", |dbs| async move {
        let url = dbs.fresh().await.unwrap();
        let t = Task::new("a", json!(1));
        let store = open(&url).await.unwrap();
        store.create_task(&t).await.unwrap();
        store.close().await.unwrap();
        // The other spelling of the scheme, and the task is there.
        let other = match url.strip_prefix("postgres://") {
            Some(rest) => format!("postgresql://{rest}"),
            None => url.replacen("postgresql://", "postgres://", 1),
        };
        let store = PostgresStore::open(&other).await.unwrap();
        assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t));
        store.close().await.unwrap();

        let err = PostgresStore::open(&dbs.missing()).await.unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(err.to_string().contains("createdb"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_migrates_once_and_keeps_its_data() {
    on_postgres_server(
        "postgres_migrates_once_and_keeps_its_data",
        |dbs| async move {
            let url = dbs.fresh().await.unwrap();
            // Servers starting together on a new database: the migrator's lock
            // lets one create the schema, and the others find it made.
            let opens: Vec<_> = (0..4)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { PostgresStore::open(&url).await })
                })
                .collect();
            let mut stores = Vec::new();
            for o in opens {
                stores.push(o.await.unwrap().unwrap());
            }
            let mut t = full_task();
            t.state = TaskState::Running;
            t.reason = None;
            stores[0].create_task(&t).await.unwrap();
            for s in &stores {
                assert_eq!(s.get_task(&t.id).await.unwrap(), Some(t.clone()));
                s.close().await.unwrap();
            }
            let store = PostgresStore::open(&url).await.unwrap();
            assert_eq!(
                store.tasks_in_state(TaskState::Running).await.unwrap(),
                vec![t]
            );
            let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
                .fetch_all(store.raw_pool())
                .await
                .unwrap();
            assert_eq!(applied, vec![1, 2]);
            store.close().await.unwrap();
        },
    )
    .await;
}

#[tokio::test]
async fn postgres_refuses_a_schema_it_does_not_know() {
    on_postgres_server(
        "postgres_refuses_a_schema_it_does_not_know",
        |dbs| async move {
            let url = dbs.fresh().await.unwrap();
            let store = PostgresStore::open(&url).await.unwrap();
            let raw = store.raw_pool().clone();
            // What a newer dispatch would have applied.
            sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (3, 'from a newer dispatch', TRUE, '\\x00', 0)",
    )
    .execute(&raw)
    .await
    .unwrap();
            let err = PostgresStore::open(&url).await.unwrap_err();
            assert!(matches!(err, StoreError::Open { .. }), "{err}");
            assert!(
        err.to_string().contains(
            "the database schema is newer than this dispatch (migration 3): upgrade dispatch"
        ),
        "{err}"
    );

            // A migration applied with other contents.
            sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 3")
                .execute(&raw)
                .await
                .unwrap();
            sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x01' WHERE version = 1")
                .execute(&raw)
                .await
                .unwrap();
            let err = PostgresStore::open(&url).await.unwrap_err();
            assert!(
                err.to_string()
                    .contains("migration 1 in the database differs"),
                "{err}"
            );
            store.close().await.unwrap();
        },
    )
    .await;
}

#[tokio::test]
async fn postgres_refuses_text_with_a_nul() {
    on_postgres_server("postgres_refuses_text_with_a_nul", |dbs| async move {
        let store = Backend::Postgres(dbs.clone()).store().await;
        let mut t = Task::new("a", json!("x"));
        t.output = Some("a\0b".into());
        let err = store.create_task(&t).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("NUL"), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot store create task {}", t.id)),
            "{err}"
        );
        assert_eq!(store.get_task(&t.id).await.unwrap(), None);
        // In JSON a NUL is an escape, which PostgreSQL stores like any text.
        t.output = None;
        t.input = json!("a\u{0000}b");
        store.create_task(&t).await.unwrap();
        assert_eq!(store.get_task(&t.id).await.unwrap(), Some(t));
    })
    .await;
}

/// The PostgreSQL schema has what the SQLite migrations add up to: the same
/// tables with the same columns, and the same indexes (by name).
#[tokio::test]
async fn both_schemas_have_the_same_tables_columns_and_indexes() {
    use std::collections::BTreeSet;
    on_postgres_server(
        "both_schemas_have_the_same_tables_columns_and_indexes",
        |dbs| async move {
            let sqlite = SqliteStore::open_in_memory().await.unwrap();
            let lite_columns: BTreeSet<(String, String)> = sqlx::query_as(
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\' \
         AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            )
            .fetch_all(sqlite.raw_pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
            let lite_indexes: BTreeSet<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
            )
            .fetch_all(sqlite.raw_pool())
            .await
            .unwrap()
            .into_iter()
            .collect();

            let pg = PostgresStore::open(&dbs.fresh().await.unwrap())
                .await
                .unwrap();
            let pg_columns: BTreeSet<(String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%'",
            )
            .fetch_all(pg.raw_pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
            let pg_indexes: BTreeSet<String> = sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
         AND indexname NOT LIKE '%\\_pkey' AND tablename NOT LIKE '\\_sqlx%'",
            )
            .fetch_all(pg.raw_pool())
            .await
            .unwrap()
            .into_iter()
            .collect();

            assert!(lite_columns.len() > 60, "{lite_columns:?}");
            assert_eq!(pg_columns, lite_columns);
            assert!(lite_indexes.contains("tasks_root"), "{lite_indexes:?}");
            assert_eq!(pg_indexes, lite_indexes);
            pg.close().await.unwrap();
        },
    )
    .await;
}
