//! Checks that need the whole set of agents: duplicate names, mirrors that name
//! no agent, mirror cycles, and auditors whose prompt does not state the verdict
//! format.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use super::Agent;
use crate::diag::Diagnostic;

/// One agent file during loading: what it parsed to and what was found wrong.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file as shown in diagnostics.
    pub file: PathBuf,
    /// The file as messages about other files name it: relative to the
    /// project (`.claude/agents/x.md`), never where the project lives.
    pub label: String,
    /// The agent, while it is still usable.
    pub agent: Option<Agent>,
    /// Problems found in the file or in its relation to other files.
    pub diagnostics: Vec<Diagnostic>,
    /// True when `agent` is the last good version kept after a broken edit.
    pub stale: bool,
}

/// Run the set-level checks. An entry that fails one loses its agent (so it is
/// not served) and gains an error that names every file involved. `holders`
/// names the file that held each name in the previous snapshot: of two files
/// defining one name, that one keeps it; otherwise neither does.
pub fn check_set(entries: &mut [Entry], holders: &BTreeMap<String, PathBuf>) {
    check_duplicates(entries, holders);
    // Removing an agent can break a mirror or a workflow step that named
    // it, so repeat until stable.
    loop {
        let removed = check_mirrors(entries) + check_workflows(entries);
        if removed == 0 {
            break;
        }
    }
    check_auditor_prompts(entries);
}

fn check_duplicates(entries: &mut [Entry], holders: &BTreeMap<String, PathBuf>) {
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(agent) = &e.agent {
            by_name.entry(agent.name.clone()).or_default().push(i);
        }
    }
    for (name, idx) in by_name.into_iter().filter(|(_, idx)| idx.len() > 1) {
        let files: Vec<(PathBuf, String)> = idx
            .iter()
            .map(|&i| (entries[i].file.clone(), entries[i].label.clone()))
            .collect();
        let holder = holders
            .get(&name)
            .and_then(|h| idx.iter().copied().find(|&i| &entries[i].file == h));
        for &i in &idx {
            let others: Vec<String> = files
                .iter()
                .filter(|(f, _)| *f != entries[i].file)
                .map(|(_, label)| label.clone())
                .collect();
            let others = others.join(", ");
            let e = &mut entries[i];
            let (l, c) = e.agent.as_ref().map_or((1, 1), |a| a.position("name"));
            match holder {
                Some(h) if h == i => e.diagnostics.push(Diagnostic::warning(
                    &e.file,
                    l,
                    c,
                    format!(
                        "agent name `{name}` is also claimed by {others}; this file keeps it (it had it first) and the other is not loaded until one is renamed"
                    ),
                )),
                Some(h) => {
                    let held = files[idx.iter().position(|&j| j == h).unwrap_or(0)].1.clone();
                    e.diagnostics.push(Diagnostic::error(
                        &e.file,
                        l,
                        c,
                        format!(
                            "duplicate agent name `{name}`: {held} already defines it and keeps it; rename this file's `name`"
                        ),
                    ));
                    e.agent = None;
                }
                None => {
                    e.diagnostics.push(Diagnostic::error(
                        &e.file,
                        l,
                        c,
                        format!(
                            "duplicate agent name `{name}`: {others} defines it too; neither is loaded until one of the two files' `name` is changed"
                        ),
                    ));
                    e.agent = None;
                }
            }
        }
    }
}

/// Returns how many agents were removed.
fn check_mirrors(entries: &mut [Entry]) -> usize {
    let mirrors: BTreeMap<String, Option<String>> = entries
        .iter()
        .filter_map(|e| e.agent.as_ref())
        .map(|a| (a.name.clone(), a.mirror.clone()))
        .collect();
    let mut removed = 0;
    for e in entries.iter_mut() {
        let Some(agent) = &e.agent else { continue };
        let Some(mirror) = &agent.mirror else {
            continue;
        };
        let (l, c) = agent.position("mirror");
        let problem = if mirror == &agent.name {
            Some(format!(
                "`{}` names itself as its mirror: an agent cannot audit its own answers",
                agent.name
            ))
        } else if !mirrors.contains_key(mirror) {
            let known: Vec<&str> = mirrors.keys().map(String::as_str).collect();
            Some(format!(
                "mirror `{mirror}` is not a loaded agent; loaded agents: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        } else {
            mirror_cycle(&agent.name, &mirrors).map(|cycle| {
                format!(
                    "mirror cycle: {}; an auditor must not be audited back",
                    cycle.join(" -> ")
                )
            })
        };
        if let Some(msg) = problem {
            e.diagnostics.push(Diagnostic::error(&e.file, l, c, msg));
            e.agent = None;
            removed += 1;
        }
    }
    removed
}

/// Workflow agents' `dag:` must be a valid workflow of loaded agents (every
/// problem `workflow_run` would find, found at load). Returns how many
/// agents were removed.
fn check_workflows(entries: &mut [Entry]) -> usize {
    let names: HashSet<String> = entries
        .iter()
        .filter_map(|e| e.agent.as_ref().map(|a| a.name.clone()))
        .collect();
    let mut removed = 0;
    for e in entries.iter_mut() {
        let Some(agent) = &e.agent else { continue };
        let Some(dag) = &agent.dag else { continue };
        let (l, c) = agent.position("dag");
        let problems: Vec<String> = match crate::workflow::WorkflowDef::from_json(dag) {
            Err(msg) => vec![msg],
            Ok(def) => match crate::workflow::validate(&def, &|a| names.contains(a)) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.iter().map(ToString::to_string).collect(),
            },
        };
        if problems.is_empty() {
            continue;
        }
        for p in problems {
            e.diagnostics.push(Diagnostic::error(
                &e.file,
                l,
                c,
                format!("invalid workflow in `dag`: {p}"),
            ));
        }
        e.agent = None;
        removed += 1;
    }
    removed
}

/// The cycle `start` is on, if any, as a path that ends where it starts.
fn mirror_cycle(start: &str, mirrors: &BTreeMap<String, Option<String>>) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut seen = HashSet::from([start.to_string()]);
    let mut cur = start.to_string();
    while let Some(Some(next)) = mirrors.get(&cur) {
        path.push(next.clone());
        if next == start {
            return Some(path);
        }
        if !seen.insert(next.clone()) {
            // A cycle that `start` leads into but is not part of: reported on its members.
            return None;
        }
        cur = next.clone();
    }
    None
}

/// Auditors must tell the model how to answer, or every audit will fail to parse.
fn check_auditor_prompts(entries: &mut [Entry]) {
    let auditors: HashSet<String> = entries
        .iter()
        .filter_map(|e| e.agent.as_ref()?.mirror.clone())
        .collect();
    for e in entries.iter_mut() {
        let Some(agent) = &e.agent else { continue };
        if !auditors.contains(&agent.name) {
            continue;
        }
        let prompt = agent.system_prompt.to_ascii_lowercase();
        let missing: Vec<&str> = ["verdict", "pass", "needs-revision", "fail"]
            .into_iter()
            .filter(|w| !prompt.contains(w))
            .collect();
        if !missing.is_empty() {
            e.diagnostics.push(Diagnostic::warning(
                &e.file,
                1,
                1,
                format!(
                    "`{}` audits other agents but its prompt does not state the verdict format (missing: {}); \
                     ask for a JSON object {{\"verdict\": \"pass\" | \"needs-revision\" | \"fail\", \"feedback\": \"...\"}}",
                    agent.name,
                    missing.join(", ")
                ),
            ));
        }
    }
}
