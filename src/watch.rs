//! Debounced folder watching, shared by the agent registry and the knowledge base.
//!
//! Editors save a file as several events (truncate, write, rename a temp file);
//! reacting to each would reload half-written files. We collect events for a
//! short quiet period and hand the batch over once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

/// How long a folder must be quiet before a batch of changes is delivered.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps a watch alive; dropping it stops watching.
pub struct DirWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirWatcher")
    }
}

/// Watch `dir` recursively and call `on_change` with the changed paths after
/// each quiet period. The callback runs on the watcher's own thread.
pub fn watch_dir<F>(
    dir: &Path,
    debounce: Duration,
    mut on_change: F,
) -> Result<DirWatcher, notify::Error>
where
    F: FnMut(Vec<PathBuf>) + Send + 'static,
{
    let shown = dir.display().to_string();
    let mut debouncer = new_debouncer(debounce, move |res: DebounceEventResult| match res {
        Ok(events) => on_change(events.into_iter().map(|e| e.path).collect()),
        Err(e) => tracing::warn!(dir = %shown, error = %e, "file watcher error"),
    })?;
    debouncer.watcher().watch(dir, RecursiveMode::Recursive)?;
    Ok(DirWatcher {
        _debouncer: debouncer,
    })
}
