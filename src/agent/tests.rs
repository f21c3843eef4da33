//! Reader tests, one per dialect and per kind of problem.

use std::path::Path;
use std::time::Duration;

use super::reader::{FileReport, ReadContext, parse_agent};
use super::{ModelRef, SourceFormat};
use crate::diag::Severity;

fn parse(text: &str) -> FileReport {
    parse_agent(
        text,
        Path::new("agents/test.agent.md"),
        &ReadContext::default(),
    )
}

fn m(s: &str) -> ModelRef {
    let (p, rest) = s.split_once('/').unwrap();
    ModelRef {
        provider: p.into(),
        model: rest.into(),
    }
}

fn diag_lines(r: &FileReport) -> Vec<String> {
    r.diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn our_own_format() {
    let r = parse(
        "---\n\
         name: code-review\n\
         description: Deep code analysis\n\
         model: [openrouter/anthropic/claude-sonnet-4, anthropic/claude-sonnet-4]\n\
         temperature: 0.3\n\
         max_tokens: 4096\n\
         mirror: code-review-auditor\n\
         max_retries: 2\n\
         escalate: openrouter/anthropic/claude-opus-4.1\n\
         timeout: 120s\n\
         tools: [kb_read, kb/search]\n\
         routing: {keywords: [review, diff], patterns: ['(?i)pull request']}\n\
         audit: {rate: 0.5, min_rate: 0.1, adaptive: true}\n\
         ---\n\
         You are a senior reviewer.\n",
    );
    assert!(r.diagnostics.is_empty(), "{:?}", diag_lines(&r));
    let a = r.agent.unwrap();
    assert_eq!(a.name, "code-review");
    assert_eq!(a.description, "Deep code analysis");
    assert_eq!(
        a.models,
        [
            m("openrouter/anthropic/claude-sonnet-4"),
            m("anthropic/claude-sonnet-4")
        ]
    );
    assert_eq!(a.temperature, Some(0.3));
    assert_eq!(a.max_tokens, Some(4096));
    assert_eq!(a.mirror.as_deref(), Some("code-review-auditor"));
    assert_eq!(a.max_retries, 2);
    assert_eq!(a.escalate, Some(m("openrouter/anthropic/claude-opus-4.1")));
    assert_eq!(a.timeout, Some(Duration::from_secs(120)));
    assert_eq!(a.tools, ["kb_read", "kb_search"]);
    assert_eq!(a.routing.keywords, ["review", "diff"]);
    assert_eq!(a.routing.patterns, ["(?i)pull request"]);
    let audit = a.audit.unwrap();
    assert_eq!(
        (audit.rate, audit.min_rate, audit.adaptive),
        (0.5, 0.1, true)
    );
    assert_eq!(a.system_prompt, "You are a senior reviewer.");
    assert_eq!(a.format, SourceFormat::Dispatch);
    assert!(a.extra.is_empty());
}

#[test]
fn prototype_format() {
    let r = parse(
        "---\n\
         name: docs\n\
         model:\n\
         \x20 id: anthropic/claude-3-haiku\n\
         \x20 provider: openrouter\n\
         \x20 params:\n\
         \x20   temperature: 0.2\n\
         \x20   maxTokens: 2000\n\
         maxRetries: 3\n\
         permissions: {kb: write}\n\
         trigger: {on: push}\n\
         dag:\n\
         \x20 steps:\n\
         \x20   - {id: a, agent: docs}\n\
         ---\n\
         Write docs.\n",
    );
    let a = r.agent.clone().expect("loads");
    assert_eq!(a.models, [m("openrouter/anthropic/claude-3-haiku")]);
    assert_eq!(a.temperature, Some(0.2));
    assert_eq!(a.max_tokens, Some(2000));
    assert_eq!(a.max_retries, 3);
    assert_eq!(a.format, SourceFormat::Prototype);
    assert!(a.extra.contains_key("permissions") && a.extra.contains_key("trigger"));
    assert_eq!(a.dag.unwrap()["steps"][0]["id"], "a");
    // Kept keys are warnings, never errors.
    assert!(
        r.diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning)
    );
    assert_eq!(r.diagnostics.len(), 2, "{:?}", diag_lines(&r));
}

#[test]
fn prototype_model_with_provider_prefix_already_in_id() {
    let r = parse("---\nmodel: {id: openai/gpt-4o, provider: openai}\n---\nx\n");
    assert_eq!(r.agent.unwrap().models, [m("openai/gpt-4o")]);
}

