//! Running workflows: a validated DAG whose steps are engine tasks.
//!
//! One coordinator per run owns the step states. A step starts the moment its
//! own dependencies have finished (no waves); each step is an ordinary task,
//! so retries, failover, audits, limits and cost apply to it. Every step change
//! is persisted before the coordinator acts on it, and a step records its task
//! id *before* submitting it, so after a crash a run resumes: finished steps are
//! kept, a running step re-attaches to its (recovered) task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, Submit, owner};
use crate::kb::WriteMode;
use crate::store::StoreError;
use crate::task::{
    Run, RunState, StepRecord, StepState, Task, TaskState, new_run_id, new_task_id, now_millis,
};
use crate::workflow::{Plan, RenderCtx, Scheduler, WorkflowDef, render_input, validate};

/// What a client asks to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The workflow.
    pub def: WorkflowDef,
    /// The run's input (`{{input}}`).
    pub input: Value,
    /// The workflow agent it comes from, if any.
    pub agent: Option<String>,
    /// The owner (authenticated subject).
    pub subject: Option<String>,
    /// Limits the caller sets on the run's delegation tree (every step and
    /// every task the steps start).
    pub limits: super::CallLimits,
    /// Who answers the questions of the run's steps (tools marked `ask`).
    pub approver: Option<super::approval::AskVia>,
}

/// Something that happened in a run, for progress notifications.
#[derive(Debug, Clone, Serialize)]
pub struct RunEvent {
    /// The step.
    pub step: String,
    /// Its new state.
    pub state: StepState,
}

/// A run's live handles.
pub(super) struct LiveRun {
    cancel: CancellationToken,
    events: broadcast::Sender<RunEvent>,
    state: watch::Sender<RunState>,
}

/// How one step's task ended.
struct Finished {
    idx: usize,
    state: StepState,
    task: Option<Task>,
    tries: u32,
    error: Option<String>,
}

