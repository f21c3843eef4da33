//! The engine in process over a store that fails on purpose: a task whose
//! routing calls cannot be stored is still driven to its end, and recovery
//! that loses a race (or meets a failing write) on one task goes on with the
//! others; two engines recovering at once never both take a task.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "common/fake_provider.rs"]
mod fake_provider;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch::agent::reader::ReadContext;
use dispatch::engine::{Engine, EngineConfig, RouteDecision, Submit};
use dispatch::kb::Kb;
use dispatch::provider::{PriceTable, Providers, ResilienceConfig};
use dispatch::registry::{Registry, Source};
use dispatch::store::{
    Lease, SqliteStore, Store, StoreError, StoreFuture, TaskFilter, TaskPage, UsageQuery, UsageRow,
};
use dispatch::task::{
    Attempt, AttemptKind, ClientTask, ClientTaskPage, CostSource, Run, RunState, StepRecord, Task,
    TaskState, Tree, TreeCharge, Turn, now_millis,
};
use fake_provider::{Behavior, FakeProvider};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// A SQLite store that refuses some writes: attempts of the tasks in
/// `no_attempts`, updates and claims of the tasks in `conflict`.
struct Faulty {
    inner: SqliteStore,
    no_attempts: Mutex<HashSet<String>>,
    conflict: Mutex<HashSet<String>>,
}

impl Faulty {
    fn refuses_attempt(&self, a: &Attempt) -> bool {
        self.no_attempts.lock().unwrap().contains(&a.task_id)
    }
    fn conflicts(&self, t: &Task) -> Option<StoreError> {
        self.conflict
            .lock()
            .unwrap()
            .contains(&t.id)
            .then(|| StoreError::Conflict {
                id: t.id.clone(),
                expected: TaskState::Running,
                found: TaskState::Queued,
            })
    }
}

