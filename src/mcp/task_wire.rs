//! The 2025-11-25 generation of MCP tasks on the wire, beside rmcp.
//!
//! rmcp (3.9 to 3.11) models only the 2026-07-28 Tasks extension (SEP-2663):
//! its `CallToolRequestParams` drops a request's `task`, its `tasks/get` and
//! `tasks/cancel` require the extension's client capability and answer in the
//! extension's shapes, and neither `capabilities.tasks` nor a tool's
//! `execution` can be declared through its types. So both transports pass
//! each message through here first:
//!
//! - [`inbound`] renames the 2025-11-25 task requests (a `tools/call` with
//!   `task`, `tasks/get`, `tasks/cancel`) to methods of our own, which rmcp
//!   hands to the server as custom requests; `tasks/result` and `tasks/list`
//!   are unknown to rmcp and arrive as custom requests under their own names.
//!   A request that carries the 2026-07-28 per-request protocol version is
//!   left alone: it is the extension's.
//! - [`outbound`] completes the answers rmcp cannot shape: `initialize`
//!   declares `capabilities.tasks`, and `tools/list` gives each tool its
//!   `execution.taskSupport`.

use serde_json::{Value, json};

use super::client_tasks::supports_tasks;

/// A task-augmented `tools/call` (2025-11-25), renamed.
pub const CALL: &str = "dispatch/tasks-2025-11-25/call";
/// `tasks/get` (2025-11-25), renamed.
pub const GET: &str = "dispatch/tasks-2025-11-25/get";
/// `tasks/cancel` (2025-11-25), renamed.
pub const CANCEL: &str = "dispatch/tasks-2025-11-25/cancel";
/// `tasks/result` (2025-11-25 only).
pub const RESULT: &str = "tasks/result";
/// `tasks/list` (2025-11-25 only).
pub const LIST: &str = "tasks/list";

/// The `_meta` key of a 2026-07-28 request's protocol version.
const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// What the answer to an incoming message needs from [`outbound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The `initialize` result: declare `capabilities.tasks`.
    Initialize,
    /// A `tools/list` result: each tool's `execution.taskSupport`.
    ToolsList,
    /// Nothing.
    AsIs,
}

/// Whether a raw message may need [`inbound`] at all (a cheap look at the
/// bytes, so the common message is decoded once).
pub fn may_concern(bytes: &[u8]) -> bool {
    const NEEDLES: [&[u8]; 4] = [b"\"task", b"tasks/", b"initialize", b"tools/list"];
    NEEDLES
        .iter()
        .any(|n| bytes.windows(n.len()).any(|w| w == *n))
}

/// Renames a 2025-11-25 task request in place; says what its answer needs.
pub fn inbound(msg: &mut Value) -> Answer {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return Answer::AsIs;
    };
    match method {
        "initialize" => return Answer::Initialize,
        "tools/list" => return Answer::ToolsList,
        _ => {}
    }
    let params = msg.get("params");
    let modern = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(PROTOCOL_VERSION_META))
        .is_some();
    if modern {
        return Answer::AsIs;
    }
    let renamed = match method {
        "tools/call"
            if params
                .and_then(|p| p.get("task"))
                .is_some_and(Value::is_object) =>
        {
            CALL
        }
        "tasks/get" => GET,
        "tasks/cancel" => CANCEL,
        _ => return Answer::AsIs,
    };
    msg["method"] = Value::String(renamed.to_string());
    Answer::AsIs
}

/// Completes the answer to a message [`inbound`] marked.
pub fn outbound(answer: Answer, msg: &mut Value) {
    let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    match answer {
        Answer::Initialize => {
            if let Some(caps) = result
                .get_mut("capabilities")
                .and_then(Value::as_object_mut)
            {
                caps.insert(
                    "tasks".into(),
                    json!({ "list": {}, "cancel": {}, "requests": { "tools": { "call": {} } } }),
                );
            }
        }
        Answer::ToolsList => {
            let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
                return;
            };
            for tool in tools.iter_mut().filter_map(Value::as_object_mut) {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                let support = if supports_tasks(name) {
                    "optional"
                } else {
                    "forbidden"
                };
                tool.insert("execution".into(), json!({ "taskSupport": support }));
            }
        }
        Answer::AsIs => {}
    }
}

/// The JSON-RPC id of a message, as a key (`None` for notifications).
pub fn id_key(msg: &Value) -> Option<String> {
    msg.get("id").map(Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_task_requests_are_renamed_and_new_ones_left_alone() {
        let mut call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "agent_run", "arguments": {}, "task": {"ttl": 1000}}});
        assert_eq!(inbound(&mut call), Answer::AsIs);
        assert_eq!(call["method"], CALL);
        let mut plain = json!({"id": 2, "method": "tools/call", "params": {"name": "agent_run"}});
        inbound(&mut plain);
        assert_eq!(plain["method"], "tools/call");
        for (m, to) in [
            ("tasks/get", GET),
            ("tasks/cancel", CANCEL),
            ("tasks/list", LIST),
        ] {
            let mut v = json!({"id": 3, "method": m, "params": {"taskId": "x"}});
            inbound(&mut v);
            assert_eq!(v["method"], to);
            let mut modern = json!({"id": 3, "method": m, "params": {"taskId": "x",
                "_meta": {PROTOCOL_VERSION_META: "2026-07-28"}}});
            inbound(&mut modern);
            assert_eq!(modern["method"], m);
        }
        assert_eq!(
            inbound(&mut json!({"id": 4, "method": "initialize"})),
            Answer::Initialize
        );
    }

    #[test]
    fn answers_declare_tasks_and_each_tools_support() {
        let mut init = json!({"id": 0, "result": {"capabilities": {"tools": {}}}});
        outbound(Answer::Initialize, &mut init);
        assert_eq!(
            init["result"]["capabilities"]["tasks"]["requests"]["tools"]["call"],
            json!({})
        );
        let mut list =
            json!({"id": 1, "result": {"tools": [{"name": "agent_run"}, {"name": "kb_read"}]}});
        outbound(Answer::ToolsList, &mut list);
        assert_eq!(
            list["result"]["tools"][0]["execution"]["taskSupport"],
            "optional"
        );
        assert_eq!(
            list["result"]["tools"][1]["execution"]["taskSupport"],
            "forbidden"
        );
        let mut error = json!({"id": 1, "error": {"code": 1}});
        outbound(Answer::ToolsList, &mut error);
        assert!(error.get("result").is_none());
    }
}
