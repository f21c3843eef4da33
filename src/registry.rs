//! The agent registry: every agent file of the project's agent folders
//! ([`Source`]: `agents/`, Claude Code's `.claude/agents/`, VS Code's
//! `.github/agents/`), loaded into an immutable [`Snapshot`] that is swapped
//! whole when files change.
//!
//! In every folder, a `*.agent.md` file is an agent; another `*.md` file is
//! one if it starts with front matter (`---`), and is named in a warning if
//! it does not. A name that two files define is an error on both (neither
//! loads) unless one of them held it before: then that one keeps it and the
//! newcomer is refused, so a new file can never take over a working agent.
//!
//! Readers take an `Arc<Snapshot>` and keep a consistent view for as long as
//! they hold it; a reload never mutates a snapshot in place. An edit that
//! breaks a file keeps that agent's last good version (marked stale) and shows
//! the error, so a typo in one file never takes a working agent away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::agent::Agent;
use crate::agent::reader::{AGENT_SUFFIX, ReadContext, read_agent_file, starts_with_front_matter};
use crate::agent::validate::{Entry, check_set};
use crate::diag::Diagnostic;
use crate::watch::{DEFAULT_DEBOUNCE, DirWatcher, watch_dir};

/// Which tool's folder a [`Source`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `agents/` (or `--agents DIR`): dispatch's own.
    Dispatch,
    /// `.claude/agents/`: Claude Code subagents.
    ClaudeCode,
    /// `.github/agents/`: VS Code custom agents.
    VsCode,
}

/// Whether a missing folder is a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Named on the command line: a missing folder is an error.
    Required,
    /// A default place to look: a missing folder is skipped.
    Optional,
}

/// A folder agent files are read from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The folder.
    pub dir: PathBuf,
    /// Whose folder it is.
    pub kind: SourceKind,
    /// Whether it must exist.
    pub need: Need,
    /// How messages name it (relative to the project root: `agents/`).
    pub label: String,
}

impl Source {
    /// A folder that must exist, labelled by its path.
    pub fn required(dir: &Path) -> Source {
        Source {
            dir: dir.to_path_buf(),
            kind: SourceKind::Dispatch,
            need: Need::Required,
            label: format!("{}/", shown_path(dir).display()),
        }
    }

    /// The project's folders: `agents/` (or the `--agents` folder), then
    /// `.claude/agents/` and `.github/agents/` unless `[agents]` turns them
    /// off. A folder reached twice (`--agents .claude/agents`) is read once.
    pub fn for_project(
        paths: &crate::config::Paths,
        cfg: &crate::config::AgentsSection,
    ) -> Vec<Source> {
        let mut out = vec![Source {
            dir: paths.agents.clone(),
            kind: SourceKind::Dispatch,
            need: if paths.agents_given {
                Need::Required
            } else {
                Need::Optional
            },
            label: if paths.agents_given {
                format!("{}/", shown_path(&paths.agents).display())
            } else {
                format!("{}/", paths.relative(&paths.agents).display())
            },
        }];
        let others = [
            (cfg.claude_code, ".claude/agents", SourceKind::ClaudeCode),
            (cfg.vscode, ".github/agents", SourceKind::VsCode),
        ];
        for (on, rel, kind) in others {
            if on {
                out.push(Source {
                    dir: paths.root.join(rel),
                    kind,
                    need: Need::Optional,
                    label: format!("{rel}/"),
                });
            }
        }
        let mut seen = Vec::new();
        out.retain(|s| {
            let key = std::fs::canonicalize(&s.dir).unwrap_or_else(|_| s.dir.clone());
            if seen.contains(&key) {
                return false;
            }
            seen.push(key);
            true
        });
        out
    }
}

