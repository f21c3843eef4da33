//! Prometheus metrics of an engine built in process (no binary, no HTTP
//! layer), against the fake provider on 127.0.0.1: what `metrics_text` shows
//! after tasks succeed, fail, wait, run and are cancelled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "common/fake_provider.rs"]
mod fake_provider;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch::app::App;
use dispatch::config::Paths;
use dispatch::engine::{Engine, EngineConfig, Submit};
use dispatch::metrics::CONTENT_TYPE;
use dispatch::provider::{Price, PriceTable, Providers, ResilienceConfig};
use dispatch::store::SqliteStore;
use dispatch::task::TaskState;
use fake_provider::{Behavior, FakeProvider};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

struct Fx {
    _dir: TempDir,
    fake: FakeProvider,
    engine: Arc<Engine>,
}

/// A project with `agents` (name, file body), providers pointing at the fake
/// (no process environment involved), and an in-memory store.
async fn fx(agents: &[(&str, &str)], resilience: ResilienceConfig, cfg: EngineConfig) -> Fx {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("agents")).expect("agents");
    for (name, body) in agents {
        std::fs::write(dir.path().join(format!("agents/{name}.agent.md")), body).expect("agent");
    }
    let fake = FakeProvider::start().await;
    fake.set_default(Behavior::reply("default answer"));
    let app = App::open(Paths::new(dir.path(), None, None)).expect("open");
    let openai = fake.base_url_openai();
    let anthropic = fake.base_url_anthropic();
    let env = move |k: &str| match k {
        "OPENAI_BASE_URL" => Some(openai.clone()),
        "ANTHROPIC_BASE_URL" => Some(anthropic.clone()),
        "OPENAI_API_KEY" | "ANTHROPIC_API_KEY" => Some("sk-test".to_string()),
        _ => None,
    };
    let prices = PriceTable::builtin().with_overrides([("openai/judge", Price::new(3.0, 4.0))]);
    let providers = Providers::new(&BTreeMap::new(), prices, resilience, &env).expect("providers");
    let store = Arc::new(SqliteStore::open_in_memory().await.expect("store"));
    let engine = Engine::new(
        store,
        Arc::new(providers),
        app.registry.clone(),
        app.kb.clone(),
        cfg,
    );
    Fx {
        _dir: dir,
        fake,
        engine,
    }
}

fn agent(model: &str, extra: &str) -> String {
    format!("---\ndescription: test agent\nmodel: {model}\n{extra}---\nYou are a test agent.\n")
}

/// The value of the sample `series` (name and labels exactly as rendered);
/// panics with the whole exposition when it is missing.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"))
}

