//! What calls cost: provider-reported cost when there is one, else tokens ×
//! a price table, else an explicit "unknown".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ChatRequest, Usage};
use crate::agent::ModelRef;
use crate::task::CostSource;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Output (completion) tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// A price from USD per million input and output tokens.
    pub const fn new(input_per_mtok: f64, output_per_mtok: f64) -> Price {
        Price {
            input_per_mtok,
            output_per_mtok,
        }
    }

    /// The cost of a number of tokens.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// A cost figure and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// USD (0 when unknown).
    pub usd: f64,
    /// Reported, priced, or unknown.
    pub source: CostSource,
}

/// Built-in list prices (USD per million tokens, standard tier, short context),
/// keyed by model id without provider. Prices change: `dispatch.toml` can
/// override any of them, and OpenRouter's reported cost wins over all of them.
const BUILTIN: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-5", 1.25, 10.00),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5-nano", 0.05, 0.40),
    ("o1", 15.00, 60.00),
    ("o3", 2.00, 8.00),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    // Anthropic
    ("claude-opus-4", 15.00, 75.00),
    ("claude-opus-4.1", 15.00, 75.00),
    ("claude-opus-4.5", 5.00, 25.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-sonnet-4.5", 3.00, 15.00),
    ("claude-haiku-4.5", 1.00, 5.00),
    ("claude-3.7-sonnet", 3.00, 15.00),
    ("claude-3.5-sonnet", 3.00, 15.00),
    ("claude-3.5-haiku", 0.80, 4.00),
    ("claude-3-haiku", 0.25, 1.25),
    // Google (via OpenRouter)
    ("gemini-2.5-pro", 1.25, 10.00),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.0-flash", 0.10, 0.40),
];

/// Model prices, built-in and configured.
///
/// Lookup for `provider/model`: the full `provider/model` key (a config
/// override for one provider), then the model id as given
/// (`anthropic/claude-sonnet-4`), then its last segment (`claude-sonnet-4`),
/// then that segment without a date or `-latest` suffix
/// (`claude-sonnet-4-20250514` → `claude-sonnet-4`). Keys compare
/// case-insensitively and with `.` and `-` alike, so OpenRouter's
/// `claude-opus-4.1` and Anthropic's `claude-opus-4-1` are one entry.
/// OpenRouter's `:free` variants cost nothing; other `:variant` suffixes are
/// priced as the base model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    entries: BTreeMap<String, Price>,
}

fn normalize(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('.', "-")
}

/// Strip a trailing `-YYYYMMDD`, `-YYYY-MM-DD` or `-latest`.
fn strip_date(id: &str) -> Option<&str> {
    if let Some(base) = id.strip_suffix("-latest") {
        return Some(base);
    }
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((base, tail)) = id.rsplit_once('-')
        && tail.len() == 8
        && is_digits(tail)
    {
        return Some(base);
    }
    // YYYY-MM-DD: the last three dash-separated parts.
    let parts: Vec<&str> = id.rsplitn(4, '-').collect();
    if let [dd, mm, yyyy, base] = parts[..]
        && dd.len() == 2
        && mm.len() == 2
        && yyyy.len() == 4
        && is_digits(dd)
        && is_digits(mm)
        && is_digits(yyyy)
    {
        return Some(base);
    }
    None
}

impl PriceTable {
    /// No prices at all: every cost is unknown unless reported.
    pub fn empty() -> PriceTable {
        PriceTable::default()
    }

    /// The built-in list prices.
    pub fn builtin() -> PriceTable {
        let mut t = PriceTable::empty();
        for &(id, i, o) in BUILTIN {
            t.set(id, Price::new(i, o));
        }
        t
    }

    /// Add or replace an entry; `key` is `provider/model-id` or a model id.
    pub fn set(&mut self, key: &str, price: Price) {
        self.entries.insert(normalize(key), price);
    }

