//! What `--dry-run` shows.

use serde::Serialize;

use super::super::{Engine, EngineError, input};
use super::ctx::request_for;
use crate::provider::estimate_request_tokens;

/// What `--dry-run` shows.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DryRun {
    /// The agent.
    pub agent: String,
    /// Model chain, primary first.
    pub models: Vec<String>,
    /// The system prompt.
    pub system: String,
    /// The user message.
    pub user: String,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens assumed for the estimate: the `max_tokens` the request
    /// sends, or 1000 when it sends none.
    pub output_tokens: u64,
    /// The `max_tokens` the request sends (the agent's, else the provider's
    /// default); absent when it sends none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Variables that should hold keys for this run's models and do not.
    pub missing_keys: Vec<String>,
    /// Why the run would fail at once (`missing_key`), if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Estimated cost on the primary model, USD.
    pub estimated_cost_usd: f64,
    /// Whether the primary model's price is known.
    pub price_known: bool,
    /// The mirror auditor, whose calls would add to the cost.
    pub mirror: Option<String>,
}

pub(crate) fn dry_run(
    engine: &Engine,
    agent: &str,
    input: &serde_json::Value,
) -> Result<DryRun, EngineError> {
    let agent = engine.agent(agent)?;
    input::validate(input)?;
    let req = request_for(&agent, input);
    let input_tokens = estimate_request_tokens(&req);
    let max_tokens = agent
        .models
        .first()
        .and_then(|m| engine.providers.max_tokens_sent(m, agent.max_tokens));
    let output_tokens = u64::from(max_tokens.unwrap_or(1000));
    let keys = engine.key_check(&agent);
    let (cost, known) = match agent.models.first() {
        Some(m) => {
            let c = engine
                .providers
                .prices()
                .estimate_cost(m, input_tokens, output_tokens);
            (c.usd, c.source != crate::task::CostSource::Unknown)
        }
        None => (0.0, false),
    };
    Ok(DryRun {
        agent: agent.name.clone(),
        models: agent.models.iter().map(ToString::to_string).collect(),
        system: req.system.clone(),
        user: req
            .messages
            .first()
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        input_tokens,
        output_tokens,
        estimated_cost_usd: cost,
        price_known: known,
        mirror: agent.mirror.clone(),
        max_tokens,
        missing_keys: keys.missing_vars(),
        blocked: keys.blocking(),
    })
}
