//! Where a run's attempts go.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::super::{Engine, Live, TaskEvent};
use crate::task::{Attempt, Task, Turn};

/// Counters a run accumulates from its attempts (shared with the attempt
/// writer, because a cancelled run's future is dropped mid-way).
#[derive(Default)]
pub(super) struct Tally {
    pub(super) seq: AtomicU32,
    pub(super) calls: AtomicU32,
    pub(super) input_tokens: AtomicU64,
    pub(super) output_tokens: AtomicU64,
    /// Cost in micro-dollars, so it can be summed atomically.
    pub(super) cost_micros: AtomicU64,
}

impl Tally {
    pub(super) fn starting_at(seq: u32) -> Tally {
        let t = Tally::default();
        t.seq.store(seq, Ordering::Relaxed);
        t
    }

    pub(super) fn apply(&self, task: &mut Task) {
        task.attempts += self.calls.swap(0, Ordering::Relaxed);
        task.input_tokens += self.input_tokens.swap(0, Ordering::Relaxed);
        task.output_tokens += self.output_tokens.swap(0, Ordering::Relaxed);
        task.cost_usd += self.cost_micros.swap(0, Ordering::Relaxed) as f64 / 1e6;
    }
}

/// An attempt on its way to the store, with an acknowledgement for the
/// callers that must not go on before it is durable.
pub(super) type Record = (Attempt, Option<oneshot::Sender<()>>);

/// Where a run's attempts go. Each is kept in memory for the outbox file
/// (which then needs no read of the store) and is either queued for the
/// store at once, or held for the final commit.
pub(super) struct Attempts {
    pub(super) engine: Arc<Engine>,
    pub(super) live: Arc<Live>,
    /// The task's claim epoch: the store refuses attempts under another.
    pub(super) epoch: u64,
    /// Every attempt of the task so far, in order, earlier runs' included.
    pub(super) all: Mutex<Vec<Attempt>>,
    /// Attempts left for the commit of the final state.
    pub(super) held: Mutex<Vec<Attempt>>,
    /// The writer task and its queue, started by the first attempt queued:
    /// a run whose only attempt is its answer never needs one.
    pub(super) writer: Mutex<Option<(mpsc::UnboundedSender<Record>, JoinHandle<()>)>>,
}

/// What [`Attempts::close`] leaves to [`finish`].
pub(super) struct Closed {
    pub(super) all: Vec<Attempt>,
    pub(super) held: Vec<Attempt>,
    /// Still storing the attempts queued to it.
    pub(super) writer: Option<JoinHandle<()>>,
    /// The task's tool-loop turns, for the outbox file.
    pub(super) turns: Vec<Turn>,
}

impl Closed {
    /// Nothing in flight: `all` are the attempts already stored.
    pub(super) fn of(all: Vec<Attempt>) -> Closed {
        Closed {
            all,
            held: Vec::new(),
            writer: None,
            turns: Vec::new(),
        }
    }
}

impl Attempts {
    pub(super) fn new(
        engine: &Arc<Engine>,
        live: &Arc<Live>,
        epoch: u64,
        prior: Vec<Attempt>,
    ) -> Attempts {
        Attempts {
            engine: engine.clone(),
            live: live.clone(),
            epoch,
            all: Mutex::new(prior),
            held: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
        }
    }

    /// Queue an attempt for the store, in order; `ack` answers once it is
    /// stored. False if the writer is gone.
    pub(super) fn send(&self, attempt: Attempt, ack: Option<oneshot::Sender<()>>) -> bool {
        lock(&self.all).push(attempt.clone());
        let mut writer = lock(&self.writer);
        let (tx, _) = writer.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(write_attempts(
                self.engine.clone(),
                rx,
                self.live.clone(),
                self.epoch,
            ));
            (tx, task)
        });
        tx.send((attempt, ack)).is_ok()
    }

    /// Attempts already in `all` that the final commit must store.
    pub(super) fn keep_for_finish(&self, attempts: Vec<Attempt>) {
        lock(&self.held).extend(attempts);
    }

    /// Keep an attempt for the commit of the final state.
    pub(super) fn hold(&self, attempt: Attempt) {
        lock(&self.all).push(attempt.clone());
        let _ = self.live.events.send(TaskEvent::Attempt {
            attempt: Box::new(attempt.clone()),
        });
        lock(&self.held).push(attempt);
    }

    /// No more attempts: what there is, and the writer still storing the
    /// queued ones (it stops once its queue is drained).
    pub(super) fn close(&self) -> Closed {
        let writer = lock(&self.writer).take().map(|(_, task)| task);
        Closed {
            all: std::mem::take(&mut *lock(&self.all)),
            held: std::mem::take(&mut *lock(&self.held)),
            writer,
            turns: Vec::new(),
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still whole.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Persist attempts in order as they arrive (under claim `epoch`), and
/// tell subscribers. A refusal because another process took the task over
/// stops the run.
pub(super) async fn write_attempts(
    engine: Arc<Engine>,
    mut rx: mpsc::UnboundedReceiver<Record>,
    live: Arc<Live>,
    epoch: u64,
) {
    while let Some((a, ack)) = rx.recv().await {
        let stored = engine.store.add_attempt(&a, epoch).await;
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
        match stored {
            Ok(()) => {}
            Err(e) if engine.lost_claim(&e) => {
                tracing::warn!(task = %a.task_id, error = %e, "stopping work on a task another process took over");
                live.cancel.cancel();
            }
            Err(e) => {
                tracing::error!(task = %a.task_id, seq = a.seq, error = %e, "cannot record an attempt")
            }
        }
        let _ = live.events.send(TaskEvent::Attempt {
            attempt: Box::new(a),
        });
    }
}