impl Engine {
    /// Validate a workflow against the loaded agents; every problem in one error.
    pub fn plan(&self, def: &WorkflowDef) -> Result<Plan, EngineError> {
        let snap = self.registry.snapshot();
        validate(def, &|a| snap.get(a).is_some()).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| format!("- {e}")).collect();
            EngineError::BadInput(format!(
                "the workflow is invalid; nothing was run:\n{}",
                list.join("\n")
            ))
        })
    }

    /// Validate, persist and start a run. Returns at once.
    pub async fn start_run(self: &Arc<Self>, req: RunRequest) -> Result<Run, EngineError> {
        let plan = self.plan(&req.def)?;
        // A step that could never call its model fails the run before it starts.
        for step in &req.def.steps {
            if let Ok(agent) = self.agent(&step.agent)
                && let Some(why) = self.key_check(&agent).blocking()
            {
                return Err(EngineError::MissingKey(format!(
                    "step `{}`: {why}",
                    step.id
                )));
            }
        }
        // Before the run names this process its owner.
        self.hold_lease().await?;
        let run = Run {
            id: new_run_id(),
            name: req.def.name.clone().or_else(|| req.agent.clone()),
            agent: req.agent,
            state: RunState::Running,
            input: req.input,
            definition: serde_json::to_value(&req.def)
                .map_err(|e| EngineError::BadInput(e.to_string()))?,
            subject: req.subject,
            owner: Some(owner::this_process().to_string()),
            created_at: now_millis(),
            finished_at: None,
            error: None,
        };
        // One delegation tree for the whole run (its id is the tree's root),
        // when an agent may act or limits apply: the steps are planned, so
        // they do not count against the task limit; what they start does.
        let acting = req.def.steps.iter().any(|s| {
            self.agent(&s.agent)
                .is_ok_and(|a| self.needs_tree(&a, req.limits))
        });
        if acting {
            let mut limits = self.tree_limits(req.limits);
            limits.max_tasks = limits.max_tasks.saturating_add(plan.len() as u32);
            self.store
                .open_tree(&crate::task::Tree {
                    root_id: run.id.clone(),
                    tasks: plan.len() as u32,
                    turns: 0,
                    spent_micros: 0,
                    reserved_micros: 0,
                    limits,
                    created_at: run.created_at,
                })
                .await?;
        }
        self.store.put_run(&run).await?;
        let mut steps = Vec::with_capacity(plan.len());
        for (i, id) in plan.ids().iter().enumerate() {
            let s = StepRecord {
                run_id: run.id.clone(),
                step_id: id.clone(),
                idx: i as u32,
                state: StepState::Pending,
                task_id: None,
                tries: 0,
                started_at: None,
                finished_at: None,
                error: None,
                output_path: None,
            };
            self.store.put_step(&s, owner::this_process()).await?;
            steps.push(s);
        }
        // Just before its coordinator starts (whose end forgets it), so a run
        // that failed to start leaves no approver behind.
        if let Some(via) = req.approver {
            self.approvers.set(&run.id, via.0);
        }
        self.spawn_run(run.clone(), plan, steps);
        Ok(run)
    }

    fn spawn_run(self: &Arc<Self>, run: Run, plan: Plan, steps: Vec<StepRecord>) {
        let (events, _) = broadcast::channel(1024);
        let (state, _) = watch::channel(run.state);
        let live = Arc::new(LiveRun {
            cancel: self.shutdown.child_token(),
            events,
            state,
        });
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.id.clone(), live.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let id = run.id.clone();
            let driver = tokio::spawn(coordinate(me.clone(), run, plan, steps, live.clone()));
            if let Err(e) = driver.await {
                tracing::error!(run = %id, error = %e, "workflow coordinator died");
                if let Ok(Some(mut r)) = me.store.get_run(&id).await
                    && !r.state.is_terminal()
                {
                    r.state = RunState::Failed;
                    r.error = Some(format!("internal error: {e}"));
                    r.finished_at = Some(now_millis());
                    let _ = me.store.put_run(&r).await;
                }
            }
            me.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            me.approvers.forget(&id);
            me.inbox.forget(&id);
            live.state.send_modify(|_| {});
        });
    }

    pub(super) fn live_run(&self, id: &str) -> Option<Arc<LiveRun>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The run if `subject` may see it.
    pub async fn visible_run(&self, id: &str, subject: Option<&str>) -> Result<Run, EngineError> {
        match self.store.get_run(id).await? {
            Some(r) if subject.is_none() || r.subject.as_deref() == subject => Ok(r),
            _ => Err(EngineError::UnknownRun(super::echo(id))),
        }
    }

    /// A run and its steps.
    pub async fn run_status(
        &self,
        id: &str,
        subject: Option<&str>,
    ) -> Result<(Run, Vec<StepRecord>), EngineError> {
        let run = self.visible_run(id, subject).await?;
        let steps = self.store.steps(id).await?;
        Ok((run, steps))
    }

    /// Events of a live run.
    pub fn subscribe_run(&self, id: &str) -> Option<broadcast::Receiver<RunEvent>> {
        self.live_run(id).map(|l| l.events.subscribe())
    }

    /// Wait until the run finishes or `timeout` passes.
    pub async fn wait_run(
        &self,
        id: &str,
        subject: Option<&str>,
        timeout: Duration,
    ) -> Result<Run, EngineError> {
        let run = self.visible_run(id, subject).await?;
        if run.state.is_terminal() || timeout.is_zero() {
            return Ok(run);
        }
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(365 * 86_400));
        if let Some(live) = self.live_run(id) {
            let mut rx = live.state.subscribe();
            drop(live);
            while !rx.borrow_and_update().is_terminal() {
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => break,
                }
            }
            return self.visible_run(id, subject).await;
        }
        loop {
            let r = self.visible_run(id, subject).await?;
            if r.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(r);
            }
            tokio::time::sleep_until(
                (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline),
            )
            .await;
        }
    }

    /// Cancel a run: its running steps' tasks are cancelled, the rest skipped.
    pub async fn cancel_run(&self, id: &str, subject: Option<&str>) -> Result<Run, EngineError> {
        let run = self.visible_run(id, subject).await?;
        if run.state.is_terminal() {
            return Ok(run);
        }
        if let Some(live) = self.live_run(id) {
            live.cancel.cancel();
            let mut rx = live.state.subscribe();
            drop(live);
            while !rx.borrow_and_update().is_terminal() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        self.visible_run(id, subject).await
    }

    /// Resume runs a crash left running (their owner is gone).
    pub(super) async fn recover_runs(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut resumed = 0;
        let live = self.live_holders().await?;
        let me = owner::this_process();
        let driven = |owner: Option<&str>| owner.is_some_and(|o| o == me || live.contains(o));
        for mut run in self.store.runs_in_state(RunState::Running).await? {
            if self.live_run(&run.id).is_some() || driven(run.owner.as_deref()) {
                continue;
            }
            let def = match WorkflowDef::from_json(&run.definition) {
                Ok(d) => d,
                Err(e) => {
                    self.fail_run(run, format!("its stored definition cannot be read: {e}"))
                        .await;
                    continue;
                }
            };
            let plan = match self.plan(&def) {
                Ok(p) => p,
                Err(e) => {
                    self.fail_run(run, format!("it no longer validates: {e}"))
                        .await;
                    continue;
                }
            };
            let steps = match self.store.steps(&run.id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "cannot resume a run now; the next sweep tries again");
                    continue;
                }
            };
            let gone = run.owner.replace(me.to_string());
            match self.store.claim_run(&run.id, gone.as_deref(), me).await {
                Ok(()) => {}
                Err(StoreError::Claimed { .. }) => continue, // another process got there first
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "cannot resume a run now; the next sweep tries again");
                    continue;
                }
            }
            tracing::warn!(run = %run.id, "resuming a workflow run interrupted by a restart");
            self.spawn_run(run, plan, steps);
            resumed += 1;
        }
        Ok(resumed)
    }

    async fn fail_run(&self, mut run: Run, why: String) {
        tracing::error!(run = %run.id, "cannot resume: {why}");
        run.state = RunState::Failed;
        run.error = Some(format!("cannot resume: {why}"));
        run.finished_at = Some(now_millis());
        let _ = self.store.put_run(&run).await;
    }
}

