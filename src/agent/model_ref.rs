//! `provider/model-id` references.

use std::fmt;

use serde::Serialize;

/// Providers `dispatch` knows without any configuration.
pub const BUILTIN_PROVIDERS: &[&str] = &["openai", "openrouter", "anthropic", "ollama"];

/// A model as an agent names it: `openrouter/anthropic/claude-sonnet-4` is provider
/// `openrouter` and model `anthropic/claude-sonnet-4` (the rest is passed on verbatim).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// The first segment: which provider client to use.
    pub provider: String,
    /// Everything after the first `/`, passed to the provider unchanged.
    pub model: String,
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl Serialize for ModelRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a model string in an agent file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A proper `provider/model-id`.
    Ref(ModelRef),
    /// A display name from another tool, such as VS Code's `GPT-4o (copilot)`,
    /// which names no provider `dispatch` can call.
    Foreign(String),
}

/// Parse a model string. `Err` carries a message that says what to write
/// instead. Aliases (`sonnet`, ...) are the agent reader's business: they
/// come from the config.
pub fn parse_model(raw: &str) -> Result<ModelSpec, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("model is empty: write `provider/model-id`, e.g. `openai/gpt-4o-mini`".into());
    }
    // VS Code and Copilot use display names such as "Claude Sonnet 4 (copilot)".
    if s.contains(char::is_whitespace) || s.contains('(') {
        return Ok(ModelSpec::Foreign(s.to_string()));
    }
    let Some((provider, model)) = s.split_once('/') else {
        return Err(format!(
            "model `{s}` has no provider: write `provider/model-id`, e.g. `openai/{s}` or `openrouter/{s}`"
        ));
    };
    if provider.is_empty()
        || !provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "model `{s}`: provider `{provider}` must be lowercase letters, digits, `-` or `_`"
        ));
    }
    if model.is_empty() || model.starts_with('/') || model.ends_with('/') || model.contains("//") {
        return Err(format!(
            "model `{s}` has an empty model id: write `{provider}/<model-id>`, e.g. `{provider}/gpt-4o-mini`"
        ));
    }
    Ok(ModelSpec::Ref(ModelRef {
        provider: provider.to_string(),
        model: model.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str, m: &str) -> ModelSpec {
        ModelSpec::Ref(ModelRef {
            provider: p.into(),
            model: m.into(),
        })
    }

    #[test]
    fn splits_on_first_slash_only() {
        assert_eq!(
            parse_model("openrouter/anthropic/claude-sonnet-4").unwrap(),
            r("openrouter", "anthropic/claude-sonnet-4")
        );
        assert_eq!(
            parse_model(" ollama/llama3.1:8b ").unwrap(),
            r("ollama", "llama3.1:8b")
        );
    }

    #[test]
    fn rejects_bad_syntax_with_a_fix() {
        assert!(parse_model("gpt-4o").unwrap_err().contains("openai/gpt-4o"));
        assert!(
            parse_model("openai/")
                .unwrap_err()
                .contains("empty model id")
        );
        assert!(parse_model("/gpt").unwrap_err().contains("provider"));
        assert!(parse_model("Open AI/gpt").is_ok()); // display name, not an error
        assert!(parse_model("OpenAI/gpt").unwrap_err().contains("lowercase"));
        assert!(parse_model("").is_err());
    }

    #[test]
    fn foreign_forms() {
        assert_eq!(
            parse_model("Claude Sonnet 4 (copilot)").unwrap(),
            ModelSpec::Foreign("Claude Sonnet 4 (copilot)".into())
        );
    }

    #[test]
    fn displays_and_serializes_as_one_string() {
        let m = ModelRef {
            provider: "openai".into(),
            model: "gpt-4o".into(),
        };
        assert_eq!(m.to_string(), "openai/gpt-4o");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"openai/gpt-4o\"");
    }
}
