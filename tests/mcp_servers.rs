//! Other MCP servers' tools (`[mcp_servers.NAME]`), with a real stdio MCP
//! server written for the test (tests/fixtures/mcp_tool_server.py, standard
//! library only): names made valid for models, results and errors, a clean
//! environment for the server, list changes, a timeout, and a server that
//! dies and is started again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::fake_provider::Behavior;
use common::fixture::*;
use common::*;
use rmcp::model::{CallToolRequestParams, ClientRequest, Request};
use rmcp::service::PeerRequestOptions;
use serde_json::{Value, json};

/// Whether `python3` runs here. The servers of these tests are written for
/// its standard library; `.ci/run` installs it, and a machine without it
/// skips them, saying so loudly.
fn python_or_skip(test: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED {test}: python3 is not on PATH (the test MCP server needs it; `.ci/run` installs it) ***\n"
        );
    }
    ok
}

fn server_toml(extra: &str) -> String {
    let script = repo_root().join("tests/fixtures/mcp_tool_server.py");
    let script = format!("{:?}", script.display().to_string());
    format!(
        "[mcp_servers.tools]\ncommand = [\"python3\", {script}]\nenv = {{ MCP_TEST_VAR = \"${{DISPATCH_TEST_MCP_VAR}}\" }}\n{extra}\n\
         [mcp_servers.slowpoke]\ncommand = [\"python3\", {script}]\ntimeout_secs = 1\n"
    )
}

fn actor(tools: &str) -> String {
    format!("---\ndescription: acts\nmodel: openai/actor\ntools: [{tools}]\n---\nUse tools.\n")
}

