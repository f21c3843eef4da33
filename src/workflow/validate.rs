//! Everything that must hold before a workflow runs, and the [`Plan`] it produces.
//!
//! The prototype hung on unknown dependencies and ran templates it could not fill; here nothing
//! starts until the whole definition is known to be runnable, and a client gets every problem
//! in one answer instead of fixing them one round-trip at a time.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;

use super::def::{MAX_RETRY, MAX_STEPS, StepDef, WorkflowDef};
use super::template::{TemplateRef, references};

/// Longest step id: ids become file names and Mermaid node labels.
const MAX_ID_LEN: usize = 64;

/// Cycles listed at most; one is enough to act on, a few show whether they share a cause.
const MAX_CYCLES_REPORTED: usize = 10;

/// Budget of edit-distance cells for "did you mean" hints, so that a 10,000-step workflow full
/// of typos cannot make validation slow.
const SUGGESTION_BUDGET: usize = 2_000_000;

/// Longest user-supplied text quoted in an error.
const CLIP: usize = 80;

/// A validated workflow: the definition plus its graph in index form (index = position in
/// `def.steps`), ready for a scheduler.
#[derive(Debug, Clone)]
pub struct Plan {
    def: WorkflowDef,
    ids: Vec<String>,
    index: HashMap<String, usize>,
    deps: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    order: Vec<usize>,
    /// Edges run dependency → dependent; node weight = step index (equal to the node index).
    graph: DiGraph<usize, ()>,
}

impl Plan {
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the plan has no steps (never true for a validated plan; here for clippy and API
    /// symmetry).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Step ids by index (definition order).
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Index of the step with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Direct dependencies of step `i`, deduplicated, in `depends_on` order.
    /// Panics if `i >= len()` (an index is the caller's, never a client's).
    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// Direct dependents of step `i`, in definition order. Panics if `i >= len()`.
    pub fn children(&self, i: usize) -> &[usize] {
        &self.children[i]
    }

    /// A topological order: every step comes after all of its dependencies.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Steps with no dependencies (startable at once), in definition order.
    pub fn roots(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.deps[i].is_empty())
            .collect()
    }

    /// Steps nobody depends on (the run's results), in definition order.
    pub fn sinks(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.children[i].is_empty())
            .collect()
    }

    /// All transitive dependents of step `i` (what a failure of `i` skips), ascending, without
    /// `i` itself. Panics if `i >= len()`.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        let start = NodeIndex::new(i);
        let mut dfs = Dfs::new(&self.graph, start);
        let mut out = Vec::new();
        while let Some(n) = dfs.next(&self.graph) {
            if n != start {
                out.push(self.graph[n]);
            }
        }
        out.sort_unstable();
        out
    }

    /// The definition of step `i`. Panics if `i >= len()`.
    pub fn step(&self, i: usize) -> &StepDef {
        &self.def.steps[i]
    }

    /// The validated definition.
    pub fn def(&self) -> &WorkflowDef {
        &self.def
    }
}

