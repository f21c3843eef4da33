//! The provider layer against the fake provider: wire formats, retries,
//! failover, breakers, cost, cancellation and secrecy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "common/fake_provider.rs"]
mod fake_provider;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch::agent::ModelRef;
use dispatch::provider::{
    AttemptLog, BreakerState, ChainErrorKind, ChatRequest, ManualClock, PriceTable, ProgressFn,
    ProviderError, ProviderKind, ProviderSettings, Providers, ResilienceConfig, SleepFn,
};
use dispatch::task::CostSource;
use fake_provider::{Behavior, FakeProvider, http_date_in};
use serde_json::json;
use tokio::sync::Notify;

const OPENAI_KEY: &str = "sk-test-openai-0000000001";
const OPENROUTER_KEY: &str = "sk-or-v1-test-0000000002";
const ANTHROPIC_KEY: &str = "sk-ant-test-0000000003";
const CUSTOM_KEY: &str = "custom-secret-value-xyz";
const LONG: Duration = Duration::from_secs(30);

fn model(s: &str) -> ModelRef {
    let (p, m) = s.split_once('/').expect("provider/model");
    ModelRef {
        provider: p.into(),
        model: m.into(),
    }
}

fn cfg() -> ResilienceConfig {
    ResilienceConfig {
        max_attempts_per_model: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_secs(30),
        breaker_threshold: 100,
        breaker_cooldown: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
    }
}

/// A fake, providers pointed at it, and recorders for retry delays and attempts.
struct Harness {
    fake: FakeProvider,
    providers: Providers,
    delays: Arc<Mutex<Vec<Duration>>>,
    clock: Arc<ManualClock>,
    attempts: Arc<Mutex<Vec<AttemptLog>>>,
}

impl Harness {
    async fn new(cfg: ResilienceConfig) -> Harness {
        Harness::with_env(cfg, &[]).await
    }

    /// `unset` names variables to leave out of the environment.
    async fn with_env(cfg: ResilienceConfig, unset: &[&str]) -> Harness {
        let fake = FakeProvider::start().await;
        let mut env: HashMap<String, String> = HashMap::new();
        for (k, v) in [
            ("OPENAI_API_KEY", OPENAI_KEY.to_string()),
            ("OPENROUTER_API_KEY", OPENROUTER_KEY.to_string()),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY.to_string()),
            ("LOCAL_KEY", CUSTOM_KEY.to_string()),
            ("OPENAI_BASE_URL", fake.base_url_openai()),
            ("OPENROUTER_BASE_URL", fake.base_url_openai()),
            ("ANTHROPIC_BASE_URL", fake.base_url_anthropic()),
            ("OLLAMA_BASE_URL", fake.base_url_openai()),
        ] {
            if !unset.contains(&k) {
                env.insert(k.to_string(), v);
            }
        }
        let mut custom = BTreeMap::new();
        custom.insert(
            "local".to_string(),
            ProviderSettings {
                base_url: Some(fake.base_url_openai()),
                api_key_env: Some("LOCAL_KEY".into()),
                kind: ProviderKind::OpenAiCompatible,
            },
        );
        custom.insert(
            "claude-proxy".to_string(),
            ProviderSettings {
                base_url: Some(format!("{}/v1", fake.base_url_anthropic())),
                api_key_env: None,
                kind: ProviderKind::Anthropic,
            },
        );
        let delays = Arc::new(Mutex::new(Vec::new()));
        let d = delays.clone();
        let sleep: SleepFn = Arc::new(move |dur| {
            d.lock().unwrap().push(dur);
            Box::pin(async {})
        });
        let clock = Arc::new(ManualClock::new());
        let providers = Providers::new(&custom, PriceTable::builtin(), cfg, &|k| {
            env.get(k).cloned()
        })
        .unwrap()
        .with_sleep(sleep)
        .with_clock(clock.clone());
        Harness {
            fake,
            providers,
            delays,
            clock,
            attempts: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn call(
        &self,
        chain: &[&str],
        req: &ChatRequest,
    ) -> Result<dispatch::provider::ChainSuccess, dispatch::provider::ChainError> {
        self.call_with(chain, req, LONG, None).await
    }

    async fn call_with(
        &self,
        chain: &[&str],
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<ProgressFn>,
    ) -> Result<dispatch::provider::ChainSuccess, dispatch::provider::ChainError> {
        let chain: Vec<ModelRef> = chain.iter().map(|s| model(s)).collect();
        let log = self.attempts.clone();
        let on_attempt = move |a: AttemptLog| log.lock().unwrap().push(a);
        self.providers
            .call_chain(&chain, req, timeout, progress, &on_attempt)
            .await
    }

    fn attempts(&self) -> Vec<AttemptLog> {
        self.attempts.lock().unwrap().clone()
    }

    fn delays(&self) -> Vec<Duration> {
        self.delays.lock().unwrap().clone()
    }
}

fn streaming() -> ChatRequest {
    ChatRequest::new("You are terse.", "Say hello")
}

fn whole() -> ChatRequest {
    ChatRequest {
        stream: false,
        ..streaming()
    }
}

fn collector() -> (ProgressFn, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        Arc::new(move |d: &str| s.lock().unwrap().push(d.to_string())),
        seen,
    )
}

