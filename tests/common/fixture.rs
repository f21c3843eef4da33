//! A project wired to a fake provider: agents, a fast `dispatch.toml`, the
//! provider environment, and small helpers around task tools.

use serde_json::{Value, json};

use super::fake_provider::{Behavior, FakeProvider};
use super::*;

pub const OPENAI_KEY: &str = "sk-test-openai-SECRET-7f3a9c";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-SECRET-51e0d2";
pub const OPENROUTER_KEY: &str = "sk-or-v1-test-SECRET-9b1c44";

/// Fast retries, no breaker, short idle timeout; tests append their own sections.
pub const BASE_TOML: &str = "[resilience]\nbase_delay_ms = 1\nmax_delay_ms = 3000\nmax_attempts = 3\nbreaker_threshold = 0\nidle_timeout_secs = 1\n";

pub struct Fx {
    pub p: Project,
    pub fake: FakeProvider,
}

impl Fx {
    pub async fn new(agents: &[(&str, &str)], toml: &str) -> Fx {
        let p = Project::new();
        for (name, body) in agents {
            p.write_agent(&format!("{name}.agent.md"), body);
        }
        p.write("dispatch.toml", format!("{BASE_TOML}{toml}"));
        let fake = FakeProvider::start().await;
        fake.set_default(Behavior::reply("default answer"));
        Fx { p, fake }
    }

    pub fn spawn(&self) -> Spawn {
        Spawn {
            env: vec![
                ("OPENAI_BASE_URL".into(), self.fake.base_url_openai()),
                ("OPENAI_API_KEY".into(), OPENAI_KEY.into()),
                ("OPENROUTER_BASE_URL".into(), self.fake.base_url_openai()),
                ("OPENROUTER_API_KEY".into(), OPENROUTER_KEY.into()),
                ("ANTHROPIC_BASE_URL".into(), self.fake.base_url_anthropic()),
                ("ANTHROPIC_API_KEY".into(), ANTHROPIC_KEY.into()),
            ],
            args: vec![],
        }
    }

    pub async fn connect(&self) -> Client {
        connect_with(&self.p, self.spawn()).await
    }
}

pub fn agent(model: &str) -> String {
    format!("---\ndescription: test agent\nmodel: {model}\n---\nYou are a careful test agent.\n")
}

pub async fn run(c: &Client, agent: &str, input: Value) -> Value {
    c.ok(
        "agent_run",
        json!({"agent": agent, "input": input, "wait_seconds": 60}),
    )
    .await
}

pub async fn status(c: &Client, id: &str) -> Value {
    c.ok("task_status", json!({"task_id": id})).await
}

pub fn id(v: &Value) -> String {
    v["task_id"].as_str().expect("task_id").to_string()
}

pub async fn wait_done(c: &Client, id: &str) -> Value {
    let v = c
        .ok("task_result", json!({"task_id": id, "wait_seconds": 60}))
        .await;
    assert_eq!(v["done"], true, "{v:#}");
    v
}