/// One problem with a workflow definition; the message names the step it is about.
///
/// Steps are named by id, or as `#N` (1-based position) when the id is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// No steps at all.
    #[error("workflow has no steps")]
    Empty,
    /// More than [`MAX_STEPS`] steps.
    #[error("workflow has {count} steps; the limit is {limit}")]
    TooManySteps {
        /// Steps in the definition.
        count: usize,
        /// [`MAX_STEPS`].
        limit: usize,
    },
    /// A step whose `id` is "".
    #[error("step {position} has an empty `id`")]
    EmptyId {
        /// 1-based position in `steps`.
        position: usize,
    },
    /// An id outside `[A-Za-z0-9_-]{1,64}`.
    #[error(
        "step {position}: invalid id `{id}`: ids are used in templates, file names and diagrams, \
         so they may only contain letters, digits, `_` and `-`, at most {MAX_ID_LEN} characters"
    )]
    InvalidId {
        /// 1-based position in `steps`.
        position: usize,
        /// The id (clipped when very long).
        id: String,
    },
    /// The id `input`, which would shadow `{{input}}`.
    #[error("step {position}: the id `{id}` is reserved (`{{{{input}}}}` is the run's input)")]
    ReservedId {
        /// 1-based position in `steps`.
        position: usize,
        /// The reserved id.
        id: String,
    },
    /// Two steps with one id.
    #[error("duplicate step id `{id}` at steps {first} and {second}")]
    DuplicateId {
        /// The id.
        id: String,
        /// 1-based position of its first use.
        first: usize,
        /// 1-based position of the repeat.
        second: usize,
    },
    /// A step without an agent name.
    #[error("step `{step}`: `agent` is empty")]
    EmptyAgent {
        /// The step.
        step: String,
    },
    /// An agent the registry does not know.
    #[error("step `{step}`: unknown agent `{agent}`")]
    UnknownAgent {
        /// The step.
        step: String,
        /// The agent name as written.
        agent: String,
    },
    /// A `depends_on` entry naming no step.
    #[error("step `{step}`: depends on unknown step `{dependency}`{}", hint(.suggestion))]
    UnknownDependency {
        /// The step.
        step: String,
        /// The unknown id.
        dependency: String,
        /// A similar existing id, if any.
        suggestion: Option<String>,
    },
    /// A step listing itself in `depends_on`.
    #[error("step `{step}` depends on itself")]
    SelfDependency {
        /// The step.
        step: String,
    },
    /// A dependency cycle, as a path whose first and last entries are the same step.
    #[error("cycle: {} (each step depends on the next)", .path.join(" -> "))]
    Cycle {
        /// Step ids along the cycle; `path[0] == path[last]`.
        path: Vec<String>,
    },
    /// `retry` above [`MAX_RETRY`].
    #[error("step `{step}`: retry {retry} is above the maximum of {max}")]
    RetryTooHigh {
        /// The step.
        step: String,
        /// The requested retries.
        retry: u32,
        /// [`MAX_RETRY`].
        max: u32,
    },
    /// A malformed placeholder in the step's input.
    #[error("step `{step}`: bad template in `input`: {message}")]
    TemplateSyntax {
        /// The step.
        step: String,
        /// What is malformed, quoting it.
        message: String,
    },
    /// A placeholder reading the output of a step that does not exist.
    #[error("step `{step}`: template `{template}` names unknown step `{referenced}`{}",
        hint(.suggestion))]
    TemplateUnknownStep {
        /// The step whose input holds the placeholder.
        step: String,
        /// The placeholder.
        template: String,
        /// The unknown id.
        referenced: String,
        /// A similar existing id, if any.
        suggestion: Option<String>,
    },
    /// A placeholder reading the step's own output.
    #[error("step `{step}`: template `{template}` reads the step's own output")]
    TemplateSelfReference {
        /// The step.
        step: String,
        /// The placeholder.
        template: String,
    },
    /// A placeholder reading a step that is not guaranteed to have finished first.
    #[error(
        "step `{step}`: template `{template}` reads `{referenced}`, which is not an ancestor of \
         `{step}`; add `{referenced}` to the `depends_on` of `{step}`"
    )]
    TemplateNotAncestor {
        /// The step whose input holds the placeholder.
        step: String,
        /// The placeholder.
        template: String,
        /// The step it reads.
        referenced: String,
    },
}

/// "; did you mean `x`?" or nothing.
fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

