//! Delegation trees on the engine's side: which new task starts a tree (or
//! joins its workflow run's), with which limits, and the routing calls a
//! task is created with. The limits themselves are taken by the store
//! (`Store::charge_tree`), where the work is admitted.

use super::{Engine, tools};
use crate::agent::Agent;
use crate::task::{Attempt, Task, TaskId, Tree};

/// USD as micro-dollars (what trees count money in), rounded up so that a
/// budget is never overspent by rounding.
pub fn usd_to_micros(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).ceil().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// Limits a caller may set on one tree (`budget_usd`, `max_depth`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallLimits {
    /// Money the tree may spend, USD.
    pub budget_usd: Option<f64>,
    /// Deepest delegation.
    pub max_depth: Option<u32>,
}

impl CallLimits {
    /// True when the caller set nothing.
    pub fn is_none(&self) -> bool {
        self.budget_usd.is_none() && self.max_depth.is_none()
    }
}

/// Where a new task asked to be: what [`Engine::place_in_tree`] reads of
/// its [`Submit`](super::Submit).
pub(super) struct Placement<'a> {
    pub parent: Option<&'a TaskId>,
    pub run_tree: Option<&'a TaskId>,
    pub limits: CallLimits,
}

impl Engine {
    /// The limits of a new tree: the configured ones, lowered by the caller's.
    pub(super) fn tree_limits(&self, call: CallLimits) -> crate::task::TreeLimits {
        let mut l = self.cfg.acting.tree;
        l.max_depth = l.max_depth.min(self.cfg.max_depth);
        if let Some(d) = call.max_depth {
            l.max_depth = l.max_depth.min(d);
        }
        if let Some(b) = call.budget_usd {
            let b = usd_to_micros(b);
            l.budget_micros = Some(l.budget_micros.map_or(b, |c| c.min(b)));
        }
        l
    }

    /// Whether a new root task of `agent` needs a tree: it may act, or
    /// limits apply to it.
    pub(super) fn needs_tree(&self, agent: &crate::agent::Agent, call: CallLimits) -> bool {
        !tools::Policy::of(agent).is_empty()
            || !call.is_none()
            || self.cfg.acting.tree.budget_micros.is_some()
            || self.cfg.acting.tree.max_secs.is_some()
    }

    /// Put a new task in its tree: a child's (`root` from its parent), its
    /// workflow run's, or a new one it roots when it may act or limits apply.
    /// The tree to open with the task, when it roots one.
    pub(super) async fn place_in_tree(
        &self,
        task: &mut Task,
        place: Placement<'_>,
        agent: &Agent,
        mut root: Option<TaskId>,
    ) -> Option<Tree> {
        if let (None, Some(run_tree)) = (place.parent, place.run_tree)
            && matches!(self.store.get_tree(run_tree).await, Ok(Some(_)))
        {
            root = Some(run_tree.clone());
        }
        let opens =
            place.parent.is_none() && root.is_none() && self.needs_tree(agent, place.limits);
        if opens {
            root = Some(task.id.clone());
        }
        task.root_id = root;
        opens.then(|| Tree {
            root_id: task.id.clone(),
            tasks: 1,
            turns: 0,
            spent_micros: 0,
            reserved_micros: 0,
            limits: self.tree_limits(place.limits),
            created_at: task.created_at,
        })
    }

    /// Store the router's calls as the task's first attempts. A call that
    /// cannot be stored now is kept for the commit of the final state (the
    /// task exists: its driver must start whatever fails here).
    pub(super) async fn store_routing_calls(
        &self,
        task: &Task,
        routing: Option<&super::RouteDecision>,
    ) -> (Vec<Attempt>, Vec<Attempt>) {
        let mut prior = Vec::new();
        let mut unstored = Vec::new();
        for (i, a) in routing.iter().flat_map(|r| &r.attempts).enumerate() {
            let mut a = a.clone();
            a.task_id = task.id.clone();
            a.seq = i as u32 + 1;
            if let Err(e) = self.store.add_attempt(&a, task.epoch).await {
                tracing::warn!(task = %task.id, error = %e, "cannot store a routing call yet; it is stored with the outcome");
                unstored.push(a.clone());
            }
            prior.push(a);
        }
        (prior, unstored)
    }
}
