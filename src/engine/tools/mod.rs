//! The tools agents call in a tool loop, deny by default.
//!
//! [`Policy`] is what an agent file allows (`tools:`, and the prototype's
//! `permissions:`); [`Toolbox`] is what one run offers the model: each
//! allowed tool's name, description and argument schema. Running a call
//! ([`Toolbox::run_local`]) checks it against the box first: a name the box
//! lacks, arguments that are not JSON or break the schema, a tool that errs
//! or times out all become a result the model reads as an error, never a
//! failed task. `agent_run` (a child task) is run by the driver, which owns
//! the tree's limits (`run::turns`).

mod external;
mod files;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::Agent;
use crate::kb::args::{KbListArgs, KbReadArgs, KbSearchArgs, KbWriteArgs};
use crate::kb::{KbView, SearchQuery};
use crate::provider::ToolSpec;

pub use external::{ExternalTool, ExternalTools, model_name};
pub use files::ProjectFiles;

/// A tool dispatch itself gives agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Builtin {
    /// `kb_read`
    KbRead,
    /// `kb_list`
    KbList,
    /// `kb_search`
    KbSearch,
    /// `kb_write`
    KbWrite,
    /// `file_read`
    FileRead,
    /// `file_list`
    FileList,
    /// `file_search`
    FileSearch,
    /// `agent_run`: a child task.
    AgentRun,
}

impl Builtin {
    /// Every built-in, in the order they are offered.
    pub const ALL: [Builtin; 8] = [
        Builtin::KbRead,
        Builtin::KbList,
        Builtin::KbSearch,
        Builtin::KbWrite,
        Builtin::FileRead,
        Builtin::FileList,
        Builtin::FileSearch,
        Builtin::AgentRun,
    ];

    /// The name the model calls it by.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::KbRead => "kb_read",
            Builtin::KbList => "kb_list",
            Builtin::KbSearch => "kb_search",
            Builtin::KbWrite => "kb_write",
            Builtin::FileRead => "file_read",
            Builtin::FileList => "file_list",
            Builtin::FileSearch => "file_search",
            Builtin::AgentRun => "agent_run",
        }
    }

    /// The built-in called `name` (the prototype's `kb/read` form too).
    pub fn named(name: &str) -> Option<Builtin> {
        let canonical = name.replace('/', "_");
        Builtin::ALL.into_iter().find(|b| b.name() == canonical)
    }

    fn description(self) -> &'static str {
        match self {
            Builtin::KbRead => {
                "Read a file of the markdown knowledge base by KB-relative path (e.g. \
                 `outbox/code-review-42.md`). Large files come in chunks: pass `next_offset` as \
                 `offset` until `eof`."
            }
            Builtin::KbList => {
                "List knowledge-base files and folders (inbox/, outbox/, context/, sessions/); \
                 `recursive` descends."
            }
            Builtin::KbSearch => {
                "Search the text of every knowledge-base file; literal unless `regex`. Returns \
                 `path:line: snippet` matches."
            }
            Builtin::KbWrite => {
                "Write a knowledge-base file atomically. `mode`: `overwrite` (default), `append`, \
                 `create_new`."
            }
            Builtin::FileRead => {
                "Read a file of the project (read-only), by path relative to the project root. \
                 Files ignored by .gitignore, hidden files and .dispatch/ are not available. \
                 Large files come in chunks: pass `next_offset` as `offset` until `eof`."
            }
            Builtin::FileList => {
                "List the project's files and folders under `path` (default: the root), honouring \
                 .gitignore; `recursive` descends."
            }
            Builtin::FileSearch => {
                "Search the project's files for `pattern` (literal unless `regex`), honouring \
                 .gitignore; optional `path` limits the search. Returns `path:line: snippet`."
            }
            Builtin::AgentRun => {
                "Hand a sub-task to another agent (it may run on another model) and get its \
                 answer. `agent` is the agent's name, `input` a string or an object. The \
                 delegation tree has limits (depth, tasks, turns, time, money): a refusal says \
                 which, and then you should answer from what you have."
            }
        }
    }

    fn parameters(self) -> Value {
        match self {
            Builtin::KbRead => schema::<KbReadArgs>(),
            Builtin::KbList => schema::<KbListArgs>(),
            Builtin::KbSearch => schema::<KbSearchArgs>(),
            Builtin::KbWrite => schema::<KbWriteArgs>(),
            Builtin::FileRead => schema::<files::FileReadArgs>(),
            Builtin::FileList => schema::<files::FileListArgs>(),
            Builtin::FileSearch => schema::<files::FileSearchArgs>(),
            Builtin::AgentRun => schema::<AgentRunArgs>(),
        }
    }

    fn spec(self) -> ToolSpec {
        ToolSpec {
            name: self.name().to_string(),
            description: self.description().to_string(),
            parameters: self.parameters(),
        }
    }
}

