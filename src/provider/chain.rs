//! [`Providers`]: every provider, the shared HTTP client, a breaker per
//! provider, prices, and the retry/failover loop over a model chain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use super::breaker::{Breaker, BreakerState, Clock, Outcome, SystemClock};
use super::http::{Endpoint, build_client};
use super::retry::retry_delay;
use super::secret::{ApiKey, scrub_keys};
use super::{
    AnthropicProvider, BUILTIN_PROVIDERS, ChatRequest, ChatResponse, OpenAiFlavor, OpenAiProvider,
    PriceTable, ProgressFn, Provider, ProviderError, ProviderKind, ProviderSettings,
    ResilienceConfig, Usage, env_var_name,
};
use crate::agent::ModelRef;
use crate::metrics::Metrics;
use crate::task::{CostSource, Millis, now_millis};

/// How [`Providers`] waits between retries. Injectable so tests can record the
/// delays (e.g. that a `Retry-After` was honoured) instead of sleeping.
pub type SleepFn = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One provider call (or skipped call), reported as it happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptLog {
    /// Provider name.
    pub provider: String,
    /// Model id as sent (without the provider prefix).
    pub model: String,
    /// When the attempt started.
    pub started_at: Millis,
    /// Wall time of the attempt.
    pub latency_ms: u64,
    /// True if it returned an answer.
    pub ok: bool,
    /// True if no request was sent (open breaker, missing key, unknown provider).
    pub skipped: bool,
    /// The status when the provider answered with an error.
    pub http_status: Option<u16>,
    /// The error, when not ok (never contains a key).
    pub error: Option<String>,
    /// Tokens billed (zero for failures: providers do not report them).
    pub usage: Usage,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Where the cost came from.
    pub cost_source: CostSource,
}

/// A chain call that got an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSuccess {
    /// The answer.
    pub response: ChatResponse,
    /// The model that gave it (from the chain, as configured).
    pub model: ModelRef,
    /// Cost of the successful attempt in USD.
    pub cost_usd: f64,
    /// Where that cost came from.
    pub cost_source: CostSource,
}

/// Why a chain call failed, for the task's fail reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainErrorKind {
    /// The request was refused for good: a 400/422 ended the chain, or every
    /// model failed in a way retrying will not fix (401/403/404, missing key,
    /// unknown provider).
    Rejected,
    /// Transient failures outlasted the retries on every model (or breakers were open).
    Exhausted,
    /// Every model that was called ran out of time.
    Timeout,
}

/// One model's last failure in a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFailure {
    /// The model.
    pub model: ModelRef,
    /// Its last error.
    pub error: ProviderError,
    /// HTTP attempts made on it.
    pub attempts: u32,
}

/// A chain call that got no answer. `Display` is `message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ChainError {
    /// Each model's last failure, in chain order, in one line.
    pub message: String,
    /// The last error of all.
    pub last: ProviderError,
    /// What kind of failure it was.
    pub kind: ChainErrorKind,
    /// Each model's last failure, structured.
    pub failures: Vec<ModelFailure>,
}

impl ChainError {
    fn new(failures: Vec<ModelFailure>, stopped_early: bool) -> ChainError {
        let Some(last) = failures.last().map(|f| f.error.clone()) else {
            return ChainError {
                message: ProviderError::NoModels.to_string(),
                last: ProviderError::NoModels,
                kind: ChainErrorKind::Rejected,
                failures,
            };
        };
        let describe = |f: &ModelFailure| {
            let tries = if f.attempts > 1 {
                format!(" (after {} attempts)", f.attempts)
            } else {
                String::new()
            };
            format!("{}: {}{tries}", f.model, f.error)
        };
        let list: Vec<String> = failures.iter().map(describe).collect();
        let message = if stopped_early {
            format!(
                "{} — the request itself was rejected, so no other model was tried",
                list.join("; ")
            )
        } else if list.len() == 1 {
            list.join("")
        } else {
            format!("all {} models failed — {}", list.len(), list.join("; "))
        };
        let called: Vec<&ProviderError> = failures
            .iter()
            .map(|f| &f.error)
            .filter(|e| !e.is_skip())
            .collect();
        let permanent = |e: &ProviderError| {
            !e.is_retryable() && !matches!(e, ProviderError::CircuitOpen { .. })
        };
        let kind = if stopped_early || failures.iter().all(|f| permanent(&f.error)) {
            ChainErrorKind::Rejected
        } else if !called.is_empty()
            && called
                .iter()
                .all(|e| matches!(e, ProviderError::Timeout { .. }))
        {
            ChainErrorKind::Timeout
        } else {
            ChainErrorKind::Exhausted
        };
        ChainError {
            message,
            last,
            kind,
            failures,
        }
    }
}

