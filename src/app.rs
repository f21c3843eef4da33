//! The engine as a library: everything a front end (the MCP server or the CLI)
//! needs, opened from the project's [`Paths`].

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::config::{Config, ConfigError, Paths};
use crate::kb::{Kb, KbError};
use crate::registry::Registry;
use crate::watch::{DEFAULT_DEBOUNCE, DirWatcher, watch_dir};

/// The opened project: config, agents and knowledge base.
#[derive(Debug)]
pub struct App {
    /// Where things live.
    pub paths: Paths,
    /// `dispatch.toml` (or the defaults).
    pub config: Config,
    /// The live agent registry.
    pub registry: Arc<Registry>,
    /// The knowledge base.
    pub kb: Kb,
}

/// Errors opening the project.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `dispatch.toml` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The KB folder cannot be created or opened.
    #[error("knowledge base: {0}")]
    Kb(#[from] KbError),
}

impl App {
    /// Read the config, load the agents and open (creating if needed) the KB.
    pub fn open(paths: Paths) -> Result<App, OpenError> {
        let config = Config::load(&paths.config_file())?;
        let registry = Registry::load(&paths.agents, config.read_context());
        let kb = Kb::open(&paths.kb)?;
        Ok(App {
            paths,
            config,
            registry,
            kb,
        })
    }

    /// Watch the KB and send on `tx` whenever its set of files changes (a file
    /// appears, disappears or is renamed; edits in place do not count).
    pub fn watch_kb(&self, tx: broadcast::Sender<()>) -> Result<DirWatcher, notify::Error> {
        let kb = self.kb.clone();
        let mut known = file_set(&kb);
        let root = kb.root().to_path_buf();
        watch_dir(&root, DEFAULT_DEBOUNCE, move |_paths| {
            let now = file_set(&kb);
            if now != known {
                known = now;
                // No receivers just means no client is connected yet.
                let _ = tx.send(());
            }
        })
    }
}

fn file_set(kb: &Kb) -> BTreeSet<String> {
    match kb.all_files() {
        Ok(files) => files.into_iter().map(|e| e.path).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the knowledge base");
            BTreeSet::new()
        }
    }
}