// ---- wire formats -------------------------------------------------------

#[tokio::test]
async fn openai_streaming_delivers_deltas_usage_and_price_table_cost() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::Reply {
        text: "Hello there, friend".into(),
        input_tokens: 1_000_000,
        output_tokens: 100_000,
        cost: None,
        delay: Duration::ZERO,
        chunk_count: 3,
    });
    let (progress, seen) = collector();
    let ok = h
        .call_with(&["openai/gpt-4o"], &streaming(), LONG, Some(progress))
        .await
        .unwrap();
    assert_eq!(ok.response.text, "Hello there, friend");
    assert_eq!(
        seen.lock().unwrap().clone(),
        ["Hello t", "here, f", "riend"]
    );
    assert_eq!(ok.response.usage.input_tokens, 1_000_000);
    assert_eq!(ok.response.usage.output_tokens, 100_000);
    assert_eq!(ok.response.finish_reason.as_deref(), Some("stop"));
    assert_eq!(ok.model, model("openai/gpt-4o"));
    assert_eq!(ok.cost_source, CostSource::PriceTable);
    assert!((ok.cost_usd - 3.5).abs() < 1e-9, "{}", ok.cost_usd);

    let req = h.fake.last_request().unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(req.body["stream"], json!(true));
    assert_eq!(req.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        req.body["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(
        req.body["messages"][1],
        json!({"role": "user", "content": "Say hello"})
    );
    assert!(
        req.body.get("usage").is_none(),
        "only OpenRouter is asked for cost"
    );

    let attempts = h.attempts();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].ok && !attempts[0].skipped);
    assert_eq!(attempts[0].cost_source, CostSource::PriceTable);
    assert_eq!(attempts[0].usage, ok.response.usage);
}

#[tokio::test]
async fn openai_non_streaming_path() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::reply("whole answer"));
    let (progress, seen) = collector();
    let req = ChatRequest {
        temperature: Some(0.2),
        max_tokens: Some(64),
        ..whole()
    };
    let ok = h
        .call_with(&["openai/gpt-4o-mini"], &req, LONG, Some(progress))
        .await
        .unwrap();
    assert_eq!(ok.response.text, "whole answer");
    assert_eq!(ok.response.model, "gpt-4o-mini");
    assert_eq!(
        (
            ok.response.usage.input_tokens,
            ok.response.usage.output_tokens
        ),
        (10, 5)
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "no deltas without streaming"
    );
    let body = h.fake.last_request().unwrap().body;
    assert_eq!(body["stream"], json!(false));
    assert!(body.get("stream_options").is_none());
    assert_eq!(body["temperature"], json!(0.2));
    assert_eq!(body["max_completion_tokens"], json!(64));
}