    /// This table with config entries laid over it.
    pub fn with_overrides<'a>(
        mut self,
        overrides: impl IntoIterator<Item = (&'a str, Price)>,
    ) -> PriceTable {
        for (k, p) in overrides {
            self.set(k, p);
        }
        self
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The price of a model, if known (see the type's docs for the lookup order).
    pub fn lookup(&self, model: &ModelRef) -> Option<Price> {
        let full = normalize(&format!("{}/{}", model.provider, model.model));
        if let Some(p) = self.entries.get(&full) {
            return Some(*p);
        }
        let id = normalize(&model.model);
        let (id, variant) = match id.rsplit_once(':') {
            Some((base, variant)) => (base.to_string(), Some(variant.to_string())),
            None => (id, None),
        };
        if variant.as_deref() == Some("free") {
            return Some(Price::new(0.0, 0.0));
        }
        if let Some(p) = self.entries.get(&id) {
            return Some(*p);
        }
        let last = id.rsplit('/').next().unwrap_or(&id);
        if let Some(p) = self.entries.get(last) {
            return Some(*p);
        }
        strip_date(last).and_then(|base| self.entries.get(base).copied())
    }

    /// The cost of a finished call: the provider's reported cost when present,
    /// else tokens × price, else 0 marked unknown.
    pub fn cost(&self, model: &ModelRef, usage: Usage, reported_usd: Option<f64>) -> Cost {
        if let Some(usd) = reported_usd.filter(|c| c.is_finite() && *c >= 0.0) {
            return Cost {
                usd,
                source: CostSource::Reported,
            };
        }
        self.estimate_cost(model, usage.input_tokens, usage.output_tokens)
    }

    /// What a call would cost at list price (for dry runs and budgets).
    pub fn estimate_cost(&self, model: &ModelRef, input_tokens: u64, output_tokens: u64) -> Cost {
        match self.lookup(model) {
            Some(p) => Cost {
                usd: p.cost(input_tokens, output_tokens),
                source: CostSource::PriceTable,
            },
            None => Cost {
                usd: 0.0,
                source: CostSource::Unknown,
            },
        }
    }
}

/// A crude token estimate: one token per four characters, rounded up. Good
/// enough for dry-run cost estimates; real calls use the provider's counts.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// [`estimate_tokens`] over a whole request (system prompt and messages).
pub fn estimate_request_tokens(req: &ChatRequest) -> u64 {
    let message = |m: &crate::provider::Message| {
        estimate_tokens(&m.content)
            + m.tool_calls
                .iter()
                .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments))
                .sum::<u64>()
            + m.tool_results
                .iter()
                .map(|r| estimate_tokens(&r.content))
                .sum::<u64>()
    };
    let tools: u64 = req
        .tools
        .iter()
        .map(|t| {
            estimate_tokens(&t.name)
                + estimate_tokens(&t.description)
                + estimate_tokens(&t.parameters.to_string())
        })
        .sum();
    estimate_tokens(&req.system) + req.messages.iter().map(message).sum::<u64>() + tools
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Message;

    fn m(provider: &str, model: &str) -> ModelRef {
        ModelRef {
            provider: provider.into(),
            model: model.into(),
        }
    }