/// Every provider, their breakers, the prices, and one pooled HTTP client.
pub struct Providers {
    providers: BTreeMap<String, Arc<dyn Provider>>,
    breakers: BTreeMap<String, Breaker>,
    prices: PriceTable,
    cfg: ResilienceConfig,
    clock: Arc<dyn Clock>,
    sleep: SleepFn,
    metrics: Arc<Metrics>,
    /// Providers that need a key the environment does not hold, with the
    /// variable that should hold it.
    missing_keys: BTreeMap<String, String>,
    /// Every configured key: scrubbed from every answer and error, whichever
    /// provider gave it.
    keys: Vec<ApiKey>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Providers")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The default base URL of a built-in provider.
fn default_base_url(name: &str) -> Option<&'static str> {
    match name {
        "openai" => Some("https://api.openai.com/v1"),
        "openrouter" => Some("https://openrouter.ai/api/v1"),
        "anthropic" => Some("https://api.anthropic.com"),
        "ollama" => Some("http://127.0.0.1:11434/v1"),
        _ => None,
    }
}

impl Providers {
    /// The built-in providers plus `custom` ones (`[providers.NAME]`; a
    /// built-in name overrides that provider's base URL and key variable).
    /// `env` looks up environment variables (production passes
    /// `|k| std::env::var(k).ok()`): keys from `*_API_KEY` (or the configured
    /// variable), base URLs from `*_BASE_URL`, which wins over the config.
    ///
    /// A missing key is not an error here: calls to that provider fail with
    /// [`ProviderError::MissingKey`], so agents on other providers still run.
    /// A base URL that is not an http(s) URL is an error.
    pub fn new(
        custom: &BTreeMap<String, ProviderSettings>,
        prices: PriceTable,
        cfg: ResilienceConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Providers, ProviderError> {
        let client = build_client(cfg.connect_timeout)?;
        let names: BTreeSet<&str> = BUILTIN_PROVIDERS
            .iter()
            .copied()
            .chain(custom.keys().map(String::as_str))
            .collect();
        let default_settings = ProviderSettings::default();
        let env_value = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut providers = Providers {
            providers: BTreeMap::new(),
            breakers: BTreeMap::new(),
            prices,
            cfg,
            clock: Arc::new(SystemClock),
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
            metrics: Arc::new(Metrics::new()),
            missing_keys: BTreeMap::new(),
            keys: Vec::new(),
        };
        for name in names {
            let settings = custom.get(name).unwrap_or(&default_settings);
            let builtin = BUILTIN_PROVIDERS.contains(&name);
            let kind = match name {
                "anthropic" => ProviderKind::Anthropic,
                _ if builtin => ProviderKind::OpenAiCompatible,
                _ => settings.kind,
            };
            let configured_key_env = settings
                .api_key_env
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty());
            let key_env = configured_key_env
                .map(str::to_string)
                .unwrap_or_else(|| env_var_name(name, "API_KEY"));
            // Ollama runs locally without a key; a custom endpoint needs one
            // only if its config names the variable (local servers often
            // take none, and a 401 still says which variable to set).
            let key_required = match name {
                "ollama" => false,
                _ if builtin => true,
                _ => configured_key_env.is_some(),
            };
            let base_url_env = env_var_name(name, "BASE_URL");
            let (raw_url, source) = if let Some(u) = env_value(&base_url_env) {
                (u, base_url_env.clone())
            } else if let Some(u) = settings
                .base_url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
            {
                (u.to_string(), format!("base_url in [providers.{name}]"))
            } else if let Some(u) = default_base_url(name) {
                (u.to_string(), "the built-in default".to_string())
            } else {
                return Err(ProviderError::Config {
                    provider: name.to_string(),
                    message: format!(
                        "no base URL: set base_url in [providers.{name}] or export {base_url_env}"
                    ),
                });
            };
            let base_url = validate_base_url(name, &raw_url, &source, kind)?;
            let key = env_value(&key_env).map(ApiKey::new);
            providers.keys.extend(key.clone());
            if key_required && key.is_none() {
                providers
                    .missing_keys
                    .insert(name.to_string(), key_env.clone());
            }
            let ep = Endpoint {
                name: name.to_string(),
                base_url,
                key,
                key_env,
                key_required,
                base_url_env,
                client: client.clone(),
                idle_timeout: providers.cfg.idle_timeout,
            };
            let provider: Arc<dyn Provider> = match kind {
                ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(ep)),
                ProviderKind::OpenAiCompatible => {
                    let flavor = match name {
                        "openai" => OpenAiFlavor::OpenAi,
                        "openrouter" => OpenAiFlavor::OpenRouter,
                        _ => OpenAiFlavor::Generic,
                    };
                    Arc::new(OpenAiProvider::new(ep, flavor))
                }
            };
            providers = providers.with_provider(provider);
        }
        Ok(providers)
    }

    /// Add or replace a provider (under its [`Provider::name`]), with a fresh
    /// breaker. For tests and for providers that are not HTTP endpoints.
    pub fn with_provider(mut self, provider: Arc<dyn Provider>) -> Providers {
        let name = provider.name().to_string();
        self.breakers.insert(
            name.clone(),
            Breaker::new(self.cfg.breaker_threshold, self.cfg.breaker_cooldown),
        );
        self.providers.insert(name, provider);
        self
    }

    /// Use another clock for the breakers (tests move time with [`super::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Providers {
        self.clock = clock;
        self
    }

    /// Use another way to wait between retries (tests record the delays).
    pub fn with_sleep(mut self, sleep: SleepFn) -> Providers {
        self.sleep = sleep;
        self
    }

    /// Record into `metrics` instead of the fresh registry [`Providers::new`]
    /// made (an engine built on these providers shares them).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Providers {
        self.metrics = metrics;
        self
    }

    /// `text` with every configured key replaced, when it held one (for tool
    /// results, which may echo a file or a server that saw a key).
    pub fn scrub(&self, text: &str) -> Option<String> {
        scrub_keys(text, &self.keys)
    }

    /// Where every call is counted and timed (`dispatch_provider_*`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    /// Every provider name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// The environment variable that should hold `provider`'s key, when the
    /// provider needs one and none is set (calls to it would fail at once).
    pub fn missing_key(&self, provider: &str) -> Option<&str> {
        self.missing_keys.get(provider).map(String::as_str)
    }

    /// The output limit a request to `model` carries: the agent's
    /// `max_tokens`, else the provider's default, else none.
    pub fn max_tokens_sent(&self, model: &ModelRef, asked: Option<u32>) -> Option<u32> {
        asked.or_else(|| self.get(&model.provider)?.default_max_tokens())
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The resilience settings.
    pub fn config(&self) -> &ResilienceConfig {
        &self.cfg
    }

    /// Each provider's breaker state, by name.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let now = self.clock.now();
        self.breakers
            .iter()
            .map(|(n, b)| (n.clone(), b.state(now)))
            .collect()
    }

    /// Ask the models of `chain` in order until one answers.
    ///
    /// Each model gets up to `max_attempts_per_model` HTTP attempts, with
    /// jittered exponential backoff (or the provider's `Retry-After`) between
    /// them, for retryable failures only. A model whose failure is local to it
    /// (401/403/404, missing key, unknown provider, retries exhausted, breaker
    /// open) passes the turn to the next model; a 400/422 ends the chain,
    /// because every model would get the same bad request. `timeout` bounds
    /// each HTTP attempt. `on_attempt` hears of every attempt and skip as it
    /// happens.
    ///
    /// Cancel-safe: dropping the future aborts the request in flight (its
    /// connection is closed) and frees any breaker probe it held; the
    /// attempt in flight is then not reported.
    pub async fn call_chain(
        &self,
        chain: &[ModelRef],
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<ProgressFn>,
        on_attempt: &(dyn Fn(AttemptLog) + Send + Sync),
    ) -> Result<ChainSuccess, ChainError> {
        let mut failures = Vec::new();
        for model in chain {
            match self
                .try_model(model, req, timeout, progress.as_ref(), on_attempt)
                .await
            {
                Ok(success) => return Ok(success),
                Err(failure) => {
                    let stop = failure.error.ends_chain();
                    failures.push(failure);
                    if stop {
                        return Err(ChainError::new(failures, true));
                    }
                }
            }
        }
        Err(ChainError::new(failures, false))
    }

    /// All attempts on one model.
    async fn try_model(
        &self,
        model: &ModelRef,
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<&ProgressFn>,
        on_attempt: &(dyn Fn(AttemptLog) + Send + Sync),
    ) -> Result<ChainSuccess, ModelFailure> {
        let fail = |error: ProviderError, attempts: u32| ModelFailure {
            model: model.clone(),
            error,
            attempts,
        };
        let (Some(provider), Some(breaker)) = (
            self.providers.get(&model.provider),
            self.breakers.get(&model.provider),
        ) else {
            let e = ProviderError::UnknownProvider {
                provider: model.provider.clone(),
            };
            self.metrics
                .provider_request(&model.provider, &model.model, e.outcome(), None);
            on_attempt(self.failed_log(model, now_millis(), 0, &e));
            return Err(fail(e, 0));
        };
        let max_attempts = self.cfg.max_attempts_per_model.max(1);
        let mut sent = 0u32;
        loop {
            let started_at = now_millis();
            let permit = match breaker.try_acquire(self.clock.now()) {
                Ok(p) => p,
                Err(retry_in) => {
                    let e = ProviderError::CircuitOpen {
                        provider: model.provider.clone(),
                        retry_in,
                    };
                    tracing::info!(model = %model, "{e}");
                    self.metrics
                        .provider_request(&model.provider, &model.model, e.outcome(), None);
                    on_attempt(self.failed_log(model, started_at, 0, &e));
                    return Err(fail(e, sent));
                }
            };
            let mut in_flight = InFlight {
                metrics: &self.metrics,
                model,
                t0: Instant::now(),
                done: false,
            };
            let result = provider.chat(&model.model, req, timeout, progress).await;
            in_flight.done = true;
            let elapsed = in_flight.t0.elapsed();
            let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let (outcome, was_sent) = match &result {
                Ok(_) => ("ok", true),
                Err(e) => (e.outcome(), !e.is_skip()),
            };
            self.metrics.provider_request(
                &model.provider,
                &model.model,
                outcome,
                was_sent.then_some(elapsed),
            );
            match result {
                Ok(mut response) => {
                    permit.record(Outcome::Success, self.clock.now());
                    // A model may echo a key it saw (in its input, or a
                    // provider's own): no configured key leaves in an answer.
                    if let Some(clean) = scrub_keys(&response.text, &self.keys) {
                        response.text = clean;
                    }
                    // Nor in a tool call's arguments (a `kb_write` of a key).
                    for call in &mut response.tool_calls {
                        if let Some(clean) = scrub_keys(&call.arguments, &self.keys) {
                            call.arguments = clean;
                        }
                    }
                    let cost = self
                        .prices
                        .cost(model, response.usage, response.reported_cost_usd);
                    tracing::debug!(model = %model, latency_ms, "provider call succeeded");
                    on_attempt(AttemptLog {
                        provider: model.provider.clone(),
                        model: model.model.clone(),
                        started_at,
                        latency_ms,
                        ok: true,
                        skipped: false,
                        http_status: None,
                        error: None,
                        usage: response.usage,
                        cost_usd: cost.usd,
                        cost_source: cost.source,
                    });
                    return Ok(ChainSuccess {
                        response,
                        model: model.clone(),
                        cost_usd: cost.usd,
                        cost_source: cost.source,
                    });
                }
                Err(e) => {
                    let outcome = if e.is_retryable() {
                        Outcome::Failure
                    } else {
                        Outcome::Neutral
                    };
                    permit.record(outcome, self.clock.now());
                    if !e.is_skip() {
                        sent += 1;
                    }
                    on_attempt(self.failed_log(model, started_at, latency_ms, &e));
                    if !e.is_retryable() || sent >= max_attempts {
                        tracing::warn!(model = %model, latency_ms, attempt = sent, "provider call failed: {e}");
                        return Err(fail(e, sent));
                    }
                    // ThreadRng is not Send: draw before awaiting.
                    let unit: f64 = rand::rng().random();
                    let delay = retry_delay(
                        sent,
                        e.retry_after(),
                        self.cfg.base_delay,
                        self.cfg.max_delay,
                        unit,
                    );
                    // The wait actually taken ([resilience] max_delay_ms caps
                    // what a provider asks for).
                    tracing::warn!(
                        model = %model,
                        latency_ms,
                        attempt = sent,
                        "provider call failed: {e}; retrying in {}",
                        super::human_duration(delay)
                    );
                    (self.sleep)(delay).await;
                }
            }
        }
    }

    fn failed_log(
        &self,
        model: &ModelRef,
        started_at: Millis,
        latency_ms: u64,
        e: &ProviderError,
    ) -> AttemptLog {
        AttemptLog {
            provider: model.provider.clone(),
            model: model.model.clone(),
            started_at,
            latency_ms,
            ok: false,
            skipped: e.is_skip(),
            http_status: e.http_status(),
            error: Some({
                let text = e.to_string();
                scrub_keys(&text, &self.keys).unwrap_or(text)
            }),
            usage: Usage::default(),
            cost_usd: 0.0,
            cost_source: CostSource::Unknown,
        }
    }
}