#[tokio::test]
async fn openrouter_reported_cost_wins_streaming_and_whole() {
    let h = Harness::new(cfg()).await;
    for req in [streaming(), whole()] {
        h.fake
            .push(Behavior::reply_with_usage("ok", 1000, 1000, Some(0.0123)));
        let ok = h
            .call(&["openrouter/anthropic/claude-sonnet-4"], &req)
            .await
            .unwrap();
        assert_eq!(ok.cost_source, CostSource::Reported);
        assert_eq!(ok.cost_usd, 0.0123);
        assert_eq!(ok.response.reported_cost_usd, Some(0.0123));
        let sent = h.fake.last_request().unwrap();
        assert_eq!(sent.model, "anthropic/claude-sonnet-4");
        assert_eq!(sent.body["usage"], json!({"include": true}));
        assert_eq!(
            sent.header("authorization"),
            Some(format!("Bearer {OPENROUTER_KEY}").as_str())
        );
    }
    // Without a reported cost the same model is priced from the table.
    h.fake
        .push(Behavior::reply_with_usage("ok", 1_000_000, 0, None));
    let ok = h
        .call(&["openrouter/anthropic/claude-sonnet-4"], &whole())
        .await
        .unwrap();
    assert_eq!((ok.cost_usd, ok.cost_source), (3.0, CostSource::PriceTable));
}

#[tokio::test]
async fn unknown_model_costs_zero_marked_unknown() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::Echo);
    let ok = h
        .call(&["local/mystery-model"], &streaming())
        .await
        .unwrap();
    assert_eq!(ok.response.text, "Say hello");
    assert_eq!((ok.cost_usd, ok.cost_source), (0.0, CostSource::Unknown));
    // The configured key variable is used for the custom endpoint.
    let sent = h.fake.last_request().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {CUSTOM_KEY}").as_str())
    );
}

#[tokio::test]
async fn ollama_needs_no_key() {
    let h = Harness::new(cfg()).await;
    let ok = h.call(&["ollama/llama3.2"], &whole()).await.unwrap();
    assert_eq!(ok.response.text, "fake answer");
    let sent = h.fake.last_request().unwrap();
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.body["max_tokens"], serde_json::Value::Null);
}

#[tokio::test]
async fn anthropic_streaming() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::Reply {
        text: "Bonjour tout le monde".into(),
        input_tokens: 42,
        output_tokens: 7,
        cost: None,
        delay: Duration::ZERO,
        chunk_count: 4,
    });
    let (progress, seen) = collector();
    let ok = h
        .call_with(
            &["anthropic/claude-sonnet-4-20250514"],
            &streaming(),
            LONG,
            Some(progress),
        )
        .await
        .unwrap();
    assert_eq!(ok.response.text, "Bonjour tout le monde");
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(seen.lock().unwrap().concat(), "Bonjour tout le monde");
    assert_eq!(
        (
            ok.response.usage.input_tokens,
            ok.response.usage.output_tokens
        ),
        (42, 7)
    );
    assert_eq!(ok.response.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        ok.cost_source,
        CostSource::PriceTable,
        "dated id priced by prefix"
    );

    let sent = h.fake.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.body["system"], json!("You are terse."));
    assert_eq!(sent.body["max_tokens"], json!(4096));
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": "Say hello"}])
    );
    assert_eq!(sent.body["stream"], json!(true));
}

#[tokio::test]
async fn anthropic_non_streaming_and_custom_anthropic_endpoint() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::reply_with_usage("plain", 3, 4, None));
    let ok = h
        .call(&["anthropic/claude-haiku-4-5"], &whole())
        .await
        .unwrap();
    assert_eq!(ok.response.text, "plain");
    assert_eq!(ok.response.model, "claude-haiku-4-5");
    assert_eq!(
        (
            ok.response.usage.input_tokens,
            ok.response.usage.output_tokens
        ),
        (3, 4)
    );
    assert_eq!(h.fake.last_request().unwrap().body["stream"], json!(false));

    // A custom provider of Anthropic kind, configured with a `/v1` base URL and no key.
    let ok = h
        .call(&["claude-proxy/claude-x"], &streaming())
        .await
        .unwrap();
    assert_eq!(ok.response.text, "fake answer");
    let sent = h.fake.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), None);
}

// ---- fault classes --------------------------------------------------------

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::rate_limited("7"));
    let ok = h.call(&["openai/gpt-4o"], &streaming()).await.unwrap();
    assert_eq!(ok.response.text, "fake answer");
    assert_eq!(h.delays(), [Duration::from_secs(7)]);
    let a = h.attempts();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].http_status, Some(429));
    assert!(!a[0].ok && a[1].ok);
    assert!(
        a[0].error
            .as_deref()
            .unwrap()
            .starts_with("429 from openai: rate limited (it asked to retry after 7s)")
    );
}