fn tool_contents(fx: &Fx, n: usize) -> Vec<String> {
    let reqs = fx.fake.requests();
    reqs[n].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

fn offered(fx: &Fx, n: usize) -> Vec<String> {
    fx.fake.requests()[n].body["tools"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn connect(fx: &Fx) -> Client {
    let mut spawn = fx.spawn();
    spawn
        .env
        .push(("DISPATCH_TEST_MCP_VAR".into(), "visible".into()));
    connect_with(&fx.p, spawn).await
}

#[tokio::test]
async fn an_agent_calls_another_servers_tools() {
    if !python_or_skip("an_agent_calls_another_servers_tools") {
        return;
    }
    let fx = Fx::new(
        &[
            ("actor", &actor("tools/*, kb_read, slowpoke/slow")),
            ("picky", &actor("tools/echo")),
        ],
        &server_toml(""),
    )
    .await;
    fx.fake.queue_model(
        "actor",
        [
            Behavior::calls(&[
                ("tools_echo", json!({"text": "hi"})),
                ("tools_secret_env", json!({})),
                ("tools_get_item", json!({})),
                ("tools_fail", json!({})),
                ("slowpoke_slow", json!({})),
            ]),
            Behavior::reply("Used them."),
        ],
    );
    let mut c = connect(&fx).await;
    let mut params = CallToolRequestParams::new("agent_run");
    params.arguments = json!({"agent": "actor", "input": "use the tools"})
        .as_object()
        .cloned();
    let handle = c
        .service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let v = match handle.await_response().await.unwrap() {
        rmcp::model::ServerResult::CallToolResult(r) => r.structured_content.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let names = offered(&fx, 0);
    for n in ["kb_read", "tools_echo", "tools_get_item", "tools_crash"] {
        assert!(names.contains(&n.to_string()), "{n} not offered: {names:?}");
    }
    let r = tool_contents(&fx, 1);
    assert_eq!(r[0], "echo: hi");
    assert_eq!(
        r[1], "keys seen: none; MCP_TEST_VAR=visible",
        "the server saw dispatch's provider keys, or not its own env"
    );
    assert_eq!(r[2], "item 7");
    assert_eq!(r[3], "it broke on purpose");
    assert!(
        r[4].contains("slowpoke/slow did not answer within 1s"),
        "{r:?}"
    );
    let s = status(&c, &id(&v)).await;
    let errors: Vec<&Value> = s["turns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["error"].is_string())
        .collect();
    assert_eq!(errors.len(), 2, "{s:#}");
    assert_eq!(errors[0]["tool"], "tools_fail");
    let mut notes = Vec::new();
    while let Ok(n) = c.notes.try_recv() {
        if let Note::Progress(m) = n {
            notes.push(m);
        }
    }
    assert!(
        notes.iter().any(|m| m == "actor: calling tools_echo"),
        "{notes:#?}"
    );
    // An agent allowed one tool of the server sees only that one.
    fx.fake.queue_model("actor", [Behavior::reply("ok")]);
    let v = run(&c, "picky", json!("x")).await;
    assert_eq!(v["state"], "succeeded");
    let last = fx.fake.requests().len() - 1;
    assert_eq!(offered(&fx, last), ["tools_echo"]);
    c.close().await;
}

#[tokio::test]
async fn a_list_change_is_seen_by_the_next_run() {
    if !python_or_skip("a_list_change_is_seen_by_the_next_run") {
        return;
    }
    let fx = Fx::new(&[("actor", &actor("tools/*"))], &server_toml("")).await;
    fx.fake.queue_model(
        "actor",
        [
            Behavior::call("tools_grow", json!({})),
            Behavior::reply("first done"),
            Behavior::call("tools_late", json!({})),
            Behavior::reply("second done"),
        ],
    );
    let c = connect(&fx).await;
    let v = run(&c, "actor", json!("grow")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(tool_contents(&fx, 1), ["grown"]);
    assert!(!offered(&fx, 0).contains(&"tools_late".to_string()));
    let v = run(&c, "actor", json!("use the new tool")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert!(
        offered(&fx, 2).contains(&"tools_late".to_string()),
        "the changed list was not fetched again: {:?}",
        offered(&fx, 2)
    );
    assert_eq!(tool_contents(&fx, 3), ["late tool ran"]);
    c.close().await;
}

#[tokio::test]
async fn a_server_that_dies_is_started_again() {
    if !python_or_skip("a_server_that_dies_is_started_again") {
        return;
    }
    let fx = Fx::new(&[("actor", &actor("tools/*"))], &server_toml("")).await;
    fx.fake.queue_model(
        "actor",
        [
            Behavior::call("tools_crash", json!({})),
            Behavior::reply("it crashed"),
        ],
    );
    let c = connect(&fx).await;
    let v = run(&c, "actor", json!("crash it")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let crashed = tool_contents(&fx, 1);
    assert!(
        crashed[0].contains("the MCP server `tools` failed"),
        "{crashed:?}"
    );
    // It died moments after it started, so it is retried after a backoff;
    // until then a call says when. Poll until a call gets through.
    let echoed = eventually("the server to be started again", DEADLINE, || {
        let (c, fx) = (&c, &fx);
        async move {
            fx.fake.queue_model(
                "actor",
                [
                    Behavior::call("tools_echo", json!({"text": "back"})),
                    Behavior::reply("checked"),
                ],
            );
            let before = fx.fake.requests().len();
            let v = run(c, "actor", json!("echo")).await;
            assert_eq!(v["state"], "succeeded", "{v:#}");
            let r = tool_contents(fx, before + 1);
            if r[0] == "echo: back" {
                return Some(r);
            }
            assert!(r[0].contains("dispatch tries it again in"), "{r:?}");
            None
        }
    })
    .await;
    assert_eq!(echoed, ["echo: back"]);
    let starts = std::fs::read_to_string(fx.p.root().join("starts.log")).unwrap();
    assert_eq!(starts.lines().count(), 2, "{starts}");
    c.close().await;
}

#[tokio::test]
async fn a_bad_server_entry_is_a_config_error_with_its_place() {
    let fx = Fx::new(
        &[("actor", &actor("tools/*"))],
        "[mcp_servers.\"bad name\"]\ncommand = [\"x\"]\n",
    )
    .await;
    let out = std::process::Command::new(bin())
        .args(["agents", "--root"])
        .arg(fx.p.root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("dispatch.toml:") && err.contains("may hold only letters"),
        "{err}"
    );
}

#[tokio::test]
async fn a_streamable_http_server_with_a_token_from_the_environment() {
    use common::auth_server::{ALL_SCOPES, AUDIENCE, AuthServer};
    use common::http::HttpServer;
    // The other server is another dispatch, over HTTP with OAuth2.
    let auth = AuthServer::start().await;
    let remote_toml = format!(
        "[auth]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        auth.issuer()
    );
    let remote = Fx::new(&[("helper", &agent("openai/m"))], &remote_toml).await;
    remote
        .p
        .write("_kb/context/remote.md", "# Remote\nfrom the other server\n");
    let rs = HttpServer::start(&remote.p, remote.spawn(), 0).await;

    let toml = format!(
        "[mcp_servers.remote]\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer ${{REMOTE_MCP_TOKEN}}\" }}\n",
        rs.url("/mcp")
    );
    let fx = Fx::new(&[("actor", &actor("remote/kb_read"))], &toml).await;
    fx.fake.queue_model(
        "actor",
        [
            Behavior::call("remote_kb_read", json!({"path": "context/remote.md"})),
            Behavior::reply("read it"),
        ],
    );
    let mut spawn = fx.spawn();
    let token = auth.valid("alice", &ALL_SCOPES);
    spawn.env.push(("REMOTE_MCP_TOKEN".into(), token.clone()));
    let c = connect_with(&fx.p, spawn).await;
    let v = run(&c, "actor", json!("read remotely")).await;
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(offered(&fx, 0), ["remote_kb_read"]);
    let r = tool_contents(&fx, 1);
    assert!(r[0].contains("from the other server"), "{r:?}");
    assert!(!c.stderr().contains(&token), "the token reached the log");
    c.close().await;
}
