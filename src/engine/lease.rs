//! This process's lease on the work it drives, and the claiming of work
//! whose driver is gone.
//!
//! Every process that drives tasks holds a lease in the store
//! ([`crate::store::Store::renew_lease`]), renewed every third of
//! [`EngineConfig::lease`](super::EngineConfig::lease) while the engine
//! lives. A task's owner is the holder driving it, and its epoch the
//! claim's fencing token: every write-back requires it, so a process that
//! lost its lease (paused, cut off from the database) and comes back cannot
//! commit over the one that took its work.
//!
//! The sweep claims, every third of the lease, the queued and running tasks
//! whose owner's lease has run out (or that have no owner): a running one
//! is re-queued (its stored attempts and turns are where it resumes) or,
//! past `max_requeues`, failed; a queued one is driven. A process on this
//! host whose pid is gone is not waited for: its lease is ended at once,
//! so a restart takes over its predecessor's work without a pause.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::{Engine, EngineError, Recovered, Start, owner};
use crate::store::{Change, Lease, StoreError};
use crate::task::{FailReason, Task, TaskState, now_millis};

/// Tasks claimed per statement of a sweep.
const CLAIM_BATCH: u32 = 64;

/// When this process's lease was last renewed, and when it last lapsed.
#[derive(Debug, Default)]
pub(super) struct Renewals {
    /// The last successful renewal (ms on this host's clock; 0: none yet).
    last: AtomicI64,
    /// When a renewal found the lease had run out since the one before it
    /// (ms; 0: never): tasks begun before then may be another's now.
    lapsed: AtomicI64,
}

impl Renewals {
    /// A renewal succeeded at `now`.
    fn record(&self, now: i64, lease: Duration) {
        let before = self.last.swap(now, Ordering::Relaxed);
        if before != 0 && now.saturating_sub(before) >= millis(lease) {
            self.lapsed.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Whether the lease may have run out since `since`: it is not renewed
    /// within the lease now, or it lapsed after `since`.
    fn in_doubt(&self, now: i64, since: i64, lease: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= millis(lease) || self.lapsed.load(Ordering::Relaxed) >= since
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Engine {
    /// How often the lease is renewed and the sweep looks for work to claim.
    pub(super) fn poll_every(&self) -> Duration {
        (self.cfg.lease / 3).max(Duration::from_millis(100))
    }

    /// Take this process's lease if it has none yet, and keep renewing it
    /// while the engine lives. Called before this process owns any task: a
    /// task owned by a holder without a lease is anyone's to claim.
    pub(super) async fn hold_lease(self: &Arc<Self>) -> Result<(), EngineError> {
        self.lease
            .get_or_try_init(|| async {
                self.store
                    .renew_lease(owner::this_process(), self.cfg.lease)
                    .await?;
                self.renewed.record(now_millis(), self.cfg.lease);
                self.spawn_renewal();
                Ok::<(), EngineError>(())
            })
            .await?;
        Ok(())
    }

    fn spawn_renewal(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let released = self.released.clone();
        let every = self.poll_every();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = released.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(engine) = weak.upgrade() else { return };
                match engine
                    .store
                    .renew_lease(owner::this_process(), engine.cfg.lease)
                    .await
                {
                    Ok(()) => engine.renewed.record(now_millis(), engine.cfg.lease),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew this process's lease; other instances take its tasks over if it runs out")
                    }
                }
            }
        });
    }

    /// Stop renewing, and end the lease so that the tasks this process
    /// still owns (queued ones it did not start) are claimed at once.
    pub(super) async fn release_lease(&self) {
        self.released.cancel();
        if self.lease.get().is_none() {
            return;
        }
        if let Err(e) = self.store.end_lease(owner::this_process()).await {
            tracing::warn!(error = %e, "cannot end this process's lease; its tasks are taken over when it runs out");
        }
    }

    /// The holders whose leases are live, less the processes of this host
    /// that are gone. Their leases, and those run out, are ended on the way
    /// (so that the table keeps one row per live process).
    pub(super) async fn live_holders(&self) -> Result<HashSet<String>, EngineError> {
        let leases = self.store.leases().await?;
        let mut live = HashSet::new();
        for Lease {
            holder, live: on, ..
        } in leases
        {
            if !on || owner::dead_here(&holder) {
                if let Err(e) = self.store.end_lease(&holder).await {
                    tracing::warn!(holder = %holder, error = %e, "cannot end the lease of a process that is gone");
                }
                continue;
            }
            live.insert(holder);
        }
        Ok(live)
    }