#[tokio::test]
async fn retry_after_http_date_is_honoured_and_capped() {
    let h = Harness::new(ResilienceConfig {
        max_delay: Duration::from_secs(25),
        ..cfg()
    })
    .await;
    h.fake.push(Behavior::rate_limited(&http_date_in(20)));
    h.fake.push(Behavior::rate_limited("600"));
    let ok = h
        .call(&["anthropic/claude-sonnet-4"], &whole())
        .await
        .unwrap();
    assert_eq!(ok.response.text, "fake answer");
    let d = h.delays();
    assert_eq!(d.len(), 2);
    // An HTTP date has one-second resolution: 20 s from now is 19..=20 s away.
    assert!(
        d[0] >= Duration::from_secs(18) && d[0] <= Duration::from_secs(20),
        "{d:?}"
    );
    assert_eq!(d[1], Duration::from_secs(25), "capped at max_delay");
}

#[tokio::test]
async fn server_errors_are_retried_with_bounded_backoff() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 4,
        base_delay: Duration::from_millis(100),
        ..cfg()
    })
    .await;
    h.fake.push_all([
        Behavior::status(500),
        Behavior::status(502),
        Behavior::status(503),
    ]);
    let ok = h.call(&["openai/gpt-4o"], &streaming()).await.unwrap();
    assert_eq!(ok.response.text, "fake answer");
    assert_eq!(h.fake.request_count(), 4);
    let statuses: Vec<Option<u16>> = h.attempts().iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, [Some(500), Some(502), Some(503), None]);
    let d = h.delays();
    assert_eq!(d.len(), 3);
    for (i, delay) in d.iter().enumerate() {
        assert!(
            *delay <= Duration::from_millis(100) * (1 << i),
            "attempt {i}: {delay:?}"
        );
    }
}

#[tokio::test]
async fn retries_are_bounded_per_model() {
    let h = Harness::new(cfg()).await;
    h.fake.set_default(Behavior::status(503));
    let err = h.call(&["openai/gpt-4o"], &streaming()).await.unwrap_err();
    assert_eq!(h.fake.request_count(), 3);
    assert_eq!(err.kind, ChainErrorKind::Exhausted);
    assert_eq!(err.last.http_status(), Some(503));
    assert!(
        err.message.contains("(after 3 attempts)"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_say_what_to_do() {
    let cases: [(u16, &str, &str); 5] = [
        (
            400,
            "openai/gpt-4o",
            "400 from openai: the request was rejected as invalid",
        ),
        (
            401,
            "openrouter/x/y",
            "401 from openrouter: check OPENROUTER_API_KEY",
        ),
        (
            403,
            "anthropic/claude-x",
            "403 from anthropic: access denied: check ANTHROPIC_API_KEY",
        ),
        (
            404,
            "openai/gpt-x",
            "404 from openai: model `gpt-x` not found — check the agent's `model`",
        ),
        (
            422,
            "openai/gpt-4o",
            "422 from openai: the request was rejected as unprocessable",
        ),
    ];
    for (code, m, expected) in cases {
        let h = Harness::new(cfg()).await;
        h.fake.set_default(Behavior::status(code));
        let err = h.call(&[m], &streaming()).await.unwrap_err();
        assert_eq!(h.fake.request_count(), 1, "{code} must not be retried");
        assert!(h.delays().is_empty());
        assert!(
            err.last.to_string().starts_with(expected),
            "{code}: {}",
            err.last
        );
        assert!(err.message.contains(expected), "{code}: {}", err.message);
        assert!(
            err.last.to_string().contains(&format!("fake error {code}")),
            "quotes the provider"
        );
        assert_eq!(err.kind, ChainErrorKind::Rejected);
        let a = h.attempts();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].http_status, Some(code));
    }
}

#[tokio::test]
async fn missing_key_fails_fast_without_a_request() {
    let h = Harness::with_env(cfg(), &["OPENROUTER_API_KEY"]).await;
    let err = h
        .call(&["openrouter/anthropic/claude-sonnet-4"], &streaming())
        .await
        .unwrap_err();
    assert_eq!(
        err.last.to_string(),
        "OPENROUTER_API_KEY is not set: export it before starting dispatch"
    );
    assert_eq!(err.kind, ChainErrorKind::Rejected);
    assert_eq!(h.fake.request_count(), 0);
    let a = h.attempts();
    assert_eq!(a.len(), 1);
    assert!(a[0].skipped && !a[0].ok);
    // ... and the chain moves on to a model that can run.
    let ok = h
        .call(&["openrouter/x", "openai/gpt-4o"], &streaming())
        .await
        .unwrap();
    assert_eq!(ok.model, model("openai/gpt-4o"));
}

#[tokio::test]
async fn unknown_provider_is_skipped() {
    let h = Harness::new(cfg()).await;
    let ok = h
        .call(&["nope/m", "openai/gpt-4o"], &streaming())
        .await
        .unwrap();
    assert_eq!(ok.model, model("openai/gpt-4o"));
    let a = h.attempts();
    assert!(a[0].skipped);
    assert!(
        a[0].error
            .as_deref()
            .unwrap()
            .contains("unknown provider `nope`")
    );
}

#[tokio::test]
async fn hang_hits_the_request_timeout_and_drops_the_connection() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 2,
        ..cfg()
    })
    .await;
    h.fake.set_default(Behavior::Hang);
    let err = h
        .call_with(
            &["openai/gpt-4o"],
            &streaming(),
            Duration::from_millis(150),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.last, ProviderError::Timeout { .. }),
        "{:?}",
        err.last
    );
    assert_eq!(err.kind, ChainErrorKind::Timeout);
    assert!(
        err.message.contains("did not answer within 150ms"),
        "{}",
        err.message
    );
    assert_eq!(h.fake.request_count(), 2, "timeouts are retried");
    h.fake.wait_disconnects(2).await;
}

