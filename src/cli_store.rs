//! `dispatch store check` and `dispatch store migrate`: the task store's
//! schema, for an operator (several instances on one PostgreSQL, an upgrade,
//! a restored backup).

use std::process::ExitCode;
use std::time::Duration;

use crate::app::App;
use crate::cli::StoreAction;
use crate::config::Paths;
use crate::store::{SchemaReport, SchemaState};

/// Run a `dispatch store` command.
pub async fn run(paths: Paths, action: StoreAction) -> anyhow::Result<ExitCode> {
    let app = App::open(paths)?;
    let url = app.database_url();
    let timeout = Duration::from_secs(app.config.store.connect_timeout_secs);
    match action {
        StoreAction::Check { json } => {
            let report = crate::store::check(&url, timeout).await?;
            show(&report, json)?;
            Ok(match report.state() {
                SchemaState::UpToDate => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
        }
        StoreAction::Migrate => {
            let before = crate::store::check(&url, timeout).await?;
            app.open_store().await?.close().await?;
            let after = crate::store::check(&url, timeout).await?;
            let done = after.applied.len().saturating_sub(before.applied.len());
            eprintln!(
                "dispatch: applied {done} migration{} to {}",
                if done == 1 { "" } else { "s" },
                after.location
            );
            show(&after, false)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Print the report as text or JSON (stdout).
fn show(report: &SchemaReport, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(report)?;
        v["state"] = serde_json::Value::String(state_word(&report.state()).to_string());
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let kind = match report.backend {
        crate::store::Backend::Sqlite => "SQLite",
        crate::store::Backend::Postgres => "PostgreSQL",
    };
    writeln!(out, "store:   {} ({kind})", report.location)?;
    let last = report.known.last().copied().unwrap_or(0);
    let line = match (report.exists, report.state()) {
        (false, _) => format!(
            "not created yet: `dispatch serve` (or `dispatch store migrate`) creates it with {} migrations",
            report.known.len()
        ),
        (true, SchemaState::UpToDate) => format!("up to date (migration {last})"),
        (true, SchemaState::Behind(missing)) => format!(
            "{} migration(s) to apply ({}): run `dispatch store migrate`, or start `dispatch serve`",
            missing.len(),
            list(&missing)
        ),
        (true, SchemaState::Newer(unknown)) => format!(
            "newer than this dispatch (migration {} unknown to it): upgrade dispatch",
            list(&unknown)
        ),
    };
    writeln!(out, "schema:  {line}")?;
    Ok(())
}

fn state_word(state: &SchemaState) -> &'static str {
    match state {
        SchemaState::UpToDate => "up_to_date",
        SchemaState::Behind(_) => "behind",
        SchemaState::Newer(_) => "newer",
    }
}

fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
