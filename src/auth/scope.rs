//! The three dispatch scopes, who a request is from, and which scope each
//! tool and MCP method needs.

use std::collections::BTreeSet;
use std::fmt;

/// A dispatch OAuth scope. Scopes are independent: `dispatch:write` does not
/// imply `dispatch:read`; a client asks for each one it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `dispatch:read`: look at agents, tasks, workflows, usage and the KB.
    Read,
    /// `dispatch:run`: start, delegate and cancel agent tasks and workflows
    /// (which spends money on model calls).
    Run,
    /// `dispatch:write`: write files into the knowledge base.
    Write,
}

impl Scope {
    /// Every scope, in the order they are advertised.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Write];

    /// The scope string, e.g. `dispatch:run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "dispatch:read",
            Scope::Run => "dispatch:run",
            Scope::Write => "dispatch:write",
        }
    }

    /// The scope named by `s`, if it is one of ours.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request is from, after authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject (`sub`, or `username` from introspection): the
    /// owner of the tasks this request creates.
    pub subject: String,
    /// Every scope the token grants, ours and others.
    pub scopes: BTreeSet<String>,
    /// The OAuth client the token was issued to (`client_id`, or `azp`), if
    /// the token says.
    pub client_id: Option<String>,
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str())
    }
}

/// The scope a tool call needs. Accepts our tool names and the prototype's
/// slash names (`agent/run`). Looking and listing need [`Scope::Read`];
/// anything that runs or cancels agents and workflows needs [`Scope::Run`];
/// `kb_write` needs [`Scope::Write`]. An unknown tool needs [`Scope::Read`]:
/// the server then answers "unknown tool" itself.
pub fn required_scope(tool: &str) -> Scope {
    known_tool_scope(tool).unwrap_or(Scope::Read)
}

/// The scope of a tool this module knows by name, canonical or slash form.
fn known_tool_scope(tool: &str) -> Option<Scope> {
    // The prototype's names are ours with `/` for `_` (`task/status`).
    let name = tool.replacen('/', "_", 1);
    Some(match name.as_str() {
        "agent_list" | "task_status" | "task_result" | "task_list" | "workflow_status"
        | "kb_read" | "kb_list" | "kb_search" | "usage_report" => Scope::Read,
        "agent_run" | "agent_delegate" | "task_cancel" | "workflow_run" => Scope::Run,
        "kb_write" => Scope::Write,
        _ => return None,
    })
}

/// The scope a non-tool MCP method needs; `None` means an authenticated
/// caller may use it whatever its scopes (the handshake, `ping`,
/// notifications, and discovering which tools and prompts exist). Tool calls
/// (`tools/call`) return `None` here: their scope depends on the tool, see
/// [`required_scope`]. Unknown methods need [`Scope::Read`].
pub fn required_scope_for_method(method: &str) -> Option<Scope> {
    if method.starts_with("notifications/") {
        return None;
    }
    match method {
        "initialize" | "ping" | "tools/list" | "tools/call" | "prompts/list"
        | "logging/setLevel" => None,
        // Reading the knowledge base through resources is reading.
        "resources/list"
        | "resources/read"
        | "resources/templates/list"
        | "resources/subscribe"
        | "resources/unsubscribe"
        | "prompts/get"
        | "completion/complete" => Some(Scope::Read),
        // MCP's task methods mirror our task tools.
        "tasks/get" | "tasks/list" | "tasks/result" => Some(Scope::Read),
        "tasks/cancel" | "tasks/update" => Some(Scope::Run),
        _ => Some(Scope::Read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_strings_round_trip() {
        assert_eq!(
            Scope::ALL.map(Scope::as_str),
            ["dispatch:read", "dispatch:run", "dispatch:write"]
        );
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(Scope::parse("dispatch:admin"), None);
        assert_eq!(Scope::parse("DISPATCH:READ"), None);
    }

    #[test]
    fn every_tool_name_maps_to_its_scope() {
        let table = [
            ("agent_list", Scope::Read),
            ("agent_run", Scope::Run),
            ("agent_delegate", Scope::Run),
            ("task_status", Scope::Read),
            ("task_result", Scope::Read),
            ("task_list", Scope::Read),
            ("task_cancel", Scope::Run),
            ("workflow_run", Scope::Run),
            ("workflow_status", Scope::Read),
            ("usage_report", Scope::Read),
            ("kb_read", Scope::Read),
            ("kb_write", Scope::Write),
            ("kb_list", Scope::Read),
            ("kb_search", Scope::Read),
        ];
        for (name, scope) in table {
            assert_eq!(required_scope(name), scope, "{name}");
            let slash = name.replacen('_', "/", 1);
            assert_eq!(required_scope(&slash), scope, "{slash}");
        }
        assert_eq!(required_scope("no_such_tool"), Scope::Read);
        assert_eq!(required_scope("kb/write/x"), Scope::Read);
        assert_eq!(required_scope(""), Scope::Read);
    }

    /// The server's tool list and this table must not drift apart: every tool
    /// the MCP layer offers is named here explicitly, under both names, and a
    /// tool annotated read-only needs exactly `dispatch:read`.
    #[test]
    fn every_served_tool_is_mapped_explicitly() {
        for spec in crate::mcp::tools::TOOLS.iter() {
            let scope = known_tool_scope(spec.name)
                .unwrap_or_else(|| panic!("tool {} has no scope in auth::scope", spec.name));
            assert_eq!(
                known_tool_scope(spec.legacy_name),
                Some(scope),
                "{}",
                spec.legacy_name
            );
            let read_only = spec
                .tool
                .annotations
                .as_ref()
                .and_then(|a| a.read_only_hint)
                .unwrap_or(false);
            assert_eq!(read_only, scope == Scope::Read, "{}", spec.name);
        }
    }

    #[test]
    fn methods_map_to_scopes() {
        for m in [
            "initialize",
            "ping",
            "notifications/initialized",
            "notifications/cancelled",
            "tools/list",
            "tools/call",
            "prompts/list",
        ] {
            assert_eq!(required_scope_for_method(m), None, "{m}");
        }
        for m in [
            "resources/list",
            "resources/read",
            "resources/templates/list",
            "resources/subscribe",
            "tasks/get",
            "something/new",
        ] {
            assert_eq!(required_scope_for_method(m), Some(Scope::Read), "{m}");
        }
        assert_eq!(required_scope_for_method("tasks/cancel"), Some(Scope::Run));
    }

    #[test]
    fn principal_has_exact_scopes() {
        let p = Principal {
            subject: "alice".into(),
            scopes: ["dispatch:run".to_string(), "openid".to_string()].into(),
            client_id: None,
        };
        assert!(p.has(Scope::Run));
        assert!(!p.has(Scope::Read));
        assert!(!p.has(Scope::Write));
    }
}
