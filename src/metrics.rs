//! Prometheus metrics: the registry, every metric family, and the text
//! exposition served at `/metrics`. The only module that knows
//! `prometheus-client`.
//!
//! One [`Metrics`] is shared by an engine and its providers (the engine adopts
//! the one its [`crate::provider::Providers`] were built with). Recording is a
//! family lookup (a read lock on the family's map, a write lock only the first
//! time a label set is seen) and an atomic add; histograms take their own
//! short mutex. Nothing here does I/O.
//!
//! Two kinds of series:
//! - **recorded** as things happen: HTTP requests, provider calls, tasks
//!   reaching a terminal state, task durations, tokens, cost, audit verdicts,
//!   tasks running;
//! - **sampled** at scrape time by [`crate::engine::Engine::metrics_text`]:
//!   tasks per state (from the store), the queue depth, breaker states.
//!
//! Label values are agent names, `provider/model` references from agent
//! files, provider names and small fixed vocabularies (states, reasons,
//! outcomes, verdicts, transports, HTTP statuses): bounded by the registry and
//! the config. Never a task id, a subject or anything a client types freely.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::render`] (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Value of `dispatch_breaker_state` for a closed breaker (calls go through).
pub const BREAKER_CLOSED: i64 = 0;
/// Value of `dispatch_breaker_state` for a half-open breaker (one probe allowed).
pub const BREAKER_HALF_OPEN: i64 = 1;
/// Value of `dispatch_breaker_state` for an open breaker (calls are skipped).
pub const BREAKER_OPEN: i64 = 2;

