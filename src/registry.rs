//! The agent registry: every agent file under the agents folder, loaded into an
//! immutable [`Snapshot`] that is swapped whole when files change.
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
use crate::agent::reader::{AGENT_SUFFIX, ReadContext, read_agent_file};
use crate::agent::validate::{Entry, check_set};
use crate::diag::Diagnostic;
use crate::watch::{DEFAULT_DEBOUNCE, DirWatcher, watch_dir};

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
}

/// Read every `*.agent.md` under `dir`. `previous` supplies last good versions
/// for files that are broken now.
pub fn load_dir(dir: &Path, ctx: &ReadContext, previous: Option<&Snapshot>) -> Snapshot {
    let mut diagnostics_outside = Vec::new();
    let files = match agent_files(dir) {
        Ok(f) => f,
        Err(e) => {
            diagnostics_outside.push(Diagnostic::error(
                dir,
                1,
                1,
                format!("cannot read the agents folder: {e}; create it or pass --agents DIR"),
            ));
            Vec::new()
        }
    };
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|path| {
            let shown = shown_path(path);
            let report = read_agent_file(path, &shown, ctx);
            Entry {
                file: shown,
                agent: report.agent,
                diagnostics: report.diagnostics,
                stale: false,
            }
        })
        .collect();
    check_set(&mut entries);

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
            check_set(&mut entries);
        }
    }

    let mut snap = Snapshot {
        generation: previous.map_or(1, |p| p.generation + 1),
        files: files.len(),
        diagnostics: diagnostics_outside,
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

/// Agent files under `dir`, sorted, skipping hidden entries and not following
/// symlinked folders (which could loop).
fn agent_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
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
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The live registry: the current snapshot plus a way to be told of new ones.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    ctx: ReadContext,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Serialises reloads so two watcher batches cannot race and lose an edit.
    reload_lock: Mutex<()>,
}

impl Registry {
    /// Load `dir` now.
    pub fn load(dir: &Path, ctx: ReadContext) -> Arc<Registry> {
        let snap = load_dir(dir, &ctx, None);
        let (tx, _) = watch::channel(Arc::new(snap));
        Arc::new(Registry {
            dir: dir.to_path_buf(),
            ctx,
            tx,
            reload_lock: Mutex::new(()),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Re-read the folder and publish the new snapshot.
    pub fn reload(&self) -> Arc<Snapshot> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let prev = self.snapshot();
        let next = Arc::new(load_dir(&self.dir, &self.ctx, Some(&prev)));
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

    /// Reload whenever an agent file changes. Keep the returned watcher alive.
    pub fn watch(self: &Arc<Self>) -> Result<DirWatcher, notify::Error> {
        let me = Arc::downgrade(self);
        watch_dir(&self.dir, DEFAULT_DEBOUNCE, move |paths| {
            let relevant = paths.iter().any(|p| {
                let s = p.to_string_lossy();
                s.ends_with(AGENT_SUFFIX) || !s.ends_with(".md")
            });
            if let (true, Some(reg)) = (relevant, me.upgrade()) {
                reg.reload();
            }
        })
    }
}