#[tokio::test]
async fn stall_mid_stream_hits_the_idle_timeout() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 1,
        idle_timeout: Duration::from_millis(150),
        ..cfg()
    })
    .await;
    h.fake.push(Behavior::StallAfter { chunks: 2 });
    let (progress, seen) = collector();
    let err = h
        .call_with(&["openai/gpt-4o"], &streaming(), LONG, Some(progress))
        .await
        .unwrap_err();
    assert!(
        matches!(err.last, ProviderError::Stalled { .. }),
        "{:?}",
        err.last
    );
    assert!(err.last.is_retryable());
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the deltas before the stall were delivered"
    );
    h.fake.wait_disconnects(1).await;
}

#[tokio::test]
async fn stall_is_retried_then_succeeds() {
    let h = Harness::new(ResilienceConfig {
        idle_timeout: Duration::from_millis(250),
        ..cfg()
    })
    .await;
    h.fake.push(Behavior::StallAfter { chunks: 1 });
    h.fake.push(Behavior::StallAfter { chunks: 0 });
    let ok = h
        .call(&["anthropic/claude-sonnet-4"], &streaming())
        .await
        .unwrap();
    assert_eq!(ok.response.text, "fake answer");
    assert_eq!(h.attempts().len(), 3);
}

#[tokio::test]
async fn malformed_answers_are_retried() {
    for (m, req) in [
        ("openai/gpt-4o", streaming()),
        ("openai/gpt-4o", whole()),
        ("anthropic/claude-sonnet-4", streaming()),
        ("anthropic/claude-sonnet-4", whole()),
    ] {
        let h = Harness::new(cfg()).await;
        h.fake.push(Behavior::Malformed);
        let ok = h.call(&[m], &req).await.unwrap();
        assert_eq!(ok.response.text, "fake answer");
        let a = h.attempts();
        assert_eq!(a.len(), 2, "{m} stream={}", req.stream);
        let e = a[0].error.as_deref().unwrap();
        assert!(e.starts_with("malformed response from"), "{e}");
    }
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port with nothing listening: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut custom = BTreeMap::new();
    custom.insert(
        "dead".to_string(),
        ProviderSettings {
            base_url: Some(format!("http://127.0.0.1:{port}/v1")),
            ..ProviderSettings::default()
        },
    );
    let providers = Providers::new(&custom, PriceTable::builtin(), cfg(), &|_| None)
        .unwrap()
        .with_sleep(Arc::new(|_| Box::pin(async {})));
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    let on = move |_: AttemptLog| *c.lock().unwrap() += 1;
    let err = providers
        .call_chain(&[model("dead/m")], &streaming(), LONG, None, &on)
        .await
        .unwrap_err();
    assert!(
        matches!(err.last, ProviderError::Connect { .. }),
        "{:?}",
        err.last
    );
    assert!(
        err.message.contains("cannot reach dead: http://127.0.0.1"),
        "{}",
        err.message
    );
    assert!(err.message.contains("DEAD_BASE_URL"), "{}", err.message);
    assert_eq!(*count.lock().unwrap(), 3);
    assert_eq!(err.kind, ChainErrorKind::Exhausted);
}