/// An agent in a snapshot.
#[derive(Debug, Clone)]
pub struct LoadedAgent {
    /// The agent definition.
    pub agent: Arc<Agent>,
    /// True when the file is currently broken and this is its last good version.
    pub stale: bool,
    /// Problems in the agent's file (errors only when `stale`).
    pub diagnostics: Vec<Diagnostic>,
}

/// One consistent view of the agents folder.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every reload.
    pub generation: u64,
    /// Loaded agents by name.
    pub agents: BTreeMap<String, LoadedAgent>,
    /// Every problem found, in file order (also those of files that did not load).
    pub diagnostics: Vec<Diagnostic>,
    /// How many agent files were read.
    pub files: usize,
    /// The folders looked in, as messages name them.
    pub looked_in: Vec<String>,
}

impl Snapshot {
    /// The agent called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Agent>> {
        self.agents.get(name).map(|l| &l.agent)
    }

    /// Errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// "available agents are a, b", or that none are loaded and where
    /// dispatch looked.
    pub fn available(&self) -> String {
        if self.agents.is_empty() {
            format!(
                "no agents are loaded (looked in {})",
                if self.looked_in.is_empty() {
                    "no folder".to_string()
                } else {
                    self.looked_in.join(", ")
                }
            )
        } else {
            format!(
                "available agents are {}",
                self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// Read every agent file under `dir` (a folder that must exist).
/// `previous` supplies last good versions for files that are broken now.
pub fn load_dir(dir: &Path, ctx: &ReadContext, previous: Option<&Snapshot>) -> Snapshot {
    load_sources(&[Source::required(dir)], ctx, previous)
}

/// Read every agent file of `sources`. `previous` supplies last good versions
/// for files that are broken now, and which file held each name.
pub fn load_sources(
    sources: &[Source],
    ctx: &ReadContext,
    previous: Option<&Snapshot>,
) -> Snapshot {
    let mut diagnostics_outside = Vec::new();
    let mut files = Vec::new();
    for source in sources {
        match agent_files(&source.dir) {
            Ok(found) => {
                files.extend(found.agents.into_iter().map(|f| {
                    let rel = f.strip_prefix(&source.dir).unwrap_or(&f);
                    let label = format!("{}{}", source.label, rel.display());
                    (f, label)
                }));
                diagnostics_outside.extend(found.skipped);
            }
            Err(_) if source.need == Need::Optional => {}
            Err(e) => diagnostics_outside.push(Diagnostic::error(
                shown_path(&source.dir),
                1,
                1,
                format!("cannot read the agents folder: {e}; create it or pass --agents DIR"),
            )),
        }
    }
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(path, label)| {
            let shown = shown_path(path);
            let report = read_agent_file(path, &shown, ctx);
            Entry {
                file: shown,
                label: label.clone(),
                agent: report.agent,
                diagnostics: report.diagnostics,
                stale: false,
            }
        })
        .collect();
    // Which file held each name before: it keeps the name against newcomers.
    let holders: BTreeMap<String, PathBuf> = previous
        .map(|p| {
            p.agents
                .values()
                .map(|l| (l.agent.name.clone(), l.agent.source.clone()))
                .collect()
        })
        .unwrap_or_default();
    check_set(&mut entries, &holders);

    // Broken now but good before: keep the last good version and check the set
    // again, since that version may clash with what is loaded now.
    if let Some(prev) = previous {
        let last_good: BTreeMap<&Path, &Arc<Agent>> = prev
            .agents
            .values()
            .map(|l| (l.agent.source.as_path(), &l.agent))
            .collect();
        let mut substituted = false;
        for e in entries.iter_mut().filter(|e| e.agent.is_none()) {
            if let Some(agent) = last_good.get(e.file.as_path()) {
                e.agent = Some(Agent::clone(agent));
                e.stale = true;
                substituted = true;
            }
        }
        if substituted {
            check_set(&mut entries, &holders);
        }
    }

    let mut snap = Snapshot {
        generation: previous.map_or(1, |p| p.generation + 1),
        files: files.len(),
        diagnostics: diagnostics_outside,
        looked_in: sources.iter().map(|s| s.label.clone()).collect(),
        ..Snapshot::default()
    };
    for e in entries {
        let mut diags = e.diagnostics;
        diags.dedup();
        snap.diagnostics.extend(diags.iter().cloned());
        if let Some(agent) = e.agent {
            snap.agents.insert(
                agent.name.clone(),
                LoadedAgent {
                    agent: Arc::new(agent),
                    stale: e.stale,
                    diagnostics: diags,
                },
            );
        }
    }
    snap
}

/// `./agents/x.agent.md` reads better as `agents/x.agent.md`.
fn shown_path(p: &Path) -> PathBuf {
    p.strip_prefix(".")
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

/// What a walk of one folder found.
struct Found {
    /// Agent files, sorted.
    agents: Vec<PathBuf>,
    /// Markdown files that are not agent files, each with a warning.
    skipped: Vec<Diagnostic>,
}

/// Agent files under `dir`, sorted, skipping hidden entries and not following
/// symlinked folders (which could loop).
fn agent_files(dir: &Path) -> std::io::Result<Found> {
    let mut found = Found {
        agents: Vec::new(),
        skipped: Vec::new(),
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if d == dir => return Err(e),
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "skipping unreadable folder");
                continue;
            }
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if name.ends_with(AGENT_SUFFIX) {
                found.agents.push(path);
            } else if name.ends_with(".md") {
                if starts_with_front_matter(&path) {
                    found.agents.push(path);
                } else {
                    found.skipped.push(Diagnostic::warning(
                        shown_path(&path),
                        1,
                        1,
                        "not an agent file (no front matter), skipped: an agent file starts with a \
                         `---` line of YAML keys, or is named NAME.agent.md",
                    ));
                }
            }
        }
    }
    found.agents.sort();
    found.skipped.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(found)
}