/// Clip user text for an error message, on a char boundary.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(CLIP) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Validate everything BEFORE anything runs; return ALL problems, not just the first.
///
/// `agent_exists` answers whether an agent name is known to the registry. Only an empty or
/// oversized workflow stops early: no other check would be meaningful or affordable then.
/// Runs in O(steps + edges + template references), except the ancestor check of a placeholder
/// that reads a step which is not a direct dependency; that walks only the part of the graph
/// between the two steps in topological order.
pub fn validate(
    def: &WorkflowDef,
    agent_exists: &dyn Fn(&str) -> bool,
) -> Result<Plan, Vec<WorkflowError>> {
    let n = def.steps.len();
    if n == 0 {
        return Err(vec![WorkflowError::Empty]);
    }
    if n > MAX_STEPS {
        return Err(vec![WorkflowError::TooManySteps {
            count: n,
            limit: MAX_STEPS,
        }]);
    }
    let steps = &def.steps;
    let mut errors = Vec::new();
    let mut hints = Hints::new();
    let label = |i: usize| -> String {
        let id = &steps[i].id;
        if id.is_empty() {
            format!("#{}", i + 1)
        } else {
            clip(id)
        }
    };

    // Ids, agents, retry: per-step facts. The first step with an id owns it.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, s) in steps.iter().enumerate() {
        let position = i + 1;
        if s.id.is_empty() {
            errors.push(WorkflowError::EmptyId { position });
        } else {
            if !id_is_valid(&s.id) {
                errors.push(WorkflowError::InvalidId {
                    position,
                    id: clip(&s.id),
                });
            } else if s.id == "input" {
                errors.push(WorkflowError::ReservedId {
                    position,
                    id: s.id.clone(),
                });
            }
            match index.entry(s.id.as_str()) {
                Entry::Occupied(e) => errors.push(WorkflowError::DuplicateId {
                    id: clip(&s.id),
                    first: e.get() + 1,
                    second: position,
                }),
                Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
        if s.agent.trim().is_empty() {
            errors.push(WorkflowError::EmptyAgent { step: label(i) });
        } else if !agent_exists(&s.agent) {
            errors.push(WorkflowError::UnknownAgent {
                step: label(i),
                agent: clip(&s.agent),
            });
        }
        if s.retry > MAX_RETRY {
            errors.push(WorkflowError::RetryTooHigh {
                step: label(i),
                retry: s.retry,
                max: MAX_RETRY,
            });
        }
    }

    // Dependencies, deduplicated with a stamp array so a 10,000-way fan-in stays linear.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut stamp = vec![usize::MAX; n];
    for (i, s) in steps.iter().enumerate() {
        for d in &s.depends_on {
            if *d == s.id {
                // Reported once however often it is listed. `stamp[i] == i` is free to mean
                // this: a step's own slot is never used to dedupe its own dependencies.
                if stamp[i] != i {
                    stamp[i] = i;
                    errors.push(WorkflowError::SelfDependency { step: label(i) });
                }
                continue;
            }
            match index.get(d.as_str()) {
                None => errors.push(WorkflowError::UnknownDependency {
                    step: label(i),
                    dependency: clip(d),
                    suggestion: hints.similar(d, steps),
                }),
                Some(&j) => {
                    if stamp[j] != i {
                        stamp[j] = i;
                        deps[i].push(j);
                    }
                }
            }
        }
    }

    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(n, n);
    for i in 0..n {
        graph.add_node(i);
    }
    for (i, ds) in deps.iter().enumerate() {
        for &j in ds {
            children[j].push(i);
            graph.add_edge(NodeIndex::new(j), NodeIndex::new(i), ());
        }
    }

    let order: Option<Vec<usize>> = match toposort(&graph, None) {
        Ok(nodes) => Some(nodes.into_iter().map(|n| graph[n]).collect()),
        Err(_) => {
            // petgraph names one node on a cycle; a DFS of our own recovers whole paths.
            for cycle in find_cycles(&deps, MAX_CYCLES_REPORTED) {
                errors.push(WorkflowError::Cycle {
                    path: cycle.iter().map(|&i| label(i)).collect(),
                });
            }
            None
        }
    };

    check_templates(
        steps,
        &index,
        &deps,
        &children,
        order.as_deref(),
        &label,
        &mut hints,
        &mut errors,
    );

    match order {
        Some(order) if errors.is_empty() => Ok(Plan {
            def: def.clone(),
            ids: steps.iter().map(|s| s.id.clone()).collect(),
            index: index.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            deps,
            children,
            order,
            graph,
        }),
        _ => Err(errors),
    }
}

/// `[A-Za-z0-9_-]{1,64}`.
fn id_is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Check every placeholder: syntax, known step, not itself, and an ancestor. Only the first
/// syntax error of a step's input is reported (the rest of that input is not trusted).
///
/// Direct dependencies are accepted at once. The rest are grouped by the step they read and
/// answered with one downward walk per such step; with a topological order the walk is cut at
/// the latest reader, since nothing later in the order can be an ancestor of it.
// The graph pieces stay separate locals of `validate` until they are moved into a `Plan`.
#[allow(clippy::too_many_arguments)]
fn check_templates(
    steps: &[StepDef],
    index: &HashMap<&str, usize>,
    deps: &[Vec<usize>],
    children: &[Vec<usize>],
    order: Option<&[usize]>,
    label: &dyn Fn(usize) -> String,
    hints: &mut Hints,
    errors: &mut Vec<WorkflowError>,
) {
    let n = steps.len();
    let mut is_dep = vec![usize::MAX; n];
    // (referenced step, reading step, placeholder) for references that are not direct deps.
    let mut indirect: Vec<(usize, usize, TemplateRef)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let Some(input) = &s.input else { continue };
        let refs = match references(input) {
            Ok(refs) => refs,
            Err(message) => {
                errors.push(WorkflowError::TemplateSyntax {
                    step: label(i),
                    message,
                });
                continue;
            }
        };
        if refs.is_empty() {
            continue;
        }
        for &d in &deps[i] {
            is_dep[d] = i;
        }
        for r in refs {
            let TemplateRef::Output { step: target, .. } = &r else {
                continue;
            };
            match index.get(target.as_str()) {
                None => errors.push(WorkflowError::TemplateUnknownStep {
                    step: label(i),
                    template: clip(&r.to_string()),
                    referenced: clip(target),
                    suggestion: hints.similar(target, steps),
                }),
                Some(&j) if j == i => errors.push(WorkflowError::TemplateSelfReference {
                    step: label(i),
                    template: clip(&r.to_string()),
                }),
                Some(&j) if is_dep[j] == i => {}
                Some(&j) => indirect.push((j, i, r)),
            }
        }
    }
    if indirect.is_empty() {
        return;
    }

    let pos: Option<Vec<usize>> = order.map(|order| {
        let mut pos = vec![0; n];
        for (k, &i) in order.iter().enumerate() {
            pos[i] = k;
        }
        pos
    });
    indirect.sort_by_key(|(target, reader, _)| (*target, *reader));
    let mut seen = vec![usize::MAX; n];
    let mut stack = Vec::new();
    for group in indirect.chunk_by(|a, b| a.0 == b.0) {
        let target = group[0].0;
        // Readers after the target in topological order; earlier ones cannot be descendants.
        let limit = pos
            .as_ref()
            .map(|pos| group.iter().map(|(_, r, _)| pos[*r]).max().unwrap_or(0));
        let worth_walking = match (&pos, limit) {
            (Some(pos), Some(l)) => l > pos[target],
            _ => true,
        };
        if worth_walking {
            seen[target] = target;
            stack.push(target);
            while let Some(u) = stack.pop() {
                for &c in &children[u] {
                    let in_range = match (&pos, limit) {
                        (Some(pos), Some(l)) => pos[c] <= l,
                        _ => true,
                    };
                    if seen[c] != target && in_range {
                        seen[c] = target;
                        stack.push(c);
                    }
                }
            }
        }
        for (_, reader, r) in group {
            if seen[*reader] != target {
                errors.push(WorkflowError::TemplateNotAncestor {
                    step: label(*reader),
                    template: clip(&r.to_string()),
                    referenced: label(target),
                });
            }
        }
    }
}