/// Seconds: MCP requests range from a metadata fetch to an `agent_run` that
/// waits minutes.
const HTTP_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Seconds: one provider call, from a local model to a long generation.
const PROVIDER_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Seconds: a task end to end (queue wait, retries, audits, revisions).
const TASK_BUCKETS: [f64; 16] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatCounter = Counter<f64, AtomicU64>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    transport: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentStateLabels {
    agent: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentReasonLabels {
    agent: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InstanceLabel {
    holder: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderCallLabels {
    provider: String,
    model: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    agent: String,
    model: String,
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentModelLabels {
    agent: String,
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentVerdictLabels {
    agent: String,
    verdict: &'static str,
}

/// The registry and every metric family of `dispatch`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<TransportLabel>,
    tasks: Family<StateLabel, Gauge>,
    tasks_finished: Family<AgentStateLabels, Counter>,
    task_failures: Family<AgentReasonLabels, Counter>,
    task_duration: HistogramFamily<AgentLabel>,
    tasks_running: Gauge,
    queue_depth: Gauge,
    provider_requests: Family<ProviderCallLabels, Counter>,
    provider_duration: HistogramFamily<ProviderLabel>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<AgentModelLabels, FloatCounter>,
    breaker_state: Family<ProviderLabel, Gauge>,
    audit_verdicts: Family<AgentVerdictLabels, Counter>,
    instance: Family<InstanceLabel, Gauge>,
    instances_live: Gauge,
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn provider_histogram() -> Histogram {
    Histogram::new(PROVIDER_BUCKETS)
}

fn task_histogram() -> Histogram {
    Histogram::new(TASK_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every family registered and no series yet.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            tasks: Family::default(),
            tasks_finished: Family::default(),
            task_failures: Family::default(),
            task_duration: Family::new_with_constructor(task_histogram),
            tasks_running: Gauge::default(),
            queue_depth: Gauge::default(),
            provider_requests: Family::default(),
            provider_duration: Family::new_with_constructor(provider_histogram),
            tokens: Family::default(),
            cost: Family::default(),
            breaker_state: Family::default(),
            audit_verdicts: Family::default(),
            instance: Family::default(),
            instances_live: Gauge::default(),
        };
        // The families are cheap handles (an `Arc` inside): the registry
        // encodes the same series the fields record into.
        let mut r = Registry::with_prefix("dispatch");
        r.register(
            "http_requests",
            "HTTP requests served, by transport and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to serve an HTTP request, by transport",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "tasks",
            "Tasks in the store by state (every instance's), sampled at scrape time",
            m.tasks.clone(),
        );
        r.register(
            "instance",
            "1, labelled with this process's holder tag in the store (host:pid:start-ms): \
             the other series of this exposition are this instance's own unless they say otherwise",
            m.instance.clone(),
        );
        r.register(
            "instances_live",
            "Instances holding a live lease on the store, this one included, sampled at scrape time",
            m.instances_live.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks this process brought to a terminal state, by agent and state",
            m.tasks_finished.clone(),
        );
        r.register(
            "task_failures",
            "Tasks this process failed, by agent and reason",
            m.task_failures.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "Task duration end to end (created to finished, queue wait included), by agent",
            Unit::Seconds,
            m.task_duration.clone(),
        );
        r.register(
            "tasks_running",
            "Tasks this process is running now (admitted, not finished)",
            m.tasks_running.clone(),
        );
        r.register(
            "queue_depth",
            "Tasks waiting for admission in this process, sampled at scrape time",
            m.queue_depth.clone(),
        );
        r.register(
            "provider_requests",
            "Provider calls by provider, model and outcome (skipped calls included)",
            m.provider_requests.clone(),
        );
        r.register_with_unit(
            "provider_request_duration",
            "Time of provider calls actually sent, by provider",
            Unit::Seconds,
            m.provider_duration.clone(),
        );
        r.register(
            "tokens",
            "Tokens billed, by the agent whose model was called, model and direction",
            m.tokens.clone(),
        );
        r.register(
            "cost_usd",
            "Cost in USD, by the agent whose model was called and model",
            m.cost.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state by provider (0 closed, 1 half-open, 2 open), sampled at scrape time",
            m.breaker_state.clone(),
        );
        r.register(
            "audit_verdicts",
            "Audit verdicts, by audited agent and verdict",
            m.audit_verdicts.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// One HTTP request served: `transport` is "streamable_http", "sse",
    /// "metadata", "other".
    pub fn http_request(&self, transport: &'static str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels { transport, status })
            .inc();
        self.http_duration
            .get_or_create(&TransportLabel { transport })
            .observe(elapsed.as_secs_f64());
    }

    /// One provider call (or skipped call) on `provider`/`model` ended with
    /// `outcome`; `elapsed` is `Some` for calls actually sent.
    pub fn provider_request(
        &self,
        provider: &str,
        model: &str,
        outcome: &'static str,
        elapsed: Option<Duration>,
    ) {
        self.provider_requests
            .get_or_create(&ProviderCallLabels {
                provider: provider.to_string(),
                model: model_label(provider, model),
                outcome,
            })
            .inc();
        if let Some(elapsed) = elapsed {
            self.provider_duration
                .get_or_create(&ProviderLabel {
                    provider: provider.to_string(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Tokens and cost of one call made as `agent` on `provider`/`model`.
    pub fn usage(
        &self,
        agent: &str,
        provider: &str,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: f64,
    ) {
        if input_tokens == 0 && output_tokens == 0 && cost_usd <= 0.0 {
            return;
        }
        let model = model_label(provider, model);
        for (direction, n) in [("input", input_tokens), ("output", output_tokens)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    agent: agent.to_string(),
                    model: model.clone(),
                    direction,
                })
                .inc_by(n);
        }
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.cost
                .get_or_create(&AgentModelLabels {
                    agent: agent.to_string(),
                    model,
                })
                .inc_by(cost_usd);
        }
    }

    /// A task of `agent` reached the terminal `state` (`failure` is the
    /// reason when it failed) after `duration` end to end.
    pub fn task_finished(
        &self,
        agent: &str,
        state: &'static str,
        failure: Option<&'static str>,
        duration: Duration,
    ) {
        self.tasks_finished
            .get_or_create(&AgentStateLabels {
                agent: agent.to_string(),
                state,
            })
            .inc();
        if let Some(reason) = failure {
            self.task_failures
                .get_or_create(&AgentReasonLabels {
                    agent: agent.to_string(),
                    reason,
                })
                .inc();
        }
        self.task_duration
            .get_or_create(&AgentLabel {
                agent: agent.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// A task started running; the gauge goes down when the guard is dropped.
    pub fn task_running(&self) -> RunningGuard<'_> {
        self.tasks_running.inc();
        RunningGuard(&self.tasks_running)
    }

    /// An auditor judged an answer of `agent`.
    pub fn audit_verdict(&self, agent: &str, verdict: &'static str) {
        self.audit_verdicts
            .get_or_create(&AgentVerdictLabels {
                agent: agent.to_string(),
                verdict,
            })
            .inc();
    }

    /// Sampled: tasks in the store in `state`.
    pub fn set_tasks(&self, state: &'static str, count: u64) {
        self.tasks
            .get_or_create(&StateLabel { state })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Which instance this is (`holder`), and how many hold a live lease.
    pub fn set_instances(&self, holder: &str, live: usize) {
        self.instance
            .get_or_create(&InstanceLabel {
                holder: holder.to_string(),
            })
            .set(1);
        self.instances_live
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }

    /// Sampled: tasks waiting for admission.
    pub fn set_queue_depth(&self, waiting: usize) {
        self.queue_depth
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Sampled: a provider's breaker ([`BREAKER_CLOSED`], [`BREAKER_HALF_OPEN`]
    /// or [`BREAKER_OPEN`]).
    pub fn set_breaker_state(&self, provider: &str, state: i64) {
        self.breaker_state
            .get_or_create(&ProviderLabel {
                provider: provider.to_string(),
            })
            .set(state);
    }

    /// The exposition (OpenMetrics text, see [`CONTENT_TYPE`]) of every series
    /// as it stands; sampled gauges show their last sampled values.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Keeps `dispatch_tasks_running` up while a task runs (see [`Metrics::task_running`]).
#[derive(Debug)]
pub struct RunningGuard<'a>(&'a Gauge);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `model` label: the model as agent files write it, `provider/model-id`.
fn model_label(provider: &str, model: &str) -> String {
    let mut s = String::with_capacity(provider.len() + 1 + model.len());
    s.push_str(provider);
    s.push('/');
    s.push_str(model);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` (labels exactly as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    #[test]
    fn render_lists_every_family() {
        let m = Metrics::new();
        // A family shows once it has a series; give each one.
        m.http_request("metadata", 200, Duration::from_millis(1));
        m.set_tasks("queued", 0);
        m.task_finished("a", "failed", Some("internal"), Duration::ZERO);
        m.provider_request("openai", "m", "ok", Some(Duration::ZERO));
        m.usage("a", "openai", "m", 1, 1, 0.01);
        m.set_breaker_state("openai", BREAKER_CLOSED);
        m.audit_verdict("a", "pass");
        m.set_instances("host:1:2", 3);
        let text = m.render();
        for (family, kind) in [
            ("dispatch_http_requests", "counter"),
            ("dispatch_http_request_duration_seconds", "histogram"),
            ("dispatch_tasks", "gauge"),
            ("dispatch_tasks_finished", "counter"),
            ("dispatch_task_failures", "counter"),
            ("dispatch_task_duration_seconds", "histogram"),
            ("dispatch_tasks_running", "gauge"),
            ("dispatch_queue_depth", "gauge"),
            ("dispatch_provider_requests", "counter"),
            ("dispatch_provider_request_duration_seconds", "histogram"),
            ("dispatch_tokens", "counter"),
            ("dispatch_cost_usd", "counter"),
            ("dispatch_breaker_state", "gauge"),
            ("dispatch_audit_verdicts", "counter"),
            ("dispatch_instance", "gauge"),
            ("dispatch_instances_live", "gauge"),
        ] {
            let line = format!("# TYPE {family} {kind}\n");
            assert!(text.contains(&line), "missing `{line}` in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_fresh_registry_shows_the_unlabelled_gauges() {
        let text = Metrics::new().render();
        assert_eq!(sample(&text, "dispatch_tasks_running"), Some(0.0));
        assert_eq!(sample(&text, "dispatch_queue_depth"), Some(0.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn http_requests_count_and_time() {
        let m = Metrics::new();
        m.http_request("sse", 200, Duration::from_millis(3));
        m.http_request("sse", 200, Duration::from_millis(7));
        m.http_request("streamable_http", 401, Duration::from_millis(1));
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                r#"dispatch_http_requests_total{transport="sse",status="200"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"dispatch_http_requests_total{transport="streamable_http",status="401"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"dispatch_http_request_duration_seconds_count{transport="sse"}"#
            ),
            Some(2.0),
            "{text}"
        );
        let sum = sample(
            &text,
            r#"dispatch_http_request_duration_seconds_sum{transport="sse"}"#,
        )
        .unwrap();
        assert!((sum - 0.010).abs() < 1e-9, "{sum}");
        // 3 ms and 7 ms both fall under the 10 ms bucket, not the 5 ms one.
        assert_eq!(
            sample(
                &text,
                r#"dispatch_http_request_duration_seconds_bucket{le="0.005",transport="sse"}"#
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn usage_and_tasks_are_labelled_by_agent_and_model() {
        let m = Metrics::new();
        m.usage("writer", "openai", "gpt-4o-mini", 1000, 500, 0.00045);
        m.usage("writer", "openai", "gpt-4o-mini", 10, 5, 0.00005);
        // A failed call reports nothing and creates no series.
        m.usage("judge", "openai", "judge", 0, 0, 0.0);
        m.task_finished("writer", "failed", Some("timeout"), Duration::from_secs(2));
        m.provider_request(
            "openai",
            "gpt-4o-mini",
            "ok",
            Some(Duration::from_millis(20)),
        );
        m.provider_request("openai", "gpt-4o-mini", "circuit_open", None);
        m.audit_verdict("writer", "needs-revision");
        let text = m.render();
        let at = |s: &str| sample(&text, s);
        assert_eq!(
            at(
                r#"dispatch_tokens_total{agent="writer",model="openai/gpt-4o-mini",direction="input"}"#
            ),
            Some(1010.0),
            "{text}"
        );
        assert_eq!(
            at(
                r#"dispatch_tokens_total{agent="writer",model="openai/gpt-4o-mini",direction="output"}"#
            ),
            Some(505.0)
        );
        let cost =
            at(r#"dispatch_cost_usd_total{agent="writer",model="openai/gpt-4o-mini"}"#).unwrap();
        assert!((cost - 0.0005).abs() < 1e-12, "{cost}");
        assert!(!text.contains(r#"agent="judge""#), "{text}");
        assert_eq!(
            at(r#"dispatch_tasks_finished_total{agent="writer",state="failed"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(r#"dispatch_task_failures_total{agent="writer",reason="timeout"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(r#"dispatch_task_duration_seconds_sum{agent="writer"}"#),
            Some(2.0)
        );
        assert_eq!(
            at(
                r#"dispatch_provider_requests_total{provider="openai",model="openai/gpt-4o-mini",outcome="ok"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            at(
                r#"dispatch_provider_requests_total{provider="openai",model="openai/gpt-4o-mini",outcome="circuit_open"}"#
            ),
            Some(1.0)
        );
        // Only the call that was sent is timed.
        assert_eq!(
            at(r#"dispatch_provider_request_duration_seconds_count{provider="openai"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(r#"dispatch_audit_verdicts_total{agent="writer",verdict="needs-revision"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn gauges_follow_samples_and_guards() {
        let m = Metrics::new();
        let a = m.task_running();
        let b = m.task_running();
        m.set_queue_depth(7);
        m.set_tasks("queued", 7);
        m.set_breaker_state("anthropic", BREAKER_OPEN);
        let text = m.render();
        assert_eq!(sample(&text, "dispatch_tasks_running"), Some(2.0));
        assert_eq!(sample(&text, "dispatch_queue_depth"), Some(7.0));
        assert_eq!(
            sample(&text, r#"dispatch_tasks{state="queued"}"#),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, r#"dispatch_breaker_state{provider="anthropic"}"#),
            Some(2.0)
        );
        drop(a);
        m.set_breaker_state("anthropic", BREAKER_CLOSED);
        let text = m.render();
        assert_eq!(sample(&text, "dispatch_tasks_running"), Some(1.0));
        assert_eq!(
            sample(&text, r#"dispatch_breaker_state{provider="anthropic"}"#),
            Some(0.0)
        );
        drop(b);
        assert_eq!(sample(&m.render(), "dispatch_tasks_running"), Some(0.0));
    }
}