    #[test]
    fn lookup_by_id_last_segment_and_date() {
        let t = PriceTable::builtin();
        let sonnet = Some(Price::new(3.0, 15.0));
        assert_eq!(t.lookup(&m("anthropic", "claude-sonnet-4")), sonnet);
        assert_eq!(
            t.lookup(&m("openrouter", "anthropic/claude-sonnet-4")),
            sonnet
        );
        assert_eq!(
            t.lookup(&m("anthropic", "claude-sonnet-4-20250514")),
            sonnet
        );
        assert_eq!(
            t.lookup(&m("anthropic", "claude-3-7-sonnet-latest")),
            sonnet
        );
        assert_eq!(
            t.lookup(&m("openrouter", "anthropic/claude-opus-4.1")),
            Some(Price::new(15.0, 75.0))
        );
        assert_eq!(
            t.lookup(&m("anthropic", "claude-opus-4-1-20250805")),
            Some(Price::new(15.0, 75.0))
        );
        assert_eq!(
            t.lookup(&m("anthropic", "claude-haiku-4-5")),
            Some(Price::new(1.0, 5.0))
        );
        assert_eq!(
            t.lookup(&m("openai", "gpt-4o-2024-08-06")),
            Some(Price::new(2.5, 10.0))
        );
        assert_eq!(
            t.lookup(&m("openai", "gpt-4o-mini")),
            Some(Price::new(0.15, 0.6))
        );
        assert_eq!(
            t.lookup(&m("openai", "GPT-4.1-mini")),
            Some(Price::new(0.4, 1.6))
        );
        assert_eq!(
            t.lookup(&m("openrouter", "openai/gpt-4o:nitro")),
            Some(Price::new(2.5, 10.0))
        );
        assert_eq!(
            t.lookup(&m("openrouter", "meta/llama:free")),
            Some(Price::new(0.0, 0.0))
        );
        assert_eq!(t.lookup(&m("ollama", "llama3.2")), None);
        // A longer id that merely starts with a known one is not that model.
        assert_eq!(t.lookup(&m("openai", "gpt-4o-audio-preview")), None);
        assert_eq!(t.lookup(&m("anthropic", "claude-sonnet-4-5-foo")), None);
    }

    #[test]
    fn overrides_by_provider_model_or_id() {
        let t = PriceTable::builtin().with_overrides([
            ("openrouter/anthropic/claude-sonnet-4", Price::new(1.0, 2.0)),
            ("gpt-4o", Price::new(9.0, 9.0)),
            ("ollama/llama3.2", Price::new(0.0, 0.0)),
        ]);
        assert_eq!(
            t.lookup(&m("openrouter", "anthropic/claude-sonnet-4")),
            Some(Price::new(1.0, 2.0))
        );
        assert_eq!(
            t.lookup(&m("anthropic", "claude-sonnet-4")),
            Some(Price::new(3.0, 15.0))
        );
        assert_eq!(t.lookup(&m("openai", "gpt-4o")), Some(Price::new(9.0, 9.0)));
        assert_eq!(
            t.lookup(&m("ollama", "llama3.2")),
            Some(Price::new(0.0, 0.0))
        );
    }

    #[test]
    fn cost_sources() {
        let t = PriceTable::builtin();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
        };
        let c = t.cost(&m("openai", "gpt-4o"), usage, Some(0.42));
        assert_eq!((c.usd, c.source), (0.42, CostSource::Reported));
        let c = t.cost(&m("openai", "gpt-4o"), usage, None);
        assert_eq!((c.usd, c.source), (2.5 + 5.0, CostSource::PriceTable));
        let c = t.cost(&m("openai", "gpt-4o"), usage, Some(f64::NAN));
        assert_eq!(c.source, CostSource::PriceTable);
        let c = t.cost(&m("custom", "mystery"), usage, None);
        assert_eq!((c.usd, c.source), (0.0, CostSource::Unknown));
        let c = t.estimate_cost(&m("openai", "gpt-4o-mini"), 2_000_000, 0);
        assert!((c.usd - 0.30).abs() < 1e-12);
    }

    #[test]
    fn token_estimates() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1);
        let req = ChatRequest {
            system: "abcdefgh".into(),
            messages: vec![Message::user("abcd")],
            ..ChatRequest::default()
        };
        assert_eq!(estimate_request_tokens(&req), 3);
    }

    #[test]
    fn date_suffixes() {
        assert_eq!(
            strip_date("claude-sonnet-4-20250514"),
            Some("claude-sonnet-4")
        );
        assert_eq!(strip_date("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            strip_date("claude-3-5-haiku-latest"),
            Some("claude-3-5-haiku")
        );
        assert_eq!(strip_date("gpt-4o-mini"), None);
        assert_eq!(strip_date("claude-sonnet-4-5"), None);
    }
}