/// Up to `limit` dependency cycles, each as a path `a, b, ..., a` where every step depends on
/// the next. Iterative DFS (a 10,000-step chain must not overflow the stack); each back edge
/// closes exactly one cycle, so no cycle is reported twice.
fn find_cycles(deps: &[Vec<usize>], limit: usize) -> Vec<Vec<usize>> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let n = deps.len();
    let mut colour = vec![WHITE; n];
    let mut cycles = Vec::new();
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for start in 0..n {
        if colour[start] != WHITE {
            continue;
        }
        colour[start] = GREY;
        stack.push((start, 0));
        while let Some(top) = stack.last_mut() {
            let (u, next) = *top;
            let Some(&v) = deps[u].get(next) else {
                colour[u] = BLACK;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match colour[v] {
                WHITE => {
                    colour[v] = GREY;
                    stack.push((v, 0));
                }
                GREY => {
                    let from = stack.iter().rposition(|&(x, _)| x == v).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[from..].iter().map(|&(x, _)| x).collect();
                    // Start at the earliest-defined step so the message is stable.
                    if let Some(min_at) = (0..cycle.len()).min_by_key(|&k| cycle[k]) {
                        cycle.rotate_left(min_at);
                    }
                    cycle.push(cycle[0]);
                    cycles.push(cycle);
                    if cycles.len() >= limit {
                        return cycles;
                    }
                }
                _ => {}
            }
        }
    }
    cycles
}

