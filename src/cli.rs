//! The command line: `dispatch serve`, `dispatch agents [check]`.
//!
//! Commands return an [`ExitCode`]; only `main` turns errors into text, through
//! `anyhow`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::sync::broadcast;

use crate::app::App;
use crate::config::{Config, Paths};
use crate::registry::{Snapshot, load_sources};

/// dispatch: an MCP server that runs a team of specialist AI agents, each on the
/// model that suits it, with a markdown knowledge base of their work.
#[derive(Debug, Parser)]
#[command(name = "dispatch", version, about, long_about = None)]
#[command(
    after_help = "Run `dispatch serve` from an MCP client (OpenCode, VS Code, Claude Code); \
see README.md for the client configuration.\nLogs go to stderr; set DISPATCH_LOG=debug for more."
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Globals {
    /// Project root: agents in ROOT/agents, knowledge base in ROOT/_kb, config in
    /// ROOT/dispatch.toml. Default: the nearest folder at or above the working
    /// folder with dispatch.toml, agents/ or .git.
    #[arg(long, global = true, value_name = "DIR", env = "DISPATCH_ROOT")]
    pub root: Option<PathBuf>,
    /// Agent files folder (default: ROOT/agents).
    #[arg(long, global = true, value_name = "DIR", env = "DISPATCH_AGENTS")]
    pub agents: Option<PathBuf>,
    /// Knowledge base folder (default: ROOT/_kb).
    #[arg(long, global = true, value_name = "DIR", env = "DISPATCH_KB")]
    pub kb: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the MCP server: over stdio (stdout carries only JSON-RPC; logs go to
    /// stderr), or over HTTP with `--http`.
    Serve(ServeArgs),
    /// List the agents (name, model chain, mirror, description).
    Agents {
        #[command(subcommand)]
        action: Option<AgentsAction>,
    },
    /// Run an agent once through the engine and print its output.
    ///
    /// INPUT is text, `@FILE` to read a file, or `-` (or nothing, when stdin is
    /// not a terminal) to read stdin. Text that is a JSON object is passed as one.
    Run(RunArgs),
    /// List recent tasks.
    Tasks(TasksArgs),
    /// Show one task: state, every provider call, and the output.
    Task {
        /// The task id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a workflow, or show a run.
    Workflow {
        #[command(subcommand)]
        action: WorkflowAction,
    },
    /// The task store: check its schema, or bring it up to date.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Tokens and cost per agent and model, and the saving against a baseline model.
    Report {
        /// Window start: a duration ago (`7d`, `24h`) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Baseline model (`provider/model-id`; default from dispatch.toml).
        #[arg(long)]
        baseline: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `dispatch serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve HTTP on ADDR (`127.0.0.1:8080`) instead of stdio: Streamable HTTP at
    /// /mcp, legacy SSE at /sse + /messages, /healthz, /metrics. Security
    /// settings are [http] and [auth] in dispatch.toml.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Serve a non-loopback address without [auth] (only behind a proxy that
    /// authenticates).
    #[arg(long, requires = "http")]
    pub allow_unauthenticated: bool,
}

/// `dispatch run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent to run.
    pub agent: String,
    /// Input text, `@FILE`, or `-` for stdin.
    pub input: Option<String>,
    /// Print the result as JSON (task, accounting, output).
    #[arg(long)]
    pub json: bool,
    /// Show the model chain, the messages and an estimated cost; call nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How calls of tools marked `ask` are answered.
    #[command(flatten)]
    pub approvals: ApprovalArgs,
}

/// How `dispatch run` and `dispatch workflow run` answer the questions of
/// tools an agent file marks `ask`.
#[derive(Debug, Args, Default, Clone)]
pub struct ApprovalArgs {
    /// Approve every call of TOOL (a tool the agent file marks `ask`, as the
    /// model names it; `*` for all) without asking. Repeatable.
    #[arg(long, value_name = "TOOL")]
    pub approve: Vec<String>,
    /// Refuse every call of a tool marked `ask`. Without this or --approve,
    /// dispatch asks on the terminal, or refuses when there is none.
    #[arg(long, conflicts_with = "approve")]
    pub deny_all: bool,
}

/// `dispatch workflow ...`
#[derive(Debug, Subcommand)]
pub enum WorkflowAction {
    /// Run a workflow: FILE is a .json/.yaml definition (or an .agent.md with `dag:`),
    /// otherwise the name of a workflow agent. INPUT as for `dispatch run`.
    Run {
        /// Definition file or workflow agent name.
        workflow: String,
        /// The run's input: text, `@FILE`, or `-` for stdin.
        input: Option<String>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
        /// How calls of tools marked `ask` are answered.
        #[command(flatten)]
        approvals: ApprovalArgs,
    },
    /// Show a run: every step's state, task and cost.
    Show {
        /// The run id (`run-...`).
        run: String,
        /// Print the graph as Mermaid.
        #[arg(long, conflicts_with_all = ["dot", "json"])]
        mermaid: bool,
        /// Print the graph as Graphviz DOT.
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `dispatch store ...`
#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Say which store `serve` would use and whether its schema is this
    /// binary's, changing nothing; exit 1 when it is unreachable, behind or newer.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring the store's schema up to date (`serve` does this at start too).
    Migrate,
}

/// `dispatch tasks`
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks in this state (repeatable).
    #[arg(long)]
    pub state: Vec<String>,
    /// Only this agent's tasks.
    #[arg(long)]
    pub agent: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dispatch agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Check every agent file; print `file:line:col: severity: message` per problem and
    /// exit 1 if there is any error.
    Check,
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        // The reader of our stdout went away (`dispatch tasks | head -1`):
        // nothing more to say, and no one to say it to.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // rmcp logs every message whole at debug level (tool arguments and
    // results: agents' answers), so it stays at warn unless named.
    let user = std::env::var("DISPATCH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .filter(|f| !f.trim().is_empty());
    let directives = match user {
        Some(f) if f.contains("rmcp") => f,
        Some(f) => format!("{f},rmcp=warn"),
        None => "info,rmcp=warn".to_string(),
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("dispatch: DISPATCH_LOG={directives:?} is not a log filter ({e}); using info");
        EnvFilter::new("info,rmcp=warn")
    });
    // Logs go to stderr: in stdio mode stdout belongs to JSON-RPC.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.globals;
    let paths = Paths::discover(g.root.as_deref(), g.agents.as_deref(), g.kb.as_deref())?;
    match cli.command {
        Command::Serve(args) => serve(paths, args),
        Command::Agents { action: None } => {
            let (snap, config) = load_agents(&paths)?;
            let providers = crate::app::providers_of(&config)?;
            print_table(&snap, &providers)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents {
            action: Some(AgentsAction::Check),
        } => {
            let (mut snap, config) = load_agents(&paths)?;
            let undeclared = undeclared_servers(&snap, &config);
            snap.diagnostics.extend(undeclared);
            Ok(check(&snap)?)
        }
        Command::Run(args) => runtime()?.block_on(crate::cli_tasks::run(paths, args)),
        Command::Tasks(args) => runtime()?.block_on(crate::cli_tasks::tasks(paths, args)),
        Command::Task { id, json } => runtime()?.block_on(crate::cli_tasks::task(paths, &id, json)),
        Command::Workflow {
            action:
                WorkflowAction::Run {
                    workflow,
                    input,
                    json,
                    approvals,
                },
        } => runtime()?.block_on(crate::cli_tasks::workflow_run(
            paths,
            &workflow,
            input.as_deref(),
            json,
            &approvals,
        )),
        Command::Workflow {
            action:
                WorkflowAction::Show {
                    run,
                    mermaid,
                    dot,
                    json,
                },
        } => runtime()?.block_on(crate::cli_tasks::workflow_show(
            paths, &run, mermaid, dot, json,
        )),
        Command::Store { action } => runtime()?.block_on(crate::cli_store::run(paths, action)),
        Command::Report {
            since,
            baseline,
            json,
        } => runtime()?.block_on(crate::cli_tasks::report(
            paths,
            &since,
            baseline.as_deref(),
            json,
        )),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_agents(paths: &Paths) -> anyhow::Result<(Snapshot, Config)> {
    let config = Config::load(&paths.config_file())?;
    let sources = crate::registry::Source::for_project(paths, &config.agents);
    let snap = load_sources(&sources, &config.read_context(), None);
    Ok((snap, config))
}

fn serve(paths: Paths, args: ServeArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let app = Arc::new(App::open(paths)?);
        let engine = app.engine(true).await?;
        let snap = app.registry.snapshot();
        tracing::info!(
            root = %app.paths.root.display(),
            "project root: {}",
            app.paths.origin.describe()
        );
        tracing::info!(
            agents = snap.agents.len(),
            errors = snap.errors().count(),
            "dispatch {} ready on {}",
            env!("CARGO_PKG_VERSION"),
            if args.http.is_some() { "HTTP" } else { "stdio" }
        );
        if snap.agents.is_empty() {
            tracing::warn!("{}", snap.available());
        }
        for d in snap.errors() {
            tracing::warn!("{d}");
        }
        for (var, (provider, agents)) in engine.missing_keys() {
            tracing::warn!(
                "no key for {provider}: set {var} (used by {})",
                agents.join(", ")
            );
        }
        // Watchers are best effort: without them the server still works, it
        // just does not notice file changes until restarted.
        let _agents_watch = app
            .registry
            .watch()
            .inspect_err(|e| tracing::warn!(error = %e, "not watching agent files"))
            .ok();
        let (kb_tx, _) = broadcast::channel(16);
        let _kb_watch = app
            .watch_kb(kb_tx.clone())
            .inspect_err(|e| tracing::warn!(error = %e, "not watching the knowledge base"))
            .ok();
        let grace = Duration::from_secs(app.config.http.shutdown_grace_secs);
        match args.http {
            None => crate::mcp::serve_stdio(app, engine.clone(), kb_tx).await?,
            Some(addr) => {
                let opts = crate::transport::HttpOptions {
                    addr,
                    allow_unauthenticated: args.allow_unauthenticated,
                };
                crate::transport::serve_http(app, engine.clone(), kb_tx, opts, shutdown_signal())
                    .await?;
            }
        }
        // Tasks still running get the grace period to finish and be stored;
        // the rest are stored as queued for the next start.
        engine.shutdown(grace).await;
        if let Err(e) = engine.store().close().await {
            tracing::warn!(error = %e, "closing the task store");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

fn print_table(snap: &Snapshot, providers: &crate::provider::Providers) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let rows: Vec<[String; 5]> = snap
        .agents
        .values()
        .map(|l| {
            let a = &l.agent;
            let models = if a.is_workflow() && a.models.is_empty() {
                "(workflow)".to_string()
            } else if a.models.is_empty() {
                "(none)".to_string()
            } else {
                a.models
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" > ")
            };
            let name = if l.stale {
                format!("{} (stale)", a.name)
            } else {
                a.name.clone()
            };
            [
                name,
                models,
                a.mirror.clone().unwrap_or_else(|| "-".into()),
                keys_cell(&crate::engine::KeyCheck::of(a, snap, providers)),
                a.description.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "MODELS", "MIRROR", "KEYS", "DESCRIPTION"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    writeln!(out, "{}", line(header).trim_end())?;
    for r in &rows {
        writeln!(
            out,
            "{}",
            line([&r[0], &r[1], &r[2], &r[3], &r[4]]).trim_end()
        )?;
    }
    if rows.is_empty() {
        eprintln!("{}", snap.available());
    }
    let errors = snap.errors().count();
    let warnings = snap.diagnostics.len() - errors;
    if errors + warnings > 0 {
        eprintln!(
            "{errors} error(s), {warnings} warning(s): run `dispatch agents check` for details"
        );
    }
    Ok(())
}

/// The KEYS column: `ok`, the variables a run cannot do without
/// (`missing X`), or those whose models are skipped (`partial: X unset`).
fn keys_cell(check: &crate::engine::KeyCheck) -> String {
    let vars = check.missing_vars();
    if vars.is_empty() {
        "ok".to_string()
    } else if check.blocking().is_some() {
        format!("missing {}", vars.join(", "))
    } else {
        format!("partial: {} unset", vars.join(", "))
    }
}

/// A warning for each agent tool `NAME/...` whose `[mcp_servers.NAME]` the
/// config does not declare (its tools would never be offered).
fn undeclared_servers(
    snap: &Snapshot,
    config: &crate::config::Config,
) -> Vec<crate::diag::Diagnostic> {
    let declared: Vec<&str> = config
        .mcp_servers
        .keys()
        .map(|k| k.get_ref().as_str())
        .collect();
    let mut out = Vec::new();
    for loaded in snap.agents.values() {
        let a = &loaded.agent;
        let policy = crate::engine::tools::Policy::of(a);
        for server in policy.server_names() {
            if !declared.contains(&server) {
                let (line, col) = a.position("tools");
                out.push(crate::diag::Diagnostic::warning(
                    &a.source,
                    line,
                    col,
                    format!(
                        "`{server}/...` names no [mcp_servers.{server}] in dispatch.toml: the agent gets none of its tools until one is declared"
                    ),
                ));
            }
        }
    }
    out
}

fn check(snap: &Snapshot) -> std::io::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for d in &snap.diagnostics {
        writeln!(out, "{d}")?;
    }
    let errors = snap.errors().count();
    let warnings = snap.diagnostics.len() - errors;
    writeln!(
        out,
        "{} agent(s) loaded from {} file(s) in {}: {errors} error(s), {warnings} warning(s)",
        snap.agents.len(),
        snap.files,
        snap.looked_in.join(", ")
    )?;
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