// ---- chains and breakers ----------------------------------------------------

#[tokio::test]
async fn failover_to_the_second_model() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 2,
        ..cfg()
    })
    .await;
    h.fake.on_model("flaky", Behavior::status(503));
    h.fake.on_model(
        "anthropic/claude-sonnet-4",
        Behavior::reply("from the backup"),
    );
    let ok = h
        .call(
            &["openai/flaky", "openrouter/anthropic/claude-sonnet-4"],
            &streaming(),
        )
        .await
        .unwrap();
    assert_eq!(ok.response.text, "from the backup");
    assert_eq!(ok.model, model("openrouter/anthropic/claude-sonnet-4"));
    let a = h.attempts();
    let summary: Vec<(&str, bool)> = a.iter().map(|a| (a.model.as_str(), a.ok)).collect();
    assert_eq!(
        summary,
        [
            ("flaky", false),
            ("flaky", false),
            ("anthropic/claude-sonnet-4", true)
        ]
    );
    assert_eq!(h.delays().len(), 1, "no wait before switching models");
}

#[tokio::test]
async fn failover_on_auth_errors_but_a_bad_request_ends_the_chain() {
    let h = Harness::new(cfg()).await;
    h.fake.on_model("no-access", Behavior::status(401));
    h.fake.on_model("bad-request", Behavior::status(400));
    let ok = h
        .call(&["openai/no-access", "openai/gpt-4o"], &streaming())
        .await
        .unwrap();
    assert_eq!(ok.model, model("openai/gpt-4o"));

    let before = h.fake.request_count();
    let err = h
        .call(&["openai/bad-request", "openai/gpt-4o"], &streaming())
        .await
        .unwrap_err();
    assert_eq!(
        h.fake.request_count(),
        before + 1,
        "the second model was not tried"
    );
    assert_eq!(err.kind, ChainErrorKind::Rejected);
    assert!(
        err.message.contains("no other model was tried"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn all_models_failing_lists_each_last_failure() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 2,
        ..cfg()
    })
    .await;
    h.fake.on_model("a", Behavior::status(503));
    h.fake.on_model("b", Behavior::status(404));
    let err = h
        .call(&["openai/a", "anthropic/b"], &streaming())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ChainErrorKind::Exhausted);
    assert_eq!(err.failures.len(), 2);
    assert!(
        err.message
            .starts_with("all 2 models failed — openai/a: 503 from openai"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("(after 2 attempts); anthropic/b: 404 from anthropic: model `b` not found")
    );
    assert_eq!(err.last.http_status(), Some(404));
}