/// The arguments of the `agent_run` agents call (the MCP tool's `agent` and
/// `input`; its waiting and limit arguments are the tree's business).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AgentRunArgs {
    /// The agent to run.
    pub agent: String,
    /// Its input: a string or a JSON object.
    pub input: Value,
}

/// An argument schema as models get it: the object schema without the
/// `$schema` and `title` keys, which some model APIs refuse.
fn schema<T: JsonSchema>() -> Value {
    let mut v = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("$schema");
        m.remove("title");
    }
    v
}

/// What an agent file allows: deny by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    builtins: BTreeSet<Builtin>,
    /// `(server, tool)` grants of other MCP servers' tools; `None` is `NAME/*`.
    servers: BTreeSet<(String, Option<String>)>,
    /// The granted tools marked `ask`: each call waits for a human's approval.
    ask_builtins: BTreeSet<Builtin>,
    /// The same for other servers' tools.
    ask_servers: BTreeSet<(String, Option<String>)>,
}

/// `NAME/*` or `NAME/tool`, when it is not one of dispatch's own names.
fn server_grant(t: &str) -> Option<(String, Option<String>)> {
    if Builtin::named(t).is_some() {
        return None;
    }
    let (server, tool) = t.split_once('/')?;
    if server.is_empty() || tool.is_empty() {
        return None;
    }
    let tool = (tool != "*").then(|| tool.to_string());
    Some((server.to_string(), tool))
}

impl Policy {
    /// The agent's `tools:` list, plus what the prototype's `permissions:`
    /// grants (`kb: read` the three reading KB tools, `kb: write` also
    /// `kb_write`, `files: read` the file tools, `agents: run` `agent_run`,
    /// or a tool name mapped to `allow`).
    pub fn of(agent: &Agent) -> Policy {
        let mut builtins: BTreeSet<Builtin> = agent
            .tools
            .iter()
            .filter_map(|t| Builtin::named(t))
            .collect();
        let mut servers: BTreeSet<_> = agent.tools.iter().filter_map(|t| server_grant(t)).collect();
        let (mut ask_builtins, mut ask_servers) = (BTreeSet::new(), BTreeSet::new());
        if let Some(Value::Object(perms)) = agent.extra.get("permissions") {
            for (key, v) in perms {
                let value = v.as_str().unwrap_or("");
                // `ask` grants what `allow` would, every call asking first.
                let asks = value == "ask";
                let grant = if asks { "allow" } else { value };
                let tools = granted(key, grant);
                if asks {
                    ask_builtins.extend(tools.iter().copied());
                }
                builtins.extend(tools);
                if grant == "allow"
                    && let Some(g) = server_grant(key)
                {
                    if asks {
                        ask_servers.insert(g.clone());
                    }
                    servers.insert(g);
                }
            }
        }
        Policy {
            builtins,
            servers,
            ask_builtins,
            ask_servers,
        }
    }

    /// True when the agent may call no tool: it answers in one call.
    pub fn is_empty(&self) -> bool {
        self.builtins.is_empty() && self.servers.is_empty()
    }

