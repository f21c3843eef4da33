//! The engine as a library: everything a front end (the MCP server or the CLI)
//! needs, opened from the project's [`Paths`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::agent::{ModelSpec, parse_model};
use crate::config::{Config, ConfigError, Paths};
use crate::engine::{Engine, EngineConfig, RouterConfig};
use crate::kb::{FileSet, Kb, KbError, KbView, SharedAccess};
use crate::provider::{
    Price, PriceTable, ProviderKind, ProviderSettings, Providers, ResilienceConfig,
};
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::watch::{DEFAULT_DEBOUNCE, DirWatcher, watch_dir};

/// The least time between two notices that the KB's file list changed.
pub const KB_NOTICE_EVERY: Duration = Duration::from_secs(1);

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
    // The two below say their cause in their own message and do not also
    // return it as `source()`: `dispatch: error: {:#}` prints the chain, and
    // would say it twice.
    /// The KB folder cannot be created or opened.
    #[error("knowledge base: {0}")]
    Kb(KbError),
    /// The task store cannot be opened.
    #[error("task store: {0}")]
    Store(StoreError),
    /// A setting in dispatch.toml is unusable.
    #[error("dispatch.toml: {0}")]
    Setting(String),
    /// Tasks a crash left behind could not be recovered.
    #[error("recovering unfinished tasks: {0}")]
    Recover(String),
}

impl From<KbError> for OpenError {
    fn from(e: KbError) -> OpenError {
        OpenError::Kb(e)
    }
}

impl From<StoreError> for OpenError {
    fn from(e: StoreError) -> OpenError {
        OpenError::Store(e)
    }
}

/// Environment variable that overrides where the task store lives.
pub const DATABASE_URL_ENV: &str = "DISPATCH_DATABASE_URL";

impl App {
    /// Read the config, load the agents and open (creating if needed) the KB.
    pub fn open(paths: Paths) -> Result<App, OpenError> {
        let config = Config::load(&paths.config_file())?;
        let sources = crate::registry::Source::for_project(&paths, &config.agents);
        let registry = Registry::load(sources, config.read_context());
        let kb = Kb::open(&paths.kb)?;
        Ok(App {
            paths,
            config,
            registry,
            kb,
        })
    }

    /// Where the task store lives: `DISPATCH_DATABASE_URL`, else
    /// `[store] url`, else `ROOT/.dispatch/dispatch.db`.
    pub fn database_url(&self) -> String {
        let given = |u: &String| !u.trim().is_empty();
        if let Some(url) = std::env::var(DATABASE_URL_ENV).ok().filter(given) {
            return url;
        }
        if let Some(url) = self.config.store.url.clone().filter(given) {
            return url;
        }
        self.paths
            .root
            .join(".dispatch")
            .join("dispatch.db")
            .display()
            .to_string()
    }

    /// The provider clients configured by dispatch.toml and the environment.
    pub fn providers(&self) -> Result<Providers, OpenError> {
        providers_of(&self.config)
    }

    /// The engine's settings from dispatch.toml.
    pub fn engine_config(&self) -> Result<EngineConfig, OpenError> {
        let c = &self.config;
        let baseline = match parse_model(&c.report.baseline) {
            Ok(ModelSpec::Ref(m)) => Some(m),
            _ => {
                return Err(OpenError::Setting(format!(
                    "[report] baseline = \"{}\" is not `provider/model-id`",
                    c.report.baseline
                )));
            }
        };
        Ok(EngineConfig {
            global_limit: c.limits.global.max(1),
            per_agent_limit: c.limits.per_agent.max(1),
            agent_limits: c.limits.agents.clone(),
            queue_capacity: c.limits.queue,
            max_depth: c.limits.max_depth,
            max_answer_bytes: c.limits.max_answer_bytes.max(1024),
            max_requeues: c.recovery.max_requeues,
            lease: Duration::from_secs(c.store.lease_secs.max(1)),
            default_timeout: Duration::from_secs(c.resilience.default_timeout_secs.max(1)),
            router: RouterConfig {
                default_agent: c.router.default_agent.clone(),
                min_confidence: c.router.min_confidence,
                classifier: c.router.classifier.clone(),
            },
            baseline,
            audit_seed: c.audit.seed,
            acting: crate::engine::ActingConfig {
                max_turns: c.limits.max_turns.max(1),
                tree: crate::task::TreeLimits {
                    max_depth: c.limits.max_depth,
                    max_tasks: c.limits.max_tree_tasks.max(1),
                    max_turns: c.limits.max_tree_turns.max(1),
                    max_secs: (c.limits.max_tree_secs > 0).then_some(c.limits.max_tree_secs),
                    budget_micros: c.limits.max_tree_cost_usd.map(crate::engine::usd_to_micros),
                },
                max_tool_result_bytes: c.limits.max_tool_result_bytes.max(256),
                tool_timeout: Duration::from_secs(c.limits.tool_timeout_secs.max(1)),
                approval_timeout: Duration::from_secs(c.limits.approval_timeout_secs.max(1)),
                project_root: Some(self.paths.root.clone()),
                context_writers: c
                    .auth
                    .as_ref()
                    .map(|a| a.context_writers.clone())
                    .unwrap_or_default(),
            },
        })
    }