/// A provider call in flight: if its future is dropped before it ends (the
/// task was cancelled), the call is counted with the outcome `cancelled`.
struct InFlight<'a> {
    metrics: &'a Metrics,
    model: &'a ModelRef,
    t0: Instant,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.provider_request(
                &self.model.provider,
                &self.model.model,
                "cancelled",
                Some(self.t0.elapsed()),
            );
        }
    }
}

/// Check a base URL and normalise it (no trailing `/`; for Anthropic no
/// trailing `/v1`, which we add ourselves and users often include).
fn validate_base_url(
    name: &str,
    raw: &str,
    source: &str,
    kind: ProviderKind,
) -> Result<String, ProviderError> {
    let bad = |why: &str| ProviderError::Config {
        provider: name.to_string(),
        message: format!("the base URL from {source} {why}: use e.g. `https://host/v1`"),
    };
    let url = reqwest::Url::parse(raw).map_err(|e| bad(&format!("is not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not an http(s) URL"));
    }
    let mut s = raw.trim_end_matches('/').to_string();
    if kind == ProviderKind::Anthropic
        && let Some(stripped) = s.strip_suffix("/v1")
    {
        s = stripped.to_string();
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn mr(p: &str, m: &str) -> ModelRef {
        ModelRef {
            provider: p.into(),
            model: m.into(),
        }
    }

    #[test]
    fn builtins_and_custom_providers() {
        let mut custom = BTreeMap::new();
        custom.insert(
            "my-llm".to_string(),
            ProviderSettings {
                base_url: Some("http://127.0.0.1:9/v1/".into()),
                ..ProviderSettings::default()
            },
        );
        let p = Providers::new(
            &custom,
            PriceTable::builtin(),
            ResilienceConfig::default(),
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(
            p.names().collect::<Vec<_>>(),
            ["anthropic", "my-llm", "ollama", "openai", "openrouter"]
        );
        assert_eq!(p.breaker_states().len(), 5);
        let dbg = format!("{p:?}");
        assert!(dbg.contains("my-llm"), "{dbg}");
    }

    #[test]
    fn bad_base_urls_are_reported_with_their_source() {
        let e = Providers::new(
            &BTreeMap::new(),
            PriceTable::empty(),
            ResilienceConfig::default(),
            &env_of(&[("OPENAI_BASE_URL", "ftp://x")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("OPENAI_BASE_URL"), "{e}");
        let mut custom = BTreeMap::new();
        custom.insert("x".to_string(), ProviderSettings::default());
        let e = Providers::new(
            &custom,
            PriceTable::empty(),
            ResilienceConfig::default(),
            &env_of(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("X_BASE_URL"), "{e}");
    }

    #[test]
    fn anthropic_base_url_drops_v1() {
        assert_eq!(
            validate_base_url("anthropic", "https://h/v1/", "x", ProviderKind::Anthropic).unwrap(),
            "https://h"
        );
        assert_eq!(
            validate_base_url(
                "openai",
                "https://h/v1/",
                "x",
                ProviderKind::OpenAiCompatible
            )
            .unwrap(),
            "https://h/v1"
        );
    }

    fn failure(p: &str, e: ProviderError, attempts: u32) -> ModelFailure {
        ModelFailure {
            model: mr(p, "m"),
            error: e,
            attempts,
        }
    }

    #[test]
    fn chain_error_kinds_and_messages() {
        let http = |s: u16| ProviderError::Http {
            provider: "openai".into(),
            status: s,
            message: "x".into(),
            retry_after: None,
        };
        let timeout = ProviderError::Timeout {
            provider: "openai".into(),
            after: Duration::from_secs(1),
        };
        let e = ChainError::new(
            vec![failure("a", http(503), 3), failure("b", http(401), 1)],
            false,
        );
        assert_eq!(e.kind, ChainErrorKind::Exhausted);
        assert_eq!(
            e.message,
            "all 2 models failed — a/m: 503 from openai: x (after 3 attempts); b/m: 401 from openai: x"
        );
        let e = ChainError::new(
            vec![failure("a", http(404), 1), failure("b", http(401), 1)],
            false,
        );
        assert_eq!(e.kind, ChainErrorKind::Rejected);
        let e = ChainError::new(vec![failure("a", http(400), 1)], true);
        assert_eq!(e.kind, ChainErrorKind::Rejected);
        assert!(
            e.message.contains("no other model was tried"),
            "{}",
            e.message
        );
        let e = ChainError::new(vec![failure("a", timeout.clone(), 3)], false);
        assert_eq!(e.kind, ChainErrorKind::Timeout);
        let open = ProviderError::CircuitOpen {
            provider: "b".into(),
            retry_in: Duration::from_secs(3),
        };
        let e = ChainError::new(
            vec![failure("a", timeout, 3), failure("b", open.clone(), 0)],
            false,
        );
        assert_eq!(e.kind, ChainErrorKind::Timeout);
        let e = ChainError::new(vec![failure("b", open, 0)], false);
        assert_eq!(e.kind, ChainErrorKind::Exhausted);
        let e = ChainError::new(vec![], false);
        assert_eq!(
            (e.kind, e.last),
            (ChainErrorKind::Rejected, ProviderError::NoModels)
        );
    }
}