    /// Whether `tool` of `server` is allowed.
    fn allows_server_tool(&self, server: &str, tool: &str) -> bool {
        self.servers
            .iter()
            .any(|(s, t)| s == server && t.as_deref().is_none_or(|t| t == tool))
    }

    /// Whether a call of `b` waits for a human's approval.
    pub fn asks(&self, b: Builtin) -> bool {
        self.ask_builtins.contains(&b)
    }

    /// Whether a call of `tool` of `server` waits for a human's approval.
    fn asks_server_tool(&self, server: &str, tool: &str) -> bool {
        self.ask_servers
            .iter()
            .any(|(s, t)| s == server && t.as_deref().is_none_or(|t| t == tool))
    }

    /// The `[mcp_servers]` the agent's tools name, each once.
    pub fn server_names(&self) -> BTreeSet<&str> {
        self.servers.iter().map(|(s, _)| s.as_str()).collect()
    }

    /// Whether `b` is allowed.
    pub fn allows(&self, b: Builtin) -> bool {
        self.builtins.contains(&b)
    }
}

/// What one `permissions:` entry grants.
fn granted(key: &str, value: &str) -> Vec<Builtin> {
    use Builtin::*;
    let reading = matches!(value, "read" | "write" | "allow" | "true");
    let writing = matches!(value, "write" | "allow" | "true");
    match key {
        "kb" if writing => vec![KbRead, KbList, KbSearch, KbWrite],
        "kb" if reading => vec![KbRead, KbList, KbSearch],
        "files" | "file" if reading => vec![FileRead, FileList, FileSearch],
        "agents" | "agent" if matches!(value, "run" | "allow" | "true") => vec![AgentRun],
        name if value == "allow" => Builtin::named(name).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// What a tool call gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The text sent back to the model.
    pub content: String,
    /// True when it is an error.
    pub is_error: bool,
}

impl ToolOutput {
    /// A result.
    pub fn ok(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }

    /// An error the model reads.
    pub fn error(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

/// The tools one run offers its model, and what they reach.
#[derive(Clone)]
pub struct Toolbox {
    agent: String,
    policy: Policy,
    kb: Option<KbView>,
    files: Option<Arc<ProjectFiles>>,
    timeout: Duration,
    external: Option<Arc<dyn ExternalTools>>,
    /// Other servers' tools offered, under the names the model sees.
    remote: Vec<Remote>,
    /// Servers whose tools could not be listed, and why (told to the model
    /// when it calls one of their names).
    unavailable: Vec<(String, String)>,
}

/// Added to the description of a tool marked `ask`.
const APPROVAL_NOTE: &str =
    " Each call needs a human's approval first; a refused call says so, and then do without it.";

/// One other server's tool as offered.
#[derive(Clone)]
struct Remote {
    spec: ToolSpec,
    server: String,
    tool: String,
}

/// What the model's call resolved to.
pub enum Resolved {
    /// A tool the box runs itself.
    Local(Builtin, Value),
    /// `agent_run`: the driver creates the child.
    Child(AgentRunArgs),
    /// Another MCP server's tool.
    Remote {
        /// The server.
        server: String,
        /// The tool's name there.
        tool: String,
        /// The arguments.
        args: Value,
    },
    /// Refused before anything ran.
    Refused(ToolOutput),
}

impl Toolbox {
    /// The box for `agent` over these resources (a resource the box lacks
    /// leaves its tools out).
    pub fn new(
        agent: &Agent,
        kb: Option<KbView>,
        files: Option<Arc<ProjectFiles>>,
        timeout: Duration,
    ) -> Toolbox {
        Toolbox {
            agent: agent.name.clone(),
            policy: Policy::of(agent),
            kb,
            files,
            timeout,
            external: None,
            remote: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    /// Add the allowed tools of the other MCP servers the agent names
    /// (each server started on first use). A server that cannot be reached
    /// is left out and logged; its tools are then unknown to the model.
    pub async fn attach_servers(&mut self, external: Arc<dyn ExternalTools>) {
        let mut taken: BTreeSet<String> = self.offered().map(|b| b.name().to_string()).collect();
        let declared = external.servers();
        let servers: Vec<String> = self
            .policy
            .server_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        for server in servers {
            if !declared.contains(&server) {
                self.unavailable.push((
                    server.clone(),
                    format!("no [mcp_servers.{server}] is declared in dispatch.toml"),
                ));
                tracing::warn!(agent = %self.agent, server = %server, "the agent allows tools of an MCP server dispatch.toml does not declare");
                continue;
            }
            let tools = match external.tools(&server).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(agent = %self.agent, server = %server, error = %e, "cannot list the tools of an MCP server");
                    self.unavailable.push((server.clone(), e));
                    continue;
                }
            };
            for t in tools {
                if !self.policy.allows_server_tool(&server, &t.name) {
                    continue;
                }
                let name = model_name(&server, &t.name, &taken);
                let mut description = t.description.clone();
                if name != format!("{server}_{}", t.name) {
                    tracing::info!(server = %server, tool = %t.name, as_name = %name, "an MCP tool was renamed for the model");
                    description = format!("({server}/{}) {description}", t.name);
                }
                taken.insert(name.clone());
                self.remote.push(Remote {
                    spec: ToolSpec {
                        name,
                        description,
                        parameters: t.input_schema,
                    },
                    server: server.clone(),
                    tool: t.name,
                });
            }
        }
        self.external = Some(external);
    }

    /// True when nothing is offered.
    pub fn is_empty(&self) -> bool {
        self.offered().next().is_none() && self.remote.is_empty()
    }

    fn offered(&self) -> impl Iterator<Item = Builtin> + '_ {
        Builtin::ALL.into_iter().filter(|b| {
            self.policy.allows(*b)
                && match b {
                    Builtin::FileRead | Builtin::FileList | Builtin::FileSearch => {
                        self.files.is_some()
                    }
                    Builtin::AgentRun => true,
                    _ => self.kb.is_some(),
                }
        })
    }

    /// What the model is told it can call.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let local = self
            .offered()
            .map(|b| (Builtin::spec(b), self.policy.asks(b)));
        let remote = self.remote.iter().map(|r| {
            let asks = self.policy.asks_server_tool(&r.server, &r.tool);
            (r.spec.clone(), asks)
        });
        local
            .chain(remote)
            .map(|(mut spec, asks)| {
                // The model plans better knowing a call may be refused.
                if asks {
                    spec.description.push_str(APPROVAL_NOTE);
                }
                spec
            })
            .collect()
    }

    /// Check a call: a tool this box offers, with arguments that are a JSON
    /// object its schema accepts.
    pub fn resolve(&self, name: &str, arguments: &str) -> Resolved {
        let remote = self.remote.iter().find(|r| r.spec.name == name);
        let builtin = Builtin::named(name).filter(|b| self.offered().any(|o| o == *b));
        if remote.is_none() && builtin.is_none() {
            return Resolved::Refused(ToolOutput::error(self.unknown(name)));
        }
        let args: Value = match serde_json::from_str(arguments) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return Resolved::Refused(ToolOutput::error(format!(
                    "the arguments of {name} must be a JSON object: call it again with an object"
                )));
            }
            Err(e) => {
                return Resolved::Refused(ToolOutput::error(format!(
                    "the arguments of {name} are not valid JSON ({e}): call it again with a JSON object"
                )));
            }
        };
        match (remote, builtin) {
            (Some(r), _) => Resolved::Remote {
                server: r.server.clone(),
                tool: r.tool.clone(),
                args,
            },
            (None, Some(Builtin::AgentRun)) => match parse::<AgentRunArgs>(name, args) {
                Ok(a) => Resolved::Child(a),
                Err(e) => Resolved::Refused(e),
            },
            (None, Some(b)) => Resolved::Local(b, args),
            (None, None) => Resolved::Refused(ToolOutput::error(self.unknown(name))),
        }
    }

    /// Whether running `resolved` waits for a human's approval.
    pub fn asks(&self, resolved: &Resolved) -> bool {
        match resolved {
            Resolved::Local(b, _) => self.policy.asks(*b),
            Resolved::Child(_) => self.policy.asks(Builtin::AgentRun),
            Resolved::Remote { server, tool, .. } => self.policy.asks_server_tool(server, tool),
            Resolved::Refused(_) => false,
        }
    }

    /// Call another server's tool (the client applies the server's timeout).
    pub async fn run_remote(&self, server: &str, tool: &str, args: Value) -> ToolOutput {
        match &self.external {
            Some(e) => e.call(server, tool, args).await,
            None => ToolOutput::error(format!("the MCP server `{server}` is not available")),
        }
    }

    fn unknown(&self, name: &str) -> String {
        if let Some((server, why)) = self.unavailable.iter().find(|(s, _)| {
            name.strip_prefix(s.as_str())
                .is_some_and(|r| r.starts_with('_'))
        }) {
            return format!(
                "the tools of the MCP server `{server}` are not available ({why}); answer without them"
            );
        }
        let offered: Vec<&str> = self
            .offered()
            .map(|b| b.name())
            .chain(self.remote.iter().map(|r| r.spec.name.as_str()))
            .collect();
        let list = if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        };
        match Builtin::named(name) {
            Some(b) => format!(
                "{} is not allowed for agent `{}` (its tools: {list}); answer without it",
                b.name(),
                self.agent
            ),
            None => format!(
                "there is no tool `{}`; the tools you can call are: {list}",
                crate::engine::echo(name)
            ),
        }
    }

    /// Run a local tool under the tool timeout, on the blocking pool (the
    /// KB and the file tools read the disk).
    pub async fn run_local(&self, b: Builtin, args: Value) -> ToolOutput {
        let me = self.clone();
        let work = tokio::task::spawn_blocking(move || me.run_blocking(b, args));
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => ToolOutput::error(format!("{} failed: {e}", b.name())),
            Err(_) => ToolOutput::error(format!(
                "{} did not finish within {}s; try a narrower request",
                b.name(),
                self.timeout.as_secs()
            )),
        }
    }

    fn run_blocking(&self, b: Builtin, args: Value) -> ToolOutput {
        let name = b.name();
        let result = match b {
            Builtin::KbRead | Builtin::KbList | Builtin::KbSearch | Builtin::KbWrite => {
                match &self.kb {
                    Some(kb) => kb_tool(kb, b, args),
                    None => Err(ToolOutput::error(format!("{name} is not available"))),
                }
            }
            Builtin::FileRead | Builtin::FileList | Builtin::FileSearch => match &self.files {
                Some(f) => f.run(b, args),
                None => Err(ToolOutput::error(format!("{name} is not available"))),
            },
            Builtin::AgentRun => Err(ToolOutput::error("agent_run is run by the driver")),
        };
        result.unwrap_or_else(|e| e)
    }
}

