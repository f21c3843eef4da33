//! The CLI's task commands: `run`, `tasks`, `task`, `report`. They use the same
//! engine as the MCP server, in-process, on the same store.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::agent::{ModelSpec, parse_model};
use crate::app::App;
use crate::cli::{RunArgs, TasksArgs};
use crate::config::Paths;
use crate::engine::{Submit, TaskEvent};
use crate::store::TaskFilter;
use crate::task::{Attempt, Task, TaskState};

/// A line on stdout. A write error (a closed pipe: `dispatch tasks | head -1`)
/// is returned, and `main` ends quietly on a closed pipe instead of panicking
/// as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

/// Text on stdout without a line end; errors as for `say!`.
macro_rules! say_raw {
    ($($arg:tt)*) => {
        write!(std::io::stdout().lock(), $($arg)*)
    };
}

fn open(paths: Paths) -> anyhow::Result<Arc<App>> {
    Ok(Arc::new(App::open(paths)?))
}

/// Read the INPUT argument: text, `@file`, `-`/nothing for stdin.
fn read_input(arg: Option<&str>) -> anyhow::Result<Value> {
    let text = match arg {
        Some("-") => read_stdin()?,
        None if !std::io::stdin().is_terminal() => read_stdin()?,
        None => bail!("no input: pass TEXT, @FILE, or pipe it on stdin (`-`)"),
        Some(a) if a.starts_with('@') => {
            let path = &a[1..];
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read input file {path}"))?
        }
        Some(a) => a.to_string(),
    };
    // A JSON object becomes a structured input; anything else is text.
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Ok(Value::String(text)),
    }
}

fn read_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read stdin")?;
    Ok(s)
}

