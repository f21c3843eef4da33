//! `usage_report`: tokens and cost per agent and model over a window, and the
//! saving against running everything on one baseline model.

use std::collections::BTreeMap;

use serde::Serialize;

use super::outbox::rfc3339;
use super::{Engine, EngineError};
use crate::agent::ModelRef;
use crate::store::UsageQuery;
use crate::task::AttemptKind;

/// One (task agent, called agent, kind, model) line.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UsageReportRow {
    /// The agent whose task it was.
    pub agent: String,
    /// The agent whose model was called (the auditor for audits, the classifier for routing).
    pub called_agent: String,
    /// `primary`, `audit`, `audit_repair`, `escalation` or `routing`.
    pub kind: AttemptKind,
    /// `provider/model-id`.
    pub model: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub failed_calls: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost, USD.
    pub cost_usd: f64,
}

/// Totals for one agent.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct AgentTotals {
    /// The agent.
    pub agent: String,
    /// Calls made for its tasks.
    pub calls: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost, USD, including audits and routing for its tasks.
    pub cost_usd: f64,
    /// The part of `cost_usd` spent on audits.
    pub audit_cost_usd: f64,
    /// `audit_cost_usd / cost_usd` (0 when nothing was spent).
    pub audit_share: f64,
}

/// The comparison with a single baseline model.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Baseline {
    /// The baseline model.
    pub model: String,
    /// What the same tokens would have cost on it, USD.
    pub cost_usd: f64,
    /// `cost_usd - actual cost` (negative if the mix cost more).
    pub saving_usd: f64,
    /// Saving as a percentage of the baseline cost.
    pub saving_percent: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UsageReport {
    /// Window start (RFC 3339), if any.
    pub since: Option<String>,
    /// Window end (RFC 3339), if any.
    pub until: Option<String>,
    /// Per (agent, called agent, kind, model).
    pub rows: Vec<UsageReportRow>,
    /// Per agent.
    pub agents: Vec<AgentTotals>,
    /// Calls in the window.
    pub total_calls: u64,
    /// Input tokens in the window.
    pub total_input_tokens: u64,
    /// Output tokens in the window.
    pub total_output_tokens: u64,
    /// Cost in the window, USD.
    pub total_cost_usd: f64,
    /// The saving against the baseline model, when its price is known.
    pub baseline: Option<Baseline>,
    /// Why there is no baseline comparison, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_note: Option<String>,
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

pub(super) async fn usage(
    engine: &Engine,
    q: &UsageQuery,
    baseline: Option<&ModelRef>,
) -> Result<UsageReport, EngineError> {
    let raw = engine.store.usage(q).await?;
    let mut rows = Vec::new();
    let mut agents: BTreeMap<String, AgentTotals> = BTreeMap::new();
    let (mut calls, mut input, mut output, mut cost) = (0, 0, 0, 0.0);
    let baseline = baseline.or(engine.cfg.baseline.as_ref());
    let base_price = baseline.and_then(|m| engine.providers.prices().lookup(m));
    let mut base_cost = 0.0;
    for r in raw {
        calls += r.calls;
        input += r.input_tokens;
        output += r.output_tokens;
        cost += r.cost_usd;
        if let Some(p) = base_price {
            base_cost += p.cost(r.input_tokens, r.output_tokens);
        }
        let t = agents
            .entry(r.task_agent.clone())
            .or_insert_with(|| AgentTotals {
                agent: r.task_agent.clone(),
                ..AgentTotals::default()
            });
        t.calls += r.calls;
        t.input_tokens += r.input_tokens;
        t.output_tokens += r.output_tokens;
        t.cost_usd += r.cost_usd;
        if matches!(r.kind, AttemptKind::Audit | AttemptKind::AuditRepair) {
            t.audit_cost_usd += r.cost_usd;
        }
        rows.push(UsageReportRow {
            agent: r.task_agent,
            called_agent: r.agent,
            kind: r.kind,
            model: format!("{}/{}", r.provider, r.model),
            calls: r.calls,
            failed_calls: r.failed_calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: round6(r.cost_usd),
        });
    }
    let agents = agents
        .into_values()
        .map(|mut t| {
            t.audit_share = if t.cost_usd > 0.0 {
                t.audit_cost_usd / t.cost_usd
            } else {
                0.0
            };
            t.cost_usd = round6(t.cost_usd);
            t.audit_cost_usd = round6(t.audit_cost_usd);
            t
        })
        .collect();
    let (baseline_out, note) = match (baseline, base_price) {
        (Some(m), Some(_)) => (
            Some(Baseline {
                model: m.to_string(),
                cost_usd: round6(base_cost),
                saving_usd: round6(base_cost - cost),
                saving_percent: if base_cost > 0.0 { ((base_cost - cost) / base_cost * 1000.0).round() / 10.0 } else { 0.0 },
            }),
            None,
        ),
        (Some(m), None) => (None, Some(format!("no price known for baseline `{m}`: add it under [prices] in dispatch.toml"))),
        (None, _) => (None, Some("no baseline model: pass `baseline` or set `baseline` under [report] in dispatch.toml".into())),
    };
    Ok(UsageReport {
        since: q.since.map(rfc3339),
        until: q.until.map(rfc3339),
        rows,
        agents,
        total_calls: calls,
        total_input_tokens: input,
        total_output_tokens: output,
        total_cost_usd: round6(cost),
        baseline: baseline_out,
        baseline_note: note,
    })
}