/// Deserialize a tool's arguments; the error says what to fix.
pub(crate) fn parse<T: DeserializeOwned>(name: &str, args: Value) -> Result<T, ToolOutput> {
    serde_json::from_value(args).map_err(|e| {
        ToolOutput::error(format!(
            "the arguments of {name} do not match its schema: {e}; call it again with valid arguments"
        ))
    })
}

/// A value as the text a model reads.
pub(crate) fn json_text<T: serde::Serialize>(v: &T) -> ToolOutput {
    match serde_json::to_string(v) {
        Ok(s) => ToolOutput::ok(s),
        Err(e) => ToolOutput::error(format!("the result could not be encoded: {e}")),
    }
}

fn kb_tool(kb: &KbView, b: Builtin, args: Value) -> Result<ToolOutput, ToolOutput> {
    let name = b.name();
    let failed = |e: crate::kb::KbError| ToolOutput::error(format!("{name}: {e}"));
    Ok(match b {
        Builtin::KbRead => {
            let a: KbReadArgs = parse(name, args)?;
            json_text(
                &kb.read(&a.path, a.offset.unwrap_or(0), a.limit)
                    .map_err(failed)?,
            )
        }
        Builtin::KbWrite => {
            let a: KbWriteArgs = parse(name, args)?;
            json_text(&kb.write(&a.path, &a.content, a.mode).map_err(failed)?)
        }
        Builtin::KbList => {
            let a: KbListArgs = parse(name, args)?;
            let opts = a.options();
            json_text(
                &kb.list(a.path.as_deref().unwrap_or(""), &opts)
                    .map_err(failed)?,
            )
        }
        _ => {
            let a: KbSearchArgs = parse(name, args)?;
            let q = SearchQuery::from(a);
            json_text(&kb.search(&q).map_err(failed)?)
        }
    })
}