#[test]
fn vscode_format() {
    let r = parse(
        "---\n\
         description: Generate an implementation plan\n\
         argument-hint: Describe the feature\n\
         tools: ['search', 'fetch', 'githubRepo']\n\
         model: Claude Sonnet 4 (copilot)\n\
         handoffs:\n\
         \x20 - label: Implement\n\
         \x20   agent: implementation\n\
         \x20   prompt: Implement the plan\n\
         ---\n\
         # Planning instructions\n\
         You are in planning mode.\n",
    );
    let a = r.agent.clone().expect("a VS Code file loads unchanged");
    assert_eq!(a.name, "test");
    assert_eq!(a.format, SourceFormat::VsCode);
    assert!(a.models.is_empty());
    assert_eq!(a.tools, ["search", "fetch", "githubRepo"]);
    assert!(a.extra.contains_key("handoffs") && a.extra.contains_key("argument-hint"));
    let lines = diag_lines(&r);
    assert!(lines.iter().all(|l| l.contains(": warning: ")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("display name")),
        "{lines:?}"
    );
}

#[test]
fn claude_code_format() {
    let r = parse(
        "---\n\
         name: code-reviewer\n\
         description: Expert code review specialist. Use proactively after writing code.\n\
         tools: Read, Grep, Glob, kb_read\n\
         model: sonnet\n\
         color: blue\n\
         ---\n\
         You are a senior code reviewer.\n",
    );
    let a = r.agent.clone().expect("loads");
    assert_eq!(a.name, "code-reviewer");
    assert_eq!(a.tools, ["Read", "Grep", "Glob", "kb_read"]);
    assert_eq!(a.models, [m("anthropic/claude-sonnet-4-5")]);
    assert_eq!(a.format, SourceFormat::ClaudeCode);
    assert!(
        r.diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning)
    );
    let r = parse("---\nmodel: inherit\n---\nx\n");
    assert_eq!(r.agent.unwrap().models, [m("anthropic/claude-sonnet-4-5")]);
}

#[test]
fn model_aliases_come_from_the_config() {
    let mut ctx = ReadContext::default();
    ctx.aliases.insert(
        "sonnet".into(),
        "openrouter/anthropic/claude-sonnet-4.5".into(),
    );
    ctx.aliases
        .insert("cheap".into(), "openai/gpt-4o-mini".into());
    let r = parse_agent(
        "---\nmodel: [cheap, sonnet]\n---\nx\n",
        Path::new("a.agent.md"),
        &ctx,
    );
    assert_eq!(
        r.agent.unwrap().models,
        [
            m("openai/gpt-4o-mini"),
            m("openrouter/anthropic/claude-sonnet-4.5")
        ]
    );
    let msgs: Vec<String> = r.diagnostics.iter().map(|d| d.message.clone()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("`cheap` is read as `openai/gpt-4o-mini`")),
        "{msgs:?}"
    );
    ctx.aliases.insert("bad".into(), "nowhere/model".into());
    let r = parse_agent("---\nmodel: bad\n---\nx\n", Path::new("b.agent.md"), &ctx);
    assert!(r.agent.is_none());
    assert!(r.diagnostics[0].message.contains("[model_aliases]"));
}

#[test]
fn crlf_and_bom_are_fine() {
    let text =
        "\u{feff}---\r\nname: win\r\nmodel: openai/gpt-4o\r\n---\r\nLine one.\r\nLine two.\r\n";
    let r = parse(text);
    assert!(r.diagnostics.is_empty(), "{:?}", diag_lines(&r));
    let a = r.agent.unwrap();
    assert_eq!(a.name, "win");
    assert_eq!(a.system_prompt, "Line one.\nLine two.");
    // Positions still count lines correctly.
    let r = parse("\u{feff}---\r\nname: win\r\ntemperature: 9\r\n---\r\nx\r\n");
    assert_eq!(
        diag_lines(&r)[0],
        "agents/test.agent.md:3:1: error: temperature 9 is out of range: use 0.0 to 2.0"
    );
}

#[test]
fn description_falls_back_to_the_first_paragraph() {
    let r = parse(
        "---\nmodel: openai/gpt-4o\n---\n# Title\n\nReviews **Rust** code\nfor `unsafe` use.\n\nMore.\n",
    );
    assert_eq!(
        r.agent.unwrap().description,
        "Reviews Rust code for unsafe use."
    );
}

#[test]
fn yaml_errors_point_into_the_file() {
    let r = parse("---\nname: x\nmodel: [a, b\n---\nbody\n");
    assert!(r.agent.is_none());
    let d = &r.diagnostics[0];
    assert_eq!(d.severity, Severity::Error);
    assert!(d.line >= 3, "{d}");
    assert!(d.message.starts_with("invalid YAML"), "{d}");
    assert!(
        !d.message.contains(" at line "),
        "position is ours, not serde_yaml's: {d}"
    );

    let r = parse("---\nname: x\nname: y\n---\nbody\n");
    assert!(r.agent.is_none(), "duplicate keys are an error");

    let r = parse("---\nname: x\nmodel: openai/gpt-4o\nno closing line\n");
    assert_eq!(
        diag_lines(&r),
        [
            "agents/test.agent.md:1:1: error: front matter opened here is never closed: add a line `---` after the YAML keys"
        ]
    );

    let r = parse("---\n- a\n- b\n---\nbody\n");
    assert!(r.diagnostics[0].message.contains("key: value"));
}