/// How a run ended: `partial` only when every failure was tolerated
/// (`continue_on_error`); a failure that was not, even of a step nothing
/// depends on, fails the run.
fn final_state(cancelled: bool, plan: &Plan, steps: &[StepRecord]) -> RunState {
    let failed = |s: &&StepRecord| s.state == StepState::Failed;
    let tolerated = |s: &&StepRecord| {
        plan.index_of(&s.step_id)
            .is_some_and(|i| plan.step(i).continue_on_error)
    };
    if cancelled {
        RunState::Cancelled
    } else if steps.iter().any(|s| s.state == StepState::Skipped)
        || steps.iter().filter(failed).any(|s| !tolerated(&s))
    {
        RunState::Failed
    } else if steps.iter().any(|s| s.state == StepState::Failed) {
        RunState::Partial
    } else {
        RunState::Succeeded
    }
}

/// The coordinator of one run.
async fn coordinate(
    engine: Arc<Engine>,
    mut run: Run,
    plan: Plan,
    stored: Vec<StepRecord>,
    live: Arc<LiveRun>,
) {
    let n = plan.len();
    let by_id: HashMap<&str, &StepRecord> =
        stored.iter().map(|s| (s.step_id.as_str(), s)).collect();
    let mut steps: Vec<StepRecord> = plan
        .ids()
        .iter()
        .enumerate()
        .map(|(i, id)| {
            by_id
                .get(id.as_str())
                .map(|s| (*s).clone())
                .unwrap_or(StepRecord {
                    run_id: run.id.clone(),
                    step_id: id.clone(),
                    idx: i as u32,
                    state: StepState::Pending,
                    task_id: None,
                    tries: 0,
                    started_at: None,
                    finished_at: None,
                    error: None,
                    output_path: None,
                })
        })
        .collect();
    // Outputs of finished steps (for templates), and per-step accounting.
    let mut outputs: Vec<Option<String>> = vec![None; n];
    let mut tasks: Vec<Option<Task>> = vec![None; n];
    for (i, s) in steps.iter().enumerate() {
        if (s.state == StepState::Succeeded || s.state == StepState::Failed)
            && let Some(tid) = &s.task_id
            && let Ok(Some(t)) = engine.store.get_task(tid).await
        {
            outputs[i] = t.output.clone().filter(|_| s.state == StepState::Succeeded);
            tasks[i] = Some(t);
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let mut running: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut writer = SessionWriter::new(&engine, &run);
    writer
        .write_all(&engine, &run, &plan, &steps, &tasks, true)
        .await;

    let mut sched = Scheduler::new(&plan, steps.iter().map(|s| s.state).collect());
    // Skips caused by failures recorded before a crash are re-derived, so a
    // resumed run never starts a step below a failed one.
    for (d, f) in sched.skips_from_failures(&plan) {
        let why = format!("skipped: `{}` failed", plan.ids()[f]);
        skip(&engine, &live, &mut steps[d], why).await;
    }

    let launch = |i: usize,
                  steps: &mut Vec<StepRecord>,
                  outputs: &[Option<String>],
                  running: &mut HashMap<usize, tokio::task::JoinHandle<()>>| {
        let step = plan.step(i).clone();
        let out_of = |id: &str| plan.index_of(id).and_then(|j| outputs[j].clone());
        let ctx = RenderCtx {
            input: &run.input,
            outputs: &out_of,
        };
        let rendered = render_input(&step, &ctx);
        let rec = steps[i].clone();
        let tx = tx.clone();
        let engine = engine.clone();
        let subject = run.subject.clone();
        let cancel = live.cancel.clone();
        let events = live.events.clone();
        running.insert(
            i,
            tokio::spawn(async move {
                let finished = match rendered {
                    Err(e) => Finished {
                        idx: i,
                        state: StepState::Failed,
                        task: None,
                        tries: rec.tries,
                        error: Some(e.to_string()),
                    },
                    Ok(input) => {
                        run_step(&engine, i, rec, &step, input, subject, cancel, events).await
                    }
                };
                let _ = tx.send(finished);
            }),
        );
    };

    // Start what can start: steps left running by a crash re-attach, pending
    // steps whose dependencies are satisfied start now.
    for i in sched.initial() {
        sched.start(i);
        launch(i, &mut steps, &outputs, &mut running);
    }

    let mut cancelled = false;
    while !running.is_empty() {
        let f = tokio::select! {
            biased;
            _ = live.cancel.cancelled(), if !cancelled => {
                // Each running step cancels its own task (it knows the id)
                // and reports back below.
                cancelled = true;
                continue;
            }
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        running.remove(&f.idx);
        let i = f.idx;
        let s = &mut steps[i];
        s.state = if cancelled && f.state != StepState::Succeeded {
            StepState::Cancelled
        } else {
            f.state
        };
        s.tries = f.tries;
        s.error = f.error.clone();
        s.finished_at = Some(now_millis());
        if let Some(t) = &f.task {
            s.task_id = Some(t.id.clone());
            s.started_at = s.started_at.or(t.started_at);
        }
        if f.task.as_ref().and_then(|t| t.output.as_ref()).is_some() {
            s.output_path = writer
                .write_step(&engine, &plan, i, s, f.task.as_ref())
                .await;
        }
        outputs[i] = f
            .task
            .as_ref()
            .and_then(|t| t.output.clone())
            .filter(|_| s.state == StepState::Succeeded);
        tasks[i] = f.task;
        persist_step(&engine, &steps[i]).await;
        let _ = live.events.send(RunEvent {
            step: steps[i].step_id.clone(),
            state: steps[i].state,
        });

        let (ready, skipped) = sched.complete(&plan, i, steps[i].state);
        for d in skipped {
            let why = format!("skipped: `{}` failed", plan.ids()[i]);
            skip(&engine, &live, &mut steps[d], why).await;
        }
        if !cancelled {
            for c in ready {
                sched.start(c);
                launch(c, &mut steps, &outputs, &mut running);
            }
        }
        writer
            .write_all(&engine, &run, &plan, &steps, &tasks, false)
            .await;
    }

    // Cancelled: whatever did not run is skipped.
    for d in sched.skip_pending() {
        let why = if cancelled {
            "skipped: the run was cancelled"
        } else {
            "skipped"
        };
        skip(&engine, &live, &mut steps[d], why.to_string()).await;
    }

    run.state = final_state(cancelled, &plan, &steps);
    run.error = match run.state {
        RunState::Cancelled => Some("cancelled by the client".into()),
        RunState::Failed | RunState::Partial => {
            let failed: Vec<String> = steps
                .iter()
                .filter(|s| s.state == StepState::Failed)
                .map(|s| format!("{}: {}", s.step_id, s.error.as_deref().unwrap_or("failed")))
                .collect();
            Some(failed.join("; "))
        }
        _ => None,
    };
    run.finished_at = Some(now_millis());
    writer
        .write_all(&engine, &run, &plan, &steps, &tasks, true)
        .await;
    if let Err(e) = engine.store.put_run(&run).await {
        tracing::error!(run = %run.id, error = %e, "cannot record the end of the run");
    }
    live.state.send_replace(run.state);
    tracing::info!(run = %run.id, state = run.state.as_str(), "workflow finished");
}

async fn skip(engine: &Engine, live: &LiveRun, s: &mut StepRecord, why: String) {
    s.state = StepState::Skipped;
    s.error = Some(why);
    s.finished_at = Some(now_millis());
    persist_step(engine, s).await;
    let _ = live.events.send(RunEvent {
        step: s.step_id.clone(),
        state: StepState::Skipped,
    });
}

async fn persist_step(engine: &Engine, s: &StepRecord) {
    if let Err(e) = engine.store.put_step(s, owner::this_process()).await {
        tracing::error!(run = %s.run_id, step = %s.step_id, error = %e, "cannot record a step");
    }
}

/// Run one step: its task (re-attaching to one recorded before a crash), plus
/// the step's own retries.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    engine: &Arc<Engine>,
    idx: usize,
    mut rec: StepRecord,
    step: &crate::workflow::StepDef,
    input: Value,
    subject: Option<String>,
    cancel: CancellationToken,
    events: broadcast::Sender<RunEvent>,
) -> Finished {
    let mut last_error = None;
    loop {
        // Re-attach to the task recorded before a crash if it exists; submit
        // it under the recorded id if the crash came before the submit;
        // otherwise record a new id first, then submit under it.
        let recorded = match (&rec.task_id, rec.state) {
            (Some(tid), StepState::Running) => Some(tid.clone()),
            _ => None,
        };
        let (task_id, submit) = match recorded {
            Some(tid) => {
                let exists = matches!(engine.store.get_task(&tid).await, Ok(Some(_)));
                (tid, !exists)
            }
            None => {
                if cancel.is_cancelled() {
                    return Finished {
                        idx,
                        state: StepState::Cancelled,
                        task: None,
                        tries: rec.tries,
                        error: None,
                    };
                }
                let id = new_task_id();
                rec.task_id = Some(id.clone());
                rec.state = StepState::Running;
                rec.tries += 1;
                rec.started_at = rec.started_at.or(Some(now_millis()));
                persist_step(engine, &rec).await;
                let _ = events.send(RunEvent {
                    step: rec.step_id.clone(),
                    state: StepState::Running,
                });
                (id, true)
            }
        };
        if submit {
            let submitted = engine
                .submit(Submit {
                    agent: step.agent.clone(),
                    input: input.clone(),
                    subject: subject.clone(),
                    id: Some(task_id.clone()),
                    tree: Some(rec.run_id.clone()),
                    ..Submit::default()
                })
                .await;
            if let Err(EngineError::ShuttingDown) = submitted {
                // The step stays recorded as started with this task id; the
                // next start submits it. Nothing more happens in this process.
                std::future::pending::<()>().await;
            }
            if let Err(e) = submitted {
                return Finished {
                    idx,
                    state: StepState::Failed,
                    task: None,
                    tries: rec.tries,
                    error: Some(e.to_string()),
                };
            }
        }
        let waited = tokio::select! {
            t = engine.wait(&task_id, None, Duration::MAX) => t,
            _ = cancel.cancelled() => {
                let _ = engine.cancel(&task_id, None).await;
                engine.visible_task(&task_id, None).await
            }
        };
        let task = match waited {
            Ok(t) => t,
            Err(e) => {
                return Finished {
                    idx,
                    state: StepState::Failed,
                    task: None,
                    tries: rec.tries,
                    error: Some(e.to_string()),
                };
            }
        };
        match task.state {
            TaskState::Succeeded => {
                return Finished {
                    idx,
                    state: StepState::Succeeded,
                    task: Some(task),
                    tries: rec.tries,
                    error: None,
                };
            }
            TaskState::Cancelled => {
                return Finished {
                    idx,
                    state: StepState::Cancelled,
                    task: Some(task),
                    tries: rec.tries,
                    error: Some("cancelled".into()),
                };
            }
            _ => {
                last_error = task.error.clone().or(last_error);
                if rec.tries > step.retry || cancel.is_cancelled() {
                    return Finished {
                        idx,
                        state: StepState::Failed,
                        task: Some(task),
                        tries: rec.tries,
                        error: last_error,
                    };
                }
                // The step's own retry: a fresh task next time round.
                rec.state = StepState::Pending;
            }
        }
    }
}

/// Writes `_kb/sessions/<run>/`: `run.json`, one markdown file per step output
/// and a `README.md` with a Mermaid graph. Summaries are rewritten at most a
/// few times a second, so a 10,000-step run does not rewrite them 10,000 times.
struct SessionWriter {
    dir: String,
    /// The run's owner, in whose own KB space the files go.
    subject: Option<String>,
    last: Option<Instant>,
}

impl SessionWriter {
    fn new(_engine: &Engine, run: &Run) -> SessionWriter {
        SessionWriter {
            dir: format!("sessions/{}", run.id),
            subject: run.subject.clone(),
            last: None,
        }
    }

    async fn write(&self, engine: &Engine, name: &str, content: String) -> Option<String> {
        let path = format!("{}/{name}", self.dir);
        let kb = engine.kb.clone();
        let p = path.clone();
        let subject = self.subject.clone();
        match tokio::task::spawn_blocking(move || {
            kb.for_subject(subject.as_deref())?
                .write_derived(&p, &content, WriteMode::Overwrite)
        })
        .await
        {
            Ok(Ok(_)) => Some(path),
            Ok(Err(e)) => {
                tracing::warn!(path = %path, error = %e, "cannot write a session file");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "session writer task failed");
                None
            }
        }
    }

    async fn write_step(
        &mut self,
        engine: &Engine,
        plan: &Plan,
        i: usize,
        s: &StepRecord,
        task: Option<&Task>,
    ) -> Option<String> {
        let t = task?;
        let doc = format!(
            "---\nstep: {}\nagent: {}\nstate: {}\ntask: {}\nmodel: {}\ninput_tokens: {}\noutput_tokens: {}\ncost_usd: {:.6}\n---\n\n# {} ({})\n\n{}\n",
            s.step_id,
            plan.step(i).agent,
            s.state.as_str(),
            t.id,
            t.model.as_deref().unwrap_or("-"),
            t.input_tokens,
            t.output_tokens,
            t.cost_usd,
            s.step_id,
            plan.step(i).agent,
            t.output.as_deref().unwrap_or("")
        );
        self.write(engine, &format!("{}.md", s.step_id), doc).await
    }

    async fn write_all(
        &mut self,
        engine: &Engine,
        run: &Run,
        plan: &Plan,
        steps: &[StepRecord],
        tasks: &[Option<Task>],
        force: bool,
    ) {
        if !force
            && self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let (mut tin, mut tout, mut cost) = (0u64, 0u64, 0.0f64);
        for t in tasks.iter().flatten() {
            tin += t.input_tokens;
            tout += t.output_tokens;
            cost += t.cost_usd;
        }
        let elapsed = run.finished_at.unwrap_or_else(now_millis) - run.created_at;
        let json = serde_json::json!({
            "run": run,
            "steps": steps,
            "totals": {"input_tokens": tin, "output_tokens": tout, "cost_usd": cost, "elapsed_ms": elapsed},
        });
        let _ = self
            .write(
                engine,
                "run.json",
                serde_json::to_string_pretty(&json).unwrap_or_default(),
            )
            .await;
        let state_of = |i: usize| steps.get(i).map_or(StepState::Pending, |s| s.state);
        let mut md = format!(
            "# Workflow run {}\n\n- workflow: {}\n- state: **{}**\n- steps: {}\n- tokens: {} in / {} out\n- cost: ${:.6}\n- time: {:.1} s\n",
            run.id,
            run.name.as_deref().unwrap_or("(inline)"),
            run.state.as_str(),
            steps.len(),
            tin,
            tout,
            cost,
            elapsed as f64 / 1000.0
        );
        if let Some(e) = &run.error {
            md.push_str(&format!("- error: {e}\n"));
        }
        if plan.len() <= 500 {
            md.push_str("\n```mermaid\n");
            md.push_str(&crate::workflow::mermaid(plan, &state_of));
            md.push_str("```\n");
        } else {
            md.push_str("\n(The graph has more than 500 steps; see run.json.)\n");
        }
        md.push_str(
            "\n| step | agent | state | task | cost | output |\n|---|---|---|---|---|---|\n",
        );
        for (i, s) in steps.iter().enumerate().take(2000) {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                s.step_id,
                plan.step(i).agent,
                s.state.as_str(),
                s.task_id.as_deref().unwrap_or("-"),
                tasks[i]
                    .as_ref()
                    .map_or("-".to_string(), |t| format!("${:.6}", t.cost_usd)),
                s.output_path
                    .as_deref()
                    .and_then(|p| p.rsplit('/').next())
                    .map_or("-".to_string(), |f| format!("[{f}]({f})"))
            ));
        }
        let _ = self.write(engine, "README.md", md).await;
    }
}