#[tokio::test]
async fn breaker_opens_skips_then_half_opens_for_one_probe() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 3,
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(30),
        ..cfg()
    })
    .await;
    h.fake.on_model("down", Behavior::status(503));
    let chain = ["openai/down", "anthropic/claude-sonnet-4"];

    // Three failures in a row open openai's breaker; the chain fails over.
    let ok = h.call(&chain, &streaming()).await.unwrap();
    assert_eq!(ok.model, model("anthropic/claude-sonnet-4"));
    assert_eq!(
        h.fake
            .requests()
            .iter()
            .filter(|r| r.model == "down")
            .count(),
        3
    );
    let states: BTreeMap<String, BreakerState> = h.providers.breaker_states().into_iter().collect();
    assert_eq!(
        states["openai"],
        BreakerState::Open {
            retry_in_ms: 30_000
        }
    );
    assert_eq!(
        states["anthropic"],
        BreakerState::Closed {
            consecutive_failures: 0
        }
    );

    // While open, openai is skipped without a request, with a clear reason.
    h.attempts.lock().unwrap().clear();
    let ok = h.call(&chain, &streaming()).await.unwrap();
    assert_eq!(ok.model, model("anthropic/claude-sonnet-4"));
    assert_eq!(
        h.fake
            .requests()
            .iter()
            .filter(|r| r.model == "down")
            .count(),
        3
    );
    let a = h.attempts();
    assert!(a[0].skipped && !a[0].ok && a[0].provider == "openai");
    assert!(
        a[0].error
            .as_deref()
            .unwrap()
            .contains("circuit breaker is open"),
        "{:?}",
        a[0].error
    );

    // After the cooldown one probe goes through; it fails, so the breaker re-opens
    // and the remaining retries are skipped.
    h.clock.advance(Duration::from_secs(30));
    let ok = h.call(&chain, &streaming()).await.unwrap();
    assert_eq!(ok.model, model("anthropic/claude-sonnet-4"));
    assert_eq!(
        h.fake
            .requests()
            .iter()
            .filter(|r| r.model == "down")
            .count(),
        4
    );
    let states: BTreeMap<String, BreakerState> = h.providers.breaker_states().into_iter().collect();
    assert_eq!(
        states["openai"],
        BreakerState::Open {
            retry_in_ms: 30_000
        }
    );

    // Next cooldown: the provider recovered; the probe succeeds and closes it.
    h.fake.clear_model("down");
    h.clock.advance(Duration::from_secs(30));
    let ok = h.call(&chain, &streaming()).await.unwrap();
    assert_eq!(ok.model, model("openai/down"));
    let states: BTreeMap<String, BreakerState> = h.providers.breaker_states().into_iter().collect();
    assert_eq!(
        states["openai"],
        BreakerState::Closed {
            consecutive_failures: 0
        }
    );
}

#[tokio::test]
async fn non_retryable_failures_do_not_trip_the_breaker() {
    let h = Harness::new(ResilienceConfig {
        breaker_threshold: 2,
        ..cfg()
    })
    .await;
    h.fake.set_default(Behavior::status(404));
    for _ in 0..5 {
        let _ = h.call(&["openai/gpt-x"], &streaming()).await.unwrap_err();
    }
    let states: BTreeMap<String, BreakerState> = h.providers.breaker_states().into_iter().collect();
    assert_eq!(
        states["openai"],
        BreakerState::Closed {
            consecutive_failures: 0
        }
    );
    assert_eq!(h.fake.request_count(), 5);
}

// ---- cancellation and concurrency -----------------------------------------

#[tokio::test]
async fn dropping_the_call_aborts_the_request_in_flight() {
    let h = Harness::new(cfg()).await;
    let gate = Arc::new(Notify::new());
    h.fake.push(Behavior::gate(&gate, "never delivered"));
    let req = streaming();
    tokio::select! {
        r = h.call(&["openai/gpt-4o"], &req) => panic!("the gated call finished: {r:?}"),
        () = h.fake.wait_in_flight(1) => {}
    }
    // The select dropped the call_chain future: the fake must see the client go.
    h.fake.wait_disconnects(1).await;
    assert_eq!(h.fake.completed(), 0);
    assert!(
        h.attempts().is_empty(),
        "an aborted attempt is not reported"
    );
}

