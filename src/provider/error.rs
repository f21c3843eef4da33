//! What can go wrong talking to a provider, in words a user can act on.

use std::time::Duration;

use super::human_duration;

/// One failed provider call (or a call that was never made). `Display` is the
/// actionable message; no variant ever holds a key (provider text is scrubbed
/// and clipped before it gets here).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with a non-success status. `message` already says
    /// what to do (e.g. `check OPENROUTER_API_KEY`) and quotes the provider.
    #[error("{status} from {provider}: {message}")]
    Http {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// What it means and what the provider said.
        message: String,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The provider needs a key and its environment variable is not set.
    #[error("{env} is not set: export it before starting dispatch")]
    MissingKey {
        /// Provider name.
        provider: String,
        /// The variable to set.
        env: String,
    },
    /// No connection could be made, or it broke mid-response.
    #[error("cannot reach {provider}: {message}")]
    Connect {
        /// Provider name.
        provider: String,
        /// What failed, with the URL's host and what to check.
        message: String,
    },
    /// The whole call took longer than its timeout.
    #[error("{provider} did not answer within {}: the agent's `timeout` ran out", human_duration(*after))]
    Timeout {
        /// Provider name.
        provider: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The response started but then no byte arrived for `idle`.
    #[error("{provider} stalled: no data for {} in the middle of a response", human_duration(*idle))]
    Stalled {
        /// Provider name.
        provider: String,
        /// The idle timeout that ran out.
        idle: Duration,
    },
    /// A 2xx answer that is not what the API promises (bad JSON, no choices, a
    /// stream that ends early, ...).
    #[error("malformed response from {provider}: {message}")]
    Malformed {
        /// Provider name.
        provider: String,
        /// Short description of what was wrong.
        message: String,
    },
    /// The provider sent an error object inside a 2xx answer or stream (e.g.
    /// Anthropic's `overloaded_error` event, OpenRouter's upstream errors).
    #[error("{provider} reported an error mid-response: {message}")]
    Upstream {
        /// Provider name.
        provider: String,
        /// The provider's error, scrubbed and clipped.
        message: String,
    },
    /// The model names a provider that is neither built in nor configured.
    #[error(
        "unknown provider `{provider}`: use openai, openrouter, anthropic or ollama, or declare [providers.{provider}] in dispatch.toml"
    )]
    UnknownProvider {
        /// The name as written.
        provider: String,
    },
    /// The provider's circuit breaker is open, so the call was not made.
    #[error("{provider} skipped: {}", circuit_reason(*retry_in))]
    CircuitOpen {
        /// Provider name.
        provider: String,
        /// When the breaker lets a probe through (zero: a probe is in flight).
        retry_in: Duration,
    },
    /// A provider's settings are unusable (bad base URL, ...), found at start-up.
    #[error("provider `{provider}` is misconfigured: {message}")]
    Config {
        /// Provider name.
        provider: String,
        /// What to fix.
        message: String,
    },
    /// `call_chain` was given no model at all.
    #[error("no model to call: the agent's model chain is empty")]
    NoModels,
}

fn circuit_reason(retry_in: Duration) -> String {
    if retry_in.is_zero() {
        "circuit breaker is half-open after repeated failures and a probe request is testing it"
            .to_string()
    } else {
        // Whole seconds, rounded up: "next try in 30s", not "29.9s".
        let secs = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
        format!(
            "circuit breaker is open after repeated failures; next try in {}",
            human_duration(Duration::from_secs(secs))
        )
    }
}

impl ProviderError {
    /// The provider the error is about (empty for [`ProviderError::NoModels`]).
    pub fn provider(&self) -> &str {
        match self {
            ProviderError::Http { provider, .. }
            | ProviderError::MissingKey { provider, .. }
            | ProviderError::Connect { provider, .. }
            | ProviderError::Timeout { provider, .. }
            | ProviderError::Stalled { provider, .. }
            | ProviderError::Malformed { provider, .. }
            | ProviderError::Upstream { provider, .. }
            | ProviderError::UnknownProvider { provider }
            | ProviderError::CircuitOpen { provider, .. }
            | ProviderError::Config { provider, .. } => provider,
            ProviderError::NoModels => "",
        }
    }