impl Store for Faulty {
    fn create_task<'a>(&'a self, task: &'a Task) -> StoreFuture<'a, ()> {
        self.inner.create_task(task)
    }
    fn update_task<'a>(&'a self, task: &'a Task, expected: TaskState) -> StoreFuture<'a, ()> {
        match self.conflicts(task) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.update_task(task, expected),
        }
    }
    fn claim_task<'a>(&'a self, task: &'a Task, expected: TaskState) -> StoreFuture<'a, ()> {
        match self.conflicts(task) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.claim_task(task, expected),
        }
    }
    fn claim_orphans<'a>(&'a self, holder: &'a str, limit: u32) -> StoreFuture<'a, Vec<Task>> {
        self.inner.claim_orphans(holder, limit)
    }
    fn renew_lease<'a>(&'a self, holder: &'a str, lease: Duration) -> StoreFuture<'a, ()> {
        self.inner.renew_lease(holder, lease)
    }
    fn end_lease<'a>(&'a self, holder: &'a str) -> StoreFuture<'a, ()> {
        self.inner.end_lease(holder)
    }
    fn leases(&self) -> StoreFuture<'_, Vec<Lease>> {
        self.inner.leases()
    }
    fn take_slot<'a>(
        &'a self,
        scope: &'a str,
        limit: u32,
        holder: &'a str,
    ) -> StoreFuture<'a, Option<u32>> {
        self.inner.take_slot(scope, limit, holder)
    }
    fn give_slot<'a>(&'a self, scope: &'a str, n: u32, holder: &'a str) -> StoreFuture<'a, ()> {
        self.inner.give_slot(scope, n, holder)
    }
    fn take_rate<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        burst: u32,
    ) -> StoreFuture<'a, Option<Duration>> {
        self.inner.take_rate(key, interval, burst)
    }
    fn get_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>> {
        self.inner.get_task(id)
    }
    fn list_tasks<'a>(
        &'a self,
        filter: &'a TaskFilter,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, TaskPage> {
        self.inner.list_tasks(filter, cursor, limit)
    }
    fn finish_task<'a>(
        &'a self,
        task: &'a Task,
        expected: TaskState,
        attempts: &'a [Attempt],
    ) -> StoreFuture<'a, ()> {
        self.inner.finish_task(task, expected, attempts)
    }
    fn add_attempt<'a>(&'a self, attempt: &'a Attempt, epoch: u64) -> StoreFuture<'a, ()> {
        if self.refuses_attempt(attempt) {
            return Box::pin(async {
                Err(StoreError::Database(
                    "cannot record attempt: disk I/O error".into(),
                ))
            });
        }
        self.inner.add_attempt(attempt, epoch)
    }
    fn attempts<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Attempt>> {
        self.inner.attempts(task_id)
    }
    fn tasks_in_state(&self, state: TaskState) -> StoreFuture<'_, Vec<Task>> {
        self.inner.tasks_in_state(state)
    }
    fn usage<'a>(&'a self, query: &'a UsageQuery) -> StoreFuture<'a, Vec<UsageRow>> {
        self.inner.usage(query)
    }
    fn counts_by_state(&self) -> StoreFuture<'_, Vec<(TaskState, u64)>> {
        self.inner.counts_by_state()
    }
    fn put_run<'a>(&'a self, run: &'a Run) -> StoreFuture<'a, ()> {
        self.inner.put_run(run)
    }
    fn claim_run<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.inner.claim_run(id, from, to)
    }
    fn get_run<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Run>> {
        self.inner.get_run(id)
    }
    fn runs_in_state(&self, state: RunState) -> StoreFuture<'_, Vec<Run>> {
        self.inner.runs_in_state(state)
    }
    fn put_step<'a>(&'a self, step: &'a StepRecord, holder: &'a str) -> StoreFuture<'a, ()> {
        self.inner.put_step(step, holder)
    }
    fn steps<'a>(&'a self, run_id: &'a str) -> StoreFuture<'a, Vec<StepRecord>> {
        self.inner.steps(run_id)
    }
    fn add_turn<'a>(&'a self, turn: &'a Turn, epoch: u64) -> StoreFuture<'a, ()> {
        self.inner.add_turn(turn, epoch)
    }
    fn turns<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Vec<Turn>> {
        self.inner.turns(task_id)
    }
    fn open_tree<'a>(&'a self, tree: &'a Tree) -> StoreFuture<'a, ()> {
        self.inner.open_tree(tree)
    }
    fn get_tree<'a>(&'a self, root_id: &'a str) -> StoreFuture<'a, Option<Tree>> {
        self.inner.get_tree(root_id)
    }
    fn charge_tree<'a>(&'a self, root_id: &'a str, charge: TreeCharge) -> StoreFuture<'a, ()> {
        self.inner.charge_tree(root_id, charge)
    }
    fn put_client_task<'a>(&'a self, task: &'a ClientTask) -> StoreFuture<'a, ()> {
        self.inner.put_client_task(task)
    }
    fn get_client_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ClientTask>> {
        self.inner.get_client_task(id)
    }
    fn list_client_tasks<'a>(
        &'a self,
        subject: Option<&'a str>,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, ClientTaskPage> {
        self.inner.list_client_tasks(subject, cursor, limit)
    }
    fn backend(&self) -> dispatch::store::Backend {
        self.inner.backend()
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
    fn close(&self) -> StoreFuture<'_, ()> {
        self.inner.close()
    }
}

struct Fx {
    _dir: tempfile::TempDir,
    fake: FakeProvider,
    store: Arc<Faulty>,
    registry: Arc<Registry>,
    kb: Kb,
    providers: Arc<Providers>,
}

