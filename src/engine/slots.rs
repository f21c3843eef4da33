//! Concurrency limits that hold across every instance sharing the store.
//!
//! Each process enforces `[limits]` with its own semaphores; on a store
//! that several instances share (PostgreSQL) a task or provider call also
//! takes a slot row in the store ([`Store::take_slot`]): `global`,
//! `agent:NAME` and `provider:NAME`, numbered below the limit. The slot is
//! taken in the statement that checks it is free, so N instances with
//! `per_provider = 4` never have more than 4 calls in flight at that
//! provider. A slot belongs to the instance's lease: an instance that dies
//! gives its slots back when its lease runs out.
//!
//! A wait for a slot wakes when one of its scope is given back (announced
//! by the store) and polls anyway. If the store cannot be asked, the local
//! limit alone applies to that call (said in the log): the database being
//! away is no reason to stop work it does not hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Engine, Permits, fresh_permit, owner};
use crate::provider::{Gate, Held};
use crate::store::{Change, Store};

/// The longest pause between two looks for a free slot.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// The store's shared slots, taken for this process.
#[derive(Clone)]
pub struct SharedSlots {
    store: Arc<dyn Store>,
    /// One queue per scope: only its first waiter asks the store, the
    /// others wait their turn here (a thousand waiters polling the store
    /// would be its whole load).
    queues: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for SharedSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlots").finish_non_exhaustive()
    }
}

/// A slot held: give it back with [`SharedSlot::give`]; one dropped is
/// given back in the background.
pub struct SharedSlot {
    store: Arc<dyn Store>,
    scope: String,
    n: u32,
    given: bool,
}

impl SharedSlot {
    /// Give the slot back now, and return once the store has it (or has
    /// failed to take it, which is then retried in the background).
    pub async fn give(mut self) {
        self.given = true;
        let (store, scope, n) = (self.store.clone(), std::mem::take(&mut self.scope), self.n);
        give_back(store, scope, n).await;
    }
}

/// Give slot `n` of `scope` back, retrying a few times with backoff.
async fn give_back(store: Arc<dyn Store>, scope: String, n: u32) {
    let mut pause = Duration::from_millis(50);
    for _ in 0..6 {
        match store.give_slot(&scope, n, owner::this_process()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(scope = %scope, error = %e, "cannot give a shared slot back yet");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    tracing::error!(scope = %scope, "gave up giving a shared slot back; it returns when this process's lease ends");
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        if self.given {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the process is ending, and its lease with it
        };
        let (store, scope, n) = (self.store.clone(), std::mem::take(&mut self.scope), self.n);
        rt.spawn(give_back(store, scope, n));
    }
}

/// Give `slots` back, then let `local` go: the next task this process
/// admits must find them free in the store, not race their return.
pub(super) fn give_all_then<T: Send + 'static>(slots: Vec<SharedSlot>, local: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if !slots.is_empty() => {
            rt.spawn(async move {
                for slot in slots {
                    slot.give().await;
                }
                drop(local);
            });
        }
        _ => drop((slots, local)),
    }
}

impl SharedSlots {
    /// Slots in `store` (meant for a store that several instances share).
    pub fn new(store: Arc<dyn Store>) -> SharedSlots {
        SharedSlots {
            store,
            queues: Arc::default(),
        }
    }

    fn queue(&self, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(scope.to_string()).or_default().clone()
    }

    /// One look: a slot of `scope` if one below `limit` is free now.
    /// `Err` when the store cannot be asked.
    pub(super) async fn try_take(
        &self,
        scope: &str,
        limit: usize,
    ) -> Result<Option<SharedSlot>, ()> {
        match self
            .store
            .take_slot(scope, clamp(limit), owner::this_process())
            .await
        {
            Ok(n) => Ok(n.map(|n| SharedSlot {
                store: self.store.clone(),
                scope: scope.to_string(),
                n,
                given: false,
            })),
            Err(e) => {
                tracing::warn!(scope = %scope, error = %e, "cannot take a shared slot; the local limit alone applies");
                Err(())
            }
        }
    }