/// `dispatch run AGENT [INPUT]`
pub async fn run(paths: Paths, args: RunArgs) -> anyhow::Result<ExitCode> {
    let app = open(paths)?;
    let input = read_input(args.input.as_deref())?;
    let engine = app.engine(false).await?;
    if args.dry_run {
        let d = engine.dry_run(&args.agent, &input)?;
        if args.json {
            say!("{}", serde_json::to_string_pretty(&d)?)?;
        } else {
            say!("agent:   {}", d.agent)?;
            say!(
                "models:  {}",
                if d.models.is_empty() {
                    "(none)".into()
                } else {
                    d.models.join(" > ")
                }
            )?;
            if let Some(m) = &d.mirror {
                say!("mirror:  {m} (its calls add to the cost)")?;
            }
            match d.max_tokens {
                Some(n) => say!(
                    "tokens:  ~{} in, up to {n} out (max_tokens sent; estimate)",
                    d.input_tokens
                )?,
                None => say!(
                    "tokens:  ~{} in; no max_tokens is sent (the model's own limit applies; the estimate assumes {} out)",
                    d.input_tokens,
                    d.output_tokens
                )?,
            }
            if let Some(why) = &d.blocked {
                say!("keys:    missing_key: {why}; a run would fail at once")?;
            } else if !d.missing_keys.is_empty() {
                say!(
                    "keys:    {} not set: the models that need them are skipped (failover)",
                    d.missing_keys.join(", ")
                )?;
            } else {
                say!("keys:    ok")?;
            }
            if d.price_known {
                say!(
                    "cost:    ~${:.4} on the primary model (estimate)",
                    d.estimated_cost_usd
                )?;
            } else {
                say!(
                    "cost:    unknown (no price for the primary model; add it under [prices] in dispatch.toml)"
                )?;
            }
            say!("\n--- system ---\n{}\n\n--- user ---\n{}", d.system, d.user)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    engine.set_default_approver(crate::cli_approve::for_run(&args.approvals));
    let (task, events) = engine
        .submit_watched(Submit {
            agent: args.agent.clone(),
            input,
            ..Submit::default()
        })
        .await?;
    let shown = show_progress(events, &task);
    let finished = tokio::select! {
        t = engine.wait(&task.id, None, Duration::MAX) => t?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: cancelling task {}", task.id);
            engine.cancel(&task.id, None).await?;
            engine.visible_task(&task.id, None).await?
        }
    };
    if let Some(h) = shown {
        h.abort();
        let _ = h.await;
    }
    let attempts = engine.store().attempts(&task.id).await?;
    if args.json {
        let v = serde_json::json!({"task": finished, "calls": attempts});
        say!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        if let Some(out) = &finished.output {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{out}")?;
        }
        eprintln!("{}", summary(&finished));
        if let Some(e) = &finished.error {
            eprintln!("error: {e}");
        }
    }
    Ok(if finished.state == TaskState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A spinner on a terminal, plain lines otherwise; both on stderr.
fn show_progress(
    mut rx: tokio::sync::broadcast::Receiver<TaskEvent>,
    task: &Task,
) -> Option<tokio::task::JoinHandle<()>> {
    let agent = task.agent.clone();
    let tty = std::io::stderr().is_terminal();
    Some(tokio::spawn(async move {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b.set_message(format!("{agent}: queued"));
            b
        });
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            };
            let line = ev.describe(&agent);
            match &bar {
                Some(b) => b.set_message(line),
                None if !matches!(ev, TaskEvent::Streaming { .. }) => eprintln!("{line}"),
                None => {}
            }
            if matches!(ev, TaskEvent::State { state } if state.is_terminal()) {
                break;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    }))
}

fn summary(t: &Task) -> String {
    let latency = match (t.started_at, t.finished_at) {
        (Some(s), Some(f)) => format!(" · {:.1} s", (f - s) as f64 / 1000.0),
        _ => String::new(),
    };
    format!(
        "task {} · {} · {}{} · {} · {} call(s) · {} in / {} out tokens · ${:.6}{}{}",
        t.id,
        t.agent,
        t.state,
        t.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
        t.model.as_deref().unwrap_or("-"),
        t.attempts,
        t.input_tokens,
        t.output_tokens,
        t.cost_usd,
        latency,
        t.kb_path
            .as_deref()
            .map(|p| format!(" · kb: {p}"))
            .unwrap_or_default()
    )
}

/// `dispatch tasks`
pub async fn tasks(paths: Paths, args: TasksArgs) -> anyhow::Result<ExitCode> {
    let app = open(paths)?;
    let engine = app.engine(false).await?;
    let states = args
        .state
        .iter()
        .map(|s| s.parse::<TaskState>())
        .collect::<Result<Vec<_>, _>>()?;
    let filter = TaskFilter {
        states,
        agent: args.agent,
        ..TaskFilter::default()
    };
    let page = engine.list(&filter, None, args.limit).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&page.tasks)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<26}  {:<20}  {:<9}  {:>5}  {:>10}  CREATED",
        "ID",
        "AGENT",
        "STATE",
        "CALLS",
        "COST"
    )?;
    for t in &page.tasks {
        say!(
            "{:<26}  {:<20}  {:<9}  {:>5}  {:>10}  {}",
            t.id,
            t.agent,
            t.state.as_str(),
            t.attempts,
            format!("${:.4}", t.cost_usd),
            crate::engine::rfc3339(t.created_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `dispatch task ID`
pub async fn task(paths: Paths, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let app = open(paths)?;
    let engine = app.engine(false).await?;
    let (t, attempts) = engine.status(id, None).await?;
    let turns = engine.turns(&t.id).await?;
    let tree = engine.tree(&t).await?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "task": t, "calls": attempts, "turns": turns, "tree": tree
            }))?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    say!("{}", summary(&t))?;
    if let Some(e) = &t.error {
        say!("error: {e}")?;
    }
    if let Some(p) = &t.parent_id {
        say!("parent: {p} (root {})", t.root())?;
    }
    if let Some(tree) = tree.filter(|tr| tr.root_id == t.id) {
        say!(
            "tree: {} tasks, {} turns, ${:.6} spent{}",
            tree.tasks,
            tree.turns,
            tree.spent_micros as f64 / 1e6,
            tree.limits
                .budget_micros
                .map(|b| format!(" of ${:.6}", b as f64 / 1e6))
                .unwrap_or_default()
        )?;
    }
    say!("\ncalls:")?;
    for a in &attempts {
        say!("  {}", call_line(a))?;
    }
    if !turns.is_empty() {
        say!("\nturns:")?;
        for turn in &turns {
            say!("  {}", turn_line(turn))?;
        }
    }
    if let Some(out) = &t.output {
        say!("\noutput:\n{out}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn turn_line(t: &crate::task::Turn) -> String {
    format!("#{} answer {} · {}", t.seq, t.answer, t.event.describe())
}

fn call_line(a: &Attempt) -> String {
    format!(
        "#{} {} {}/{} {} {} ms · {} in / {} out · ${:.6} ({}){}",
        a.seq,
        a.kind.as_str(),
        a.provider,
        a.model,
        if a.ok { "ok" } else { "FAILED" },
        a.latency_ms,
        a.input_tokens,
        a.output_tokens,
        a.cost_usd,
        a.cost_source.as_str(),
        a.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    )
}

/// `dispatch report`
pub async fn report(
    paths: Paths,
    since: &str,
    baseline: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let app = open(paths)?;
    let engine = app.engine(false).await?;
    let since_ms = crate::engine::parse_when(since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let baseline = match baseline.map(parse_model) {
        None => None,
        Some(Ok(ModelSpec::Ref(m))) => Some(m),
        Some(_) => bail!("--baseline must be `provider/model-id`"),
    };
    let r = engine
        .usage(
            &crate::store::UsageQuery {
                since: Some(since_ms),
                ..Default::default()
            },
            baseline.as_ref(),
        )
        .await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "usage since {}",
        r.since.as_deref().unwrap_or("the beginning")
    )?;
    say!(
        "{:<22}  {:<14}  {:<40}  {:>6}  {:>10}  {:>10}  {:>10}",
        "AGENT",
        "KIND",
        "MODEL",
        "CALLS",
        "IN",
        "OUT",
        "COST"
    )?;
    for row in &r.rows {
        say!(
            "{:<22}  {:<14}  {:<40}  {:>6}  {:>10}  {:>10}  {:>10}",
            row.agent,
            row.kind.as_str(),
            row.model,
            row.calls,
            row.input_tokens,
            row.output_tokens,
            format!("${:.4}", row.cost_usd)
        )?;
    }
    say!(
        "\ntotal: {} calls · {} in / {} out tokens · ${:.4}",
        r.total_calls,
        r.total_input_tokens,
        r.total_output_tokens,
        r.total_cost_usd
    )?;
    for a in &r.agents {
        if a.audit_cost_usd > 0.0 {
            say!(
                "  {}: ${:.4}, of which audits ${:.4} ({:.0}%)",
                a.agent,
                a.cost_usd,
                a.audit_cost_usd,
                a.audit_share * 100.0
            )?;
        }
    }
    match (&r.baseline, &r.baseline_note) {
        (Some(b), _) => say!(
            "on {} alone: ${:.4} → saving ${:.4} ({:.1}%)",
            b.model,
            b.cost_usd,
            b.saving_usd,
            b.saving_percent
        )?,
        (None, Some(n)) => say!("{n}")?,
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Read a workflow definition from a file, or take a workflow agent's.
fn workflow_def(
    app: &App,
    arg: &str,
) -> anyhow::Result<(crate::workflow::WorkflowDef, Option<String>)> {
    use crate::workflow::WorkflowDef;
    let path = std::path::Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {arg}"))?;
        let value: Value = if arg.ends_with(".agent.md") {
            let report = crate::agent::reader::parse_agent(&text, path, &app.config.read_context());
            let agent = report
                .agent
                .ok_or_else(|| anyhow::anyhow!("{arg} has errors: run `dispatch agents check`"))?;
            agent
                .dag
                .ok_or_else(|| anyhow::anyhow!("{arg} has no `dag:`"))?
        } else if arg.ends_with(".yaml") || arg.ends_with(".yml") {
            serde_yaml::from_str(&text).with_context(|| format!("{arg} is not valid YAML"))?
        } else {
            serde_json::from_str(&text).with_context(|| format!("{arg} is not valid JSON"))?
        };
        let def = WorkflowDef::from_json(&value).map_err(|e| anyhow::anyhow!("{arg}: {e}"))?;
        return Ok((def, None));
    }
    let snap = app.registry.snapshot();
    let Some(agent) = snap.get(arg) else {
        bail!(
            "`{arg}` is neither a file nor an agent; workflow agents: {}",
            {
                let names: Vec<&str> = snap
                    .agents
                    .values()
                    .filter(|l| l.agent.is_workflow())
                    .map(|l| l.agent.name.as_str())
                    .collect();
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            }
        );
    };
    let dag = agent.dag.as_ref().ok_or_else(|| {
        anyhow::anyhow!("`{arg}` is not a workflow agent (no `dag:`); use `dispatch run`")
    })?;
    let mut def =
        WorkflowDef::from_json(dag).map_err(|e| anyhow::anyhow!("the dag of `{arg}`: {e}"))?;
    def.name.get_or_insert_with(|| arg.to_string());
    Ok((def, Some(arg.to_string())))
}

/// `dispatch workflow run`
pub async fn workflow_run(
    paths: Paths,
    workflow: &str,
    input: Option<&str>,
    json: bool,
    approvals: &crate::cli::ApprovalArgs,
) -> anyhow::Result<ExitCode> {
    let app = open(paths)?;
    let (def, agent) = workflow_def(&app, workflow)?;
    let input = match input {
        None if std::io::stdin().is_terminal() => Value::String(String::new()),
        other => read_input(other)?,
    };
    let engine = app.engine(false).await?;
    engine.set_default_approver(crate::cli_approve::for_run(approvals));
    let run = engine
        .start_run(crate::engine::RunRequest {
            def,
            input,
            agent,
            subject: None,
            limits: crate::engine::CallLimits::default(),
            approver: None,
        })
        .await?;
    eprintln!("run {} started", run.id);
    let mut events = engine.subscribe_run(&run.id);
    let printer = tokio::spawn(async move {
        if let Some(rx) = events.as_mut() {
            while let Ok(ev) = rx.recv().await {
                eprintln!("step {}: {}", ev.step, ev.state.as_str());
            }
        }
    });
    let finished = tokio::select! {
        r = engine.wait_run(&run.id, None, Duration::MAX) => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: cancelling run {}", run.id);
            engine.cancel_run(&run.id, None).await?
        }
    };
    printer.abort();
    let (run, steps) = engine.run_status(&finished.id, None).await?;
    let view = crate::engine::run_view(&engine, &run, &steps).await;
    if json {
        say!("{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        print_run(&view)?;
        if let Some(out) = &view.output {
            say!("\n{out}")?;
        }
    }
    Ok(if run.state == crate::task::RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_run(v: &crate::engine::RunView) -> std::io::Result<()> {
    say!(
        "run {} · {} · {} · {} in / {} out tokens · ${:.6} · {:.1} s · kb: {}",
        v.run_id,
        v.name.as_deref().unwrap_or("(inline)"),
        v.state.as_str(),
        v.input_tokens,
        v.output_tokens,
        v.cost_usd,
        v.elapsed_ms as f64 / 1000.0,
        v.session
    )?;
    if let Some(e) = &v.error {
        say!("error: {e}")?;
    }
    say!(
        "{:<20}  {:<20}  {:<10}  {:<26}  {:>10}",
        "STEP",
        "AGENT",
        "STATE",
        "TASK",
        "COST"
    )?;
    for s in &v.steps {
        say!(
            "{:<20}  {:<20}  {:<10}  {:<26}  {:>10}",
            s.id,
            s.agent,
            s.state.as_str(),
            s.task_id.as_deref().unwrap_or("-"),
            format!("${:.4}", s.cost_usd)
        )?;
    }
    Ok(())
}

/// `dispatch workflow show`
pub async fn workflow_show(
    paths: Paths,
    run_id: &str,
    mermaid: bool,
    dot: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let app = open(paths)?;
    let engine = app.engine(false).await?;
    let (run, steps) = engine.run_status(run_id, None).await?;
    if mermaid || dot {
        let def = crate::workflow::WorkflowDef::from_json(&run.definition)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Rendering needs a plan; agents may have changed since, so accept any name.
        let plan = crate::workflow::validate(&def, &|_| true).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| format!("- {e}")).collect();
            anyhow::anyhow!(
                "the stored definition of {run_id} no longer validates:\n{}",
                list.join("\n")
            )
        })?;
        let state_of = |i: usize| {
            steps
                .get(i)
                .map_or(crate::task::StepState::Pending, |s| s.state)
        };
        let text = if mermaid {
            crate::workflow::mermaid(&plan, &state_of)
        } else {
            crate::workflow::dot(&plan, &state_of)
        };
        say_raw!("{text}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let view = crate::engine::run_view(&engine, &run, &steps).await;
    if json {
        say!("{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        print_run(&view)?;
    }
    Ok(ExitCode::SUCCESS)
}