/// Cut a result to `limit` bytes at a character boundary, saying so.
pub fn cut(mut out: ToolOutput, limit: usize) -> (ToolOutput, u64) {
    let bytes = out.content.len() as u64;
    if out.content.len() > limit {
        let mut end = limit;
        while !out.content.is_char_boundary(end) {
            end -= 1;
        }
        out.content.truncate(end);
        out.content.push_str(&format!(
            "\n[dispatch: this result is {bytes} bytes; only the first {end} are shown \
             ([limits] max_tool_result_bytes). Ask for less: a narrower path, an offset, fewer results.]"
        ));
    }
    (out, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(tools: &[&str], permissions: Option<Value>) -> Agent {
        let text = "---\nmodel: openai/m\n---\nx\n";
        let mut a = crate::agent::reader::parse_agent(
            text,
            std::path::Path::new("agents/a.agent.md"),
            &crate::agent::reader::ReadContext::default(),
        )
        .agent
        .expect("agent");
        a.tools = tools.iter().map(|t| t.to_string()).collect();
        if let Some(p) = permissions {
            a.extra.insert("permissions".into(), p);
        }
        a
    }

    #[test]
    fn deny_by_default_and_the_prototypes_permissions() {
        assert!(Policy::of(&agent(&[], None)).is_empty());
        let p = Policy::of(&agent(&["kb/read", "Read"], None));
        assert!(p.allows(Builtin::KbRead) && !p.allows(Builtin::KbWrite));
        let p = Policy::of(&agent(&[], Some(serde_json::json!({"kb": "read"}))));
        assert!(p.allows(Builtin::KbSearch) && !p.allows(Builtin::KbWrite));
        let p = Policy::of(&agent(
            &[],
            Some(
                serde_json::json!({"kb": "write", "files": "read", "agents": "run", "github/*": "allow"}),
            ),
        ));
        assert!(
            p.allows(Builtin::KbWrite)
                && p.allows(Builtin::FileList)
                && p.allows(Builtin::AgentRun)
        );
        assert!(p.allows_server_tool("github", "anything"));
        let p = Policy::of(&agent(&["docs/lookup"], None));
        assert!(p.allows_server_tool("docs", "lookup") && !p.allows_server_tool("docs", "other"));
        // `ask` grants the tool, each call waiting for a human.
        let p = Policy::of(&agent(
            &["kb_read"],
            Some(serde_json::json!({"kb_write": "ask", "github/*": "ask", "docs/lookup": "allow"})),
        ));
        assert!(p.allows(Builtin::KbWrite) && p.asks(Builtin::KbWrite));
        assert!(p.allows(Builtin::KbRead) && !p.asks(Builtin::KbRead));
        assert!(p.allows_server_tool("github", "create_issue"));
        assert!(p.asks_server_tool("github", "create_issue"));
        assert!(p.allows_server_tool("docs", "lookup") && !p.asks_server_tool("docs", "lookup"));
    }

    #[test]
    fn results_are_cut_at_a_character_boundary_with_a_note() {
        let (out, bytes) = cut(ToolOutput::ok("é".repeat(100)), 51);
        assert_eq!(bytes, 200);
        assert!(out.content.starts_with(&"é".repeat(25)));
        assert!(
            out.content
                .contains("this result is 200 bytes; only the first 50"),
            "{}",
            out.content
        );
        let (same, _) = cut(ToolOutput::ok("short"), 51);
        assert_eq!(same.content, "short");
    }
}