    /// Wait for a slot of `scope` (`None` if the store cannot be asked).
    pub async fn take(&self, scope: &str, limit: usize) -> Option<SharedSlot> {
        let queue = self.queue(scope);
        let _turn = queue.lock().await;
        // Subscribed before the first look, so a slot given back after it wakes us.
        let mut changes = self.store.changes();
        let mut pause = Duration::from_millis(20);
        loop {
            match self.try_take(scope, limit).await {
                Ok(Some(slot)) => return Some(slot),
                Ok(None) => {}
                Err(()) => return None,
            }
            let until = tokio::time::Instant::now() + pause;
            pause = (pause * 2).min(LONGEST_PAUSE);
            match changes.as_mut() {
                Some(rx) => {
                    if given_back(rx, scope, until).await {
                        changes = None;
                    }
                }
                None => tokio::time::sleep_until(until).await,
            }
        }
    }
}

/// Wait until a slot of `scope` is given back (or news may have been
/// missed) or `until`. True when the store stopped announcing.
async fn given_back(
    rx: &mut broadcast::Receiver<Change>,
    scope: &str,
    until: tokio::time::Instant,
) -> bool {
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) => return false,
            Ok(Ok(Change::Slot { scope: s })) if s == scope => return false,
            Ok(Ok(Change::Missed)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                return false;
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                tokio::time::sleep_until(until).await;
                return true;
            }
        }
    }
}

impl Engine {
    /// The scopes and limits of a task's shared slots: its agent's, then
    /// the global one (the order of the local semaphores).
    fn scopes(&self, agent: &str) -> [(String, usize); 2] {
        [
            (format!("agent:{agent}"), self.agent_limit(agent)),
            ("global".to_string(), self.cfg.global_limit.max(1)),
        ]
    }

    /// A task's slots, if all are free now. Never jumps the queue: tokio's
    /// semaphores hand released permits to waiters first, so a task waiting
    /// for a slot leaves none free to take.
    pub(super) async fn try_admit(&self, agent: &str) -> Option<Permits> {
        let a = self.agent_slot(agent).try_acquire_owned().ok()?;
        let g = self.global.clone().try_acquire_owned().ok()?;
        let mut shared = Vec::new();
        if let Some(slots) = &self.shared {
            for (scope, limit) in self.scopes(agent) {
                match slots.try_take(&scope, limit).await {
                    Ok(Some(slot)) => shared.push(slot),
                    // Taken elsewhere: the task waits in the queue.
                    Ok(None) => return None,
                    Err(()) => {}
                }
            }
        }
        Some(Permits::new(a, g, shared))
    }

    /// Wait for a task's slots: per agent first, then global, so a task
    /// blocked on its agent's limit does not hold a global slot others
    /// could use; here first, then across instances.
    pub(super) async fn admit(&self, agent: &str) -> Permits {
        // The semaphores are never closed, so acquiring cannot fail; if it
        // ever did, a fresh one-permit semaphore keeps the task moving.
        let a = match self.agent_slot(agent).acquire_owned().await {
            Ok(p) => p,
            Err(_) => fresh_permit(),
        };
        let g = match self.global.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => fresh_permit(),
        };
        let mut shared = Vec::new();
        if let Some(slots) = &self.shared {
            for (scope, limit) in self.scopes(agent) {
                shared.extend(slots.take(&scope, limit).await);
            }
        }
        Permits::new(a, g, shared)
    }
}

fn clamp(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX).max(1)
}

#[async_trait::async_trait]
impl Gate for SharedSlots {
    async fn enter(&self, scope: &str, limit: usize) -> Option<Box<dyn Held>> {
        self.take(scope, limit)
            .await
            .map(|s| Box::new(s) as Box<dyn Held>)
    }
}

#[async_trait::async_trait]
impl Held for SharedSlot {
    async fn leave(self: Box<Self>) {
        self.give().await;
    }
}
