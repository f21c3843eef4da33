//! Choosing an agent for `agent_delegate` without one: keyword and pattern
//! hints from the agents' `routing`, then the classifier agent's model, then a
//! configured default; otherwise a clear error listing the candidates.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::{Engine, EngineError, input};
use crate::provider::{AttemptLog, ChatRequest, Message};
use crate::task::{Attempt, AttemptKind};

/// Router settings (`[router]` in dispatch.toml).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Agent used when nothing else decides.
    pub default_agent: Option<String>,
    /// Lowest classifier confidence accepted.
    pub min_confidence: f64,
    /// The agent whose model classifies requests.
    pub classifier: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            default_agent: None,
            min_confidence: 0.6,
            classifier: "orchestrator".into(),
        }
    }
}

/// The router's choice and why; stored on the task and returned to the client.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RouteDecision {
    /// The chosen agent.
    pub agent: String,
    /// `keywords`, `classifier` or `default`.
    pub method: String,
    /// 0.0..=1.0.
    pub confidence: f64,
    /// Why, in words.
    pub reason: String,
    /// The classifier's calls (stored as the task's first attempts).
    #[serde(skip)]
    #[schemars(skip)]
    pub attempts: Vec<Attempt>,
}

/// Agents that may be chosen: not auditors, not the classifier itself.
fn candidates(engine: &Engine) -> Vec<Arc<crate::agent::Agent>> {
    let snap = engine.registry.snapshot();
    let auditors: HashSet<&str> = snap
        .agents
        .values()
        .filter_map(|l| l.agent.mirror.as_deref())
        .collect();
    snap.agents
        .values()
        .map(|l| l.agent.clone())
        .filter(|a| !auditors.contains(a.name.as_str()) && a.name != engine.cfg.router.classifier)
        .collect()
}

/// Score every candidate by its hints: one point per keyword found, two per
/// pattern that matches.
fn hint_scores(agents: &[Arc<crate::agent::Agent>], text: &str) -> Vec<(String, u32, Vec<String>)> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    for a in agents {
        let mut score = 0;
        let mut why = Vec::new();
        for k in &a.routing.keywords {
            if !k.trim().is_empty() && lower.contains(&k.to_lowercase()) {
                score += 1;
                why.push(format!("keyword `{k}`"));
            }
        }
        for p in &a.routing.patterns {
            if let Ok(re) = regex::Regex::new(p)
                && re.is_match(text)
            {
                score += 2;
                why.push(format!("pattern `{p}`"));
            }
        }
        if score > 0 {
            out.push((a.name.clone(), score, why));
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[derive(serde::Deserialize)]
struct Classification {
    agent: String,
    #[serde(default)]
    confidence: f64,
    #[serde(default)]
    reason: String,
}

/// The first JSON object in a model's answer (bare or in a fenced block).
fn parse_classification(text: &str) -> Option<Classification> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    serde_json::from_str(text.get(start..=end)?).ok()
}

pub(super) async fn route(
    engine: &Engine,
    task_input: &serde_json::Value,
) -> Result<RouteDecision, EngineError> {
    input::validate(task_input)?;
    let text = input::render_input(task_input);
    let agents = candidates(engine);
    if agents.is_empty() {
        return Err(EngineError::Unroutable(
            "no agents are loaded: add agent files, then retry".into(),
        ));
    }
    let scores = hint_scores(&agents, &text);
    if let Some((best, score, why)) = scores.first() {
        let second = scores.get(1).map_or(0, |s| s.1);
        if *score > second {
            return Ok(RouteDecision {
                agent: best.clone(),
                method: "keywords".into(),
                confidence: f64::from(*score) / f64::from(score + second),
                reason: format!("matched {}", why.join(", ")),
                attempts: Vec::new(),
            });
        }
    }

    let mut attempts = Vec::new();
    let mut guess: Option<Classification> = None;
    if let Ok(classifier) = engine.agent(&engine.cfg.router.classifier)
        && !classifier.models.is_empty()
    {
        let list: Vec<String> = agents
            .iter()
            .map(|a| format!("- {}: {}", a.name, a.description))
            .collect();
        let user = format!(
            "Choose the one agent best suited to this request.\n\nAgents:\n{}\n\nRequest:\n{}\n\n\
             Answer with only a JSON object: {{\"agent\": \"<name from the list>\", \"confidence\": <0.0-1.0>, \"reason\": \"<one sentence>\"}}",
            list.join("\n"),
            text
        );
        let req = ChatRequest {
            tools: Vec::new(),
            system: classifier.system_prompt.clone(),
            messages: vec![Message::user(user)],
            temperature: Some(0.0),
            max_tokens: Some(300),
            stream: false,
        };
        let logs = Arc::new(Mutex::new(Vec::<AttemptLog>::new()));
        let sink = logs.clone();
        let record =
            move |log: AttemptLog| sink.lock().unwrap_or_else(|p| p.into_inner()).push(log);
        let timeout = classifier.timeout.unwrap_or(Duration::from_secs(30));
        let result = engine
            .providers
            .call_chain(&classifier.models, &req, timeout, None, &record)
            .await;
        let logs = std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner()));
        for log in &logs {
            engine.metrics.usage(
                &classifier.name,
                &log.provider,
                &log.model,
                log.usage.input_tokens,
                log.usage.output_tokens,
                log.cost_usd,
            );
        }
        attempts = logs
            .into_iter()
            .map(|log| {
                super::run::attempt_of(
                    log,
                    String::new(),
                    0,
                    AttemptKind::Routing,
                    classifier.name.clone(),
                )
            })
            .collect();
        match result {
            Ok(success) => match parse_classification(&success.response.text) {
                Some(c) if agents.iter().any(|a| a.name == c.agent) => {
                    if c.confidence >= engine.cfg.router.min_confidence {
                        return Ok(RouteDecision {
                            agent: c.agent,
                            method: "classifier".into(),
                            confidence: c.confidence.clamp(0.0, 1.0),
                            reason: c.reason,
                            attempts,
                        });
                    }
                    guess = Some(c);
                }
                _ => tracing::warn!("the classifier's answer named no known agent"),
            },
            Err(e) => tracing::warn!(error = %e, "the classifier failed"),
        }
    }

    if let Some(default) = &engine.cfg.router.default_agent
        && engine.agent(default).is_ok()
    {
        return Ok(RouteDecision {
            agent: default.clone(),
            method: "default".into(),
            confidence: 0.0,
            reason: match &guess {
                Some(g) => format!(
                    "the classifier was unsure ({} at {:.2}); using the configured default",
                    g.agent, g.confidence
                ),
                None => "no hint matched; using the configured default".into(),
            },
            attempts,
        });
    }
    let list: Vec<String> = agents
        .iter()
        .map(|a| format!("{} ({})", a.name, a.description))
        .collect();
    let why = match guess {
        Some(g) => format!(
            "the best guess was `{}` at confidence {:.2}, below the {:.2} threshold",
            g.agent, g.confidence, engine.cfg.router.min_confidence
        ),
        None => "no routing hint matched and the classifier gave no usable answer".into(),
    };
    Err(EngineError::Unroutable(format!(
        "could not choose an agent: {why}. Pass `agent` explicitly; candidates: {}",
        list.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifications_parse_bare_or_fenced() {
        let c = parse_classification(
            "```json\n{\"agent\": \"docs-sync\", \"confidence\": 0.9, \"reason\": \"docs\"}\n```",
        )
        .unwrap();
        assert_eq!(c.agent, "docs-sync");
        assert!(parse_classification("no json here").is_none());
    }
}