    /// True when trying the same model again may succeed: 408, 409, 429, 5xx,
    /// connection errors, timeouts, stalls, malformed answers and in-stream
    /// provider errors. These are also what a circuit breaker counts.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Http { status, .. } => is_retryable_status(*status),
            ProviderError::Connect { .. }
            | ProviderError::Timeout { .. }
            | ProviderError::Stalled { .. }
            | ProviderError::Malformed { .. }
            | ProviderError::Upstream { .. } => true,
            ProviderError::MissingKey { .. }
            | ProviderError::UnknownProvider { .. }
            | ProviderError::CircuitOpen { .. }
            | ProviderError::Config { .. }
            | ProviderError::NoModels => false,
        }
    }

    /// True when the request itself is bad (400, 422), so no other model in
    /// the chain should be tried either.
    pub fn ends_chain(&self) -> bool {
        matches!(
            self,
            ProviderError::Http {
                status: 400 | 422,
                ..
            } | ProviderError::NoModels
        )
    }

    /// The HTTP status, when the provider answered with one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ProviderError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The provider's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `outcome` label of `dispatch_provider_requests_total`: a small
    /// fixed vocabulary (`rate_limited`, `server_error`, `client_error`,
    /// `timeout`, `stalled`, `connect_error`, `malformed`, `upstream_error`,
    /// `circuit_open`, `not_configured`).
    pub fn outcome(&self) -> &'static str {
        match self {
            ProviderError::Http { status: 429, .. } => "rate_limited",
            ProviderError::Http { status, .. } if *status >= 500 => "server_error",
            ProviderError::Http { .. } => "client_error",
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Stalled { .. } => "stalled",
            ProviderError::Connect { .. } => "connect_error",
            ProviderError::Malformed { .. } => "malformed",
            ProviderError::Upstream { .. } => "upstream_error",
            ProviderError::CircuitOpen { .. } => "circuit_open",
            ProviderError::MissingKey { .. }
            | ProviderError::UnknownProvider { .. }
            | ProviderError::Config { .. }
            | ProviderError::NoModels => "not_configured",
        }
    }

    /// True when no request was sent (missing key, unknown provider, open breaker).
    pub fn is_skip(&self) -> bool {
        matches!(
            self,
            ProviderError::MissingKey { .. }
                | ProviderError::UnknownProvider { .. }
                | ProviderError::CircuitOpen { .. }
                | ProviderError::Config { .. }
                | ProviderError::NoModels
        )
    }
}

/// Statuses worth retrying: the request may succeed later as it is.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..=599).contains(&status)
}

/// What the caller can do about a status, as the start of an [`ProviderError::Http`] message.
pub(crate) fn status_hint(status: u16, key_env: &str, model: &str, base_url_env: &str) -> String {
    match status {
        400 => "the request was rejected as invalid".to_string(),
        401 => format!("check {key_env}"),
        402 => "payment required: check the account's credits or billing".to_string(),
        403 => format!("access denied: check {key_env} and that it may use model `{model}`"),
        404 => format!(
            "model `{model}` not found — check the agent's `model` (and {base_url_env} if set)"
        ),
        408 => "the provider timed out waiting for the request".to_string(),
        409 => "conflict at the provider".to_string(),
        413 => "the request is too large for this model".to_string(),
        422 => "the request was rejected as unprocessable".to_string(),
        429 => "rate limited".to_string(),
        529 => "the provider is overloaded".to_string(),
        500..=599 => "server error at the provider".to_string(),
        _ => "unexpected status".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> ProviderError {
        ProviderError::Http {
            provider: "openai".into(),
            status,
            message: "x".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classification() {
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(http(s).is_retryable(), "{s}");
            assert!(!http(s).ends_chain(), "{s}");
        }
        for s in [400, 401, 402, 403, 404, 413, 422] {
            assert!(!http(s).is_retryable(), "{s}");
        }
        assert!(http(400).ends_chain());
        assert!(http(422).ends_chain());
        for s in [401, 403, 404] {
            assert!(!http(s).ends_chain(), "{s}");
        }
        assert_eq!(http(418).http_status(), Some(418));
        assert_eq!(http(429).outcome(), "rate_limited");
        assert_eq!(http(503).outcome(), "server_error");
        assert_eq!(http(401).outcome(), "client_error");
        let missing = ProviderError::MissingKey {
            provider: "openrouter".into(),
            env: "OPENROUTER_API_KEY".into(),
        };
        assert!(!missing.is_retryable() && !missing.ends_chain() && missing.is_skip());
        assert_eq!(missing.outcome(), "not_configured");
        assert_eq!(
            missing.to_string(),
            "OPENROUTER_API_KEY is not set: export it before starting dispatch"
        );
    }

    #[test]
    fn messages_are_actionable() {
        assert_eq!(
            status_hint(401, "OPENROUTER_API_KEY", "m", "X"),
            "check OPENROUTER_API_KEY"
        );
        assert!(
            status_hint(404, "K", "gpt-x", "OPENAI_BASE_URL")
                .starts_with("model `gpt-x` not found — check the agent's `model`")
        );
        let open = ProviderError::CircuitOpen {
            provider: "openai".into(),
            retry_in: Duration::from_secs(12),
        };
        assert_eq!(
            open.to_string(),
            "openai skipped: circuit breaker is open after repeated failures; next try in 12s"
        );
    }
}
