//! Tools of other MCP servers, as the engine sees them: a list per server
//! and a way to call one. The MCP client itself lives in `mcp::client` (the
//! engine knows no MCP); this is the seam it plugs into.

use std::collections::BTreeSet;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ToolOutput;

/// One tool another server offers.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalTool {
    /// Its name on that server.
    pub name: String,
    /// Its description.
    pub description: String,
    /// JSON Schema of its arguments.
    pub input_schema: Value,
}

/// Other MCP servers' tools.
#[async_trait::async_trait]
pub trait ExternalTools: Send + Sync {
    /// The servers declared (`[mcp_servers.NAME]`).
    fn servers(&self) -> Vec<String>;

    /// The tools `server` offers now (started on first use, cached, refreshed
    /// when it says its list changed). The error says what to fix.
    async fn tools(&self, server: &str) -> Result<Vec<ExternalTool>, String>;

    /// Call `tool` on `server` with `args` (under the server's timeout);
    /// whatever goes wrong is an error result the model reads.
    async fn call(&self, server: &str, tool: &str, args: Value) -> ToolOutput;

    /// Stop every server started (the process is stopping).
    async fn shutdown(&self) {}
}

/// `server_tool` made valid for every model API (`^[a-zA-Z0-9_-]{1,64}$`)
/// and unique among `taken`: other characters become `_`, a long name keeps
/// its start and gets a hash of the whole, a taken one a number.
pub fn model_name(server: &str, tool: &str, taken: &BTreeSet<String>) -> String {
    let raw = format!("{server}_{tool}");
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > 64 {
        let hash = Sha256::digest(raw.as_bytes());
        let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
        name.truncate(55);
        name.push('_');
        name.push_str(&hex);
    }
    if !taken.contains(&name) {
        return name;
    }
    for n in 2.. {
        let suffix = format!("_{n}");
        let mut candidate = name.clone();
        candidate.truncate(64 - suffix.len());
        candidate.push_str(&suffix);
        if !taken.contains(&candidate) {
            return candidate;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(
            model_name("github", "create_issue", &taken),
            "github_create_issue"
        );
        assert_eq!(model_name("my.srv", "get/item", &taken), "my_srv_get_item");
        let long = model_name("s", &"x".repeat(100), &taken);
        assert_eq!(long.len(), 64);
        taken.insert("a_b".to_string());
        assert_eq!(model_name("a", "b", &taken), "a_b_2");
        taken.insert("a_b_2".to_string());
        assert_eq!(model_name("a", "b", &taken), "a_b_3");
        let ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        assert!(ok(&long) && ok(&model_name("ü", "ß", &taken)));
    }
}
