//! Workflow scheduling cost: validation and scheduling of 10,000-step DAGs
//! (target: < 100 ms together), and 1,000-wide and 10,000-step runs end to end
//! through the engine against a zero-latency fake provider.
//! Run: `cargo bench --bench workflow`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
#[path = "../tests/common/fake_provider.rs"]
mod fake_provider;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch::app::App;
use dispatch::config::Paths;
use dispatch::engine::RunRequest;
use dispatch::task::RunState;
use dispatch::workflow::{Scheduler, StepState, WorkflowDef, validate};
use serde_json::{Value, json};

const RUNS: usize = 5;

fn chain(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({"id": "s0", "agent": "a"})
            } else {
                json!({"id": format!("s{i}"), "agent": "a", "input": format!("{{{{s{}.output}}}}", i - 1), "depends_on": [format!("s{}", i - 1)]})
            }
        })
        .collect();
    json!({"steps": steps})
}

fn fan(width: usize, join: bool) -> Value {
    let mut steps = vec![json!({"id": "root", "agent": "a"})];
    for i in 0..width {
        steps.push(json!({"id": format!("w{i}"), "agent": "a", "input": "{{root.output}}", "depends_on": ["root"]}));
    }
    if join {
        let deps: Vec<String> = (0..width).map(|i| format!("w{i}")).collect();
        steps.push(json!({"id": "join", "agent": "a", "depends_on": deps}));
    }
    json!({"steps": steps})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Validate, then schedule every step with instant completions.
fn plan_and_schedule(v: &Value) -> (Duration, Duration) {
    let t0 = Instant::now();
    let def = WorkflowDef::from_json(v).expect("definition");
    let plan = validate(&def, &|_| true).expect("valid");
    let validated = t0.elapsed();
    let t1 = Instant::now();
    let mut s = Scheduler::new(&plan, vec![StepState::Pending; plan.len()]);
    let mut queue: VecDeque<usize> = s.initial().into();
    let mut done = 0;
    while let Some(i) = queue.pop_front() {
        s.start(i);
        let (ready, _) = s.complete(&plan, i, StepState::Succeeded);
        queue.extend(ready);
        done += 1;
    }
    assert_eq!(done, plan.len());
    (validated, t1.elapsed())
}

fn main() {
    println!("== scheduler (in process, no steps executed; median of {RUNS})");
    for (name, v) in [
        ("10,000-step chain", chain(10_000)),
        ("10,000-wide fan-out", fan(9_999, false)),
        ("1,000-wide fan-out + join", fan(1_000, true)),
    ] {
        let (mut vals, mut scheds, mut totals) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (a, b) = plan_and_schedule(&v);
            vals.push(a);
            scheds.push(b);
            totals.push(a + b);
        }
        println!(
            "{name}: validate {:.1} ms + schedule {:.1} ms = {:.1} ms",
            ms(median(vals)),
            ms(median(scheds)),
            ms(median(totals))
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("\n== end to end through the engine (SQLite, outbox and session files, zero-latency fake)");
        for (name, v, steps) in [
            ("1,000-wide fan-out + join", fan(1_000, true), 1_002usize),
            ("10,000-wide fan-out", fan(9_999, false), 10_000),
        ] {
            let mut totals = Vec::new();
            for _ in 0..3 {
                totals.push(end_to_end(&v).await);
            }
            let t = median(totals);
            println!(
                "{name}: {:.0} ms total, {:.2} ms per step, {:.0} steps/s",
                ms(t),
                ms(t) / steps as f64,
                steps as f64 / t.as_secs_f64()
            );
        }
    });
}

async fn end_to_end(v: &Value) -> Duration {
    let fake = fake_provider::FakeProvider::start().await;
    fake.set_default(fake_provider::Behavior::reply("ok"));
    let dir = common::project(
        "[limits]\nglobal = 64\nper_agent = 64\nper_provider = 64\nqueue = 20000\n",
    );
    // SAFETY: single-threaded at this point of the bench; nothing reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("OPENAI_BASE_URL", fake.base_url_openai());
        std::env::set_var("OPENAI_API_KEY", "sk-bench");
        std::env::remove_var("DISPATCH_DATABASE_URL");
    }
    let app = Arc::new(App::open(Paths::new(dir.path(), None, None)).expect("open"));
    let engine = app.engine(false).await.expect("engine");
    let def = WorkflowDef::from_json(v).expect("def");
    let t = Instant::now();
    let run = engine
        .start_run(RunRequest {
            def,
            input: json!("go"),
            agent: None,
            subject: None,
            limits: Default::default(),
            approver: None,
        })
        .await
        .expect("start");
    let done = engine
        .wait_run(&run.id, None, Duration::from_secs(600))
        .await
        .expect("wait");
    let elapsed = t.elapsed();
    assert_eq!(done.state, RunState::Succeeded);
    elapsed
}
