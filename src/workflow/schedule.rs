//! The scheduling decisions of a run, apart from running anything: which steps
//! are ready, and which a failure skips. The executor feeds it completions; it
//! answers in time proportional to the edges touched, so a 10,000-step DAG is
//! scheduled in milliseconds.

use super::{Plan, StepState};

/// Ready-set bookkeeping for one run.
#[derive(Debug, Clone)]
pub struct Scheduler {
    missing: Vec<usize>,
    state: Vec<StepState>,
    continue_on_error: Vec<bool>,
}

impl Scheduler {
    /// Start from the steps' current states (all pending for a new run; the
    /// stored states for a resumed one). A step counts as done for its children
    /// when it succeeded, or failed with `continue_on_error`.
    pub fn new(plan: &Plan, state: Vec<StepState>) -> Scheduler {
        let continue_on_error: Vec<bool> = (0..plan.len())
            .map(|i| plan.step(i).continue_on_error)
            .collect();
        let satisfied = |i: usize| {
            state[i] == StepState::Succeeded
                || (state[i] == StepState::Failed && continue_on_error[i])
        };
        let missing = (0..plan.len())
            .map(|i| plan.deps(i).iter().filter(|&&d| !satisfied(d)).count())
            .collect();
        Scheduler {
            missing,
            state,
            continue_on_error,
        }
    }

    /// Current state of step `i`.
    pub fn state(&self, i: usize) -> StepState {
        self.state[i]
    }

    /// Steps to start now: pending ones whose dependencies are done, plus any
    /// left `running` (a resumed run re-attaches to them).
    pub fn initial(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| {
                self.state[i] == StepState::Running
                    || (self.state[i] == StepState::Pending && self.missing[i] == 0)
            })
            .collect()
    }

    /// Pending steps below a failure recorded before a resume (to skip them).
    pub fn skips_from_failures(&mut self, plan: &Plan) -> Vec<(usize, usize)> {
        let failed: Vec<usize> = (0..self.state.len())
            .filter(|&i| self.state[i] == StepState::Failed && !self.continue_on_error[i])
            .collect();
        let mut out = Vec::new();
        for f in failed {
            out.extend(self.skip_below(plan, f).into_iter().map(|d| (d, f)));
        }
        out
    }

    /// Mark a step as started.
    pub fn start(&mut self, i: usize) {
        self.state[i] = StepState::Running;
    }

    /// Record that step `i` ended in `state`. Returns the steps that became
    /// ready and the steps this made `skipped`.
    pub fn complete(
        &mut self,
        plan: &Plan,
        i: usize,
        state: StepState,
    ) -> (Vec<usize>, Vec<usize>) {
        self.state[i] = state;
        let ok = state == StepState::Succeeded
            || (state == StepState::Failed && self.continue_on_error[i]);
        if ok {
            let mut ready = Vec::new();
            for &c in plan.children(i) {
                self.missing[c] = self.missing[c].saturating_sub(1);
                if self.missing[c] == 0 && self.state[c] == StepState::Pending {
                    ready.push(c);
                }
            }
            (ready, Vec::new())
        } else if state == StepState::Cancelled {
            (Vec::new(), Vec::new())
        } else {
            (Vec::new(), self.skip_below(plan, i))
        }
    }

    fn skip_below(&mut self, plan: &Plan, i: usize) -> Vec<usize> {
        let mut skipped = Vec::new();
        for d in plan.descendants(i) {
            if self.state[d] == StepState::Pending {
                self.state[d] = StepState::Skipped;
                skipped.push(d);
            }
        }
        skipped
    }

    /// Mark every pending step skipped (a cancelled run); returns them.
    pub fn skip_pending(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, s) in self.state.iter_mut().enumerate() {
            if *s == StepState::Pending {
                *s = StepState::Skipped;
                out.push(i);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{WorkflowDef, validate};
    use serde_json::json;

    fn plan(v: serde_json::Value) -> Plan {
        validate(&WorkflowDef::from_json(&v).unwrap(), &|_| true).unwrap()
    }

    #[test]
    fn diamond_readiness_and_skips() {
        let p = plan(json!({"steps": [
            {"id": "a", "agent": "x"},
            {"id": "b", "agent": "x", "depends_on": ["a"]},
            {"id": "c", "agent": "x", "depends_on": ["a"]},
            {"id": "d", "agent": "x", "depends_on": ["b", "c"]}]}));
        let mut s = Scheduler::new(&p, vec![StepState::Pending; 4]);
        assert_eq!(s.initial(), [0]);
        s.start(0);
        let (ready, skipped) = s.complete(&p, 0, StepState::Succeeded);
        assert_eq!((ready, skipped), (vec![1, 2], vec![]));
        let (ready, _) = s.complete(&p, 1, StepState::Succeeded);
        assert!(ready.is_empty(), "d waits for c");
        let (ready, skipped) = s.complete(&p, 2, StepState::Failed);
        assert!(ready.is_empty());
        assert_eq!(skipped, [3]);
        assert_eq!(s.state(3), StepState::Skipped);
    }

    #[test]
    fn continue_on_error_lets_children_run() {
        let p = plan(json!({"steps": [
            {"id": "a", "agent": "x", "continue_on_error": true},
            {"id": "b", "agent": "x", "depends_on": ["a"]}]}));
        let mut s = Scheduler::new(&p, vec![StepState::Pending; 2]);
        let (ready, skipped) = s.complete(&p, 0, StepState::Failed);
        assert_eq!((ready, skipped), (vec![1], vec![]));
    }

    #[test]
    fn resumed_states_are_respected() {
        let p = plan(json!({"steps": [
            {"id": "a", "agent": "x"},
            {"id": "b", "agent": "x", "depends_on": ["a"]},
            {"id": "c", "agent": "x", "depends_on": ["b"]}]}));
        let s = Scheduler::new(
            &p,
            vec![StepState::Succeeded, StepState::Running, StepState::Pending],
        );
        assert_eq!(s.initial(), [1]);
        let mut s = Scheduler::new(
            &p,
            vec![StepState::Failed, StepState::Pending, StepState::Pending],
        );
        assert_eq!(s.skips_from_failures(&p), [(1, 0), (2, 0)]);
        assert!(s.initial().is_empty());
    }
}