    /// Open the task store (`database_url`, `[store]` pool settings),
    /// bringing its schema up to date.
    pub async fn open_store(&self) -> Result<Arc<dyn Store>, StoreError> {
        let pg = crate::store::PostgresOptions {
            max_connections: self.config.store.pool_size,
            acquire_timeout: std::time::Duration::from_secs(self.config.store.connect_timeout_secs),
        };
        crate::store::open_with(&self.database_url(), &pg).await
    }

    /// Open the store and build the engine. With `recover`, tasks a crash left
    /// behind are re-queued or failed (the server does this; one-shot CLI
    /// commands do not, so they never touch a running server's tasks).
    pub async fn engine(&self, recover: bool) -> Result<Arc<Engine>, OpenError> {
        let store = self.open_store().await?;
        // Instances sharing a PostgreSQL store share its provider limits.
        let gate = (store.backend() == crate::store::Backend::Postgres).then(|| {
            Arc::new(crate::engine::SharedSlots::new(store.clone()))
                as Arc<dyn crate::provider::Gate>
        });
        let providers = Arc::new(providers_with(&self.config, gate)?);
        let engine = Engine::new(
            store,
            providers,
            self.registry.clone(),
            self.kb.clone(),
            self.engine_config()?,
        );
        // Before recovery: a resumed agent may call these servers' tools.
        let servers = crate::mcp::client::McpClients::new(
            &self.config.mcp_servers,
            &self.paths.root,
            Duration::from_secs(self.config.limits.tool_timeout_secs.max(1)),
        );
        if !servers.is_empty() {
            engine.set_external(Arc::new(servers));
        }
        if recover {
            let (resumed, failed) = engine
                .recover()
                .await
                .map_err(|e| OpenError::Recover(e.to_string()))?;
            if resumed + failed > 0 {
                tracing::info!(resumed, failed, "recovered unfinished tasks");
            }
            engine.spawn_recovery_sweep();
        }
        Ok(engine)
    }

    /// Watch the KB and send on `tx` whenever its set of files changes (a file
    /// appears, disappears or is renamed; edits in place do not count), with
    /// the KB-relative paths that changed (so each session can tell whether
    /// the change is in its view, [`KbView::sees`]).
    ///
    /// Notices go out at most once per [`KB_NOTICE_EVERY`]: a busy server
    /// writes an outbox file per task, and every notice goes to every
    /// connected session (whose client may then list the resources again).
    /// The first change is told at once; changes during the pause are told
    /// together after it. Call it inside a tokio runtime (without one,
    /// every change is told at once).
    pub fn watch_kb(&self, tx: broadcast::Sender<KbChange>) -> Result<DirWatcher, notify::Error> {
        let kb = self.kb.clone();
        let mut files = FileSet::scan(&kb);
        let root = kb.root().to_path_buf();
        let changed = Pending::default();
        // One pending wake-up at most: a full channel already says "changed".
        let (notice, mut wake) = tokio::sync::mpsc::channel::<()>(1);
        let taken = changed.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(forward_notices(wake, taken, tx, KB_NOTICE_EVERY));
            }
            Err(_) => {
                std::thread::spawn(move || {
                    while wake.blocking_recv().is_some() {
                        let _ = tx.send(taken.take());
                    }
                });
            }
        }
        watch_dir(&root, DEFAULT_DEBOUNCE, move |paths| {
            if files.update(&kb, &paths) {
                changed.add(paths.iter().map(|p| {
                    // Outside the root (the root itself): everyone's view.
                    crate::kb::path::relative_display(kb.root(), p).unwrap_or_default()
                }));
                let _ = notice.try_send(());
            }
        })
    }

    /// What `subject` sees of the KB: all of it without a subject, else its
    /// own space with the shared `context/` (writable if `[auth]
    /// context_writers` names it).
    pub fn kb_view(&self, subject: Option<&str>) -> Result<KbView, KbError> {
        let writer = subject.is_some_and(|s| {
            self.config
                .auth
                .as_ref()
                .is_some_and(|a| a.context_writers.iter().any(|w| w == s))
        });
        let access = if writer {
            SharedAccess::ReadWrite
        } else {
            SharedAccess::ReadOnly
        };
        self.kb.view(subject, access)
    }
}