async fn submit(engine: &Arc<Engine>, agent: &str) -> String {
    engine
        .submit(Submit {
            agent: agent.into(),
            input: json!("do it"),
            ..Submit::default()
        })
        .await
        .expect("submit")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_shows_states_calls_tokens_cost_audits_and_breakers() {
    let fx = fx(
        &[
            ("writer", &agent("openai/gpt-4o-mini", "mirror: judge\n")),
            ("judge", &agent("openai/judge", "")),
            ("flaky", &agent("anthropic/claude-haiku-4.5", "")),
        ],
        ResilienceConfig {
            max_attempts_per_model: 1,
            breaker_threshold: 1,
            breaker_cooldown: Duration::from_secs(3600),
            ..ResilienceConfig::default()
        },
        EngineConfig::default(),
    )
    .await;
    fx.fake.on_model(
        "gpt-4o-mini",
        Behavior::reply_with_usage("The draft.", 1000, 500, None),
    );
    fx.fake.on_model(
        "judge",
        Behavior::reply_with_usage(
            &json!({"verdict": "pass", "feedback": "fine", "confidence": 0.9}).to_string(),
            2000,
            50,
            None,
        ),
    );
    fx.fake.on_model("claude-haiku-4.5", Behavior::status(503));

    let ok = submit(&fx.engine, "writer").await;
    let bad = submit(&fx.engine, "flaky").await;
    let ok = fx.engine.wait(&ok, None, WAIT).await.expect("wait");
    let bad = fx.engine.wait(&bad, None, WAIT).await.expect("wait");
    assert_eq!(ok.state, TaskState::Succeeded, "{ok:?}");
    assert_eq!(bad.state, TaskState::Failed, "{bad:?}");

    let text = fx.engine.metrics_text().await;
    let at = |s: &str| sample(&text, s);
    assert!(CONTENT_TYPE.starts_with("application/openmetrics-text"));
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Tasks by state, sampled from the store.
    assert_eq!(at(r#"dispatch_tasks{state="succeeded"}"#), 1.0);
    assert_eq!(at(r#"dispatch_tasks{state="failed"}"#), 1.0);
    assert_eq!(at(r#"dispatch_tasks{state="queued"}"#), 0.0);
    assert_eq!(at(r#"dispatch_tasks{state="running"}"#), 0.0);
    assert_eq!(at(r#"dispatch_tasks{state="cancelled"}"#), 0.0);
    assert_eq!(at("dispatch_queue_depth"), 0.0);
    assert_eq!(at("dispatch_tasks_running"), 0.0);

    // Terminal states, failures and durations recorded as they happened.
    assert_eq!(
        at(r#"dispatch_tasks_finished_total{agent="writer",state="succeeded"}"#),
        1.0
    );
    assert_eq!(
        at(r#"dispatch_tasks_finished_total{agent="flaky",state="failed"}"#),
        1.0
    );
    assert_eq!(
        at(r#"dispatch_task_failures_total{agent="flaky",reason="provider_error"}"#),
        1.0
    );
    assert_eq!(
        at(r#"dispatch_task_duration_seconds_count{agent="writer"}"#),
        1.0
    );
    assert_eq!(
        at(r#"dispatch_task_duration_seconds_count{agent="flaky"}"#),
        1.0
    );
    assert!(!text.contains(r#"dispatch_task_failures_total{agent="writer""#));

    // Provider calls by outcome, and their durations.
    assert_eq!(
        at(
            r#"dispatch_provider_requests_total{provider="openai",model="openai/gpt-4o-mini",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        at(
            r#"dispatch_provider_requests_total{provider="openai",model="openai/judge",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        at(
            r#"dispatch_provider_requests_total{provider="anthropic",model="anthropic/claude-haiku-4.5",outcome="server_error"}"#
        ),
        1.0
    );
    assert_eq!(
        at(r#"dispatch_provider_request_duration_seconds_count{provider="openai"}"#),
        2.0
    );
    assert_eq!(
        at(r#"dispatch_provider_request_duration_seconds_count{provider="anthropic"}"#),
        1.0
    );

    // Tokens and cost, by the agent whose model was called.
    assert_eq!(
        at(r#"dispatch_tokens_total{agent="writer",model="openai/gpt-4o-mini",direction="input"}"#),
        1000.0
    );
    assert_eq!(
        at(
            r#"dispatch_tokens_total{agent="writer",model="openai/gpt-4o-mini",direction="output"}"#
        ),
        500.0
    );
    assert_eq!(
        at(r#"dispatch_tokens_total{agent="judge",model="openai/judge",direction="input"}"#),
        2000.0
    );
    // gpt-4o-mini: $0.15 in / $0.60 out per million tokens.
    let cost = at(r#"dispatch_cost_usd_total{agent="writer",model="openai/gpt-4o-mini"}"#);
    assert!((cost - 0.00045).abs() < 1e-12, "{cost}");
    // The judge at the configured $3 / $4: 2000 in, 50 out.
    let cost = at(r#"dispatch_cost_usd_total{agent="judge",model="openai/judge"}"#);
    assert!((cost - 0.0062).abs() < 1e-12, "{cost}");
    // The sum over the series is what the task was charged.
    assert!(
        (ok.cost_usd - (0.00045 + 0.0062)).abs() < 1e-9,
        "{}",
        ok.cost_usd
    );

    // The audit verdict, by audited agent.
    assert_eq!(
        at(r#"dispatch_audit_verdicts_total{agent="writer",verdict="pass"}"#),
        1.0
    );

    // Breakers sampled now: the 503 opened anthropic's (threshold 1).
    assert_eq!(at(r#"dispatch_breaker_state{provider="openai"}"#), 0.0);
    assert_eq!(at(r#"dispatch_breaker_state{provider="anthropic"}"#), 2.0);

    // A second task on the open breaker is skipped, not sent, and not timed.
    let skipped = submit(&fx.engine, "flaky").await;
    let skipped = fx.engine.wait(&skipped, None, WAIT).await.expect("wait");
    assert_eq!(skipped.state, TaskState::Failed);
    let text = fx.engine.metrics_text().await;
    let at = |s: &str| sample(&text, s);
    assert_eq!(
        at(
            r#"dispatch_provider_requests_total{provider="anthropic",model="anthropic/claude-haiku-4.5",outcome="circuit_open"}"#
        ),
        1.0
    );
    assert_eq!(
        at(r#"dispatch_provider_request_duration_seconds_count{provider="anthropic"}"#),
        1.0
    );
    assert_eq!(at(r#"dispatch_tasks{state="failed"}"#), 2.0);
    assert_eq!(fx.fake.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_running_tasks_and_cancelled_calls() {
    let fx = fx(
        &[
            ("one", &agent("openai/m1", "")),
            ("two", &agent("openai/m2", "")),
            ("stuck", &agent("openai/m3", "")),
        ],
        ResilienceConfig {
            breaker_threshold: 0,
            ..ResilienceConfig::default()
        },
        EngineConfig {
            global_limit: 1,
            ..EngineConfig::default()
        },
    )
    .await;
    let (g1, g2) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    fx.fake.on_model("m1", Behavior::gate(&g1, "first"));
    fx.fake.on_model("m2", Behavior::gate(&g2, "second"));
    fx.fake.on_model("m3", Behavior::Hang);

    // One slot: one task runs (its call held at the fake), the other waits.
    let a = submit(&fx.engine, "one").await;
    let b = submit(&fx.engine, "two").await;
    fx.fake.wait_in_flight(1).await;
    let text = fx.engine.metrics_text().await;
    assert_eq!(sample(&text, "dispatch_tasks_running"), 1.0);
    assert_eq!(sample(&text, "dispatch_queue_depth"), 1.0);
    assert_eq!(sample(&text, r#"dispatch_tasks{state="running"}"#), 1.0);
    assert_eq!(sample(&text, r#"dispatch_tasks{state="queued"}"#), 1.0);

    // Release both (a stored permit lets the later call through at once).
    g1.notify_one();
    g2.notify_one();
    for id in [&a, &b] {
        let t = fx.engine.wait(id, None, WAIT).await.expect("wait");
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    }
    let text = fx.engine.metrics_text().await;
    assert_eq!(sample(&text, "dispatch_tasks_running"), 0.0);
    assert_eq!(sample(&text, "dispatch_queue_depth"), 0.0);
    assert_eq!(sample(&text, r#"dispatch_tasks{state="succeeded"}"#), 2.0);

    // A call aborted by cancelling its task is counted as cancelled.
    let c = submit(&fx.engine, "stuck").await;
    // Arrived at the fake: the call is in flight on our side (a finished
    // call's response may still be winding down, so in-flight would not do).
    fx.fake.wait_requests(3).await;
    let out = fx.engine.cancel(&c, None).await.expect("cancel");
    assert_eq!(out.state, TaskState::Cancelled);
    let text = fx.engine.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            r#"dispatch_provider_requests_total{provider="openai",model="openai/m3",outcome="cancelled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"dispatch_tasks_finished_total{agent="stuck",state="cancelled"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, r#"dispatch_tasks{state="cancelled"}"#), 1.0);
    assert_eq!(sample(&text, "dispatch_tasks_running"), 0.0);
    assert!(!text.contains(r#"dispatch_task_failures_total{agent="stuck""#));
}