impl Fx {
    async fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let agents = dir.path().join("agents");
        std::fs::create_dir_all(&agents).unwrap();
        std::fs::write(
            agents.join("a.agent.md"),
            "---\nmodel: openai/m\n---\nYou answer.\n",
        )
        .unwrap();
        let fake = FakeProvider::start().await;
        fake.set_default(Behavior::reply("the answer"));
        let url = fake.base_url_openai();
        let env = move |k: &str| match k {
            "OPENAI_BASE_URL" => Some(url.clone()),
            "OPENAI_API_KEY" => Some("sk-test".to_string()),
            _ => None,
        };
        let providers = Providers::new(
            &BTreeMap::new(),
            PriceTable::builtin(),
            ResilienceConfig::default(),
            &env,
        )
        .unwrap();
        Fx {
            store: Arc::new(Faulty {
                inner: SqliteStore::open_in_memory().await.unwrap(),
                no_attempts: Mutex::default(),
                conflict: Mutex::default(),
            }),
            registry: Registry::load(vec![Source::required(&agents)], ReadContext::default()),
            kb: Kb::open(&dir.path().join("_kb")).unwrap(),
            providers: Arc::new(providers),
            fake,
            _dir: dir,
        }
    }

    fn engine(&self) -> Arc<Engine> {
        Engine::new(
            self.store.clone(),
            self.providers.clone(),
            self.registry.clone(),
            self.kb.clone(),
            EngineConfig::default(),
        )
    }

    /// A task left behind by a process that is gone.
    async fn orphan(&self, state: TaskState) -> Task {
        let mut t = Task::new("a", json!("hello"));
        t.state = state;
        t.owner = Some("a-process-that-is-gone".into());
        if state == TaskState::Running {
            t.started_at = Some(now_millis());
        }
        self.store.inner.create_task(&t).await.unwrap();
        t
    }
}

fn routing_call() -> Attempt {
    Attempt {
        task_id: String::new(),
        seq: 0,
        kind: AttemptKind::Routing,
        agent: "orchestrator".into(),
        provider: "openai".into(),
        model: "m".into(),
        started_at: now_millis(),
        latency_ms: 3,
        ok: true,
        http_status: None,
        error: None,
        input_tokens: 10,
        output_tokens: 2,
        cost_usd: 0.0,
        cost_source: CostSource::Unknown,
        verdict: None,
        revision_message: None,
        output: Some("{\"agent\": \"a\"}".into()),
    }
}

#[tokio::test]
async fn a_task_whose_routing_call_cannot_be_stored_is_still_driven() {
    let fx = Fx::new().await;
    let engine = fx.engine();
    // Which id the task gets is chosen here, so the store can refuse its attempts.
    let id = dispatch::task::new_task_id();
    fx.store.no_attempts.lock().unwrap().insert(id.clone());
    let task = engine
        .submit(Submit {
            agent: "a".into(),
            input: json!("hello"),
            routing: Some(RouteDecision {
                agent: "a".into(),
                method: "classifier".into(),
                confidence: 0.9,
                reason: "test".into(),
                attempts: vec![routing_call()],
            }),
            id: Some(id.clone()),
            ..Submit::default()
        })
        .await
        .expect("submitted although the routing call could not be stored yet");
    let done = engine.wait(&task.id, None, WAIT).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    // The routing call was stored with the outcome.
    let stored = fx.store.inner.attempts(&id).await.unwrap();
    assert_eq!(stored[0].kind, AttemptKind::Routing, "{stored:?}");
    assert_eq!(stored.len(), 2, "{stored:?}");
}

#[tokio::test]
async fn recovery_goes_on_past_a_task_it_cannot_take() {
    let fx = Fx::new().await;
    let lost = fx.orphan(TaskState::Running).await;
    let ok = fx.orphan(TaskState::Running).await;
    let queued = fx.orphan(TaskState::Queued).await;
    fx.store.conflict.lock().unwrap().insert(lost.id.clone());
    let engine = fx.engine();
    let (resumed, failed) = engine.recover().await.expect("recovery does not stop");
    assert_eq!((resumed, failed), (2, 0));
    for id in [&ok.id, &queued.id] {
        let t = engine.wait(id, None, WAIT).await.unwrap();
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    }
    let t = fx.store.inner.get_task(&lost.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Running, "left for the next sweep");
}

#[tokio::test]
async fn two_engines_recovering_at_once_never_both_take_a_task() {
    let fx = Fx::new().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(fx.orphan(TaskState::Queued).await.id);
    }
    let (a, b) = (fx.engine(), fx.engine());
    let (ra, rb) = tokio::join!(a.recover(), b.recover());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.0 + rb.0,
        20,
        "each task is taken exactly once: {ra:?} {rb:?}"
    );
    for id in &ids {
        let engine = if a.subscribe(id).is_some() { &a } else { &b };
        let t = engine.wait(id, None, WAIT).await.unwrap();
        assert_eq!(t.state, TaskState::Succeeded);
    }
    assert_eq!(fx.fake.request_count(), 20, "no task was run twice");
}