/// The provider clients `config` and the environment describe (without
/// opening a project: `dispatch agents` uses it to tell which keys are missing).
pub fn providers_of(config: &Config) -> Result<Providers, OpenError> {
    providers_with(config, None)
}

/// [`providers_of`], each provider's limit also held through `gate` (the
/// slots the instances sharing a store share).
fn providers_with(
    config: &Config,
    gate: Option<Arc<dyn crate::provider::Gate>>,
) -> Result<Providers, OpenError> {
    let mut custom = std::collections::BTreeMap::new();
    for (name, p) in &config.providers {
        let kind = match p.kind {
            None | Some(crate::config::WireFormat::Openai) => ProviderKind::OpenAiCompatible,
            Some(crate::config::WireFormat::Anthropic) => ProviderKind::Anthropic,
        };
        custom.insert(
            name.clone(),
            ProviderSettings {
                base_url: p.base_url.clone(),
                api_key_env: p.api_key_env.clone(),
                kind,
            },
        );
    }
    let prices = PriceTable::builtin().with_overrides(
        config
            .prices
            .iter()
            .map(|(k, p)| (k.as_str(), Price::new(p.input, p.output))),
    );
    let r = &config.resilience;
    let cfg = ResilienceConfig {
        max_attempts_per_model: r.max_attempts.max(1),
        base_delay: Duration::from_millis(r.base_delay_ms),
        max_delay: Duration::from_millis(r.max_delay_ms),
        breaker_threshold: r.breaker_threshold,
        breaker_cooldown: Duration::from_secs(r.breaker_cooldown_secs),
        connect_timeout: Duration::from_secs(r.connect_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(r.idle_timeout_secs.max(1)),
    };
    let providers = Providers::new(&custom, prices, cfg, &|k| std::env::var(k).ok())
        .map_err(|e| OpenError::Setting(e.to_string()))?;
    Ok(crate::provider::limit_concurrency(
        providers,
        config.limits.per_provider,
        &config.limits.providers,
        gate,
    ))
}

/// The KB-relative paths of one notice that the KB's file list changed
/// (`""`: anything).
pub type KbChange = Arc<Vec<String>>;

/// Paths changed since the last notice went out.
#[derive(Clone, Default)]
struct Pending(Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>);

impl Pending {
    fn add(&self, paths: impl Iterator<Item = String>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(paths);
    }

    fn take(&self) -> KbChange {
        let set = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Arc::new(set.into_iter().collect())
    }
}

/// Passes each pending notice on to `tx`, then pauses `every`: changes that
/// arrive meanwhile wait (their wake-up in the one-slot channel, their paths
/// in `changed`) and go out as one. Ends when the senders are dropped.
async fn forward_notices(
    mut wake: tokio::sync::mpsc::Receiver<()>,
    changed: Pending,
    tx: broadcast::Sender<KbChange>,
    every: Duration,
) {
    while wake.recv().await.is_some() {
        // No receivers just means no client is connected yet.
        let _ = tx.send(changed.take());
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three bursts of changes within one pause give two notices: the first
    /// at once, the rest together when the pause ends.
    #[tokio::test(start_paused = true)]
    async fn kb_notices_are_spaced_out() {
        let (notice, pending) = tokio::sync::mpsc::channel(1);
        let (tx, mut rx) = broadcast::channel(16);
        let every = Duration::from_secs(1);
        let changed = Pending::default();
        let task = tokio::spawn(forward_notices(pending, changed.clone(), tx, every));
        changed.add(["a.md".to_owned()].into_iter());
        let _ = notice.try_send(());
        assert_eq!(*rx.recv().await.unwrap(), ["a.md"]);
        let sent = tokio::time::Instant::now();
        for i in 0..3 {
            changed.add([format!("b{i}.md")].into_iter());
            let _ = notice.try_send(());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(*rx.recv().await.unwrap(), ["b0.md", "b1.md", "b2.md"]);
        assert!(
            sent.elapsed() >= every,
            "the second notice waited for the pause"
        );
        assert!(rx.try_recv().is_err(), "the burst was told once");
        drop(notice);
        task.await.expect("the forwarder ends with its senders");
    }
}
