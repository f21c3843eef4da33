//! The outbox file of a finished task: `_kb/outbox/<agent>-<task-id>.md`, a
//! YAML header with the accounting, then the input and the output.

use std::sync::Arc;

use serde::Serialize;

use super::Engine;
use super::audit::AuditTrail;
use crate::kb::WriteMode;
use crate::task::{Attempt, Millis, Task, TaskState, Turn};

#[derive(Serialize)]
struct Header<'a> {
    task: &'a str,
    agent: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    attempts: u32,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_task: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_task: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audited: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    verdicts: Vec<String>,
    calls: Vec<Call>,
}

#[derive(Serialize)]
struct Call {
    seq: u32,
    kind: &'static str,
    model: String,
    ok: bool,
    latency_ms: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// RFC 3339 UTC, to the millisecond.
pub fn rfc3339(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The KB-relative outbox path of a task.
pub fn path_for(task: &Task) -> String {
    format!("outbox/{}-{}.md", task.agent, task.id)
}

/// Render the outbox document; `full_output` replaces the task's (cut)
/// output when given.
pub fn render(
    task: &Task,
    full_output: Option<&str>,
    attempts: &[Attempt],
    turns: &[Turn],
) -> String {
    let trail: Option<AuditTrail> = task
        .audit
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    let header = Header {
        task: &task.id,
        agent: &task.agent,
        status: if task.state == TaskState::Failed && task.output.is_some() {
            "failed (output kept for reference)"
        } else {
            task.state.as_str()
        },
        reason: task.reason.map(|r| r.as_str()),
        model: task.model.as_deref(),
        attempts: task.attempts,
        input_tokens: task.input_tokens,
        output_tokens: task.output_tokens,
        cost_usd: (task.cost_usd * 1e6).round() / 1e6,
        created: rfc3339(task.created_at),
        started: task.started_at.map(rfc3339),
        finished: task.finished_at.map(rfc3339),
        duration_ms: match (task.started_at, task.finished_at) {
            (Some(s), Some(f)) => Some(f - s),
            _ => None,
        },
        parent_task: task.parent_id.as_deref(),
        root_task: task.root_id.as_deref().filter(|r| *r != task.id),
        audited: trail.as_ref().map(|t| t.decision.audited),
        verdicts: trail
            .as_ref()
            .map(|t| {
                t.rounds
                    .iter()
                    .map(|r| r.verdict.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        calls: attempts
            .iter()
            .map(|a| Call {
                seq: a.seq,
                kind: a.kind.as_str(),
                model: format!("{}/{}", a.provider, a.model),
                ok: a.ok,
                latency_ms: a.latency_ms,
                input_tokens: a.input_tokens,
                output_tokens: a.output_tokens,
                cost_usd: (a.cost_usd * 1e6).round() / 1e6,
                error: a.error.clone(),
            })
            .collect(),
    };
    let yaml = serde_yaml::to_string(&header).unwrap_or_default();
    let mut doc = format!("---\n{yaml}---\n\n# {} — task {}\n\n", task.agent, task.id);
    if let Some(err) = &task.error {
        doc.push_str(&format!("> **{}**: {err}\n\n", task.state));
    }
    doc.push_str("## Input\n\n");
    doc.push_str(&super::render_input(&task.input));
    doc.push_str("\n\n## Output\n\n");
    if task.state == TaskState::Failed && task.output.is_some() {
        doc.push_str("> This output was **not accepted** (");
        doc.push_str(task.reason.map_or("failed", |r| r.as_str()));
        doc.push_str("); it is kept for reference.\n\n");
    }
    doc.push_str(full_output.or(task.output.as_deref()).unwrap_or("(none)"));
    doc.push('\n');
    render_turns(&mut doc, turns);
    if let Some(t) = &trail {
        doc.push_str(&format!(
            "\n## Audit trail\n\nAuditor: `{}`. {}.\n",
            t.mirror, t.decision.reason
        ));
        if !t.rounds.is_empty() {
            doc.push_str(
                "\n| answer | model | verdict | confidence | feedback |\n|---|---|---|---|---|\n",
            );
            for r in &t.rounds {
                doc.push_str(&format!(
                    "| {}{} | {} | {} | {} | {} |\n",
                    r.attempt,
                    if r.escalation { " (escalation)" } else { "" },
                    r.model,
                    r.verdict.as_str(),
                    r.confidence
                        .map(|c| format!("{c:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    r.feedback.replace('|', "\\|").replace('\n', " ")
                ));
            }
        }
        let revisions: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.ok && a.revision_message.is_some())
            .collect();
        for a in revisions {
            doc.push_str(&format!(
                "\n### Revision request (call {})\n\n{}\n",
                a.seq,
                a.revision_message.as_deref().unwrap_or("")
            ));
        }
    }
    doc
}

/// The tool loop: one row per model turn, child and tool result.
fn render_turns(doc: &mut String, turns: &[Turn]) {
    if turns.is_empty() {
        return;
    }
    doc.push_str("\n## Tool calls\n\n| # | answer | turn |\n|---|---|---|\n");
    for t in turns {
        let cell = t.event.describe().replace('|', "\\|").replace('\n', " ");
        doc.push_str(&format!("| {} | {} | {cell} |\n", t.seq, t.answer));
    }
}

/// Write the outbox file (atomically) and return its KB-relative path.
/// `full_output` is the whole answer when the task's output was cut.
/// `attempts` are the task's attempts, in order (the driver keeps them, so
/// the file needs no read of the store).
pub async fn write(
    engine: &Arc<Engine>,
    task: &Task,
    full_output: Option<&str>,
    attempts: &[Attempt],
    turns: &[Turn],
) -> Result<String, String> {
    let doc = render(task, full_output, attempts, turns);
    let path = path_for(task);
    let kb = engine.kb.clone();
    let p = path.clone();
    // In the task's owner's own KB space (the whole KB without a subject).
    let subject = task.subject.clone();
    // On the blocking pool, not `block_in_place`: under load that hands the
    // worker's other tasks to fresh threads on every file, which measured
    // slower over HTTP and doubled the server's memory (BENCHMARKS.md).
    let written = tokio::task::spawn_blocking(move || {
        kb.for_subject(subject.as_deref())?
            .write_derived(&p, &doc, WriteMode::Overwrite)
    })
    .await
    .map_err(|e| e.to_string())?;
    written.map_err(|e| e.to_string())?;
    Ok(path)
}