#[tokio::test]
async fn dropping_the_call_mid_stream_aborts_it_and_frees_a_probe() {
    let h = Harness::new(ResilienceConfig {
        breaker_threshold: 1,
        max_attempts_per_model: 1,
        ..cfg()
    })
    .await;
    // Open the breaker, let the cooldown pass: the next call is the probe.
    h.fake.push(Behavior::status(503));
    let _ = h.call(&["openai/gpt-4o"], &streaming()).await.unwrap_err();
    h.clock.advance(Duration::from_secs(30));

    h.fake.push(Behavior::StallAfter { chunks: 1 });
    let first_delta = Arc::new(Notify::new());
    let fd = first_delta.clone();
    let progress: ProgressFn = Arc::new(move |_| fd.notify_one());
    let req = streaming();
    tokio::select! {
        r = h.call_with(&["openai/gpt-4o"], &req, LONG, Some(progress)) => panic!("finished: {r:?}"),
        () = first_delta.notified() => {}
    }
    h.fake.wait_disconnects(1).await;
    let states: BTreeMap<String, BreakerState> = h.providers.breaker_states().into_iter().collect();
    assert_eq!(states["openai"], BreakerState::HalfOpen { probing: false });
    // The freed slot lets the next probe through.
    let ok = h.call(&["openai/gpt-4o"], &streaming()).await.unwrap();
    assert_eq!(ok.response.text, "fake answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_share_one_client() {
    let h = Arc::new(Harness::new(cfg()).await);
    let gate = Arc::new(Notify::new());
    h.fake.set_default(Behavior::gate(&gate, "released"));
    let n = 32;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let h = h.clone();
        // Spawning proves the call_chain future is Send.
        tasks.push(tokio::spawn(async move {
            h.call(&["openai/gpt-4o"], &streaming())
                .await
                .map(|s| s.response.text)
        }));
    }
    h.fake.wait_in_flight(n).await;
    assert_eq!(h.fake.peak_in_flight(), n);
    gate.notify_waiters();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "released");
    }
    assert_eq!(h.fake.completed(), n);
    assert_eq!(h.fake.disconnects(), 0);
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let h = Harness::new(cfg()).await;
    for req in [streaming(), whole(), streaming(), whole()] {
        h.call(&["openai/gpt-4o"], &req).await.unwrap();
        h.call(&["anthropic/claude-sonnet-4"], &req).await.unwrap();
    }
    assert_eq!(h.fake.request_count(), 8);
    assert_eq!(
        h.fake.connections(),
        1,
        "streams are read to the end, so the connection is pooled"
    );
}

// ---- secrecy --------------------------------------------------------------

#[tokio::test]
async fn keys_never_appear_in_errors_even_when_echoed() {
    let h = Harness::new(ResilienceConfig {
        max_attempts_per_model: 2,
        ..cfg()
    })
    .await;
    let echo = |code: u16| Behavior::Status {
        code,
        retry_after: None,
        body: r#"{"error":{"message":"Incorrect API key provided: $AUTH"}}"#.into(),
    };
    h.fake.on_model("m401", echo(401));
    h.fake.on_model("m500", echo(500));
    h.fake.on_model(
        "plain",
        Behavior::Status {
            code: 403,
            retry_after: None,
            body: "forbidden for $AUTH".into(),
        },
    );
    let err = h
        .call(
            &[
                "openai/m401",
                "anthropic/m500",
                "local/plain",
                "openrouter/m401",
            ],
            &streaming(),
        )
        .await
        .unwrap_err();
    // The fake did echo the credentials...
    assert_eq!(h.fake.request_count(), 5);
    // ...but nothing we produce contains them.
    let mut texts = vec![
        err.message.clone(),
        err.last.to_string(),
        format!("{err:?}"),
    ];
    texts.extend(h.attempts().iter().map(|a| format!("{a:?}")));
    texts.push(format!("{:?}", h.providers));
    for t in &texts {
        for key in [OPENAI_KEY, OPENROUTER_KEY, ANTHROPIC_KEY, CUSTOM_KEY] {
            assert!(!t.contains(key), "leaked {key} in: {t}");
        }
    }
    assert!(
        err.message
            .contains("Incorrect API key provided: Bearer [redacted]"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("forbidden for Bearer [redacted]"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn long_error_bodies_are_clipped() {
    let h = Harness::new(cfg()).await;
    h.fake.push(Behavior::Status {
        code: 404,
        retry_after: None,
        body: "x".repeat(5000),
    });
    let err = h.call(&["openai/gpt-x"], &streaming()).await.unwrap_err();
    let msg = err.last.to_string();
    assert!(msg.chars().count() < 450, "{} chars", msg.chars().count());
    assert!(msg.ends_with('…'));
}