/// "Did you mean" lookups under a total work budget.
struct Hints {
    budget: usize,
}

impl Hints {
    fn new() -> Self {
        Hints {
            budget: SUGGESTION_BUDGET,
        }
    }

    /// The existing id closest to `wrong` (edit distance ≤ 2, and less than its length).
    fn similar(&mut self, wrong: &str, steps: &[StepDef]) -> Option<String> {
        let wrong: Vec<char> = wrong.chars().take(MAX_ID_LEN + 2).collect();
        let mut best: Option<(usize, &str)> = None;
        for s in steps {
            let cand: Vec<char> = s.id.chars().take(MAX_ID_LEN + 2).collect();
            if cand.is_empty() || cand.len().abs_diff(wrong.len()) > 2 {
                continue;
            }
            let cost = cand.len() * wrong.len();
            if cost > self.budget {
                return None;
            }
            self.budget -= cost;
            let d = edit_distance(&wrong, &cand);
            if d <= 2 && d < wrong.len() && best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, &s.id));
            }
        }
        best.map(|(_, id)| id.to_string())
    }
}

/// Levenshtein distance, two rows.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::def::SPEC_EXAMPLE;
    use serde_json::{Value, json};

    fn def(v: Value) -> WorkflowDef {
        WorkflowDef::from_json(&v).expect("test definition parses")
    }

    fn any_agent(_: &str) -> bool {
        true
    }

    fn errors(v: Value) -> Vec<WorkflowError> {
        match validate(&def(v), &any_agent) {
            Ok(_) => panic!("expected validation errors"),
            Err(errors) => errors,
        }
    }

    /// The only error, as text.
    fn one_error(v: Value) -> String {
        let errs = errors(v);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs[0].to_string()
    }

    fn step(id: &str, deps: &[&str]) -> Value {
        json!({"id": id, "agent": "x", "depends_on": deps})
    }

    #[test]
    fn spec_example_validates() {
        let v: Value = serde_json::from_str(SPEC_EXAMPLE).expect("json");
        let known = ["code-review", "docs-sync", "meeting-prep"];
        let plan = validate(&def(v), &|a| known.contains(&a)).expect("valid");
        assert_eq!(plan.len(), 3);
        assert!(!plan.is_empty());
        assert_eq!(plan.ids(), ["review", "docs", "notify"]);
        assert_eq!(plan.index_of("docs"), Some(1));
        assert_eq!(plan.index_of("nope"), None);
        assert_eq!(plan.deps(2), [1]);
        assert_eq!(plan.children(0), [1]);
        assert_eq!(plan.order(), [0, 1, 2]);
        assert_eq!(plan.roots(), vec![0]);
        assert_eq!(plan.sinks(), vec![2]);
        assert_eq!(plan.descendants(0), vec![1, 2]);
        assert_eq!(plan.step(1).agent, "docs-sync");
        assert_eq!(plan.def().name.as_deref(), Some("review-and-document"));
    }

    #[test]
    fn diamond() {
        let v = json!([
            {"id": "a", "agent": "x"},
            {"id": "b", "agent": "x", "depends_on": ["a", "a"], "input": "{{a.output}}"},
            {"id": "c", "agent": "x", "depends_on": ["a"]},
            {"id": "d", "agent": "x", "depends_on": ["c", "b"],
             "input": {"b": "{{b.output.x}}", "c": ["{{c.output}}"], "a": "{{a.output.0}}",
                       "in": "{{input.repo}}"}}
        ]);
        let plan = validate(&def(v), &any_agent).expect("valid");
        assert_eq!(plan.deps(1), [0], "duplicate depends_on entries are merged");
        assert_eq!(plan.deps(3), [2, 1]);
        assert_eq!(plan.children(0), [1, 2]);
        assert_eq!(plan.roots(), vec![0]);
        assert_eq!(plan.sinks(), vec![3]);
        assert_eq!(plan.descendants(0), vec![1, 2, 3]);
        assert_eq!(plan.descendants(1), vec![3]);
        assert!(plan.descendants(3).is_empty());
        let order = plan.order();
        let pos = |i: usize| order.iter().position(|&x| x == i).expect("in order");
        for i in 0..plan.len() {
            for &d in plan.deps(i) {
                assert!(pos(d) < pos(i), "{order:?}");
            }
        }
    }

    #[test]
    fn empty_workflow() {
        let msg = one_error(json!({"steps": []}));
        assert_eq!(msg, "workflow has no steps");
    }

    #[test]
    fn too_many_steps() {
        let steps: Vec<Value> = (0..=MAX_STEPS)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        let msg = one_error(json!(steps));
        assert_eq!(msg, "workflow has 10001 steps; the limit is 10000");
    }

    #[test]
    fn empty_id() {
        let msg = one_error(json!([step("a", &[]), step("b", &[]), step("", &[])]));
        assert_eq!(msg, "step 3 has an empty `id`");
    }

    #[test]
    fn invalid_ids() {
        let long = "x".repeat(65);
        for bad in ["has space", "dot.ted", "{{x}}", "é", long.as_str()] {
            let msg = one_error(json!([step(bad, &[])]));
            assert!(msg.starts_with("step 1: invalid id `"), "{msg}");
            assert!(msg.contains("letters, digits, `_` and `-`"), "{msg}");
        }
        let ok = "A-z_09".to_string() + &"y".repeat(58);
        assert!(validate(&def(json!([step(&ok, &[])])), &any_agent).is_ok());
    }

    #[test]
    fn reserved_id() {
        let msg = one_error(json!([step("a", &[]), step("input", &[])]));
        assert_eq!(
            msg,
            "step 2: the id `input` is reserved (`{{input}}` is the run's input)"
        );
    }

    #[test]
    fn duplicate_ids_name_both_positions() {
        let msg = one_error(json!([step("a", &[]), step("b", &[]), step("a", &[])]));
        assert_eq!(msg, "duplicate step id `a` at steps 1 and 3");
    }

    #[test]
    fn unknown_agent() {
        let v =
            json!([{"id": "review", "agent": "code-review"}, {"id": "docs", "agent": "doc-sync"}]);
        let errs = validate(&def(v), &|a| a == "code-review").expect_err("invalid");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].to_string(), "step `docs`: unknown agent `doc-sync`");
        let msg = one_error(json!([{"id": "a", "agent": " "}]));
        assert_eq!(msg, "step `a`: `agent` is empty");
    }

    #[test]
    fn unknown_dependency() {
        let msg = one_error(json!([step("review", &[]), step("docs", &["reveiw"])]));
        assert_eq!(
            msg,
            "step `docs`: depends on unknown step `reveiw`; did you mean `review`?"
        );
        let msg = one_error(json!([step("a", &[]), step("b", &["zzzzzz"])]));
        assert_eq!(msg, "step `b`: depends on unknown step `zzzzzz`");
    }

    #[test]
    fn self_dependency() {
        let msg = one_error(json!([step("a", &[]), step("b", &["a", "b", "b"])]));
        assert_eq!(msg, "step `b` depends on itself");
    }

    #[test]
    fn cycle_prints_its_path() {
        let msg = one_error(json!([
            step("a", &["b"]),
            step("b", &["c"]),
            step("c", &["a"])
        ]));
        assert!(msg.starts_with("cycle: a -> b -> c -> a"), "{msg}");
        // Found from any starting point, the path starts at the earliest-defined step.
        let msg = one_error(json!([
            step("root", &[]),
            step("x", &["root", "z"]),
            step("y", &["x"]),
            step("z", &["y"]),
        ]));
        assert!(msg.starts_with("cycle: x -> z -> y -> x"), "{msg}");
    }

    #[test]
    fn distinct_cycles_reported_once_each() {
        let errs = errors(json!([
            step("a", &["b"]),
            step("b", &["a"]),
            step("c", &["d"]),
            step("d", &["c"]),
            step("e", &["a", "c"]),
        ]));
        let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts.iter().any(|t| t.starts_with("cycle: a -> b -> a")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.starts_with("cycle: c -> d -> c")),
            "{texts:?}"
        );
    }

    #[test]
    fn many_cycles_are_capped() {
        // A complete graph on 30 steps has an enormous number of cycles.
        let ids: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
        let steps: Vec<Value> = ids
            .iter()
            .map(|id| {
                let others: Vec<&str> = ids
                    .iter()
                    .filter(|o| *o != id)
                    .map(String::as_str)
                    .collect();
                step(id, &others)
            })
            .collect();
        let errs = errors(json!(steps));
        assert_eq!(errs.len(), MAX_CYCLES_REPORTED);
        let mut texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), MAX_CYCLES_REPORTED, "each cycle once");
    }

    #[test]
    fn retry_above_five() {
        let v =
            json!([{"id": "a", "agent": "x", "retry": 5}, {"id": "b", "agent": "x", "retry": 6}]);
        let msg = one_error(v);
        assert_eq!(msg, "step `b`: retry 6 is above the maximum of 5");
    }

    #[test]
    fn template_not_an_ancestor() {
        let msg = one_error(json!([
            step("review", &[]),
            {"id": "docs", "agent": "x", "input": "{{review.output}}"},
        ]));
        assert!(
            msg.contains("step `docs`: template `{{review.output}}` reads `review`"),
            "{msg}"
        );
        assert!(msg.contains("not an ancestor"), "{msg}");
        assert!(
            msg.contains("add `review` to the `depends_on` of `docs`"),
            "{msg}"
        );

        // A sibling, and a descendant, are not ancestors either.
        let errs = errors(json!([
            step("a", &[]),
            {"id": "b", "agent": "x", "depends_on": ["a"], "input": {"x": "{{c.output.k}}"}},
            {"id": "c", "agent": "x", "depends_on": ["a"], "input": ["{{d.output}}"]},
            step("d", &["c"]),
        ]));
        let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].contains("step `b`: template `{{c.output.k}}` reads `c`"),
            "{texts:?}"
        );
        assert!(
            texts[1].contains("step `c`: template `{{d.output}}` reads `d`"),
            "{texts:?}"
        );
    }

    #[test]
    fn template_transitive_ancestor_is_fine() {
        let v = json!([
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["b"]),
            {"id": "d", "agent": "x", "depends_on": ["c"], "input": "{{a.output}} {{b.output}}"},
            {"id": "e", "agent": "x", "depends_on": ["c"], "input": "{{a.output.z}}"},
        ]);
        assert!(validate(&def(v), &any_agent).is_ok());
    }

    #[test]
    fn template_unknown_step() {
        let msg = one_error(json!([
            step("review", &[]),
            {"id": "docs", "agent": "x", "depends_on": ["review"], "input": "{{revew.output}}"},
        ]));
        assert_eq!(
            msg,
            "step `docs`: template `{{revew.output}}` names unknown step `revew`; did you mean \
             `review`?"
        );
    }

    #[test]
    fn template_self_reference() {
        let msg = one_error(json!([{"id": "a", "agent": "x", "input": {"k": "{{a.output}}"}}]));
        assert_eq!(
            msg,
            "step `a`: template `{{a.output}}` reads the step's own output"
        );
    }

    #[test]
    fn template_syntax_errors() {
        for (input, want) in [
            ("{{review.output", "unclosed `{{` in `{{review.output`"),
            ("{{}}", "empty placeholder `{{}}`"),
            (
                "{{review}}",
                "`{{review}}` must be `{{input...}}` or `{{review.output...}}`",
            ),
        ] {
            let msg = one_error(json!([
                step("review", &[]),
                {"id": "docs", "agent": "x", "depends_on": ["review"], "input": {"a": [input]}},
            ]));
            assert!(
                msg.starts_with("step `docs`: bad template in `input`: "),
                "{msg}"
            );
            assert!(msg.contains(want), "{input}: {msg}");
        }
    }

    #[test]
    fn all_problems_reported_together() {
        let v = json!([
            {"id": "", "agent": "x"},
            {"id": "a", "agent": "missing"},
            {"id": "a", "agent": "x", "retry": 9},
            {"id": "b c", "agent": "x", "depends_on": ["ghost", "b c"]},
            {"id": "d", "agent": "x", "depends_on": ["e"], "input": "{{a.output}} {{q.output}} {{"},
            {"id": "e", "agent": "x", "depends_on": ["d"], "input": "{{a.output}} {{q.output}}"},
        ]);
        let errs = validate(&def(v), &|a| a == "x").expect_err("invalid");
        let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let want = [
            "step 1 has an empty `id`",
            "step `a`: unknown agent `missing`",
            "duplicate step id `a` at steps 2 and 3",
            "step `a`: retry 9 is above the maximum of 5",
            "step 4: invalid id `b c`",
            "step `b c`: depends on unknown step `ghost`",
            "step `b c` depends on itself",
            "cycle: d -> e -> d",
            "step `d`: bad template in `input`: unclosed `{{`",
            "step `e`: template `{{q.output}}` names unknown step `q`",
            "step `e`: template `{{a.output}}` reads `a`, which is not an ancestor of `e`",
        ];
        for w in want {
            assert!(
                texts.iter().any(|t| t.contains(w)),
                "missing {w:?} in {texts:#?}"
            );
        }
        assert_eq!(texts.len(), want.len(), "{texts:#?}");
    }

    #[test]
    fn empty_id_steps_are_named_by_position_elsewhere() {
        let v = json!([{"id": "", "agent": "nope"}]);
        let errs = validate(&def(v), &|_| false).expect_err("invalid");
        let texts: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "step 1 has an empty `id`",
                "step `#1`: unknown agent `nope`"
            ]
        );
    }

    fn chain(n: usize) -> WorkflowDef {
        let steps = (0..n)
            .map(|i| {
                let mut s = json!({"id": format!("s{i}"), "agent": "x"});
                if i > 0 {
                    s["depends_on"] = json!([format!("s{}", i - 1)]);
                    // Every step reads its parent and the root (an indirect ancestor).
                    s["input"] = json!(format!("{{{{s{}.output}}}} {{{{s0.output}}}}", i - 1));
                }
                s
            })
            .collect();
        def(Value::Array(steps))
    }

    #[test]
    fn chain_of_max_steps() {
        let plan = validate(&chain(MAX_STEPS), &any_agent).expect("valid");
        assert_eq!(plan.len(), MAX_STEPS);
        assert_eq!(plan.roots(), vec![0]);
        assert_eq!(plan.sinks(), vec![MAX_STEPS - 1]);
        assert_eq!(plan.order().first(), Some(&0));
        assert_eq!(plan.order().last(), Some(&(MAX_STEPS - 1)));
        assert_eq!(plan.descendants(0).len(), MAX_STEPS - 1);
    }

    #[test]
    fn long_cycle_does_not_overflow() {
        let n = MAX_STEPS;
        let steps: Vec<Value> = (0..n)
            .map(|i| step(&format!("s{i}"), &[&format!("s{}", (i + 1) % n)]))
            .collect();
        let errs = errors(json!(steps));
        assert_eq!(errs.len(), 1);
        match &errs[0] {
            WorkflowError::Cycle { path } => {
                assert_eq!(path.len(), n + 1);
                assert_eq!(path.first(), path.last());
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn fan_out_of_max_steps() {
        let mut steps = vec![step("root", &[])];
        steps.extend((1..MAX_STEPS).map(|i| {
            json!({"id": format!("c{i}"), "agent": "x", "depends_on": ["root"],
                   "input": {"from": "{{root.output.items.0}}"}})
        }));
        let plan = validate(&def(json!(steps)), &any_agent).expect("valid");
        assert_eq!(plan.roots(), vec![0]);
        assert_eq!(plan.children(0).len(), MAX_STEPS - 1);
        assert_eq!(plan.sinks().len(), MAX_STEPS - 1);
        assert_eq!(plan.order()[0], 0);
    }

    #[test]
    fn wide_fan_in_dedupes_linearly() {
        let n = 5_000;
        let mut steps: Vec<Value> = (0..n).map(|i| step(&format!("p{i}"), &[])).collect();
        let mut deps: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        deps.extend(deps.clone());
        steps.push(json!({"id": "sink", "agent": "x", "depends_on": deps}));
        let plan = validate(&def(json!(steps)), &any_agent).expect("valid");
        assert_eq!(plan.deps(n).len(), n);
        assert_eq!(plan.sinks(), vec![n]);
    }

    #[test]
    fn edit_distance_basics() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(edit_distance(&c("review"), &c("revew")), 1);
        assert_eq!(edit_distance(&c("review"), &c("reveiw")), 2);
        assert_eq!(edit_distance(&c(""), &c("abc")), 3);
        assert_eq!(edit_distance(&c("same"), &c("same")), 0);
    }
}