/// The live registry: the current snapshot plus a way to be told of new ones.
#[derive(Debug)]
pub struct Registry {
    sources: Vec<Source>,
    ctx: ReadContext,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Serialises reloads so two watcher batches cannot race and lose an edit.
    reload_lock: Mutex<()>,
}

impl Registry {
    /// Load `sources` now.
    pub fn load(sources: Vec<Source>, ctx: ReadContext) -> Arc<Registry> {
        let snap = load_sources(&sources, &ctx, None);
        let (tx, _) = watch::channel(Arc::new(snap));
        Arc::new(Registry {
            sources,
            ctx,
            tx,
            reload_lock: Mutex::new(()),
        })
    }

    /// The folders this registry reads.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Re-read the folders and publish the new snapshot.
    pub fn reload(&self) -> Arc<Snapshot> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let prev = self.snapshot();
        let next = Arc::new(load_sources(&self.sources, &self.ctx, Some(&prev)));
        tracing::info!(
            generation = next.generation,
            agents = next.agents.len(),
            errors = next.errors().count(),
            "agents reloaded"
        );
        for d in next.errors() {
            tracing::warn!("{d}");
        }
        self.tx.send_replace(next.clone());
        next
    }

    /// Reload whenever an agent file changes, in every folder that exists
    /// now. Keep the returned watchers alive.
    pub fn watch(self: &Arc<Self>) -> Result<Vec<DirWatcher>, notify::Error> {
        let mut watchers = Vec::new();
        for source in self.sources.iter().filter(|s| s.dir.is_dir()) {
            let me = Arc::downgrade(self);
            watchers.push(watch_dir(&source.dir, DEFAULT_DEBOUNCE, move |paths| {
                // Markdown files, and folders (a moved folder names no file).
                let relevant = paths
                    .iter()
                    .any(|p| p.extension().is_none_or(|e| e == "md"));
                if let (true, Some(reg)) = (relevant, me.upgrade()) {
                    reg.reload();
                }
            })?);
        }
        Ok(watchers)
    }
}
