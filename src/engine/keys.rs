//! Provider keys, checked before anything runs: which of an agent's models
//! have no key in the environment, and whether that leaves a chain with no
//! model it can call (then a run fails at once with `missing_key` instead of
//! after a round of refused calls).

use std::collections::BTreeMap;

use crate::agent::{Agent, ModelRef};
use crate::provider::Providers;
use crate::registry::Snapshot;

/// One model chain of an agent's run and the keys it lacks.
#[derive(Debug, Clone)]
struct Chain {
    /// `code-review`, or `the auditor code-review-auditor`.
    whose: String,
    /// Models of the chain whose provider has no key, with the variable.
    missing: Vec<(ModelRef, String)>,
    /// Models of the chain in all.
    len: usize,
}

/// The keys an agent's runs need and do not have.
#[derive(Debug, Clone, Default)]
pub struct KeyCheck {
    chains: Vec<Chain>,
    /// The escalation model's variable, when it has no key.
    escalation: Option<String>,
}

impl KeyCheck {
    /// Check `agent`'s chain and its auditor's (from `snap`).
    pub fn of(agent: &Agent, snap: &Snapshot, providers: &Providers) -> KeyCheck {
        let chain = |whose: String, models: &[ModelRef]| Chain {
            whose,
            missing: models
                .iter()
                .filter_map(|m| {
                    providers
                        .missing_key(&m.provider)
                        .map(|v| (m.clone(), v.to_string()))
                })
                .collect(),
            len: models.len(),
        };
        let mut chains = vec![chain(format!("`{}`", agent.name), &agent.models)];
        if let Some(auditor) = agent.mirror.as_deref().and_then(|m| snap.get(m)) {
            chains.push(chain(
                format!("its auditor `{}`", auditor.name),
                &auditor.models,
            ));
        }
        KeyCheck {
            chains,
            escalation: agent
                .escalate
                .as_ref()
                .and_then(|m| providers.missing_key(&m.provider))
                .map(str::to_string),
        }
    }

    /// Every variable that should hold a key and does not, sorted, once each.
    pub fn missing_vars(&self) -> Vec<String> {
        let mut vars: Vec<String> = self
            .chains
            .iter()
            .flat_map(|c| c.missing.iter().map(|(_, v)| v.clone()))
            .chain(self.escalation.clone())
            .collect();
        vars.sort();
        vars.dedup();
        vars
    }

    /// Why a run cannot start: a chain none of whose models has a key.
    pub fn blocking(&self) -> Option<String> {
        let dead: Vec<String> = self
            .chains
            .iter()
            .filter(|c| c.len > 0 && c.missing.len() == c.len)
            .map(|c| {
                let needs: Vec<String> = c
                    .missing
                    .iter()
                    .map(|(m, v)| format!("{v} (for {m})"))
                    .collect();
                format!(
                    "no model of {} has a key: set {}",
                    c.whose,
                    needs.join(" or ")
                )
            })
            .collect();
        (!dead.is_empty()).then(|| dead.join("; "))
    }
}

/// Per missing variable: the provider it is for and the agents that use it.
pub fn missing_by_variable(
    snap: &Snapshot,
    providers: &Providers,
) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for loaded in snap.agents.values() {
        let a = &loaded.agent;
        for m in a.models.iter().chain(a.escalate.as_ref()) {
            if let Some(var) = providers.missing_key(&m.provider) {
                let entry = out
                    .entry(var.to_string())
                    .or_insert_with(|| (m.provider.clone(), Vec::new()));
                if !entry.1.contains(&a.name) {
                    entry.1.push(a.name.clone());
                }
            }
        }
    }
    out
}