    /// Claim every task whose driver is gone and take it on: re-queue (or
    /// fail) the running ones, drive the queued ones. How many were resumed
    /// and how many failed.
    pub(super) async fn claim_orphans(self: &Arc<Self>) -> Result<(usize, usize), EngineError> {
        self.hold_lease().await?;
        // Ends the leases of this host's dead processes first.
        self.live_holders().await?;
        let (mut resumed, mut failed) = (0, 0);
        loop {
            let claimed = self
                .store
                .claim_orphans(owner::this_process(), CLAIM_BATCH)
                .await?;
            let full = claimed.len() == CLAIM_BATCH as usize;
            for task in claimed {
                match self.take_on(task).await {
                    Some(Recovered::Resumed) => resumed += 1,
                    Some(Recovered::Failed) => failed += 1,
                    None => {}
                }
            }
            if !full {
                return Ok((resumed, failed));
            }
        }
    }

    /// Drive a task just claimed.
    async fn take_on(self: &Arc<Self>, task: Task) -> Option<Recovered> {
        match task.state {
            TaskState::Running => self.recover_running(task).await,
            _ => {
                self.spawn_driver(task, Start::fresh());
                Some(Recovered::Resumed)
            }
        }
    }

    /// Take over a task claimed from a process that is gone while it ran:
    /// re-queue it, or fail it once it has been re-queued `max_requeues` times.
    async fn recover_running(self: &Arc<Self>, mut task: Task) -> Option<Recovered> {
        // The counters are summed at the end of a run; a run the crash cut
        // short left its stored calls out of them.
        match self.store.attempts(&task.id).await {
            Ok(stored) => super::totals_from(&mut task, &stored),
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "cannot read a recovered task's calls")
            }
        }
        let outcome = if task.requeues < self.cfg.max_requeues {
            task.state = TaskState::Queued;
            task.requeues += 1;
            task.started_at = None;
            Recovered::Resumed
        } else {
            task.state = TaskState::Failed;
            task.reason = Some(FailReason::Interrupted);
            task.error = Some(format!(
                "the process driving this task stopped, {} time(s); not retried again",
                task.requeues + 1
            ));
            task.finished_at = Some(now_millis());
            Recovered::Failed
        };
        if let Err(e) = self.store.update_task(&task, TaskState::Running).await {
            // Claimed but not moved on: it is this process's now, and the
            // next sweep looks for such tasks.
            self.strays.store(true, Ordering::Relaxed);
            tracing::warn!(task = %task.id, error = %e, "cannot take over a claimed task now; the next sweep tries again");
            return None;
        }
        match outcome {
            Recovered::Resumed => {
                tracing::warn!(task = %task.id, agent = %task.agent, "re-queued a task whose process stopped");
                self.spawn_driver(task, Start::fresh());
            }
            Recovered::Failed => {
                self.record_finished(&task);
                tracing::warn!(task = %task.id, "failed an interrupted task (re-queue limit reached)");
            }
        }
        Some(outcome)
    }

    /// Tasks this process owns but drives no more (a take-over whose write
    /// failed): taken on again.
    pub(super) async fn adopt_strays(self: &Arc<Self>) -> Result<(), EngineError> {
        if !self.strays.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        for state in [TaskState::Running, TaskState::Queued] {
            for task in self.store.tasks_in_state(state).await? {
                let ours = task.owner.as_deref() == Some(owner::this_process());
                if ours && self.live_handle(&task.id).is_none() {
                    self.take_on(task).await;
                }
            }
        }
        Ok(())
    }

    /// What to do about a change another process announced: a task of
    /// ours that ended elsewhere (cancelled) stops here; a task queued with
    /// no driver means the sweep should look now (true).
    pub(super) fn heard(&self, change: &Change) -> bool {
        match change {
            Change::Task { id, state } if state.is_terminal() => {
                if let Some(live) = self.live_handle(id) {
                    live.cancel.cancel();
                }
                false
            }
            Change::Task { .. } | Change::Missed => true,
            Change::Slot { .. } => false,
        }
    }

    /// Whether another process may have taken `task` over: this process's
    /// lease ran out since the task started here (it was paused, or cut off
    /// from the store), and the store says so. Asked before what the store
    /// cannot fence, the outbox file; a store that does not answer is no
    /// reason to stop (the fenced commit after it still decides).
    pub(super) async fn lost_meanwhile(&self, task: &Task) -> bool {
        let since = task.started_at.unwrap_or(task.created_at);
        if !self.renewed.in_doubt(now_millis(), since, self.cfg.lease) {
            return false;
        }
        match self.store.get_task(&task.id).await {
            Ok(Some(stored)) => stored.epoch != task.epoch,
            Ok(None) | Err(_) => false,
        }
    }

    /// A write-back refused because another process holds the task now:
    /// this one's work on it is over (nothing of it was stored).
    pub(super) fn lost_claim(&self, e: &StoreError) -> bool {
        matches!(e, StoreError::Fenced { .. })
    }
}