#[test]
fn value_errors_name_the_key_line_and_the_fix() {
    let cases = [
        (
            "model: gpt-4o",
            2,
            "write `provider/model-id`, e.g. `openai/gpt-4o`",
        ),
        ("model: openai/", 2, "empty model id"),
        ("model: acme/x", 2, "unknown provider `acme`"),
        ("temperature: hot", 2, "must be a number"),
        ("temperature: -1", 2, "out of range"),
        ("max_tokens: 0", 2, "from 1 to"),
        ("max_retries: 11", 2, "from 0 to 10"),
        ("timeout: soon", 2, "duration such as `120s`"),
        ("timeout: 2h", 2, "out of range"),
        ("name: 'bad name!'", 2, "is not valid"),
        ("mirror: [a]", 2, "must be an agent name"),
        ("routing: {patterns: ['(']}", 2, "not a valid regex"),
        ("audit: {rate: 2}", 2, "from 0.0 to 1.0"),
        ("audit: {rate: 0.2, min_rate: 0.5}", 2, "above"),
        ("tools: 5", 2, "list or a comma-separated string"),
    ];
    for (line, at, needle) in cases {
        let r = parse(&format!("---\n{line}\ndescription: d\n---\nbody\n"));
        assert!(r.agent.is_none(), "{line} should fail");
        let d = r
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .unwrap_or_else(|| panic!("{line}: no error"));
        assert_eq!(d.line, at, "{line}: {d}");
        assert!(d.message.contains(needle), "{line}: {d}");
    }
}

#[test]
fn unknown_keys_are_kept_with_a_suggestion() {
    let r = parse("---\nmodel: openai/gpt-4o\ntemprature: 0.2\nx-team: platform\n---\nbody\n");
    let a = r.agent.unwrap();
    assert_eq!(a.extra["x-team"], "platform");
    let lines: Vec<String> = r.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "agents/test.agent.md:3:1: warning: unknown key `temprature` is kept but ignored; did you mean `temperature`?",
            "agents/test.agent.md:4:1: warning: unknown key `x-team` is kept but ignored",
        ]
    );
}

#[test]
fn no_front_matter_is_a_prompt_only_agent() {
    let r = parse("You just answer questions.\n");
    let a = r.agent.unwrap();
    assert_eq!(a.system_prompt, "You just answer questions.");
    assert!(a.models.is_empty());
    assert_eq!(r.diagnostics.len(), 1);
}

#[test]
fn timeouts_in_several_forms() {
    for (v, secs) in [
        ("timeout: 90", 90.0),
        ("timeout: 2m", 120.0),
        ("timeoutMs: 1500", 1.5),
        ("timeout: 1m 30s", 90.0),
    ] {
        let r = parse(&format!("---\nmodel: openai/gpt-4o\n{v}\n---\nbody\n"));
        assert_eq!(r.agent.unwrap().timeout.unwrap().as_secs_f64(), secs, "{v}");
    }
}

#[test]
fn duplicate_models_in_a_chain_are_dropped_with_a_warning() {
    let r = parse("---\nmodel: [openai/gpt-4o, openai/gpt-4o]\n---\nbody\n");
    assert_eq!(r.agent.unwrap().models.len(), 1);
    assert_eq!(r.diagnostics.len(), 1);
}

#[test]
fn tools_for_agents_servers_and_client_only_names() {
    let r = parse(
        "---\nmodel: openai/m\nmax_turns: 7\ntools: [kb/read, file_search, github/*, docs/lookup, task_status, Read]\n---\nx\n",
    );
    let a = r.agent.as_ref().unwrap();
    assert_eq!(
        a.tools,
        [
            "kb_read",
            "file_search",
            "github/*",
            "docs/lookup",
            "task_status",
            "Read"
        ]
    );
    assert_eq!(a.max_turns, Some(7));
    let lines = diag_lines(&r).join("\n");
    assert!(
        lines.contains("tools for MCP clients, not offered to agents")
            && lines.contains("task_status"),
        "{lines}"
    );
    assert!(lines.contains("not offered to the model: Read"), "{lines}");
    assert!(!lines.contains("github"), "{lines}");
    let r = parse("---\nmodel: openai/m\nmax_turns: 0\n---\nx\n");
    assert!(
        diag_lines(&r).join("\n").contains("max_turns"),
        "{:?}",
        diag_lines(&r)
    );
}
